"""Model files: a fitted CannonModel as a netCDF (h5netcdf) or zarr store. No pickle.

The file holds everything needed to reproduce the model's predictions bit for bit and to
rebuild it: the constructor arguments (``get_params()``, censors included, as JSON in the
``params`` attribute; the model is rebuilt with ``cls(**params)``), θ, s², label scaling,
term exponents, wavelength grid, censor mask, start candidates, pixel flags, the training
labels, the θ-uncertainty summary (``theta_leverage``, ``train_weight``), the latent-label
state (``latent_labels``, ``latent_iterations``, ...), the package version and a BLAKE2b
fingerprint of the training set.

Integrity (format version 3): the ``checksums`` attribute holds a BLAKE2b digest of every
variable and coordinate (name, dims, values as read back) and of the global attributes; it
is written on save and verified on load, so a flipped byte anywhere the model reads is a
:class:`~bayescannon.errors.ModelFileError` naming the file and the array. Physically
impossible values (label scale ≤ 0, s² < 0, non-finite θ, NaN or inverted label bounds, a
calibration that does not parse or has the wrong shapes) are refused whatever the version.

Format versions 1 and 2 had no checksums: they are still read, with a logged warning that
their arrays cannot be verified (their values are still checked for physical sense).
Version-1 files (untyped ``extra_*`` variables, hand-listed parameters, no censors or
training labels) are read as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon._version import __version__
from bayescannon.core.level_scale import LEVEL_ESTIMATORS
from bayescannon.core.uncertainty import CALIBRATION_KIND
from bayescannon.errors import ModelFileError
from bayescannon.flags import PixelFlag, flag_doc
from bayescannon.pipeline.atomic import atomic_path
from bayescannon.pipeline.netcdf import read_netcdf, write_netcdf
from bayescannon.results import numpy_variable, result_dataset

logger = logging.getLogger(__name__)

__all__ = ["FORMAT", "FORMAT_VERSION", "load_model", "model_from_dataset", "model_to_dataset", "save_model"]

FORMAT = "bayescannon.CannonModel"
FORMAT_VERSION = 3
#: attribute holding the digests (JSON: variable name → digest, plus _ATTRS for the attributes)
CHECKSUMS = "checksums"
_ATTRS = "@attributes"

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
    if isinstance(params.get("censors"), Path):
        params["censors"] = str(params["censors"])  # a window-table path
    if params.get("censors") is not None and not isinstance(params["censors"], str):  # str: a preset or table path
        params["censors"] = {str(k): _censor_json(v) for k, v in dict(params["censors"]).items()}
    try:
        return json.dumps(params, default=_json_default)
    except TypeError as exc:
        raise ModelFileError(f"model parameters cannot be written to a model file: {exc}") from exc


def _censor_json(v):
    return v if isinstance(v, str) else np.asarray(v).tolist()


def _params_from_json(text: str) -> dict:
    params = json.loads(text)
    if isinstance(params.get("censors"), dict):
        params["censors"] = {
            k: (np.asarray(v, dtype=bool) if np.asarray(v).dtype == bool else v) for k, v in params["censors"].items()
        }
    return params


def _canonical(values) -> bytes:
    """Bytes of an array that survive a netCDF/zarr round trip unchanged: numbers as
    little-endian 8-byte values, strings joined (the on-disk dtype may differ)."""
    a = np.asarray(values)
    if a.dtype.kind in "USO":
        return "\x1f".join(map(str, a.ravel().tolist())).encode("utf-8", "surrogatepass")
    if a.dtype.kind == "f":
        return np.ascontiguousarray(a, dtype="<f8").tobytes()
    if a.dtype.kind in "biu":
        return np.ascontiguousarray(a, dtype="<i8").tobytes()
    raise ModelFileError(f"cannot checksum an array of dtype {a.dtype}")


def _digest_variable(name, var) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((str(name), tuple(map(str, var.dims)), tuple(var.shape))).encode())
    h.update(_canonical(var.values))
    return h.hexdigest()


def _attr_value(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def _digest_attrs(attrs) -> str:
    items = {str(k): _attr_value(v) for k, v in attrs.items() if k != CHECKSUMS}
    text = json.dumps(items, sort_keys=True, default=repr)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _checksums(ds) -> dict:
    out = {str(name): _digest_variable(name, var) for name, var in ds.variables.items()}
    out[_ATTRS] = _digest_attrs(ds.attrs)
    return out


def _verify_checksums(ds, source) -> None:
    """Compare every variable and the attributes with the stored digests."""
    try:
        stored = json.loads(ds.attrs[CHECKSUMS])
        if not isinstance(stored, dict):
            raise ValueError("not a JSON object")
    except (ValueError, TypeError) as exc:
        raise ModelFileError(f"{source}: the checksum table is unreadable ({exc}): corrupted file") from exc
    names = {str(n) for n in ds.variables}
    unlisted = sorted(names - set(stored))
    missing = sorted(set(stored) - names - {_ATTRS})
    if unlisted or missing:
        raise ModelFileError(
            f"{source}: arrays {missing} are listed in the checksums but absent, {unlisted} present but not listed "
            "(corrupted or edited file)"
        )
    for name, var in ds.variables.items():
        try:
            ok = _digest_variable(name, var) == stored[str(name)]
        except ModelFileError:
            ok = False
        if not ok:
            raise ModelFileError(f"{source}: array {name!r} does not match its checksum (corrupted or edited file)")
    if _digest_attrs(ds.attrs) != stored.get(_ATTRS):
        raise ModelFileError(
            f"{source}: the file attributes (parameters, calibration, version, hash) do not match their checksum "
            "(corrupted or edited file)"
        )


def model_to_dataset(model) -> xr.Dataset:
    """The fitted state of ``model`` as an xarray Dataset."""
    vec = model.vectorizer
    data = {
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
    }
    # built from numpy arrays without xarray's dask probe (bayescannon.results)
    ds = result_dataset(data, {"label": np.asarray(list(model.label_names)), "term": np.asarray(vec.term_names)})
    if model.wavelength_ is not None:
        ds.coords["wavelength"] = numpy_variable("pixel", np.asarray(model.wavelength_, dtype=np.float64))
    for attr, (name, dims) in _STATE.items():
        value = getattr(model, attr, None)
        if value is not None:
            ds[name] = numpy_variable(dims, np.asarray(value))
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
    ds.attrs[CHECKSUMS] = json.dumps(_checksums(ds), sort_keys=True)
    return ds


def save_model(model, path, *, overwrite: bool = False) -> Path:
    """Write a fitted model to ``path`` (``.nc`` → netCDF4/HDF5, ``.zarr`` → zarr).

    Written through :func:`bayescannon.pipeline.atomic.atomic_path`: a crash never leaves a
    half-written model under the final name, and the file honours the umask. An existing
    file is replaced only with ``overwrite=True``.

    Raises
    ------
    ModelFileError
        ``path`` exists and ``overwrite`` is False, or a parameter cannot be stored.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ModelFileError(f"{path} exists; pass overwrite=True to replace it")
    ds = model_to_dataset(model)
    zarr = path.suffix == ".zarr"
    with atomic_path(path, overwrite=overwrite, directory=zarr) as tmp:
        if zarr:
            ds.to_zarr(tmp, mode="w", consolidated=False)
        else:
            write_netcdf(ds, tmp)
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
            ds = read_netcdf(path)
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
    version = _format_version(ds.attrs.get("format_version"), source)
    if CHECKSUMS in ds.attrs:  # verified whatever the version says (a flipped version must not skip it)
        _verify_checksums(ds, source)
    elif version >= 3:
        raise ModelFileError(f"{source}: format version {version} file without its checksums (corrupted file)")
    else:
        logger.warning(
            "%s has model format version %d, written without checksums: its arrays cannot be verified "
            "(re-save it with this bayescannon to add them)",
            source,
            version,
        )
    missing = [v for v in _REQUIRED if v not in ds]
    if missing:
        raise ModelFileError(f"{source} is missing model variables {missing} (corrupted or truncated file)")
    try:
        params = _params_from_json(ds.attrs["params"])
        model = cls(**params)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise ModelFileError(f"{source} has unreadable model parameters: {exc}") from exc
    vec = model.vectorizer
    exps = np.asarray(ds["term_exponents"].values)
    if exps.shape != vec.exponents.shape or not np.array_equal(exps, vec.exponents):
        raise ModelFileError(f"{source}: stored term exponents do not match label names and order")
    theta = np.asarray(ds["theta"].values, dtype=np.float64)
    p = theta.shape[0]
    _check_values(ds, source, p, vec.n_terms, vec.n_labels)
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
    model.calibration_ = _calibration(ds.attrs.get("calibration"), list(model.label_names), source)
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


