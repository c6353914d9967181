"""Configuration of the label-transfer pipeline (:mod:`bayescannon.survey.transfer`): the
steps, the defaults of every TOML section, their validation, the per-step digests, and
the small table and file helpers the steps share.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.table import MaskedColumn, Table

from bayescannon.errors import InvalidInputError
from bayescannon.flags import StarFlag
from bayescannon.pipeline.atomic import atomic_path, write_json
from bayescannon.survey.reference import QualityCuts

logger = logging.getLogger(__name__)

__all__ = ["DEFAULTS", "PRESETS", "STEPS", "TransferConfig"]


#: Pipeline steps, in order.
STEPS: tuple[str, ...] = (
    "read",
    "preprocess",
    "crossmatch",
    "cuts",
    "cleanup",
    "train",
    "validate",
    "infer",
    "bootstrap",
    "catalogue",
    "evaluate",
)

#: Recipes a configuration starts from (top-level ``preset``): the values of the options
#: left unset (``None``) in :data:`DEFAULTS`. ``"ho2017"`` (the default) is Ho et al.
#: (2017): only target stars whose own pipeline labels lie near the training set's are
#: labelled (``[preselect]``, cut 2.5), and the label uncertainty due to the finite
#: reference set comes from 20 bootstrap models, each cross-validated (``[bootstrap]``).
#: ``"none"``: neither.
PRESETS: dict[str, dict[str, dict]] = {
    "ho2017": {"preselect": {"enabled": True}, "bootstrap": {"enabled": True}},
    "none": {"preselect": {"enabled": False}, "bootstrap": {"enabled": False}},
}

#: Default configuration; ``None`` marks a required value. Sections and keys not listed
#: here are rejected (typos fail loudly).
DEFAULTS: dict = {
    "label_names": None,
    "output": "transfer_output",
    "seed": 0,
    "preset": "ho2017",
    "reference": {
        "name": "REF",
        "catalogue": None,
        "id_column": None,
        "ra_column": "RA",
        "dec_column": "DEC",
        "labels": None,
        "errors": {},
        "missing_values": [-9999.0],
    },
    "target": {
        "name": "TARGET",
        "spectra": None,
        "format": None,
        "reader": {},
        "ra_column": "ra",
        "dec_column": "dec",
        "catalogue": None,
        "catalogue_id_column": None,
        "labels": {},
        "errors": {},
    },
    "preprocess": {
        "wavelength_range": None,
        "log10_step": None,
        "rest_frame": "auto",
        "reject_bits": [],
        "mask_windows_observed": [],
        "mask_windows_rest": [],
        "normalise_L": 50.0,
        "variance": "propagate",
        "min_good_fraction": 0.5,
    },
    "crossmatch": {
        "method": "sky",
        "tolerance_arcsec": 1.0,
        "ambiguous": "reject",
        "duplicates": "reject",
        "target_id_column": "ID",
    },
    "cuts": {},
    "cleanup": {
        "enabled": True,
        "n_sigma": 4.0,
        "max_iter": 5,
        "mode": "cv",
        "n_folds": 5,
        "scatter": "binned",
    },
    "train": {
        "order": 2,
        "regularization": 0.0,
        "holdout_fraction": 0.0,
    },
    "validate": {
        "enabled": True,
        "n_folds": 8,
        "n_jobs": 1,
    },
    "preselect": {
        "enabled": None,
        "cut": 2.5,
        "n_neighbours": 1,
    },
    "infer": {
        "n_starts": None,
        "chunk_size": 2000,
    },
    "bootstrap": {
        "enabled": None,
        "n_models": 20,
        "n_folds": None,
    },
    "evaluate": {
        "truth": None,
        "id_column": None,
        "labels": {},
        "offsets": {},
    },
}

# configuration sections each step depends on (cumulative along STEPS)
_STEP_SECTIONS = {
    "read": ["target"],
    "preprocess": ["preprocess"],
    "crossmatch": ["reference", "crossmatch", "label_names"],
    "cuts": ["cuts"],
    "cleanup": ["cleanup", "seed", "train"],
    "train": [],
    "validate": ["validate"],
    "infer": ["preselect", "infer"],
    "bootstrap": ["bootstrap"],
    "catalogue": [],
    "evaluate": ["evaluate"],
}

_STEP_DIRS = {name: f"{i + 1:02d}_{name}" for i, name in enumerate(STEPS)}
_FAILED_FIT = int(StarFlag.NO_PIXELS | StarFlag.NOT_CONVERGED)
_EXCLUDED_NAMES = ("ID", "FILE", "STEP", "LABELLED", "REASON")


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------


def _jsonable(value):
    """numpy scalars/arrays and paths -> plain JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if np.isfinite(v) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _write_json(path: Path, data) -> Path:
    """``data`` (numpy values and paths allowed) as indented JSON, atomically."""
    return write_json(path, _jsonable(data), overwrite=True)  # a re-run step replaces its output


