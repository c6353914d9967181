"""Model files: a fitted CannonModel as a netCDF (h5netcdf) or zarr store. No pickle.

The file holds everything needed to reproduce the model's predictions bit for bit and to
rebuild it: the constructor arguments (``get_params()``, censors included, as JSON in the
``params`` attribute; the model is rebuilt with ``cls(**params)``), θ, s², label scaling,
term exponents, wavelength grid, censor mask, start candidates, pixel flags, the training
labels, the θ-uncertainty summary (``theta_leverage``, ``train_weight``), the latent-label
state (``latent_labels``, ``latent_iterations``, ...), the package version and a BLAKE2b
fingerprint of the training set.

Format version 2; version-1 files (untyped ``extra_*`` variables, hand-listed
parameters, no censors or training labels) are still read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon._version import __version__
from bayescannon.errors import ModelFileError
from bayescannon.flags import PixelFlag, flag_doc
from bayescannon.pipeline.atomic import atomic_path

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "FORMAT_VERSION", "load_model", "model_from_dataset", "model_to_dataset", "save_model"]

FORMAT = "bayescannon.CannonModel"
FORMAT_VERSION = 2

_REQUIRED = (
    "theta",
    "s2",
    "label_offset",
    "label_scale",
    "label_min",
    "label_max",
    "term_exponents",
    "censor_mask",
    "start_candidates",
    "pixel_flags",
)

#: fitted attribute → (file variable, dims) of the optional named state
_STATE = {
    "training_labels_scaled_": ("training_labels", ("training_star", "label")),
    "theta_leverage_": ("theta_leverage", ("term", "term2")),
    "train_weight_": ("train_weight", ("pixel",)),
    "latent_labels_": ("latent_labels", ("training_star", "label")),
    "latent_iterations_": ("latent_iterations", ()),
    "latent_converged_": ("latent_converged", ()),
    "latent_calibrated_": ("latent_calibrated", ()),
    "latent_trend_order_": ("latent_trend_order", ()),
}
#: the same state under its format-version-1 names
_V1_NAMES = {
    "theta_leverage_": "extra_theta_leverage",
    "train_weight_": "extra_train_weight",
    "latent_labels_": "extra_latent_labels_scaled",
    "latent_iterations_": "extra_latent_iterations",
    "latent_converged_": "extra_latent_converged",
    "latent_calibrated_": "extra_latent_calibrated",
    "latent_trend_order_": "extra_latent_trend_order",
}


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _params_json(model) -> str:
    """``model.get_params()`` as JSON; a random Generator is stored as None (with a warning)."""
    params = dict(model.get_params(deep=False))
    rs = params.get("random_state")
    if rs is not None and not isinstance(rs, (int, np.integer)):
        logger.warning("random_state %r cannot be stored in a model file; it is saved as None", type(rs).__name__)
        params["random_state"] = None
    if params.get("censors") is not None:
        params["censors"] = {str(k): np.asarray(v).tolist() for k, v in dict(params["censors"]).items()}
    try:
        return json.dumps(params, default=_json_default)
    except TypeError as exc:
        raise ModelFileError(f"model parameters cannot be written to a model file: {exc}") from exc


def _params_from_json(text: str) -> dict:
    params = json.loads(text)
    if params.get("censors") is not None:
        params["censors"] = {
            k: (np.asarray(v, dtype=bool) if np.asarray(v).dtype == bool else v) for k, v in params["censors"].items()
        }
    return params


def model_to_dataset(model) -> xr.Dataset:
    """The fitted state of ``model`` as an xarray Dataset."""
    vec = model.vectorizer
    coords = {"label": list(model.label_names), "term": vec.term_names}
    if model.wavelength_ is not None:
        coords["wavelength"] = ("pixel", np.asarray(model.wavelength_, dtype=np.float64))
    ds = xr.Dataset(
        {
            "theta": (("pixel", "term"), model.theta_),
            "s2": ("pixel", model.s2_),
            "pixel_flags": ("pixel", np.asarray(model.pixel_flags_, dtype=np.int64)),
            "log_likelihood": ("pixel", model.log_likelihood_),
            "n_stars_used": ("pixel", np.asarray(model.n_stars_used_, dtype=np.int64)),
            "label_offset": ("label", model.label_offset_),
            "label_scale": ("label", model.label_scale_),
            "label_min": ("label", model.label_min_),
            "label_max": ("label", model.label_max_),
            "term_exponents": (("term", "label"), vec.exponents),
            "censor_mask": (("pixel", "label"), model.censor_mask_.astype(np.int8)),
            "start_candidates": (("candidate", "label"), model.start_candidates_),
        },
        coords=coords,
    )
    for attr, (name, dims) in _STATE.items():
        value = getattr(model, attr, None)
        if value is not None:
            ds[name] = (dims, np.asarray(value))
    ds.attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "params": _params_json(model),
        "training_hash": model.training_hash_,
        "n_training_stars": int(model.n_training_stars_),
        "calibration": json.dumps(getattr(model, "calibration_", None)),
        **{f"pixel_flag_{k}": v for k, v in flag_doc(PixelFlag).items()},
    }
    ds["theta"].attrs["description"] = "spectral model coefficients per pixel and term (scaled labels)"
    ds["s2"].attrs["description"] = "intrinsic scatter variance per pixel"
    return ds


def save_model(model, path, *, overwrite: bool = True) -> Path:
    """Write a fitted model to ``path`` (``.nc`` → netCDF4/HDF5, ``.zarr`` → zarr).

    Written through :func:`bayescannon.pipeline.atomic.atomic_path`: a crash never leaves a
    half-written model under the final name, and the file honours the umask.

    Raises
    ------
    ModelFileError
        ``path`` exists and ``overwrite`` is False, or a parameter cannot be stored.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ModelFileError(f"{path} exists and overwrite=False")
    ds = model_to_dataset(model)
    zarr = path.suffix == ".zarr"
    with atomic_path(path, overwrite=overwrite, directory=zarr) as tmp:
        if zarr:
            ds.to_zarr(tmp, mode="w", consolidated=False)
        else:
            ds.to_netcdf(tmp, engine="h5netcdf")
    logger.info("saved model to %s", path)
    return path