def _format_version(value, source) -> int:
    """The ``format_version`` attribute as an int in 1..FORMAT_VERSION: an integer, never
    ``int()`` of whatever is there (a string, a float, a bool are corrupted files)."""
    if value is None:
        raise ModelFileError(f"{source} has no format_version attribute (corrupted or not a model file)")
    if isinstance(value, np.ndarray) and value.shape == (1,):  # netCDF attributes may come back as 1-element arrays
        value = value[0]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ModelFileError(f"{source}: format_version is {value!r} ({type(value).__name__}), not an integer")
    version = int(value)
    if version < 1:
        raise ModelFileError(f"{source}: format_version {version} is not a valid model format version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{source} has model format version {version}; this bayescannon reads up to {FORMAT_VERSION}"
        )
    return version


def _check_values(ds, source, p, t, k) -> None:
    """Shapes and physically possible values of everything a model uses."""
    shapes = {
        "theta": (p, t),
        "s2": (p,),
        "pixel_flags": (p,),
        "label_offset": (k,),
        "label_scale": (k,),
        "label_min": (k,),
        "label_max": (k,),
        "censor_mask": (p, k),
        "log_likelihood": (p,),
        "n_stars_used": (p,),
        "wavelength": (p,),
        "theta_leverage": (t, t),
        "train_weight": (p,),
    }
    for name, want in shapes.items():
        if name in ds.variables and tuple(ds[name].shape) != want:
            raise ModelFileError(f"{source}: {name} has shape {tuple(ds[name].shape)}, expected {want}")
    cand = ds["start_candidates"]
    if cand.ndim != 2 or cand.shape[1] != k or cand.shape[0] < 1:
        raise ModelFileError(f"{source}: start_candidates has shape {tuple(cand.shape)}, expected (C, {k})")
    for name in ("training_labels", "latent_labels"):
        if name in ds and (ds[name].ndim != 2 or ds[name].shape[1] != k):
            raise ModelFileError(f"{source}: {name} has shape {tuple(ds[name].shape)}, expected (N, {k})")

    def values(name):
        v = np.asarray(ds[name].values)
        if v.dtype.kind not in "biuf":
            raise ModelFileError(f"{source}: {name} has dtype {v.dtype}, expected numbers")
        return v.astype(np.float64)

    for name in ("theta", "s2", "label_offset", "label_scale", "label_min", "label_max", "start_candidates"):
        if not np.all(np.isfinite(values(name))):
            raise ModelFileError(f"{source}: {name} contains non-finite values (corrupted file)")
    checks = [
        ("label_scale", values("label_scale") > 0, "label scale <= 0"),
        ("s2", values("s2") >= 0, "negative scatter s2"),
        ("label_max", values("label_min") <= values("label_max"), "label_min > label_max"),
        ("pixel_flags", values("pixel_flags") >= 0, "negative flags"),
        ("censor_mask", np.isin(values("censor_mask"), (0, 1)), "values other than 0/1"),
    ]
    if "wavelength" in ds.variables and p > 1:
        wl = values("wavelength")
        checks.append(("wavelength", np.isfinite(wl[:1]) & np.all(np.diff(wl) > 0), "not strictly increasing"))
    for name in ("theta_leverage", "train_weight", "training_labels", "latent_labels"):
        if name in ds.variables:
            checks.append((name, np.isfinite(values(name)), "non-finite values"))
    for name, good, what in checks:
        good = np.asarray(good)
        if not good.all():
            i = int(np.flatnonzero(~good.ravel())[0])
            raise ModelFileError(f"{source}: {name} has impossible values ({what}; first at flat index {i})")