def _write_netcdf(ds: xr.Dataset, path: Path) -> Path:
    """Any xarray Dataset to netCDF, atomically."""
    with atomic_path(path, overwrite=True) as tmp:  # a re-run step replaces its output
        ds.to_netcdf(tmp, engine="h5netcdf")
    return Path(path)


def _excluded_table(rows: Sequence[tuple]) -> Table:
    """Rows (ID, FILE, STEP, LABELLED, REASON) as a table (typed even when empty)."""
    cols = list(zip(*rows)) if rows else [[], [], [], [], []]
    return Table(
        [
            np.asarray(cols[0], dtype=str),
            np.asarray(cols[1], dtype=str),
            np.asarray(cols[2], dtype=str),
            np.asarray(cols[3], dtype=bool),
            np.asarray(cols[4], dtype=str),
        ],
        names=_EXCLUDED_NAMES,
    )


def _as_float(col) -> np.ndarray:
    """A table column as float64 with masked entries as NaN."""
    if isinstance(col, MaskedColumn) or hasattr(col, "mask"):
        try:
            return np.asarray(col.filled(np.nan), dtype=np.float64)
        except (TypeError, ValueError):
            pass
    return np.asarray(col, dtype=np.float64)


def _str_ids(col) -> np.ndarray:
    data = col.filled("") if hasattr(col, "filled") else col
    data = np.asarray(data)
    if data.dtype.kind == "S":
        data = np.char.decode(data, "ascii", errors="replace")
    if data.dtype.kind == "f":
        data = np.where(np.isfinite(data), data, -1).astype(np.int64)
    return np.char.strip(data.astype(str))


