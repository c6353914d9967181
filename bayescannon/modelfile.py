"""Model files: a fitted CannonModel as a netCDF (h5netcdf) or zarr store. No pickle.

The file holds everything needed to reproduce the model's predictions bit for bit:
θ, s², label scaling, term exponents and names, label names, wavelength grid, censor
mask, regularisation, start candidates, pixel flags, package version and a SHA-256
hash of the training set.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import xarray as xr

from .errors import ModelFileError
from .flags import PixelFlag, flag_doc
from bayescannon._version import __version__

logger = logging.getLogger(__name__)

__all__ = ["save_model", "load_model", "model_to_dataset", "model_from_dataset", "FORMAT", "FORMAT_VERSION"]

FORMAT = "bayescannon.CannonModel"
FORMAT_VERSION = 1

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


def _engine(path: Path) -> str:
    return "zarr" if path.suffix == ".zarr" or path.is_dir() else "h5netcdf"


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
    extra = getattr(model, "extra_state_", None) or {}
    for name, (dims, values) in extra.items():
        ds[name] = (dims, values)
    params = {
        "label_names": list(model.label_names),
        "order": int(model.order),
        "regularization": float(model.regularization),
        "n_starts": int(model.n_starts),
        "n_candidates": int(model.n_candidates),
        "bounds_margin": float(model.bounds_margin),
        "extrapolation_tolerance": float(model.extrapolation_tolerance),
        "max_reduced_chi2": float(model.max_reduced_chi2),
        "random_state": model.random_state if isinstance(model.random_state, int) else None,
    }
    ds.attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "params": json.dumps(params),
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

    The file is written to a temporary name and moved into place, so a crash never
    leaves a half-written model under the final name.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ModelFileError(f"{path} exists and overwrite=False")
    ds = model_to_dataset(model)
    engine = _engine(path) if path.suffix == ".zarr" else "h5netcdf"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.")) / path.name
    try:
        if engine == "zarr":
            ds.to_zarr(tmp, mode="w", consolidated=False)
            if path.exists():
                import shutil

                shutil.rmtree(path) if path.is_dir() else path.unlink()
        else:
            ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    finally:
        import shutil

        shutil.rmtree(tmp.parent, ignore_errors=True)
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
        params = json.loads(ds.attrs["params"])
        model = cls(
            params["label_names"],
            params["order"],
            regularization=params["regularization"],
            n_starts=params["n_starts"],
            n_candidates=params["n_candidates"],
            bounds_margin=params["bounds_margin"],
            extrapolation_tolerance=params["extrapolation_tolerance"],
            max_reduced_chi2=params["max_reduced_chi2"],
            random_state=params["random_state"],
        )
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
    extra = {}
    for name in ds.data_vars:
        if name.startswith("extra_"):
            extra[name] = (ds[name].dims, np.asarray(ds[name].values))
    model.extra_state_ = extra
    return model
