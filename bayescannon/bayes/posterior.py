"""PyMC models of the labels of given spectra, built from a fitted :class:`CannonModel`.

The label posterior of a star with θ and s² fixed at their MAP values needs only the
star's sufficient statistics (:func:`bayescannon.core.labelfit.spectrum_statistics`)

    A = Σ_λ w_λ θ_λ θ_λᵀ,  b = Σ_λ w_λ f_λ θ_λ,  c = Σ_λ w_λ f_λ²,   w = ivar/(1 + ivar s²),

because ``χ²(ℓ) = vᵀAv − 2bᵀv + c`` exactly for the polynomial model (v = v(ℓ), the
same vectorizer as the MAP engine, evaluated with ``xp=pytensor.tensor``). With θ
uncertainty propagated (:mod:`bayescannon.core.uncertainty`), each pixel variance grows by
the factor ``1 + ε(ℓ)`` with ``ε = κ v(ℓ)ᵀ G₀⁻¹ v(ℓ)``, and the log-likelihood is

    ln L(ℓ) = −½ χ²(ℓ)/(1 + ε(ℓ)) − ½ n_pix ln(1 + ε(ℓ))

(:func:`bayescannon.core.likelihood.label_log_likelihood`: the core's formula, evaluated
with ``xp=pytensor.tensor``; re-exported here).

So a (T×T) matrix per star is all the model sees: one compiled model serves any star
(data swapped with ``nutpie``'s ``with_data``, never recompiled) and a batch of stars
is one model with a ``star`` dimension.

Backend (measured on 2 shared cores, Nov 2026): the default ``sampler="nutpie"`` runs
nutpie's NUTS on the numba kernel :func:`bayescannon.bayes.labelkernel.logp_grad` behind a
disk-cached ``numba.cfunc`` (:func:`bayescannon.bayes.labelkernel.c_callbacks`) given to
nutpie's PyMC-model interface: the gradient is called from nutpie's threads without the
GIL and without Python, and a batch's data is one packed buffer swapped per call. A fresh
process loads the callbacks from numba's cache (first run on a machine: one compile,
announced by a log line). Warm, a star (4 labels, 3,000 pixels, 4 × (1000 + 1000) steps)
costs ~0.15 s of CPU (``benchmarks/bench_posterior.py``; it was ~1–2 s). nutpie's
``CompiledPyMCModel`` is built directly from the two callbacks (its fields are nutpie's,
≥ 0.15): ``tests/test_bayes.py`` samples through it, so a change there fails loudly. Earlier choices: nutpie's ``compile_pymc_model`` (an uncached ``numba.cfunc``:
30–130 s of compilation per process) and nutpie's ``from_pyfunc`` (a Python call holding
the GIL per gradient: ~1–2 s per star). The draws are read from nutpie's raw Arrow trace
(:func:`bayescannon.bayes.sampling.raw_trace_arrays`), not converted by ArviZ per star.
``sampler="pymc"`` samples the PyMC model below (same density, checked by
``tests/test_bayes.py``).

Parameterisation: the sampler moves ``z`` with ``u = u_MAP + L z`` where ``u`` are the
unconstrained labels (``x = lo + (hi − lo) σ(u)`` for the default uniform prior, ``x = u``
for a normal prior) and ``L`` the Cholesky factor of the Laplace covariance at the MAP
(in u). The posterior of z is close to N(0, I) for every star, so a batch of stars mixes
as well as one star, and chains start within ~1σ of the mode (no lost chains in a far
local minimum).

Results are ArviZ-1 ``xarray.DataTree`` objects with ``star`` and ``label_name``
dimensions (never ``label``: arviz 1.3 breaks on it); see
:mod:`bayescannon.bayes.diagnostics` for the convergence summary.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import xarray as xr

from bayescannon.bayes import labelkernel
from bayescannon.bayes.diagnostics import summarize
from bayescannon.bayes.sampling import collect_sample_stats, raw_trace_arrays, stack_sample_stats
from bayescannon.core import scaling
from bayescannon.core.labelfit import spectrum_statistics
from bayescannon.core.likelihood import label_log_likelihood
from bayescannon.core.uncertainty import inverse_train_weight, theta_state
from bayescannon.errors import InvalidInputError, SamplingError, ShapeMismatchError
from bayescannon.flags import PixelFlag
from bayescannon.spectra import default_ids, join_ids, unpack_spectra

logger = logging.getLogger(__name__)

__all__ = ["label_log_likelihood", "LabelPosterior", "sample_labels", "star_statistics", "prior_bounds"]


def prior_bounds(model, prior="uniform", prior_margin: float = 0.25):
    """Bounds of the uniform label prior in scaled units: the training range widened by
    ``prior_margin`` of its width on each side, or given bounds (physical units)."""
    if isinstance(prior, dict):
        lo = scaling.scale(np.asarray(prior["lower"], dtype=float), model.label_offset_, model.label_scale_)
        hi = scaling.scale(np.asarray(prior["upper"], dtype=float), model.label_offset_, model.label_scale_)
    else:
        lo = scaling.scale(model.label_min_, model.label_offset_, model.label_scale_)
        hi = scaling.scale(model.label_max_, model.label_offset_, model.label_scale_)
        width = hi - lo
        lo, hi = lo - prior_margin * width, hi + prior_margin * width
    lo, hi = np.broadcast_to(lo, (len(model.label_names),)), np.broadcast_to(hi, (len(model.label_names),))
    if not np.all(hi > lo):
        raise InvalidInputError(f"prior bounds must have upper > lower; got lower={lo}, upper={hi} (scaled)")
    return np.array(lo, dtype=float), np.array(hi, dtype=float)


def star_statistics(model, flux, ivar, *, propagate_theta: bool = True):
    """Sufficient statistics (A, b, c, n_pix, κ) of spectra under a fitted model.

    The test step's weighting (:func:`bayescannon.core.labelfit.spectrum_statistics`):
    pixels without a model, with ``ivar`` 0, negative or not finite, or with a non-finite
    flux get weight 0; κ is 0 without ``propagate_theta``.
    """

    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    if flux.shape != ivar.shape:
        raise ShapeMismatchError(f"flux has shape {flux.shape} but ivar has shape {ivar.shape}")
    pixel_ok = ~(model.pixel_flags_ & (PixelFlag.FEW_STARS | PixelFlag.SINGULAR)).astype(bool)
    inv_wbar = inverse_train_weight(model) if propagate_theta else None
    A, b, c, n_pix, k, _ = spectrum_statistics(flux, ivar, model.s2_, model.theta_, pixel_ok, inv_wbar)
    return A, b, c, n_pix, k


class LabelPosterior:
    """One compiled PyMC model of the labels of ``batch_size`` stars, θ and s² fixed.

    Parameters
    ----------
    model : CannonModel
        A fitted model.
    batch_size : int, default 1
        Stars per sampled model. 1 samples stars one by one with the same compiled
        model; larger values sample that many stars jointly (each star's labels are
        independent a posteriori; convergence is still checked per star).
    prior : {"uniform", "normal"} or dict
        ``"uniform"``: flat within the training range widened by ``prior_margin``;
        ``"normal"``: N(training centre, (prior_width × training 95 % range)²) per label;
        ``{"lower": array, "upper": array}``: uniform within given physical bounds.
    prior_margin : float
        Widening of the training range for the uniform prior (fraction of the width).
    prior_width : float
        Width of the normal prior in units of the training 95 % range.
    propagate_theta : bool
        Include θ uncertainty (see module docstring).
    sampler : {"nutpie", "pymc"}
        NUTS implementation; ``"pymc"`` is the fallback (recompiles each call).
    """

    def __init__(
        self,
        model,
        *,
        batch_size: int = 1,
        prior="uniform",
        prior_margin: float = 0.25,
        prior_width: float = 1.0,
        propagate_theta: bool = True,
        sampler: str = "nutpie",
    ):
        model._check_fitted()
        if int(batch_size) < 1:
            raise InvalidInputError(f"batch_size must be >= 1; got {batch_size}")
        if sampler not in ("nutpie", "pymc"):
            raise InvalidInputError(f"sampler must be 'nutpie' or 'pymc'; got {sampler!r}")
        if not (isinstance(prior, dict) or prior in ("uniform", "normal")):
            raise InvalidInputError(f"prior must be 'uniform', 'normal' or a dict of bounds; got {prior!r}")
        if sampler == "nutpie":
            try:
                import nutpie  # noqa: F401
            except ImportError:  # pragma: no cover - nutpie is a dependency
                logger.warning("nutpie is not importable; falling back to PyMC's NUTS sampler")
                sampler = "pymc"
        self.model = model
        self.batch_size = int(batch_size)
        self.prior = prior
        self.prior_kind = "normal" if prior == "normal" else "uniform"
        self.prior_margin = float(prior_margin)
        self.prior_width = float(prior_width)
        self.propagate_theta = bool(propagate_theta)
        self.sampler = sampler
        self.lower, self.upper = prior_bounds(model, prior if prior != "normal" else "uniform", prior_margin)
        self._pymc_model = None
        self._compiled = None
        self.compile_time = 0.0
        g0inv, _ = theta_state(model)
        k, t = len(model.label_names), model.vectorizer.n_terms
        self._constants = {
            "g0inv": g0inv if (self.propagate_theta and g0inv is not None) else np.zeros((t, t)),
            "lower": self.lower if self.prior_kind == "uniform" else np.zeros(k),
            "upper": self.upper if self.prior_kind == "uniform" else np.full(k, self.prior_width),
            "label_offset": np.asarray(model.label_offset_, dtype=np.float64),
            "label_scale": np.asarray(model.label_scale_, dtype=np.float64),
        }

    @property
    def pymc_model(self):
        """The PyMC model of the same density (built on first use: it imports PyMC, ~5 s).

        Sampled by ``sampler="pymc"``; the default ``"nutpie"`` sampler evaluates the
        compiled kernel :func:`bayescannon.bayes.labelkernel.logp_grad` instead.
        """
        if self._pymc_model is None:
            self._pymc_model = self._build()
        return self._pymc_model

    # ----------------------------------------------------------------- model
    def _build(self):
        import pymc as pm
        import pytensor.tensor as pt

        m = self.model
        s = self.batch_size
        k = len(m.label_names)
        t = m.vectorizer.n_terms
        coords = {"star": np.arange(s), "label_name": list(m.label_names), "label_name2": list(m.label_names)}
        # every array is pm.Data (never a graph constant): the compiled graph then depends
        # only on (K, order, batch size, prior kind), so numba's disk cache serves other
        # models and later sessions
        with pm.Model(coords=coords) as pmm:
            A = pm.Data("A", np.tile(np.eye(t), (s, 1, 1)), dims=("star", "term", "term2"))
            b = pm.Data("b", np.zeros((s, t)), dims=("star", "term"))
            c = pm.Data("c", np.zeros(s), dims="star")
            n_pix = pm.Data("n_pix", np.ones(s), dims="star")
            kap = pm.Data("kappa", np.zeros(s), dims="star")
            u0 = pm.Data("u_map", np.zeros((s, k)), dims=("star", "label_name"))
            chol = pm.Data("chol", np.tile(np.eye(k), (s, 1, 1)), dims=("star", "label_name", "label_name2"))
            g0 = pm.Data("g0inv", np.zeros((t, t)), dims=("term", "term2"))
            lo = pm.Data("lower", np.zeros(k), dims="label_name")
            hi = pm.Data("upper", np.ones(k), dims="label_name")
            offset = pm.Data("label_offset", np.zeros(k), dims="label_name")
            scale_ = pm.Data("label_scale", np.ones(k), dims="label_name")
            z = pm.Flat("z", dims=("star", "label_name"))
            u = u0 + (chol * z[:, None, :]).sum(axis=-1)
            if self.prior_kind == "uniform":
                x = lo + (hi - lo) * pt.sigmoid(u)
                # uniform prior on x: density of u is Π σ(u)(1 − σ(u))
                pm.Potential("prior", (-pt.softplus(-u) - pt.softplus(u)).sum())
            else:
                x = u
                pm.Potential("prior", (-0.5 * (u / hi) ** 2).sum())
            v = m.vectorizer(x, xp=pt)
            eps = kap * (v * (v @ g0)).sum(axis=-1)
            pm.Potential("likelihood", label_log_likelihood(A, b, c, v, n_pix, eps, xp=pt).sum())
            pm.Deterministic("labels", x * scale_ + offset, dims=("star", "label_name"))
        return pmm

    def compile(self):
        """Prepare the sampler once; later calls reuse it.

        ``"nutpie"``: nutpie's PyMC-model interface around the C callbacks of
        :func:`bayescannon.bayes.labelkernel.c_callbacks` (the numba kernel
        :func:`~bayescannon.bayes.labelkernel.logp_grad` behind a ``numba.cfunc``, compiled
        once per machine, then loaded from numba's disk cache). The star's data is one
        packed buffer (:func:`~bayescannon.bayes.labelkernel.pack`) swapped per batch.
        ``"pymc"``: nothing to do (PyMC compiles inside each ``pm.sample`` call).
        """
        if self.sampler == "nutpie" and self._compiled is None:
            t0 = time.perf_counter()
            self._compiled = self._cfunc_model()
            self.compile_time = time.perf_counter() - t0
            logger.info("prepared the label posterior (batch of %d) in %.2f s", self.batch_size, self.compile_time)
        return self

    def _cfunc_model(self):
        # lazy: nutpie imports arviz (seconds); only when sampling
        from nutpie.compile_pymc import CompiledPyMCModel

        m = self.model
        s, k = self.batch_size, len(m.label_names)
        logp_c, expand_c = labelkernel.c_callbacks()

        def initial_point(seed):
            # the PyMC model's start: z = 0 (the MAP) jittered by U(−1, 1), i.e. within ~1σ
            return np.random.default_rng(seed).uniform(-1.0, 1.0, s * k)

        t = m.vectorizer.n_terms
        empty = {
            "A": np.tile(np.eye(t), (s, 1, 1)),
            "b": np.zeros((s, t)),
            "c": np.zeros(s),
            "n_pix": np.ones(s),
            "kappa": np.zeros(s),
            "u_map": np.zeros((s, k)),
            "chol": np.tile(np.eye(k), (s, 1, 1)),
        } | self._constants
        # nutpie's CompiledPyMCModel takes any C callbacks of its signature: the field names
        # are nutpie's (≥ 0.15); ``user_data`` is the pointer handed to both callbacks
        return CompiledPyMCModel(
            dims={"labels": ("star", "label_name")},
            _coords={"star": np.arange(s), "label_name": list(m.label_names)},
            _n_dim=s * k,
            _shapes={"labels": (s, k)},
            compiled_logp_func=logp_c,
            compiled_expand_func=expand_c,
            initial_point_func=initial_point,
            shared_data={},
            shared_var_keys={},
            user_data=self._pack(empty),
            n_expanded=s * k,
            shape_info=(["labels"], [slice(0, s * k)], [(s, k)]),
            logp_func=None,
            expand_func=None,
        )

    def _pack(self, d):
        """The packed float64 buffer of one batch's named data (see :func:`labelkernel.pack`)."""
        vec = self.model.vectorizer
        return labelkernel.pack(
            *_kernel_args(d), d["label_offset"], d["label_scale"], vec.parent, vec.last, self.prior_kind == "uniform"
        )

    # ----------------------------------------------------------------- data
    def _to_u(self, x):
        if self.prior_kind == "normal":
            return x, np.ones_like(x)
        lo, hi = self.lower, self.upper
        p = np.clip((x - lo) / (hi - lo), 1e-6, 1 - 1e-6)
        du_dx = 1.0 / ((hi - lo) * p * (1 - p))
        return np.log(p) - np.log1p(-p), du_dx

    def _laplace_u(self, x_map, cov_x):
        """MAP and Cholesky factor of the Laplace covariance in unconstrained units."""
        u, du_dx = self._to_u(x_map)
        cov_u = cov_x * du_dx[:, :, None] * du_dx[:, None, :]
        k = x_map.shape[1]
        chol = np.tile(np.eye(k), (x_map.shape[0], 1, 1))
        ok = np.all(np.isfinite(cov_u), axis=(1, 2))
        if ok.any():
            jitter = 1e-10 * np.einsum("nkk->n", np.abs(cov_u[ok]))[:, None, None] * np.eye(k)
            try:
                chol[ok] = np.linalg.cholesky(cov_u[ok] + jitter)
            except np.linalg.LinAlgError:
                sd = np.sqrt(np.abs(np.einsum("nkk->nk", cov_u[ok])))
                chol[ok] = sd[:, :, None] * np.eye(k)
        if (~ok).any():
            logger.warning(
                "%d stars have a singular Laplace covariance: the sampler starts with unit scales", int((~ok).sum())
            )
        return u, chol

    # ----------------------------------------------------------------- sampling
    def sample(
        self,
        flux,
        ivar,
        *,
        ids=None,
        map_result=None,
        draws: int = 1000,
        tune: int = 1000,
        chains: int = 4,
        cores: int | None = None,
        seed: int | None = 0,
        progressbar: bool = False,
    ) -> xr.DataTree:
        """Posterior samples for every star of ``flux`` (batches of ``batch_size``).

        Parameters
        ----------
        flux, ivar : ndarray, shape (N, P)
        ids : array_like (N,), optional
        map_result : xarray.Dataset, optional
            ``model.infer`` output for these stars (computed when not given).
        draws, tune, chains : int
            Posterior draws and tuning steps per chain, number of chains.
        cores : int, optional
            Threads for the chains (default: min(chains, 2)).
        seed : int, optional
        progressbar : bool

        Returns
        -------
        xarray.DataTree
            Groups ``posterior`` (``labels``: chain, draw, star, label_name, physical
            units), ``sample_stats`` (every per-draw statistic of the sampler: ``energy``,
            ``energy_error``, ``step_size``, ``tree_depth``, ``n_steps``, ``diverging``,
            ``maxdepth_reached``, ``acceptance_rate``, ``lp``, …: chain, draw, star; a
            batch of stars shares its values), ``constant_data`` (MAP labels, Laplace errors, pixels, κ) and
            ``diagnostics`` (see :func:`bayescannon.bayes.diagnostics.summarize`).
        """

        m = self.model
        flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
        ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
        n = flux.shape[0]
        ids = np.asarray([f"star{i:06d}" for i in range(n)] if ids is None else ids).astype(str)
        if ids.shape != (n,):
            raise ShapeMismatchError(f"ids have shape {ids.shape} but there are {n} spectra")
        if map_result is None:
            map_result = m.infer(flux, ivar, ids=ids)
        A, b, c, n_pix, kap = star_statistics(m, flux, ivar, propagate_theta=self.propagate_theta)
        nopix = n_pix == 0
        if nopix.any():
            i = int(np.flatnonzero(nopix)[0])
            raise SamplingError(
                f"star {i} (id {ids[i]}) has no usable pixel (ivar > 0 on a modelled pixel): its labels have no "
                f"posterior beyond the prior; {int(nopix.sum())} such stars; remove them"
            )
        x_map = scaling.scale(map_result["labels"].values, m.label_offset_, m.label_scale_)
        cov_x = map_result["covariance"].values / (m.label_scale_[None, :, None] * m.label_scale_[None, None, :])
        if self.prior_kind == "uniform":
            x_map = np.clip(
                x_map, self.lower + 1e-6 * (self.upper - self.lower), self.upper - 1e-6 * (self.upper - self.lower)
            )
        u0, chol = self._laplace_u(x_map, cov_x)
        s = self.batch_size
        n_batches = -(-n // s)
        pad = n_batches * s - n
        rep = np.r_[np.arange(n), np.full(pad, n - 1)]
        data = {
            "A": A[rep],
            "b": b[rep],
            "c": c[rep],
            "n_pix": n_pix[rep].astype(float),
            "kappa": kap[rep],
            "u_map": u0[rep],
            "chol": chol[rep],
        }
        post, stats_list, counts = [], [], []
        batches = range(n_batches)
        if progressbar:
            from tqdm.auto import tqdm  # lazy: only with a progress bar

            batches = tqdm(batches, desc="sampling", unit="batch")
        self.compile()
        t0 = time.perf_counter()
        rng = np.random.default_rng(seed)
        for j in batches:
            sl = slice(j * s, (j + 1) * s)
            batch = {key: val[sl] for key, val in data.items()} | self._constants
            bseed = int(rng.integers(2**31))
            labels_b, stats_b = self._sample_batch(batch, draws, tune, chains, cores, bseed)
            keep = min(s, n - j * s)
            post.append(labels_b[:, :, :keep])
            stats_list.append(stats_b)
            counts.append(keep)
        elapsed = time.perf_counter() - t0
        labels = np.concatenate(post, axis=2)
        chains_, draws_ = labels.shape[:2]
        coords = {
            "chain": np.arange(chains_),
            "draw": np.arange(draws_),
            "star": ids,
            "label_name": list(m.label_names),
        }
        posterior = xr.Dataset({"labels": (("chain", "draw", "star", "label_name"), labels)}, coords=coords)
        posterior["labels"].attrs["units"] = "physical label units"
        sample_stats = stack_sample_stats(stats_list, counts, ids)
        constant = xr.Dataset(
            {
                "map_labels": (("star", "label_name"), map_result["labels"].values),
                "map_errors": (("star", "label_name"), np.sqrt(np.einsum("nkk->nk", map_result["covariance"].values))),
                "map_flags": ("star", map_result["flags"].values),
                "n_pixels": ("star", n_pix),
                "kappa": ("star", kap),
                "prior_lower": ("label_name", scaling.unscale(self.lower, m.label_offset_, m.label_scale_)),
                "prior_upper": ("label_name", scaling.unscale(self.upper, m.label_offset_, m.label_scale_)),
            },
            coords={"star": ids, "label_name": list(m.label_names)},
        )
        attrs = {
            "inference_library": self.sampler,
            "model_training_hash": m.training_hash_,
            "batch_size": self.batch_size,
            "prior": self.prior_kind if not isinstance(self.prior, dict) else "uniform (given bounds)",
            "propagate_theta": int(self.propagate_theta),
            "sampling_time_s": elapsed,
            "compile_time_s": self.compile_time,
            "draws": int(draws),
            "tune": int(tune),
            "chains": int(chains),
        }
        tree = xr.DataTree.from_dict({"posterior": posterior, "sample_stats": sample_stats, "constant_data": constant})
        tree.attrs = attrs
        tree["diagnostics"] = xr.DataTree(summarize(tree, model=m))
        bad = ~tree["diagnostics"]["converged"].values
        if bad.any():
            logger.warning(
                "sampling did not converge for %d of %d stars (R-hat > 1.01, divergences or low ESS), e.g. %s; "
                "see the 'diagnostics' group",
                int(bad.sum()),
                n,
                ", ".join(ids[bad][:3]),
            )
        return tree

    def _sample_batch(self, batch, draws, tune, chains, cores, seed):
        """Labels (chain, draw, star, label_name) and per-draw statistics of one batch."""
        shape = (self.batch_size, len(self.model.label_names))
        if self.sampler == "nutpie":
            import nutpie  # lazy: imports arviz

            cm = dataclasses.replace(self._compiled, user_data=self._pack(batch))
            raw = nutpie.sample(
                cm,
                draws=draws,
                tune=tune,
                chains=chains,
                cores=cores or min(chains, 2),
                seed=seed,
                progress_bar=False,
                save_warmup=False,
                return_raw_trace=True,
            )
            return raw_trace_arrays(raw, shape)
        import pymc as pm  # lazy: the fallback sampler only

        with self.pymc_model:
            pm.set_data(batch)
            trace = pm.sample(
                draws=draws,
                tune=tune,
                chains=chains,
                cores=1,
                random_seed=seed,
                progressbar=False,
                nuts_sampler="pymc",
                var_names=["labels"],
                compute_convergence_checks=False,
            )
        return np.asarray(trace["posterior"]["labels"].values), collect_sample_stats(trace["sample_stats"].to_dataset())


def _kernel_args(d):
    """Arguments of :func:`labelkernel.logp_grad` after ``z``, from the named data."""
    return (d["A"], d["b"], d["c"], d["n_pix"], d["kappa"], d["g0inv"], d["u_map"], d["chol"], d["lower"], d["upper"])


def _cache(model) -> dict:
    cache = model.__dict__.get("_label_posterior_cache")
    if cache is None or cache.get("_hash") != model.training_hash_:
        cache = {"_hash": model.training_hash_}
        model.__dict__["_label_posterior_cache"] = cache
    return cache


def sample_labels(
    model,
    flux,
    ivar=None,
    *,
    ids=None,
    select=None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    batch_size: int = 1,
    prior="uniform",
    prior_margin: float = 0.25,
    propagate_theta: bool = True,
    sampler: str = "nutpie",
    seed: int | None = 0,
    progressbar: bool = False,
) -> xr.DataTree:
    """Label posteriors of selected stars by NUTS, θ and s² fixed at MAP.

    The compiled model is cached on ``model`` (per batch size, prior and settings), so
    repeated calls and every star after the first pay no compilation.

    Parameters
    ----------
    model : CannonModel
    flux : ndarray (N, P) or xarray.Dataset
        Spectra, or a spectra container.
    ivar : ndarray (N, P), optional
    ids : array_like (N,), optional
        Identifiers of the rows of ``flux``.
    select : sequence of str or int, optional
        Only these stars (ids or row indices).
    draws, tune, chains, batch_size, prior, prior_margin, propagate_theta, sampler
        See :class:`LabelPosterior` and :meth:`LabelPosterior.sample`.
    seed : int, optional
    progressbar : bool

    Returns
    -------
    xarray.DataTree
        With the calibrated posterior summaries in ``diagnostics`` when the model is
        calibrated (see :func:`bayescannon.bayes.diagnostics.summarize`).
    """

    model._check_fitted()
    flux, ivar, ids, wavelength, _ = unpack_spectra(flux, ivar, ids, None)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    if flux.shape != ivar.shape:
        raise ShapeMismatchError(f"flux has shape {flux.shape} but ivar has shape {ivar.shape}")
    model._check_grid(wavelength, flux.shape[1])
    ids = default_ids(flux.shape[0]) if ids is None else np.asarray(ids).astype(str)
    if select is not None:
        sel = np.atleast_1d(np.asarray(select))
        if sel.dtype.kind in "iu":
            rows = sel
            if rows.size and (rows.min() < 0 or rows.max() >= flux.shape[0]):
                raise InvalidInputError(f"selected rows {rows} are outside 0..{flux.shape[0] - 1}")
        else:
            rows, hit = join_ids(sel, ids, what="the spectra", require="none")
            if not hit.all():
                missing = sel.astype(str)[~hit]
                raise InvalidInputError(f"selected ids not found among the spectra: {missing[:5].tolist()}")
        flux, ivar, ids = flux[rows], ivar[rows], ids[rows]
    if flux.shape[0] == 0:
        raise InvalidInputError("no star to sample")
    key = (int(batch_size), repr(prior), float(prior_margin), bool(propagate_theta), sampler)
    cache = _cache(model)
    if key not in cache:
        cache[key] = LabelPosterior(
            model,
            batch_size=batch_size,
            prior=prior,
            prior_margin=prior_margin,
            propagate_theta=propagate_theta,
            sampler=sampler,
        )
    return cache[key].sample(
        flux, ivar, ids=ids, draws=draws, tune=tune, chains=chains, seed=seed, progressbar=progressbar
    )
