"""The per-pixel Cannon model as a PyMC model: θ_λ and ln s²_λ as random variables.

For a chosen subset of pixels (and optionally of training stars) with labels ℓ_n held
fixed, each pixel's flux is ``f_nλ = θ_λ·v(ℓ_n) + N(0, σ²_nλ + s²_λ)``; the likelihood is
:func:`bayescannon.core.likelihood.log_likelihood` evaluated with ``xp=pytensor.tensor``,
the same expression the fast engine (:mod:`bayescannon.core.train`) maximises.

Parameterisation: ``θ_λ = θ̂_λ + L_λ z_λ`` with ``θ̂`` the fast engine's MAP and ``L_λ`` the
Cholesky factor of its Laplace covariance ``G_λ⁻¹`` (``G_λ = Σ_n w_nλ v_n v_nᵀ`` at the
engine's s²). A flat prior on θ is a flat prior on z (a linear map), so the MAP is
unchanged, while the posterior of z is close to N(0, I): NUTS needs no long adaptation
and L-BFGS sees a well-conditioned problem. The scatter is ``ln s²_λ``: flat for
:meth:`PixelModel.find_map` (maximum likelihood, what the engine computes) and
``N(ln σ̄²_λ, s2_prior_sd²)`` when sampling (a flat prior on ln s² is improper towards
s² → 0, where the likelihood is constant). Pixels are independent blocks; the whole
subset is one model (no loop over pixels).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import xarray as xr

from bayescannon.bayes.sampling import collect_sample_stats
from bayescannon.core.likelihood import adjusted_ivar, log_likelihood
from bayescannon.core.train import normal_equations
from bayescannon.errors import InvalidInputError, ShapeMismatchError
from bayescannon.flags import PixelFlag

logger = logging.getLogger(__name__)

__all__ = ["PixelModel", "laplace_theta_covariance", "term_mask"]


def term_mask(model) -> np.ndarray:
    """(P, T) bool: True where a term of the polynomial may act at a pixel (censoring)."""
    censor = getattr(model, "censor_mask_", None)
    p, t = model.theta_.shape
    if censor is None:
        return np.ones((p, t), dtype=bool)
    involved = model.vectorizer.exponents > 0  # (T, K)
    blocked = (~np.asarray(censor, dtype=bool))[:, None, :] & involved[None, :, :]
    return ~blocked.any(axis=-1)


def laplace_theta_covariance(flux, ivar, design, s2, allowed=None) -> np.ndarray:
    """Laplace covariance ``G_λ⁻¹`` of θ per pixel at fixed s² (censored terms: 0).

    Parameters
    ----------
    flux, ivar : ndarray, shape (N, P)
    design : ndarray, shape (N, T)
    s2 : ndarray, shape (P,)
    allowed : ndarray of bool, shape (P, T), optional

    Returns
    -------
    ndarray, shape (P, T, T)
    """
    w = adjusted_ivar(ivar, s2[None, :])
    G, _ = normal_equations(np.where(ivar > 0, flux, 0.0), w, design)
    if allowed is not None:
        off = ~allowed
        both = off[:, :, None] | off[:, None, :]
        G = np.where(both, 0.0, G)
        p_idx, t_idx = np.nonzero(off)
        G[p_idx, t_idx, t_idx] = 1.0
    cov = np.linalg.inv(G)
    if allowed is not None:
        cov = np.where(both, 0.0, cov)
    return cov


class PixelModel:
    """PyMC model of θ and ln s² of selected pixels, labels fixed, built from a fitted model.

    Parameters
    ----------
    model : CannonModel
        A model fitted by the fast engine (its θ, s² are the start point and the
        reference; its label scaling and vectorizer define v(ℓ)).
    flux, ivar : ndarray, shape (N, P)
        The training spectra (the model does not keep them).
    labels : ndarray, shape (N, K), optional
        Physical labels of the training stars. Default: the labels the model was trained
        on (its latent labels when fitted with label errors).
    pixels, stars : array_like of int, optional
        Subset of pixel columns and star rows (default all; NUTS is comfortable with a few
        hundred pixels × (T + 1) parameters).
    s2_prior_sd : float
        Width (in e-folds of variance) of the normal prior on ln s² used when sampling,
        centred on the pixel's median noise variance.

    Attributes
    ----------
    pymc_model : pymc.Model
        With flat priors (its MAP is the maximum-likelihood point).
    theta_map, s2_map : ndarray
        The fast engine's θ (n_pixels, T) and s² (n_pixels,) of the subset.
    theta_laplace_cov : ndarray, shape (n_pixels, T, T)
    """

    def __init__(self, model, flux, ivar, labels=None, *, pixels=None, stars=None, s2_prior_sd: float = 5.0):
        model._check_fitted()
        if float(getattr(model, "regularization", 0.0) or 0.0) > 0:
            raise InvalidInputError(
                f"the model was trained with an L1 penalty (regularization={model.regularization}): its MAP is not "
                "the maximum of the pixel likelihood, so the pixel model would not reproduce it; refit without it"
            )
        flux = np.asarray(flux, dtype=np.float64)
        ivar = np.asarray(ivar, dtype=np.float64)
        if flux.shape != ivar.shape or flux.ndim != 2:
            raise ShapeMismatchError(f"flux has shape {flux.shape} but ivar has shape {ivar.shape} (need (N, P))")
        n, p = flux.shape
        if p != model.theta_.shape[0]:
            raise ShapeMismatchError(f"spectra have {p} pixels but the model has {model.theta_.shape[0]}")
        if labels is None:
            x = model.latent_labels_ if getattr(model, "latent_labels_", None) is not None else None
            x = model.training_labels_scaled_ if x is None else x
            x = np.asarray(x, dtype=np.float64)
        else:
            x = (np.asarray(labels, dtype=np.float64) - model.label_offset_) / model.label_scale_
        if x.shape != (n, len(model.label_names)):
            raise ShapeMismatchError(f"labels have shape {x.shape}; expected ({n}, {len(model.label_names)})")
        rows = np.arange(n) if stars is None else np.asarray(stars, dtype=np.int64)
        cols = np.arange(p) if pixels is None else np.asarray(pixels, dtype=np.int64)
        if cols.size == 0 or rows.size == 0:
            raise InvalidInputError("the pixel model needs at least one pixel and one star")
        if cols.min() < 0 or cols.max() >= p or rows.min() < 0 or rows.max() >= n:
            raise InvalidInputError(f"pixels must lie in 0..{p - 1} and stars in 0..{n - 1}")
        flagged = (np.asarray(model.pixel_flags_)[cols] & (PixelFlag.FEW_STARS | PixelFlag.SINGULAR)).astype(bool)
        if flagged.any():
            raise InvalidInputError(
                f"pixels {cols[flagged][:5].tolist()} have no fitted model (too few stars or a singular design)"
            )
        iv = ivar[np.ix_(rows, cols)]
        good = np.isfinite(iv) & (iv > 0) & np.isfinite(flux[np.ix_(rows, cols)])
        self.ivar = np.where(good, iv, 0.0)
        self.flux = np.where(good, flux[np.ix_(rows, cols)], 0.0)
        self.design = model.vectorizer(x[rows])
        self.model = model
        self.pixels, self.stars = cols, rows
        self.allowed = term_mask(model)[cols]
        self.theta_map = np.asarray(model.theta_, dtype=np.float64)[cols] * self.allowed
        self.s2_map = np.asarray(model.s2_, dtype=np.float64)[cols]
        self.theta_laplace_cov = laplace_theta_covariance(self.flux, self.ivar, self.design, self.s2_map, self.allowed)
        noise = np.array([np.median(1.0 / c[c > 0]) if (c > 0).any() else 1.0 for c in self.ivar.T])
        self.noise_var = noise  # loop over the columns of a small subset only (not a hot path)
        self.s2_prior_sd = float(s2_prior_sd)
        jitter = 1e-12 * np.einsum("ptt->p", self.theta_laplace_cov)[:, None, None] * np.eye(self.design.shape[1])
        censored = np.where(self.allowed, 0.0, 1.0)[:, :, None] * np.eye(self.design.shape[1])
        # censored terms form their own (decoupled) block: a unit diagonal keeps the factor defined, and
        # zeroing their rows keeps those θ at exactly 0
        self._chol = np.linalg.cholesky(self.theta_laplace_cov + jitter + censored) * self.allowed[:, :, None]
        self.pymc_model = self._build(prior="flat")
        self._sampling_model = None
        self._compiled = None
        self.compile_time = 0.0

    # ------------------------------------------------------------------ model
    def _log_s2_floor(self):
        """ln s² standing in for s² = 0 (the boundary): 1e-8 of the noise variance."""
        return np.log(1e-8 * self.noise_var)

    def _build(self, prior: str):
        import pymc as pm  # lazy: PyMC only when a pixel model is built
        import pytensor.tensor as pt

        p, t = self.theta_map.shape
        coords = {"pixel": self.pixels, "term": self.model.term_names, "term2": self.model.term_names}
        with pm.Model(coords=coords) as pmm:
            z = pm.Flat("z", dims=("pixel", "term"))
            if prior == "flat":
                log_s2 = pm.Flat("log_s2", dims="pixel")
            else:
                log_s2 = pm.Normal("log_s2", mu=np.log(self.noise_var), sigma=self.s2_prior_sd, dims="pixel")
            off = 1.0 - self.allowed
            if off.any():  # censored terms: z has no effect there; keep it proper
                pm.Potential("censored_terms", -0.5 * (z**2 * off).sum())
            theta = pt.as_tensor(self.theta_map) + (pt.as_tensor(self._chol) * z[:, None, :]).sum(axis=-1)
            s2 = pt.exp(log_s2)
            model_flux = pt.dot(pt.as_tensor(self.design), theta.T)  # (N, P)
            ll = log_likelihood(self.flux, self.ivar, model_flux, s2[None, :], xp=pt, axis=0, constant=False)
            pm.Potential("likelihood", ll.sum())
            pm.Deterministic("theta", theta, dims=("pixel", "term"))
            pm.Deterministic("s2", s2, dims="pixel")
            pm.Deterministic("log_likelihood_pixel", ll, dims="pixel")
        return pmm

    def _start(self, theta=None, s2=None):
        """Initial values of (z, log_s2) for given θ and s² (default: the engine's MAP)."""
        theta = self.theta_map if theta is None else np.asarray(theta, dtype=np.float64)
        s2 = self.s2_map if s2 is None else np.asarray(s2, dtype=np.float64)
        d = (theta - self.theta_map) * self.allowed
        chol = self._chol + np.where(self.allowed, 0.0, 1.0)[:, :, None] * np.eye(theta.shape[1])
        z = np.linalg.solve(chol, d[..., None])[..., 0] * self.allowed
        log_s2 = np.maximum(np.log(np.maximum(s2, 0.0) + 1e-300), self._log_s2_floor())
        return {"z": z, "log_s2": log_s2}

    def log_likelihood(self, theta, s2) -> np.ndarray:
        """Per-pixel ln L (without the ln 2π constant) at given θ (n_pixels, T), s² (n_pixels,)."""
        mf = self.design @ (np.asarray(theta) * self.allowed).T
        return log_likelihood(self.flux, self.ivar, mf, np.asarray(s2)[None, :], axis=0, constant=False)

    # ------------------------------------------------------------------ MAP
    def find_map(self, *, theta_start=None, s2_start=None, maxiter: int = 5000) -> xr.Dataset:
        """MAP (= maximum likelihood: flat priors) through PyMC's optimiser (``pm.find_MAP``).

        Parameters
        ----------
        theta_start, s2_start : ndarray, optional
            Start point (default: the fast engine's MAP).
        maxiter : int
            L-BFGS-B iterations.

        Returns
        -------
        xarray.Dataset
            ``theta`` (pixel, term), ``s2`` (pixel), ``log_likelihood`` (pixel, without
            the ln 2π constant, the engine's convention), ``theta_engine``, ``s2_engine``,
            ``log_likelihood_engine``.
        """
        import pymc as pm  # lazy: PyMC only when a pixel model is used

        start = self._start(theta_start, s2_start)
        t0 = time.perf_counter()
        with self.pymc_model:
            fit = pm.find_MAP(
                initvals=start,
                jitter=False,
                progressbar=False,
                return_inferencedata=True,
                options={"maxiter": int(maxiter), "ftol": 1e-15, "gtol": 1e-9, "maxcor": 30},
            )
        logger.info("pm.find_MAP over %d pixels took %.1f s", len(self.pixels), time.perf_counter() - t0)
        post = fit["posterior"].to_dataset().isel(chain=0, draw=0, drop=True)
        theta = np.asarray(post["theta"].values)
        s2 = np.asarray(post["s2"].values)
        dims = ("pixel", "term")
        return xr.Dataset(
            {
                "theta": (dims, theta),
                "s2": ("pixel", s2),
                "log_likelihood": ("pixel", self.log_likelihood(theta, s2)),
                "theta_engine": (dims, self.theta_map),
                "s2_engine": ("pixel", self.s2_map),
                "log_likelihood_engine": ("pixel", self.log_likelihood(self.theta_map, self.s2_map)),
            },
            coords={"pixel": self.pixels, "term": self.model.term_names},
        )

    # ------------------------------------------------------------------ NUTS
    def compile(self):
        """Compile the sampling model with nutpie once (logs the time)."""
        if self._compiled is None:
            import nutpie  # lazy: the sampler only when sampling

            self._sampling_model = self._build(prior="normal")
            logger.info("compiling the pixel model (%d pixels) for NUTS", len(self.pixels))
            t0 = time.perf_counter()
            self._compiled = nutpie.compile_pymc_model(
                self._sampling_model,
                var_names=["theta", "s2"],
                initial_points=self._start(),
                jitter_rvs=set(),
            )
            self.compile_time = time.perf_counter() - t0
            logger.info("compiled the pixel model in %.1f s", self.compile_time)
        return self

    def sample(self, *, draws: int = 1000, tune: int = 1000, chains: int = 4, seed: int = 0) -> xr.DataTree:
        """NUTS (nutpie) over θ and ln s² of the subset, started at the engine's MAP.

        Returns
        -------
        xarray.DataTree
            ``posterior``: ``theta`` (chain, draw, pixel, term), ``s2`` (chain, draw, pixel);
            ``sample_stats``: every per-draw sampler statistic (energy, step_size, depth,
            n_steps, diverging, …); ``constant_data``: ``theta_map``, ``s2_map``,
            ``theta_laplace_sd`` (the engine's Laplace standard deviations).
        """
        import nutpie  # lazy: the sampler only when sampling

        self.compile()
        t0 = time.perf_counter()
        trace = nutpie.sample(
            self._compiled,
            draws=draws,
            tune=tune,
            chains=chains,
            cores=min(chains, 2),
            seed=seed,
            progress_bar=False,
            save_warmup=False,
        )
        post = trace["posterior"].to_dataset()[["theta", "s2"]]
        post = post.assign_coords(pixel=self.pixels)
        stats = collect_sample_stats(trace["sample_stats"].to_dataset())
        dims = ("pixel", "term")
        const = xr.Dataset(
            {
                "theta_map": (dims, self.theta_map),
                "s2_map": ("pixel", self.s2_map),
                "theta_laplace_sd": (dims, np.sqrt(np.einsum("ptt->pt", self.theta_laplace_cov))),
            },
            coords={"pixel": self.pixels, "term": self.model.term_names},
        )
        tree = xr.DataTree.from_dict({"posterior": post, "sample_stats": stats, "constant_data": const})
        tree.attrs = {
            "model": "per-pixel theta and ln s2, labels fixed (bayescannon.bayes.pixelmodel)",
            "sampling_time_s": time.perf_counter() - t0,
            "compile_time_s": self.compile_time,
        }
        return tree
