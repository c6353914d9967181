"""CannonModel: the estimator users touch (fit / infer / predict / save / load).

It validates at the boundary, calls the array functions of :mod:`bayescannon.core.train`
and :mod:`bayescannon.core.labelfit`, and stores fitted attributes with a trailing underscore.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import numpy as np
import xarray as xr

from bayescannon._estimator import ParamsMixin
from bayescannon._typing import ArrayLike, LabelsLike, PathLikeStr, RandomState, SpectraLike
from bayescannon.censoring import resolve_censors
from bayescannon.core import scaling
from bayescannon.core._kernels import fingerprint, prepare_training, test_weights
from bayescannon.core.labelfit import chi2_at, fit_labels, test_statistics
from bayescannon.core.latent import fit_latent_labels
from bayescannon.core.polyfit import MonomialMap, chi2_poly, fit_labels_poly, poly_coefficients, use_polynomial_form
from bayescannon.core.train import check_identifiable, fit_pixels
from bayescannon.core.uncertainty import (
    apply_calibration,
    check_calibrated,
    inverse_train_weight,
    theta_uncertainty_state,
)
from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import (
    GridMismatchError,
    InsufficientDataError,
    InvalidInputError,
    LabelError,
    NotFittedError,
    ShapeMismatchError,
)
from bayescannon.flags import PixelFlag, StarFlag, flag_doc
from bayescannon.modelfile import load_model, model_to_dataset, save_model
from bayescannon.results import result_dataset, set_label_units
from bayescannon.spectra import (
    BAD_PIXEL_KINDS,
    as_flux_ivar_arrays,
    as_label_array,
    check_flux_ivar_values,
    default_ids,
    describe_pixel,
    raise_bad_pixel,
    unpack_spectra,
)

logger = logging.getLogger(__name__)

__all__ = ["CannonModel"]

# keys under which core.uncertainty.theta_uncertainty_state and core.latent return their state
# (also the variable names of format-version-1 model files); the model keeps named attributes
_LEVERAGE = "extra_theta_leverage"
_TRAIN_WEIGHT = "extra_train_weight"
_LATENT = {
    "latent_labels_": "extra_latent_labels_scaled",
    "latent_iterations_": "extra_latent_iterations",
    "latent_converged_": "extra_latent_converged",
    "latent_calibrated_": "extra_latent_calibrated",
    "latent_trend_order_": "extra_latent_trend_order",
}


def _validated_pixel_major(flux, ivar, ids, wavelength):
    """Validate training flux/ivar; return clean pixel-major (P, N) copies."""

    flux, ivar = as_flux_ivar_arrays(flux, ivar)  # typed errors for complex/text data, shapes
    flux_t, ivar_t, bad = prepare_training(np.ascontiguousarray(flux), np.ascontiguousarray(ivar))
    for k in range(len(BAD_PIXEL_KINDS)):
        if bad[k, 0] >= 0:
            raise_bad_pixel(k, bad[k, 0], bad[k, 1], ids=ids, wavelength=wavelength)
    check_flux_ivar_values(flux, ivar, ids=ids, wavelength=wavelength)  # absurd flux or ivar
    return flux_t, ivar_t


def _check_count(value, name: str) -> int:
    """``value`` as an int >= 1; InvalidInputError otherwise (bools and fractions too)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be an integer >= 1; got {value!r}")
    return int(value)