def _merge(defaults: Mapping, given: Mapping, where: str) -> dict:
    """Deep-merge ``given`` into a copy of ``defaults``; unknown keys raise."""
    out = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise InvalidInputError(f"unknown configuration key '{where}{key}'; known keys: {known}")
        if isinstance(defaults[key], dict) and defaults[key] and not isinstance(value, Mapping):
            raise InvalidInputError(f"configuration {where}{key!r} must be a table (section); got {value!r}")
        if isinstance(defaults[key], dict) and defaults[key]:
            out[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------


class TransferConfig:
    """Validated configuration of a label-transfer run.

    Parameters
    ----------
    data : mapping
        Parsed TOML (see :data:`DEFAULTS` for the keys and ``examples/transfer.toml``).
    base_dir : str or path-like, optional
        Folder against which relative paths are resolved (the configuration file's
        folder when built with :meth:`from_toml`; default: the working directory).

    Attributes
    ----------
    data : dict
        The configuration with defaults filled in.
    base_dir, output_dir : pathlib.Path
    label_names : list of str

    Raises
    ------
    InvalidInputError
        Unknown keys, missing required values, or values of the wrong kind.
    """

    def __init__(self, data: Mapping, base_dir=None):
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"configuration must be a mapping; got {type(data).__name__}")
        self.base_dir = Path(base_dir if base_dir is not None else os.getcwd()).resolve()
        self.data = _merge(DEFAULTS, data, "")
        preset = self.data["preset"]
        if preset not in PRESETS:
            raise InvalidInputError(f"preset must be one of {sorted(PRESETS)}; got {preset!r}")
        for section, values in PRESETS[preset].items():
            for key, value in values.items():
                if self.data[section][key] is None:
                    self.data[section][key] = value
        self.has_evaluate = "evaluate" in data
        d = self.data
        names = d["label_names"]
        if not names or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
            raise InvalidInputError("label_names must be a non-empty list of label names, e.g. ['TEFF', 'LOGG']")
        if len(set(names)) != len(names):
            raise InvalidInputError(f"label_names has duplicates: {names}")
        self.label_names = list(names)
        ref, tgt = d["reference"], d["target"]
        for section, key in (("reference", "catalogue"), ("reference", "labels"), ("target", "spectra")):
            if not d[section][key]:
                raise InvalidInputError(f"configuration [{section}] needs {key!r}")
        if not isinstance(ref["labels"], Mapping):
            raise InvalidInputError("[reference] labels must map label names to catalogue columns")
        missing = [n for n in names if n not in ref["labels"]]
        if missing:
            raise InvalidInputError(
                f"[reference] labels gives no catalogue column for {missing}; every label in "
                f'label_names needs one (e.g. TEFF = "TEFF")'
            )
        for section in ("reference", "target"):
            for key in ("labels", "errors"):
                extra = [n for n in d[section][key] if n not in names]
                if extra:
                    raise InvalidInputError(f"[{section}] {key} names labels not in label_names: {extra}")
        if d["crossmatch"]["method"] not in ("sky", "id"):
            raise InvalidInputError(f"[crossmatch] method must be 'sky' or 'id'; got {d['crossmatch']['method']!r}")
        if d["crossmatch"]["method"] == "id" and not ref["id_column"]:
            raise InvalidInputError("[crossmatch] method = 'id' needs [reference] id_column")
        if tgt["catalogue"] and not tgt["catalogue_id_column"]:
            raise InvalidInputError("[target] catalogue needs catalogue_id_column (the column holding the spectra ids)")
        if d["preprocess"]["rest_frame"] not in ("auto", "redshift", "rv", "none"):
            raise InvalidInputError(
                f"[preprocess] rest_frame must be 'auto', 'redshift', 'rv' or 'none'; got {d['preprocess']['rest_frame']!r}"
            )
        frac = d["train"]["holdout_fraction"]
        if not (isinstance(frac, (int, float)) and 0.0 <= frac < 1.0):
            raise InvalidInputError(f"[train] holdout_fraction must be in [0, 1); got {frac!r}")
        mg = d["preprocess"]["min_good_fraction"]
        if not (isinstance(mg, (int, float)) and 0.0 <= mg <= 1.0):
            raise InvalidInputError(f"[preprocess] min_good_fraction must be in [0, 1]; got {mg!r}")
        if self.has_evaluate and not d["evaluate"]["truth"]:
            raise InvalidInputError("[evaluate] needs 'truth' (a table of true labels)")
        if self.has_evaluate and not d["evaluate"]["id_column"]:
            raise InvalidInputError("[evaluate] needs 'id_column' (the truth column matching the spectra ids)")
        pre = d["preselect"]
        if not isinstance(pre["enabled"], bool):
            raise InvalidInputError(f"[preselect] enabled must be true or false; got {pre['enabled']!r}")
        if not (isinstance(pre["cut"], (int, float)) and pre["cut"] > 0):
            raise InvalidInputError(f"[preselect] cut must be a number > 0; got {pre['cut']!r}")
        if not (isinstance(pre["n_neighbours"], int) and pre["n_neighbours"] >= 1):
            raise InvalidInputError(f"[preselect] n_neighbours must be an integer >= 1; got {pre['n_neighbours']!r}")
        boot = d["bootstrap"]
        if not isinstance(boot["enabled"], bool):
            raise InvalidInputError(f"[bootstrap] enabled must be true or false; got {boot['enabled']!r}")
        if not (isinstance(boot["n_models"], int) and boot["n_models"] >= 2):
            raise InvalidInputError(f"[bootstrap] n_models must be an integer >= 2; got {boot['n_models']!r}")
        if boot["n_folds"] is not None and not (isinstance(boot["n_folds"], int) and boot["n_folds"] >= 2):
            raise InvalidInputError(f"[bootstrap] n_folds must be an integer >= 2 (or unset); got {boot['n_folds']!r}")
        if d["cuts"]:
            QualityCuts.from_dict(d["cuts"])  # validate now, not after an hour of reading
        self.output_dir = self.path(d["output"])

    @classmethod
    def from_toml(cls, path) -> TransferConfig:
        """Read a TOML configuration file (relative paths are relative to it).

        Raises
        ------
        InvalidInputError
            Missing file or invalid TOML.
        """
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"configuration file {path} does not exist")
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise InvalidInputError(f"{path}: invalid TOML ({exc})") from exc
        return cls(data, base_dir=path.parent)

    def path(self, value) -> Path:
        """``value`` resolved against :attr:`base_dir`."""
        p = Path(os.path.expanduser(str(value)))
        return p if p.is_absolute() else self.base_dir / p

    def sections(self, step: str) -> dict:
        """The configuration sections that ``step`` and the steps before it use (JSON-able)."""
        keys: list[str] = []
        for s in STEPS[: STEPS.index(step) + 1]:
            keys.extend(_STEP_SECTIONS[s])
        return _jsonable({k: self.data[k] for k in keys})

    def digest(self, step: str) -> str:
        """Digest of the configuration sections that ``step`` and the steps before it use."""
        text = json.dumps(self.sections(step), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