def _calibration(text, label_names, source):
    """The ``calibration`` attribute: JSON ``null`` or a calibration of these labels with
    arrays of the right shapes and finite, possible values."""
    if text is None or (isinstance(text, str) and text in ("", "null")):
        return None

    def bad(what):
        return ModelFileError(f"{source}: the calibration {what} (corrupted or edited file)")

    try:
        cal = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise bad(f"does not parse as JSON ({exc})") from exc
    if cal is None:
        return None
    if not isinstance(cal, dict) or cal.get("kind") != CALIBRATION_KIND:
        raise bad(f"is not a {CALIBRATION_KIND} calibration")
    if cal.get("label_names") != label_names:
        raise bad(f"is for labels {cal.get('label_names')!r}, the model has {label_names}")
    k = len(label_names)
    arrays = {
        "noise_scale": ((k,), lambda a: a > 0),
        "floor_coefficients": ((k, k + 1), lambda a: np.isfinite(a)),
        "dof": ((k,), lambda a: a > 2),
    }
    levels = None
    if "quantile_levels" in cal or "z_quantiles" in cal:
        try:
            levels = np.asarray(cal.get("quantile_levels"), dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise bad(f"has unreadable quantile_levels ({exc})") from exc
        if levels.ndim != 1 or not (np.all((levels > 0) & (levels < 1)) and np.all(np.diff(levels) > 0)):
            raise bad("has quantile_levels that are not increasing values in (0, 1)")
        arrays["z_quantiles"] = ((k, levels.size), lambda a: a >= 0)
    for name, (shape, ok) in arrays.items():
        try:
            a = np.asarray(cal[name], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise bad(f"has no readable {name} ({exc!r})") from exc
        if a.shape != shape:
            raise bad(f"has {name} of shape {a.shape}, expected {shape}")
        if not np.all(np.isfinite(a) & ok(a)):
            raise bad(f"has impossible values in {name}")
    _check_level_scale(cal.get("level_scale"), k, bad)
    return cal


def _check_level_scale(rec, k, bad):
    """The record of each label's overall-level estimator (absent before it existed: the
    split-conformal quantile, which the stored ``z_quantiles`` already hold either way)."""
    if rec is None:
        return
    if not isinstance(rec, dict):
        raise bad("has a level_scale that is not a record")
    used = rec.get("used")
    if not isinstance(used, list) or len(used) != k or any(u not in LEVEL_ESTIMATORS for u in used):
        raise bad(f"has level_scale used {used!r}, expected {k} of {list(LEVEL_ESTIMATORS)}")
    try:
        conformal = np.asarray(rec.get("conformal"), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise bad(f"has unreadable level_scale conformal ({exc})") from exc
    if conformal.shape != (k,) or not np.all(np.isfinite(conformal) & (conformal >= 0)):
        raise bad(f"has level_scale conformal {rec.get('conformal')!r}, expected {k} finite values >= 0")