class CannonModel(ParamsMixin):
    """The Cannon: a per-pixel polynomial model of normalised flux in the labels.

    Parameters
    ----------
    label_names : sequence of str
        Names of the labels (e.g. ``["TEFF", "LOGG", "FE_H"]``).
    order : int, default 2
        Polynomial order of the vectorizer.
    regularization : float, default 0
        L1 strength Λ on the non-constant terms (Casey+2016 convention).
    censors : dict or str, optional
        ``{label_name: mask}`` where mask is a boolean array over pixels (True = the label
        may act there), a list of ``(lo, hi)`` wavelength windows (Angstrom), or a preset
        name / window-table path (the union of its windows). Terms involving a label are
        zero outside its mask (Nandakumar+2022). A preset name (``"nandakumar2022-apogee"``:
        the APOGEE DR12 Ca/Mg/Si/Ti windows, the union for an ``*ALPHA*`` label) or a
        window-table path on its own maps windows to labels by name
        (:func:`bayescannon.censoring.resolve_censors`).
    n_starts : int, default 4
        Starting points per star in the test step: the best ``n_starts`` of
        ``n_candidates`` training-label vectors by χ².
    n_candidates : int, default 64
        Size of the pool of training-label vectors stored for starting points.
    bounds_margin : float, default 0.5
        Search bounds of the test step: the training label range widened by this fraction
        of its width on each side.
    extrapolation_tolerance : float, default 0.1
        Stars whose labels lie farther than this fraction of the training range outside
        it are flagged ``EXTRAPOLATED``.
    max_reduced_chi2 : float, default 5.0
        Stars above this reduced χ² are flagged ``LARGE_CHI2``.
    random_state : int, numpy.random.Generator or None, default 0
        Seed for the choice of start candidates. The fixed default makes fits and label
        inferences reproducible (same inputs, bit-identical outputs); ``None`` draws fresh
        candidates on each fit.

    Attributes
    ----------
    theta_ : ndarray, shape (P, T)
    s2_ : ndarray, shape (P,)
    label_offset_, label_scale_ : ndarray, shape (K,)
    pixel_flags_ : ndarray, shape (P,)
    wavelength_ : ndarray, shape (P,) or None
    training_hash_ : str
    training_labels_scaled_ : ndarray, shape (N, K)
        Training labels in scaled units (saved in model files: flags that need the
        training set work on a loaded model).
    theta_leverage_ : ndarray, shape (T, T)
        ``G₀⁻¹``, the θ-uncertainty summary used to propagate θ errors (leverage).
    train_weight_ : ndarray, shape (P,)
        ``w̄``, the mean adjusted training weight per pixel.
    latent_labels_ : ndarray, shape (N, K) or None
        Latent (errors-in-variables) training labels in scaled units; None unless the
        model was fitted with ``label_errors``.
    latent_iterations_, latent_converged_, latent_calibrated_, latent_trend_order_
        Latent-label fit state (None without ``label_errors``).

    Notes
    -----
    The scikit-learn estimator contract holds: constructor arguments are stored unchanged
    as attributes of the same name, :meth:`get_params` / :meth:`set_params` read and
    write them, and :meth:`clone` (or ``sklearn.base.clone``) gives an unfitted copy.
    """

    def __init__(
        self,
        label_names: Sequence[str],
        order: int = 2,
        *,
        regularization: float = 0.0,
        censors: Mapping[str, Any] | None = None,
        n_starts: int = 4,
        n_candidates: int = 64,
        bounds_margin: float = 0.5,
        extrapolation_tolerance: float = 0.1,
        max_reduced_chi2: float = 5.0,
        random_state: RandomState = 0,
    ) -> None:
        # stored as given when it is a list (scikit-learn's clone checks identity)
        self.label_names = label_names if isinstance(label_names, list) else list(label_names)
        self.order = order
        self.regularization = regularization
        self.censors = censors
        self.n_starts = n_starts
        self.n_candidates = n_candidates
        self.bounds_margin = bounds_margin
        self.extrapolation_tolerance = extrapolation_tolerance
        self.max_reduced_chi2 = max_reduced_chi2
        self.random_state = random_state

    # ------------------------------------------------------------------ estimator contract
    # get_params / set_params / clone: bayescannon._estimator.ParamsMixin
    def _coerce_param(self, name: str, value):
        return list(value) if name == "label_names" and not isinstance(value, list) else value

    def _params_changed(self) -> None:
        self.__dict__.pop("_test_cache", None)  # the test step's Φ of θ

    # ------------------------------------------------------------------ helpers
    @property
    def vectorizer(self) -> PolynomialVectorizer:
        """The polynomial vectorizer of this model."""
        return PolynomialVectorizer(self.label_names, self.order)

    @property
    def is_fitted(self) -> bool:
        return hasattr(self, "theta_")

    def _check_fitted(self):
        if not self.is_fitted:
            raise NotFittedError("this CannonModel is not fitted yet: call fit() or load()")

    def __repr__(self) -> str:
        state = (
            f"fitted on {self.n_training_stars_} stars x {self.theta_.shape[0]} pixels"
            if self.is_fitted
            else "not fitted"
        )
        return f"CannonModel(label_names={self.label_names!r}, order={self.order}) [{state}]"

    @property
    def term_names(self) -> list[str]:
        return self.vectorizer.term_names

    def _censor_mask(self, n_pixels, wavelength):
        """Boolean (P, K): may label k act at pixel p."""
        mask = np.ones((n_pixels, len(self.label_names)), dtype=bool)
        if self.censors is None or (not isinstance(self.censors, str) and not self.censors):
            return mask
        for name, spec in resolve_censors(self.censors, self.label_names).items():
            if name not in self.label_names:
                raise LabelError(f"censor given for unknown label {name!r}; labels are {self.label_names}")
            k = self.label_names.index(name)
            spec_arr = np.asarray(spec)
            if spec_arr.dtype == bool:
                if spec_arr.shape != (n_pixels,):
                    raise ShapeMismatchError(
                        f"censor mask for {name} has shape {spec_arr.shape}; expected ({n_pixels},)"
                    )
                mask[:, k] = spec_arr
            else:
                if wavelength is None:
                    raise InvalidInputError(
                        f"censor for {name} is given as wavelength windows but no wavelength grid was given"
                    )
                windows = np.atleast_2d(np.asarray(spec, dtype=float))
                if windows.shape[1] != 2:
                    raise InvalidInputError(f"censor windows for {name} must be (lo, hi) pairs")
                wl = np.asarray(wavelength)
                inside = np.zeros(n_pixels, dtype=bool)
                for lo, hi in windows:
                    inside |= (wl >= lo) & (wl <= hi)
                mask[:, k] = inside
            if not mask[:, k].any():
                raise LabelError(f"censor for {name} leaves no pixel where the label may act")
        return mask

    def _term_mask(self, censor_mask):
        """Boolean (P, T): a term is allowed where all of its labels are allowed."""
        exps = self.vectorizer.exponents  # (T, K)
        involved = exps > 0
        # term allowed iff for all k with involved[t,k]: censor_mask[p,k]
        blocked = (~censor_mask)[:, None, :] & involved[None, :, :]
        return ~blocked.any(axis=-1)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        flux: SpectraLike,
        ivar: ArrayLike | None = None,
        labels: LabelsLike | None = None,
        *,
        wavelength: ArrayLike | None = None,
        ids: ArrayLike | None = None,
        label_errors: ArrayLike | None = None,
        max_iter: int = 30,
        tol: float = 0.01,
        lm_iter: int = 10,
        anderson: int = 5,
        spectral_information: str = "calibrated",
        trend_order: int | None = None,
        progressbar: bool = False,
    ) -> Self:
        """Fit θ and s² for every pixel from training spectra with known labels.

        Parameters
        ----------
        flux : ndarray (N, P) or xarray.Dataset
            Normalised training fluxes, or a spectra container (then ``ivar`` is taken
            from it and labels default to its columns named like the labels).
        ivar : ndarray (N, P), optional
            Inverse variances (0 = no information).
        labels : ndarray (N, K), mapping or table, optional
            Training labels in physical units.
        wavelength : ndarray (P,), optional
            Wavelength grid (stored; checked at inference).
        ids : array_like (N,), optional
            Star identifiers for messages.
        label_errors : ndarray (N, K), optional
            1σ uncertainties of the training labels: the labels are then treated as
            latent (errors-in-variables MAP, :func:`bayescannon.core.latent.fit_latent_labels`).
        max_iter, tol, lm_iter, anderson, spectral_information, trend_order
            Options of the latent-label fit, used only with ``label_errors`` (see
            :func:`bayescannon.core.latent.fit_latent_labels`; defaults are its own).
        progressbar : bool
            Show progress.

        Returns
        -------
        self
        """
        flux, ivar, ids, wavelength, ds = unpack_spectra(flux, ivar, ids, wavelength)
        if labels is None:
            if ds is None:
                raise InvalidInputError("labels are required")
            labels = ds
        PolynomialVectorizer(self.label_names, self.order)  # validates names and order
        flux_t, ivar_t = _validated_pixel_major(flux, ivar, ids, wavelength)
        p, n = flux_t.shape
        y = as_label_array(labels, self.label_names, n, ids=ids)
        _check_count(self.n_starts, "n_starts")
        _check_count(self.n_candidates, "n_candidates")
        if wavelength is not None:
            wavelength = np.asarray(wavelength, dtype=np.float64)
            if wavelength.shape != (p,):
                raise ShapeMismatchError(f"wavelength has shape {wavelength.shape} but spectra have {p} pixels")
            if p > 1 and not np.all(np.diff(wavelength) > 0):
                raise InvalidInputError("wavelength grid must be strictly increasing")
        vec = self.vectorizer
        if n < vec.n_terms + 1:
            raise InsufficientDataError(
                f"{n} training stars are too few for a model with {vec.n_terms} terms "
                f"({', '.join(vec.term_names)}); need at least {vec.n_terms + 1}"
            )
        if self.regularization < 0 or not np.isfinite(self.regularization):
            raise InvalidInputError(f"regularization must be finite and >= 0; got {self.regularization}")
        no_pix = ~(ivar_t > 0).any(axis=0)
        if no_pix.any():
            i = int(np.flatnonzero(no_pix)[0])
            who = f"star {i}" + ("" if ids is None else f" (id {ids[i]})")
            raise InsufficientDataError(
                f"training {who} has no pixel with ivar > 0 ({int(no_pix.sum())} such stars); "
                "remove them from the training set"
            )
        offset, scale_ = scaling.fit_scaling(y, self.label_names)
        x = scaling.scale(y, offset, scale_)
        censor_mask = self._censor_mask(p, wavelength)
        term_mask = self._term_mask(censor_mask)
        design = vec(x)
        check_identifiable(design, vec.exponents, self.label_names)  # collinear labels: LabelError
        if label_errors is not None:
            result = fit_latent_labels(
                self,
                flux_t.T,
                ivar_t.T,
                x,
                label_errors,
                term_mask=term_mask,
                label_scale=scale_,
                max_iter=max_iter,
                tol=tol,
                lm_iter=lm_iter,
                anderson=anderson,
                spectral_information=spectral_information,
                trend_order=trend_order,
                progressbar=progressbar,
            )
        else:
            result = fit_pixels(
                flux_t,
                ivar_t,
                design,
                term_mask=None if censor_mask.all() else term_mask,
                regularization=float(self.regularization),
                pixel_major=True,
                progressbar=progressbar,
            )
        self.__dict__.pop("_test_cache", None)  # the test step's Φ of θ
        self.theta_ = result.theta
        self.s2_ = result.s2
        self.pixel_flags_ = result.pixel_flags
        self.log_likelihood_ = result.log_likelihood
        self.n_stars_used_ = result.n_stars_used
        self.label_offset_ = offset
        self.label_scale_ = scale_
        self.label_min_ = y.min(axis=0)
        self.label_max_ = y.max(axis=0)
        self.censor_mask_ = censor_mask
        self.wavelength_ = wavelength
        self.n_training_stars_ = n
        rng = np.random.default_rng(self.random_state)
        m = min(self.n_candidates, n)
        pick = rng.choice(n, size=m, replace=False)
        self.start_candidates_ = np.vstack([np.zeros((1, len(self.label_names))), x[pick]])
        self.training_hash_ = self._hash(flux_t, ivar_t, y, censor_mask)
        self.training_labels_scaled_ = x
        # Bayesian layer (issue 3): θ-uncertainty summary for propagation; a refit voids
        # any earlier calibration of the uncertainties

        pixel_ok = ~(self.pixel_flags_ & (PixelFlag.FEW_STARS | PixelFlag.SINGULAR)).astype(bool)
        theta_state = theta_uncertainty_state(
            ivar_t, self.s2_, getattr(result, "design", design), pixel_ok, pixel_major=True
        )
        self.theta_leverage_ = np.asarray(theta_state[_LEVERAGE][1], dtype=np.float64)
        self.train_weight_ = np.asarray(theta_state[_TRAIN_WEIGHT][1], dtype=np.float64)
        latent = getattr(result, "extra_state", {})
        self.latent_labels_ = None if not latent else np.asarray(latent[_LATENT["latent_labels_"]][1])
        for attr, key in _LATENT.items():
            if attr != "latent_labels_":
                self._set_latent(attr, latent[key][1] if latent else None)
        self.calibration_ = None
        logger.info(
            "trained %s on %d stars x %d pixels (%d pixels flagged)",
            self.label_names,
            n,
            p,
            int((self.pixel_flags_ != 0).sum()),
        )
        return self

    def _hash(self, flux_t, ivar_t, labels, censor_mask) -> str:
        """Fingerprint of the training set: BLAKE2b-256 of the labels, censors, settings and
        of fixed pseudo-random projections of every row and column of flux and ivar (any
        change of a training value changes them), computed in one parallel pass instead of
        hashing hundreds of MB of bytes."""

        coeffs = np.random.default_rng(20240917).uniform(0.5, 1.5, size=4099)
        h = hashlib.blake2b(digest_size=32)
        for arr in (flux_t, ivar_t):
            rows, cols = fingerprint(arr, coeffs)
            h.update(str(arr.shape).encode())
            h.update(rows.tobytes())
            h.update(cols.tobytes())
        h.update(np.ascontiguousarray(labels, dtype=np.float64).tobytes())
        h.update(repr((self.label_names, self.order, float(self.regularization))).encode())
        h.update(np.ascontiguousarray(censor_mask).tobytes())
        return h.hexdigest()

    def _set_latent(self, attr, value):
        if value is not None:
            value = bool(value) if attr in ("latent_converged_", "latent_calibrated_") else int(value)
        setattr(self, attr, value)

    # ------------------------------------------------------------------ files
    def save(self, path: PathLikeStr, *, overwrite: bool = False) -> Path:
        """Write the fitted model to netCDF (``.nc``) or zarr (``.zarr``), with a checksum of
        every array; an existing file is replaced only with ``overwrite=True`` (else
        ``ModelFileError``). See :func:`bayescannon.modelfile.save_model`. Returns the path."""
        self._check_fitted()

        return save_model(self, path, overwrite=overwrite)

    @classmethod
    def load(cls, path: PathLikeStr) -> Self:
        """Read a model written by :meth:`save`.

        Raises
        ------
        ModelFileError
            Missing, corrupted or foreign file.
        """

        return load_model(path, cls=cls)

    def to_dataset(self) -> xr.Dataset:
        """The fitted model as an xarray Dataset (what :meth:`save` writes)."""
        self._check_fitted()

        return model_to_dataset(self)

    # ------------------------------------------------------------------ prediction
    def predict(self, labels: LabelsLike) -> np.ndarray:
        """Model spectra for labels in physical units.

        Parameters
        ----------
        labels : ndarray (N, K) or (K,), mapping or table

        Returns
        -------
        ndarray, shape (N, P) (or (P,) for a single label vector)
        """
        self._check_fitted()
        single = (
            not isinstance(labels, (Mapping, xr.Dataset)) and not hasattr(labels, "colnames") and np.ndim(labels) == 1
        )
        y = as_label_array(np.atleast_2d(labels) if single else labels, self.label_names)
        x = scaling.scale(y, self.label_offset_, self.label_scale_)
        out = self.vectorizer(x) @ self.theta_.T
        return out[0] if single else out

    def residuals(self, flux: ArrayLike, labels: LabelsLike) -> np.ndarray:
        """``flux − predict(labels)``."""
        model = self.predict(labels)
        flux = np.asarray(flux, dtype=np.float64)
        if flux.shape != np.shape(model):
            raise ShapeMismatchError(f"flux has shape {flux.shape} but the model predicts {np.shape(model)}")
        return flux - model

    def _check_grid(self, wavelength, n_pixels):
        p = self.theta_.shape[0]
        if n_pixels != p:
            raise GridMismatchError(f"spectra have {n_pixels} pixels but the model was trained on {p} pixels")
        if wavelength is None or self.wavelength_ is None:
            return
        wl = np.asarray(wavelength, dtype=np.float64)
        if wl.shape != self.wavelength_.shape:
            raise GridMismatchError(f"wavelength grid has shape {wl.shape}; model grid has {self.wavelength_.shape}")
        spacing = np.min(np.abs(np.diff(self.wavelength_))) if p > 1 else 1.0
        diff = np.abs(wl - self.wavelength_)
        if np.any(diff > 1e-3 * spacing):
            i = int(np.argmax(diff))
            raise GridMismatchError(
                f"wavelength grid differs from the model's: pixel {i} is at {wl[i]:.6f} A, the model's at "
                f"{self.wavelength_[i]:.6f} A (max difference {diff[i]:.3g} A); resample the spectra "
                "onto the model grid (bayescannon.preprocess.resample)"
            )

    def _test_weights(self, flux, ivar, pixel_ok, ids, offset, wavelength, w, wf, inv_wbar):
        """Adjusted weights of a chunk of test spectra, validated on the way; also κ."""

        c, n_pix, bad, kap = test_weights(
            np.ascontiguousarray(flux), np.ascontiguousarray(ivar), self.s2_, pixel_ok, inv_wbar, w, wf
        )
        if (bad >= 0).any():
            for col, (exc, what) in enumerate(BAD_PIXEL_KINDS):
                rows = np.flatnonzero(bad[:, col] >= 0)
                if rows.size:
                    i = int(rows[0])
                    where = describe_pixel(offset + i, bad[i, col], ids, wavelength)
                    raise exc(f"{what} at {where}; {rows.size} stars in this chunk affected")
        return c, n_pix, kap

    # ------------------------------------------------------------------ test step
    def infer(
        self,
        flux: SpectraLike,
        ivar: ArrayLike | None = None,
        *,
        ids: ArrayLike | None = None,
        wavelength: ArrayLike | None = None,
        n_starts: int | None = None,
        restart: bool = True,
        chunk_size: int = 1000,
        uncertainty: str = "formal",
        progressbar: bool = False,
    ) -> xr.Dataset:
        """Labels, covariances and fit diagnostics for new spectra.

        Parameters
        ----------
        flux : ndarray (N, P) or xarray.Dataset
            Normalised spectra on the model's grid, or a spectra container.
        ivar : ndarray (N, P), optional
            Inverse variances (0 = no information).
        ids : array_like (N,), optional
            Star identifiers (default: the container's, else ``star000000``...).
        wavelength : ndarray (P,), optional
            Grid of the spectra; checked against the model's.
        n_starts : int, optional
            Starting points per star (default: the model's ``n_starts``): the stored
            candidates with the lowest χ².
        restart : bool, default True
            Second round: scan χ² along each label through each star's best fit and restart
            from the lowest other dip of the scans where there is one (see
            :func:`bayescannon.core.labelfit.fit_labels`). It finds the wrong minima that the χ²
            ranking of the candidates misses (e.g. a label acting mainly through its square).
        chunk_size : int
            Stars processed at once; memory does not grow with N.
        uncertainty : {"formal", "calibrated"}
            ``"formal"``: inverse Fisher matrix. ``"calibrated"``: the calibrated error
            model of the Bayesian layer (requires a calibration, see
            :mod:`bayescannon.core.uncertainty`).
        progressbar : bool

        Returns
        -------
        xarray.Dataset
            ``labels`` (star, label), ``errors`` (star, label), ``covariance``
            (star, label_name, label_name_2) in physical units; ``chi2``, ``reduced_chi2``,
            ``n_pixels``, ``converged``, ``flags`` (StarFlag bits), ``n_iter`` per star.
        """
        self._check_fitted()
        flux, ivar, ids, wavelength, _ = unpack_spectra(flux, ivar, ids, wavelength)
        flux, ivar = as_flux_ivar_arrays(flux, ivar)  # typed errors for complex/text data, shapes
        n, p = flux.shape
        self._check_grid(wavelength, p)
        if ids is None:
            ids = default_ids(n)
        ids = np.asarray(ids).astype(str)
        if ids.shape != (n,):
            raise ShapeMismatchError(f"ids have shape {ids.shape} but there are {n} spectra")
        if uncertainty not in ("formal", "calibrated"):
            raise InvalidInputError(f"uncertainty must be 'formal' or 'calibrated'; got {uncertainty!r}")
        if uncertainty == "calibrated":
            check_calibrated(self)  # NotCalibratedError before any work
        s = _check_count(self.n_starts if n_starts is None else n_starts, "n_starts")  # 0 is an error, not the default
        check_flux_ivar_values(flux, ivar, ids=ids, wavelength=wavelength)  # absurd flux or ivar
        if chunk_size < 1:
            raise InvalidInputError(f"chunk_size must be >= 1; got {chunk_size}")
        k = len(self.label_names)
        mono_map, prod = self._test_step_cache()
        vec = mono_map.vectorizer
        poly = use_polynomial_form(vec)
        cand = self.start_candidates_
        v_cand = mono_map.quad(cand) if poly else vec(cand)  # (C, M) or (C, T)
        s = min(s, cand.shape[0])
        smin = scaling.scale(self.label_min_, self.label_offset_, self.label_scale_)
        smax = scaling.scale(self.label_max_, self.label_offset_, self.label_scale_)
        width = smax - smin
        bounds = np.column_stack([smin - self.bounds_margin * width, smax + self.bounds_margin * width])

        labels = np.empty((n, k))
        cov = np.empty((n, k, k))
        chi2 = np.empty(n)
        npix = np.empty(n, dtype=np.int64)
        conv = np.empty(n, dtype=bool)
        atb = np.empty(n, dtype=bool)
        niter = np.empty(n, dtype=np.int64)
        chunks = range(0, n, chunk_size)
        if progressbar:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="inferring labels", unit="chunk")
        pixel_ok = ~(self.pixel_flags_ & (PixelFlag.FEW_STARS | PixelFlag.SINGULAR)).astype(bool)
        # work buffers reused by every chunk: memory is bounded by chunk_size, not by N
        buf_w = np.empty((min(chunk_size, n), p))
        buf_wf = np.empty((min(chunk_size, n), p))
        if uncertainty == "calibrated":
            inv_wbar = inverse_train_weight(self)  # κ of the θ-uncertainty term, in the same pass
        else:
            inv_wbar = np.zeros(p)
        kap = np.zeros(n)
        for a in chunks:
            sl = slice(a, min(a + chunk_size, n))
            m = sl.stop - sl.start
            w, wf = buf_w[:m], buf_wf[:m]
            c, n_pix, kap[sl] = self._test_weights(flux[sl], ivar[sl], pixel_ok, ids, a, wavelength, w, wf, inv_wbar)
            # χ² of each star as a polynomial in the labels (coefficients over the monomials)
            # each star's χ² as a polynomial in the labels (coefficients over the monomials) or
            # as the quadratic form of its sufficient statistics, whichever is cheaper to form;
            # χ² of every candidate for every star: the best s are the starts
            if poly:
                coef, b = poly_coefficients(w, wf, c, self.theta_, prod)
                starts = cand[np.argsort(chi2_poly(coef, v_cand), axis=1)[:, :s]]  # (m, s, K)
                fit = fit_labels_poly(
                    coef, b, w, self.theta_, mono_map, starts, bounds=bounds, restart=restart, work=buf_wf[:m]
                )
            else:
                A, b = test_statistics(w, wf, self.theta_, prod)
                starts = cand[np.argsort(chi2_at(A, b, c, v_cand), axis=1)[:, :s]]
                fit = fit_labels(A, b, c, vec, starts, bounds=bounds, restart=restart)
            labels[sl] = fit.labels
            cov[sl] = fit.covariance
            chi2[sl] = fit.chi2
            npix[sl] = n_pix
            conv[sl] = fit.converged
            atb[sl] = fit.at_bound
            niter[sl] = fit.n_iter
        ds = self._assemble(ids, labels, cov, chi2, npix, conv, atb, niter, smin, smax, width)
        if uncertainty == "calibrated":
            ds = apply_calibration(self, ds, ivar, kappa=kap)
        return ds

    def _test_step_cache(self):
        """(MonomialMap, products of θ) for the test step, computed once per fit.

        The products (Φ, P × M, for the polynomial form of χ²; else the pairs θ_t θ_u,
        P × T(T+1)/2) only depend on θ: it is kept on the model and rebuilt when ``theta_`` is
        another array (a refit, a load) or the order/labels changed; ``fit`` and
        ``set_params`` drop it.
        """
        key = (id(self.theta_), self.theta_.shape, tuple(self.label_names), int(self.order))
        cache = getattr(self, "_test_cache", None)
        if cache is None or cache[0] != key or cache[1] is not self.theta_:
            mono_map = MonomialMap(self.vectorizer)
            if use_polynomial_form(mono_map.vectorizer):
                prod = mono_map.theta_monomials(self.theta_)
            else:
                iu, ju = np.triu_indices(mono_map.n_terms)
                prod = self.theta_[:, iu] * self.theta_[:, ju]
            cache = (key, self.theta_, mono_map, prod)
            self._test_cache = cache
        return cache[2], cache[3]

    def _assemble(self, ids, x, cov, chi2, npix, conv, atb, niter, smin, smax, width):
        k = len(self.label_names)
        vec = self.vectorizer
        flags = np.zeros(x.shape[0], dtype=np.int64)
        flags[~conv] |= StarFlag.NOT_CONVERGED
        flags[atb] |= StarFlag.AT_BOUND
        tol = self.extrapolation_tolerance * width
        outside = np.any((x < smin - tol) | (x > smax + tol), axis=1)
        flags[outside] |= StarFlag.EXTRAPOLATED
        flags[npix < 2 * vec.n_terms] |= StarFlag.FEW_PIXELS
        nopix = npix == 0
        flags[nopix] |= StarFlag.NO_PIXELS
        # fewer usable pixels than labels: the labels are not identified (a flat direction of
        # χ²); the inverse of the rank-deficient Fisher matrix is rounding noise, not an error
        under = npix < k
        flags[under & ~nopix] |= StarFlag.UNDERDETERMINED
        cov = np.where(under[:, None, None], np.nan, cov)
        singular = ~np.all(np.isfinite(cov), axis=(1, 2))
        flags[singular] |= StarFlag.SINGULAR_COVARIANCE
        dof = np.maximum(npix - k, 1)
        rchi2 = chi2 / dof
        flags[rchi2 > self.max_reduced_chi2] |= StarFlag.LARGE_CHI2
        y = scaling.unscale(x, self.label_offset_, self.label_scale_)
        cov_phys = cov * self.label_scale_[None, :, None] * self.label_scale_[None, None, :]
        y[nopix] = np.nan
        cov_phys[nopix] = np.nan
        chi2 = np.where(nopix, np.nan, chi2)
        rchi2 = np.where(nopix, np.nan, rchi2)
        if nopix.any():
            logger.warning(
                "%d stars have no usable pixel (e.g. %s): labels are NaN and flagged NO_PIXELS",
                int(nopix.sum()),
                ids[np.flatnonzero(nopix)[0]],
            )
        errors = np.sqrt(np.einsum("nkk->nk", cov_phys))
        ds = result_dataset(  # numpy-backed: no dask import on the first infer of a process
            {
                "labels": (("star", "label_name"), y),
                "errors": (("star", "label_name"), errors),
                "covariance": (("star", "label_name", "label_name_2"), cov_phys),
                "chi2": ("star", chi2),
                "reduced_chi2": ("star", rchi2),
                "n_pixels": ("star", npix),
                "converged": ("star", conv & ~under),
                "flags": ("star", flags),
                "n_iter": ("star", niter),
            },
            {"star": ids, "label_name": list(self.label_names), "label_name_2": list(self.label_names)},
            attrs={
                "model_training_hash": self.training_hash_,
                "uncertainty": "formal (inverse Fisher matrix, model scatter s² included)",
                **{f"flag_{k_}": v for k_, v in flag_doc(StarFlag).items()},
            },
        )
        ds["errors"].attrs["description"] = "sqrt of the covariance diagonal (physical units)"
        ds["flags"].attrs["description"] = "StarFlag bitmask; see dataset attrs flag_*"
        return set_label_units(ds)