def load_model(path, cls=None):
    """Read a model written by :func:`save_model`.

    Raises
    ------
    ModelFileError
        If the file is missing, unreadable, corrupted, or not a bayescannon model.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist")
    engine = "zarr" if path.is_dir() or path.suffix == ".zarr" else "h5netcdf"
    try:
        if engine == "zarr":
            ds = xr.open_zarr(path, consolidated=False).load()
        else:
            with xr.open_dataset(path, engine="h5netcdf") as f:
                ds = f.load()
    except Exception as exc:  # any reader failure means the file is not usable
        raise ModelFileError(f"{path} is not a readable netCDF/zarr file: {exc}") from exc
    return model_from_dataset(ds, cls=cls, source=str(path))


def model_from_dataset(ds: xr.Dataset, cls=None, source: str = "dataset"):
    """Rebuild a fitted model from :func:`model_to_dataset` output."""
    if cls is None:
        raise ModelFileError("model_from_dataset needs the model class (cls=CannonModel)")
    if ds.attrs.get("format") != FORMAT:
        raise ModelFileError(
            f"{source} is not a bayescannon model file (format attribute "
            f"{ds.attrs.get('format')!r}, expected {FORMAT!r})"
        )
    version = int(ds.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source} has model format version {version}; this bayescannon reads up to {FORMAT_VERSION}"
        )
    missing = [v for v in _REQUIRED if v not in ds]
    if missing:
        raise ModelFileError(f"{source} is missing model variables {missing} (corrupted or truncated file)")
    try:
        params = _params_from_json(ds.attrs["params"])
        model = cls(**params)
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{source} has unreadable model parameters: {exc}") from exc
    vec = model.vectorizer
    exps = np.asarray(ds["term_exponents"].values)
    if exps.shape != vec.exponents.shape or not np.array_equal(exps, vec.exponents):
        raise ModelFileError(f"{source}: stored term exponents do not match label names and order")
    theta = np.asarray(ds["theta"].values, dtype=np.float64)
    p = theta.shape[0]
    checks = {
        "theta": (theta.shape, (p, vec.n_terms)),
        "s2": (ds["s2"].shape, (p,)),
        "label_scale": (ds["label_scale"].shape, (vec.n_labels,)),
    }
    for name, (got, want) in checks.items():
        if tuple(got) != want:
            raise ModelFileError(f"{source}: {name} has shape {tuple(got)}, expected {want}")
    for name in ("theta", "s2", "label_offset", "label_scale"):
        if not np.all(np.isfinite(ds[name].values)):
            raise ModelFileError(f"{source}: {name} contains non-finite values (corrupted file)")
    model.theta_ = theta
    model.s2_ = np.asarray(ds["s2"].values, dtype=np.float64)
    model.pixel_flags_ = np.asarray(ds["pixel_flags"].values, dtype=np.int64)
    model.log_likelihood_ = np.asarray(ds["log_likelihood"].values) if "log_likelihood" in ds else np.zeros(p)
    model.n_stars_used_ = np.asarray(ds["n_stars_used"].values) if "n_stars_used" in ds else np.zeros(p, int)
    model.label_offset_ = np.asarray(ds["label_offset"].values, dtype=np.float64)
    model.label_scale_ = np.asarray(ds["label_scale"].values, dtype=np.float64)
    model.label_min_ = np.asarray(ds["label_min"].values, dtype=np.float64)
    model.label_max_ = np.asarray(ds["label_max"].values, dtype=np.float64)
    model.censor_mask_ = np.asarray(ds["censor_mask"].values).astype(bool)
    model.start_candidates_ = np.asarray(ds["start_candidates"].values, dtype=np.float64)
    model.wavelength_ = np.asarray(ds["wavelength"].values, dtype=np.float64) if "wavelength" in ds.coords else None
    model.training_hash_ = str(ds.attrs.get("training_hash", ""))
    model.n_training_stars_ = int(ds.attrs.get("n_training_stars", 0))
    model.package_version_ = str(ds.attrs.get("package_version", "unknown"))
    calib = ds.attrs.get("calibration")
    model.calibration_ = json.loads(calib) if calib else None
    names = {attr: name for attr, (name, _) in _STATE.items()} if version >= 2 else _V1_NAMES
    for attr in _STATE:
        name = names.get(attr)
        value = np.asarray(ds[name].values) if name is not None and name in ds else None
        if value is not None and value.ndim == 0:
            value = bool(value) if attr in ("latent_converged_", "latent_calibrated_") else int(value)
        setattr(model, attr, value)
    if version < 2 and model.censors is None and not model.censor_mask_.all():
        # version 1 did not store the censors: the fitted mask, per censored label, rebuilds them
        mask = model.censor_mask_
        model.censors = {n: mask[:, k].copy() for k, n in enumerate(model.label_names) if not mask[:, k].all()}
    return model
