"""End-to-end label transfer from survey X to survey Y (Ho et al. 2017), step by step.

Ho+2017 put APOGEE labels on LAMOST spectra: the stars observed by both surveys (the
*reference set*) train a Cannon model on their LAMOST spectra with their APOGEE labels;
the model then gives every LAMOST spectrum labels on the APOGEE scale, including
[alpha/M], which the LAMOST pipeline does not measure. :class:`TransferPipeline` runs
this from survey files to a catalogue, driven by one TOML file
(:class:`TransferConfig`; annotated example: ``examples/transfer.toml``; guide:
``docs/transfer.md``).

Steps (:data:`STEPS`), each reading only what earlier steps saved on disk, so that any
step can be run alone and re-run from its saved inputs:

``read``
    every survey-Y spectrum file, one at a time: files that cannot be read (not FITS,
    truncated, missing keywords, wavelengths not increasing ...) and files claiming an
    identifier that another file claims too are skipped with the reason; the rest are
    grouped by wavelength grid.
``preprocess``
    survey mask bits -> ``ivar = 0``; shift to the rest frame with each star's
    redshift (LAMOST ``Z``) and resample onto one log-linear grid; mask observed-frame
    sky and telluric windows; Ho+2017 normalisation (Gaussian-smoothed continuum,
    ``L = 50`` A). Stars with no valid redshift, a grid that does not overlap the
    common grid, or too few usable pixels are excluded with the reason.
``crossmatch``
    the preprocessed stars (positions from their headers) against the survey-X
    catalogue, by sky position or by identifier (:mod:`bayescannon.survey.reference`);
    ambiguous matches are excluded from the reference set with the reason; survey Y's
    own pipeline labels are attached (for comparison only).
``cuts``
    declarative quality cuts (:class:`bayescannon.survey.reference.QualityCuts`) on the
    matched table; finite reference labels are always required.
``cleanup``
    optional hold-out of a fraction of the reference set, then the iterative clean-up
    of Ho+2017 section 3 (:func:`bayescannon.survey.cleanup.clean_reference_set`).
``train``
    :class:`bayescannon.model.CannonModel` on the cleaned reference set.
``validate``
    k-fold cross-validation of the reference set (:func:`bayescannon.validate.cross_validate`).
``infer``
    labels of every preprocessed survey-Y star.
``catalogue``
    the FITS catalogue (``<output>/catalogue.fits``): transferred labels, errors,
    flags, positions, the survey's own labels, reference labels and the role of each
    star in the reference set; ``<output>/excluded.fits`` lists every file and star
    that was skipped or excluded anywhere, with the step and the reason;
    ``<output>/summary.json`` the counts and the validation statistics.
``evaluate``
    only with an ``[evaluate]`` section (mocks): transferred and survey-Y labels of
    the stars that were not in the training set against the true labels, and the
    simulated pipeline offsets.

Every output is written atomically (temporary file + :func:`os.replace`); a step's
``done.json`` (written last) records what it wrote, its counts, and a digest of the
configuration it ran with, so a later step warns when its inputs came from a different
configuration.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import logging
import os
import time
import tomllib
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from astropy.table import MaskedColumn, Table

from bayescannon.errors import GridMismatchError, InsufficientDataError, InvalidInputError, LabelError, SurveyFormatError
from bayescannon.flags import StarFlag
from bayescannon.survey.reference import QualityCuts
from bayescannon.survey.catalogue import write_table
from bayescannon.io import read_spectra
from bayescannon.model import CannonModel
from bayescannon.io import write_spectra
from bayescannon.spectra import make_spectra
from bayescannon.preprocess.steps import mask_bits, mask_windows, normalise_ho2017, resample, to_rest_frame
from bayescannon.preprocess.steps import snr as pixel_snr
from bayescannon.io import read_labels
from bayescannon.survey.reference import crossmatch_ids
from bayescannon.survey.reference import crossmatch_sky
from bayescannon.survey.reference import apply_cuts
from bayescannon.survey.cleanup import clean_reference_set
from bayescannon.validate.crossval import cross_validate
from bayescannon.survey.catalogue import result_to_table

logger = logging.getLogger(__name__)

__all__ = [
    "STEPS",
    "DEFAULTS",
    "TransferConfig",
    "TransferPipeline",
    "run_transfer",
    "evaluate",
]

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
    "catalogue",
    "evaluate",
)

#: Default configuration; ``None`` marks a required value. Sections and keys not listed
#: here are rejected (typos fail loudly).
DEFAULTS: dict = {
    "label_names": None,
    "output": "transfer_output",
    "seed": 0,
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
        "scatter": "robust",
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
    "infer": {
        "n_starts": None,
        "chunk_size": 2000,
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
    "infer": ["infer"],
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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _write_netcdf(ds: xr.Dataset, path: Path) -> Path:
    """Any xarray Dataset to netCDF, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        ds.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


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
                f"label_names needs one (e.g. TEFF = \"TEFF\")"
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

    def digest(self, step: str) -> str:
        """Digest of the configuration sections that ``step`` and the steps before it use."""
        keys: list[str] = []
        for s in STEPS[: STEPS.index(step) + 1]:
            keys.extend(_STEP_SECTIONS[s])
        part = {k: self.data[k] for k in keys}
        text = json.dumps(_jsonable(part), sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


# --------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------


class TransferPipeline:
    """Run the label-transfer steps of a :class:`TransferConfig`.

    Parameters
    ----------
    config : TransferConfig, mapping, or path of a TOML file

    Examples
    --------
    >>> pipe = TransferPipeline("transfer.toml")          # doctest: +SKIP
    >>> pipe.run()                                        # every step  # doctest: +SKIP
    >>> pipe.run(start="cuts")                            # cuts and after  # doctest: +SKIP
    >>> pipe.run(only="catalogue")                        # one step  # doctest: +SKIP
    """

    def __init__(self, config):
        if isinstance(config, TransferConfig):
            self.config = config
        elif isinstance(config, Mapping):
            self.config = TransferConfig(config)
        else:
            self.config = TransferConfig.from_toml(config)
        self.output = self.config.output_dir

    # ---------------------------------------------------------------- bookkeeping
    def step_dir(self, step: str) -> Path:
        """Folder of a step's saved output."""
        if step not in STEPS:
            raise InvalidInputError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
        return self.output / _STEP_DIRS[step]

    def _done_path(self, step: str) -> Path:
        return self.step_dir(step) / "done.json"

    def is_done(self, step: str) -> bool:
        """Whether ``step`` has saved output."""
        return self._done_path(step).is_file()

    def manifest(self, step: str) -> dict:
        """The ``done.json`` of a finished step (warns when its configuration differs).

        Raises
        ------
        InvalidInputError
            When the step has no saved output.
        """
        path = self._done_path(step)
        if not path.is_file():
            raise InvalidInputError(
                f"step {step!r} has no saved output in {path.parent}: run the pipeline from "
                f"that step (bayescannon transfer CONFIG --from {step})"
            )
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InvalidInputError(f"{path} is unreadable ({exc}): re-run --from {step}") from exc
        if data.get("config_digest") != self.config.digest(step):
            logger.warning(
                "the saved output of step %r was made with a different configuration; "
                "re-run with --from %s to bring it up to date",
                step,
                step,
            )
        return data

    def _finish(self, step: str, summary: dict, t0: float) -> dict:
        summary = dict(summary)
        summary["step"] = step
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["config_digest"] = self.config.digest(step)
        summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write_json(self._done_path(step), summary)
        logger.info("step %s done in %.1f s", step, summary["seconds"])
        return summary

    def _write_excluded(self, step: str, rows) -> Path:
        table = _excluded_table(rows)

        return write_table(table, self.step_dir(step) / "excluded.fits")

    def _read_table(self, step: str, name: str) -> Table:
        path = self.step_dir(step) / name
        if not path.is_file():
            raise InvalidInputError(f"{path} is missing: re-run the pipeline --from {step}")
        return Table.read(path)

    def steps_to_run(self, start: str | None = None, only: str | None = None) -> list[str]:
        """The steps :meth:`run` would run."""
        for s in (start, only):
            if s is not None and s not in STEPS:
                raise InvalidInputError(f"unknown step {s!r}; steps are {', '.join(STEPS)}")
        if only is not None and start is not None:
            raise InvalidInputError("give either a single step (only) or a first step (start), not both")
        if only is not None:
            return [only]
        steps = list(STEPS[STEPS.index(start):] if start else STEPS)
        if not self.config.has_evaluate and "evaluate" in steps:
            steps.remove("evaluate")
        return steps

    def run(self, start: str | None = None, only: str | None = None) -> dict:
        """Run steps: all (default), ``start`` and the ones after it, or ``only`` one.

        Parameters
        ----------
        start : str, optional
            First step to run (later steps follow).
        only : str, optional
            The one step to run (its inputs must have been saved before).

        Returns
        -------
        dict
            Step name -> the summary saved in its ``done.json``.
        """
        out = {}
        for step in self.steps_to_run(start, only):
            out[step] = self.run_step(step)
        return out

    def run_step(self, step: str) -> dict:
        """Run one step from the saved output of the steps before it."""
        if step not in STEPS:
            raise InvalidInputError(f"unknown step {step!r}; steps are {', '.join(STEPS)}")
        if step == "evaluate" and not self.config.has_evaluate:
            raise InvalidInputError("the configuration has no [evaluate] section")
        self.step_dir(step).mkdir(parents=True, exist_ok=True)
        logger.info("step %s", step)
        t0 = time.perf_counter()
        summary = getattr(self, f"_step_{step}")()
        return self._finish(step, summary, t0)

    # ---------------------------------------------------------------- shared loaders
    def _spectra_paths(self) -> list[Path]:
        spec = self.config.data["target"]["spectra"]
        patterns = [spec] if isinstance(spec, str) else list(spec)
        paths: list[Path] = []
        for pattern in patterns:
            p = self.config.path(pattern)
            if p.is_dir():
                found = sorted(q for q in p.iterdir() if q.is_file() and not q.name.startswith("."))
            else:
                found = sorted(Path(q) for q in glob.glob(str(p)))
            if not found:
                logger.warning("no spectra file matches %s", p)
            paths.extend(found)
        unique = sorted(set(paths), key=lambda q: str(q))
        if not unique:
            raise InvalidInputError(f"[target] spectra {patterns} match no file (relative to {self.config.base_dir})")
        return unique

    def _load_preprocessed(self) -> xr.Dataset:
        self.manifest("preprocess")

        return read_spectra(self.step_dir("preprocess") / "spectra.nc")

    def _model_template(self):

        tr = self.config.data["train"]
        return CannonModel(
            self.config.label_names,
            int(tr["order"]),
            regularization=float(tr["regularization"]),
            random_state=int(self.config.data["seed"]),
        )

    def _select(self, ds: xr.Dataset, ids) -> xr.Dataset:
        """Stars ``ids`` of ``ds``, in that order (all must be there)."""
        star = np.asarray(ds["star"].values).astype(str)
        index = {s: i for i, s in enumerate(star)}
        ids = np.asarray(ids).astype(str)
        missing = [s for s in ids if s not in index]
        if missing:
            raise InvalidInputError(
                f"{len(missing)} star(s) of the reference set are not in the preprocessed spectra "
                f"(e.g. {', '.join(missing[:3])}): re-run the pipeline --from preprocess"
            )
        return ds.isel(star=np.asarray([index[s] for s in ids], dtype=np.intp))

    def _labels_of(self, table: Table) -> np.ndarray:
        return np.column_stack([_as_float(table[f"REF_{n}"]) for n in self.config.label_names])

    # ---------------------------------------------------------------- step: read
    def _step_read(self) -> dict:

        tgt = self.config.data["target"]
        paths = self._spectra_paths()
        fmt = tgt["format"]
        reader_kwargs = dict(tgt["reader"] or {})
        records: list[dict] = []
        skipped: list[tuple] = []
        for path in paths:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    one = read_spectra(path, format=fmt, **reader_kwargs)
                except (SurveyFormatError, InvalidInputError, OSError) as exc:
                    # the star's id is in the file we could not read: the file stem stands in
                    skipped.append((path.stem, path.name, "read", False,
                                    f"{type(exc).__name__}: {exc} (ID is the file stem)"))
                    continue
            notes = "; ".join(sorted({str(w.message) for w in caught}))
            if notes:
                logger.warning("%s: %s", path.name, notes)
            per_star = [k for k, v in one.data_vars.items() if v.dims == ("star",)]
            wl = np.asarray(one["wavelength"].values, dtype=np.float64)
            for i in range(one.sizes["star"]):
                records.append(
                    {
                        "id": str(one["star"].values[i]),
                        "path": path,
                        "wavelength": wl,
                        "flux": np.asarray(one["flux"].values[i], dtype=np.float64),
                        "ivar": np.asarray(one["ivar"].values[i], dtype=np.float64),
                        "mask": None if "mask" not in one else np.asarray(one["mask"].values[i]),
                        "extras": {k: one[k].values[i] for k in per_star},
                        "attrs": dict(one.attrs),
                        "wl_attrs": dict(one["wavelength"].attrs),
                        "notes": notes,
                    }
                )
        # an id claimed by several files: none of them can be trusted to be the star
        claims: dict[str, list[int]] = {}
        for i, rec in enumerate(records):
            claims.setdefault(rec["id"], []).append(i)
        drop = set()
        for sid, idx in claims.items():
            if len(idx) > 1:
                files = ", ".join(records[i]["path"].name for i in idx)
                for i in idx:
                    drop.add(i)
                    skipped.append(
                        (sid, records[i]["path"].name, "read", False,
                         f"duplicated id: {sid!r} is claimed by {len(idx)} files ({files}); none is used")
                    )
        records = [r for i, r in enumerate(records) if i not in drop]
        self._write_excluded("read", skipped)
        if skipped:
            logger.warning(
                "read: skipped %d of %d file(s)/star(s); first: %s", len(skipped), len(paths), skipped[0][4]
            )
        if not records:
            raise InvalidInputError(
                f"none of the {len(paths)} spectra files could be used; first problem: "
                f"{skipped[0][4] if skipped else 'none'} (see {self.step_dir('read') / 'excluded.fits'})"
            )
        # group by wavelength grid (files of one survey usually share one)
        groups: dict[bytes, list[int]] = {}
        for i, rec in enumerate(records):
            groups.setdefault(np.ascontiguousarray(rec["wavelength"]).tobytes(), []).append(i)
        files = []
        for g, idx in enumerate(sorted(groups.values(), key=len, reverse=True)):
            recs = [records[i] for i in idx]
            keys: list[str] = []
            for r in recs:
                keys.extend(k for k in r["extras"] if k not in keys)
            extras = {}
            for k in keys:
                vals = [r["extras"].get(k, None) for r in recs]
                kinds = {np.asarray(v).dtype.kind for v in vals if v is not None}
                if kinds & {"U", "S", "O"}:
                    extras[k] = np.asarray(["" if v is None else str(v) for v in vals], dtype=str)
                elif kinds <= {"b"} and None not in vals:
                    extras[k] = np.asarray(vals, dtype=bool)
                elif kinds <= {"i", "u"} and None not in vals:
                    extras[k] = np.asarray(vals, dtype=np.int64)
                else:
                    extras[k] = np.asarray([np.nan if v is None else v for v in vals], dtype=np.float64)
            extras["source_file"] = np.asarray([r["path"].name for r in recs], dtype=str)
            has_mask = any(r["mask"] is not None for r in recs)
            mask = None
            if has_mask:
                mask = np.stack([
                    np.zeros(r["flux"].size, np.uint32) if r["mask"] is None else np.asarray(r["mask"], np.uint32)
                    for r in recs
                ])
            attrs = {k: v for k, v in recs[0]["attrs"].items() if k != "history"}
            attrs["history"] = f"bayescannon.survey.transfer read: {len(recs)} file(s)"
            ds = make_spectra(
                recs[0]["wavelength"],
                np.stack([r["flux"] for r in recs]),
                np.stack([r["ivar"] for r in recs]),
                ids=[r["id"] for r in recs],
                mask=mask,
                attrs=attrs,
                **extras,
            )
            ds["wavelength"].attrs.update(recs[0]["wl_attrs"])
            name = f"spectra_g{g:03d}.nc"
            write_spectra(ds, self.step_dir("read") / name, overwrite=True)
            files.append(name)
            wl = recs[0]["wavelength"]
            logger.info("read: group %d: %d spectra, %d pixels %.1f-%.1f A", g, len(recs), wl.size, wl[0], wl[-1])
        return {
            "n_files": len(paths),
            "n_stars": len(records),
            "n_skipped": len(skipped),
            "groups": files,
        }

    # ---------------------------------------------------------------- step: preprocess
    def _target_grid(self, groups: list[xr.Dataset]) -> np.ndarray:
        pp = self.config.data["preprocess"]
        rng = pp["wavelength_range"]
        step = pp["log10_step"]
        big = max(groups, key=lambda d: d.sizes["star"])
        wl = np.asarray(big["wavelength"].values, dtype=np.float64)
        if step is None:
            step = float(np.median(np.diff(np.log10(wl))))
        if rng is None:
            z = np.zeros(1)
            for col in ("redshift",):
                if col in big:
                    zz = np.asarray(big[col].values, dtype=float)
                    z = zz[np.isfinite(zz)] if np.isfinite(zz).any() else z
            if "rv" in big and not ("redshift" in big):
                vv = np.asarray(big["rv"].values, dtype=float) / 299_792.458
                z = vv[np.isfinite(vv)] if np.isfinite(vv).any() else z
            zmax = float(min(np.max(np.abs(z)), 0.01))
            rng = (wl[0] * (1.0 + zmax), wl[-1] / (1.0 + zmax))
        lo, hi = float(rng[0]), float(rng[1])
        if not (0 < lo < hi) or not (step > 0):
            raise InvalidInputError(
                f"[preprocess] wavelength_range must be (lo, hi) with 0 < lo < hi and log10_step > 0; "
                f"got {rng} and {step}"
            )
        n = int(np.floor(np.log10(hi / lo) / step + 1e-9)) + 1
        if n < 2:
            raise InvalidInputError(f"[preprocess] the grid {lo}-{hi} A with log10_step {step} has fewer than 2 pixels")
        return 10.0 ** (np.log10(lo) + step * np.arange(n))

    def _preprocess_group(self, ds: xr.Dataset, grid: np.ndarray) -> tuple[xr.Dataset, dict]:
        """One grid group through the preprocessing steps; returns (container, reasons)."""

        pp = self.config.data["preprocess"]
        reasons: dict[str, str] = {}
        ids = np.asarray(ds["star"].values).astype(str)
        if pp["reject_bits"] and "mask" in ds:
            ds = mask_bits(ds, pp["reject_bits"])
        frame = ds["wavelength"].attrs.get("frame", "observed")
        how = pp["rest_frame"]
        if how == "auto":
            how = "none" if frame == "rest" else "redshift" if "redshift" in ds else "rv" if "rv" in ds else "missing"
        if how == "missing":
            raise InvalidInputError("spectra are in the observed frame and have no redshift or rv column")
        if how == "none":
            out = resample(ds, grid, variance=pp["variance"])
        else:
            if how not in ds:
                raise InvalidInputError(f"[preprocess] rest_frame = {how!r} but the spectra have no {how!r} column")
            v = np.asarray(ds[how].values, dtype=np.float64)
            bad = ~np.isfinite(v)
            for s in ids[bad]:
                reasons[s] = f"no valid {how} (missing or -9999 in the file): cannot shift to the rest frame"
            kw = {"redshift": v} if how == "redshift" else {"rv": v}
            out = to_rest_frame(ds, new_wavelength=grid, variance=pp["variance"], force=True, **kw)
        if pp["mask_windows_observed"]:
            col = "redshift" if "redshift" in out else "rv" if "rv" in out else None
            if how == "none" or col is None:
                out = mask_windows(out, pp["mask_windows_observed"])
            else:
                out = mask_windows(out, pp["mask_windows_observed"], frame="observed")
        if pp["mask_windows_rest"]:
            out = mask_windows(out, pp["mask_windows_rest"])
        L = pp["normalise_L"]
        if L and not bool(ds.attrs.get("normalised", False)):
            out = normalise_ho2017(out, float(L))
        return out, reasons

    def _step_preprocess(self) -> dict:

        man = self.manifest("read")
        pp = self.config.data["preprocess"]
        groups = [read_spectra(self.step_dir("read") / name) for name in man["groups"]]
        grid = self._target_grid(groups)
        excluded: list[tuple] = []
        parts = []
        for ds in groups:
            ids = np.asarray(ds["star"].values).astype(str)
            files = np.asarray(ds["source_file"].values).astype(str) if "source_file" in ds else np.full(ids.size, "")
            wl = np.asarray(ds["wavelength"].values)
            try:
                out, reasons = self._preprocess_group(ds, grid)
            except (GridMismatchError, InvalidInputError) as exc:
                if isinstance(exc, GridMismatchError):
                    why = (f"wavelength grid {wl[0]:.1f}-{wl[-1]:.1f} A does not overlap the common "
                           f"grid {grid[0]:.1f}-{grid[-1]:.1f} A")
                else:
                    why = f"cannot be preprocessed: {exc}"
                logger.warning("preprocess: %d star(s) excluded: %s", ids.size, why)
                excluded.extend((s, f, "preprocess", False, why) for s, f in zip(ids, files, strict=True))
                continue
            ivar = np.asarray(out["ivar"].values)
            good = (ivar > 0).mean(axis=1)
            keep = good >= float(pp["min_good_fraction"])
            if float(pp["min_good_fraction"]) == 0.0:
                keep &= good > 0
            for j in np.flatnonzero(~keep):
                why = reasons.get(ids[j])
                if why is None:
                    if good[j] == 0:
                        why = "no usable pixel after preprocessing (every pixel masked)"
                    else:
                        why = (f"only {good[j]:.0%} of the pixels are usable after preprocessing "
                               f"(min_good_fraction = {float(pp['min_good_fraction']):.0%})")
                excluded.append((ids[j], files[j], "preprocess", False, why))
            if keep.any():
                part = out.isel(star=np.flatnonzero(keep))
                part = part.assign(good_fraction=("star", good[keep]), snr_pixels=("star", pixel_snr(part)))
                parts.append(part)
        self._write_excluded("preprocess", excluded)
        if excluded:
            logger.warning("preprocess: excluded %d star(s); first: %s: %s", len(excluded), excluded[0][0],
                           excluded[0][4])
        if not parts:
            raise InsufficientDataError("no star is left after preprocessing (see the excluded table)")
        # stack the groups (same grid now)
        keys: list[str] = []
        for p in parts:
            keys.extend(k for k, v in p.data_vars.items() if v.dims == ("star",) and k not in keys)
        extras = {}
        for k in keys:
            cols = []
            for p in parts:
                if k in p:
                    cols.append(np.asarray(p[k].values))
                else:
                    cols.append(np.full(p.sizes["star"], np.nan))
            kinds = {c.dtype.kind for c in cols}
            if kinds & {"U", "S", "O"}:
                cols = [c.astype(str) for c in cols]
            extras[k] = np.concatenate(cols)
        extras.pop("all_masked", None)
        mask = None
        if all("mask" in p for p in parts):
            mask = np.concatenate([np.asarray(p["mask"].values) for p in parts])
        attrs = {k: v for k, v in parts[0].attrs.items()}
        attrs["normalised"] = int(bool(attrs.get("normalised", False)))
        ds = make_spectra(
            grid,
            np.concatenate([np.asarray(p["flux"].values) for p in parts]),
            np.concatenate([np.asarray(p["ivar"].values) for p in parts]),
            ids=np.concatenate([np.asarray(p["star"].values).astype(str) for p in parts]),
            mask=mask,
            attrs=attrs,
            **extras,
        )
        ds["wavelength"].attrs.update(dict(parts[0]["wavelength"].attrs))
        ds["wavelength"].attrs["frame"] = "rest"
        write_spectra(ds, self.step_dir("preprocess") / "spectra.nc", overwrite=True)
        return {
            "n_stars": int(ds.sizes["star"]),
            "n_excluded": len(excluded),
            "n_pixels": int(grid.size),
            "wavelength_range": [float(grid[0]), float(grid[-1])],
            "log10_step": float(np.log10(grid[1] / grid[0])),
        }

    # ---------------------------------------------------------------- step: crossmatch
    def _targets_table(self, ds: xr.Dataset) -> Table:
        """One row per preprocessed star: ID, per-star columns, survey-Y pipeline labels."""

        t = Table()
        t["ID"] = np.asarray(ds["star"].values).astype(str)
        for k, v in ds.data_vars.items():
            if v.dims == ("star",) and k not in ("ID",):
                t[k] = np.asarray(v.values)
        tgt = self.config.data["target"]
        tname = tgt["name"]
        if tgt["catalogue"]:
            cat = read_labels(self.config.path(tgt["catalogue"]), id_column=tgt["catalogue_id_column"])
            cat.meta.clear()  # see _step_crossmatch: no EXTNAME merge conflicts in hstack
            cols = {**{n: c for n, c in tgt["labels"].items()}}
            missing = [c for c in list(cols.values()) + list(tgt["errors"].values()) if c not in cat.colnames]
            if missing:
                raise LabelError(f"[target] catalogue {tgt['catalogue']} has no column(s) {missing}")
            matched, rejected = crossmatch_ids(t, cat, "ID", tgt["catalogue_id_column"], duplicates="reject")
            dup = [r for r in rejected if r["table"] == "b" and str(r["reason"]).startswith("duplicated")]
            if dup:
                logger.warning("[target] catalogue: %d rows with duplicated ids ignored", len(dup))
            rows_a = np.asarray(matched["row_a"], dtype=np.intp)
            rows_b = np.asarray(matched["row_b"], dtype=np.intp)
            for name, col in cols.items():
                vals = np.full(len(t), np.nan)
                vals[rows_a] = _as_float(cat[col])[rows_b]
                t[f"{tname}_{name}"] = MaskedColumn(vals, mask=~np.isfinite(vals))
            for name, col in tgt["errors"].items():
                vals = np.full(len(t), np.nan)
                vals[rows_a] = _as_float(cat[col])[rows_b]
                t[f"{tname}_e_{name}"] = MaskedColumn(vals, mask=~np.isfinite(vals))
            logger.info("crossmatch: %d of %d stars found in the %s catalogue", rows_a.size, len(t), tname)
        return t

    def _step_crossmatch(self) -> dict:

        ds = self._load_preprocessed()
        targets = self._targets_table(ds)
        ref_cfg = self.config.data["reference"]
        xm = self.config.data["crossmatch"]
        ref = read_labels(self.config.path(ref_cfg["catalogue"]), id_column=ref_cfg["id_column"],
                          missing_values=tuple(ref_cfg["missing_values"]))
        # reference.crossmatch_* hstack the tables and astropy warns (MergeConflictWarning)
        # when both carry an EXTNAME: the matched table needs no catalogue metadata
        ref.meta.clear()
        targets.meta.clear()
        need = list(ref_cfg["labels"].values()) + list(ref_cfg["errors"].values())
        if xm["method"] == "sky":
            need += [ref_cfg["ra_column"], ref_cfg["dec_column"]]
        missing = [c for c in need if c not in ref.colnames]
        if missing:
            raise LabelError(
                f"[reference] catalogue {ref_cfg['catalogue']} has no column(s) {missing}; "
                f"columns are {', '.join(ref.colnames[:30])}"
            )
        if xm["method"] == "sky":
            tgt = self.config.data["target"]
            for c in (tgt["ra_column"], tgt["dec_column"]):
                if c not in targets.colnames:
                    raise InvalidInputError(
                        f"[crossmatch] method = 'sky' needs the spectra column {c!r} (from the file headers); "
                        "set [target] ra_column/dec_column or use method = 'id'"
                    )
            matched, rejected = crossmatch_sky(
                targets, ref, float(xm["tolerance_arcsec"]), ra_a=tgt["ra_column"], dec_a=tgt["dec_column"],
                ra_b=ref_cfg["ra_column"], dec_b=ref_cfg["dec_column"], id_a="ID", ambiguous=xm["ambiguous"],
            )
        else:
            col = xm["target_id_column"]
            if col not in targets.colnames:
                raise InvalidInputError(f"[crossmatch] target_id_column {col!r} is not a column of the spectra table")
            matched, rejected = crossmatch_ids(targets, ref, col, ref_cfg["id_column"], duplicates=xm["duplicates"])
        rows_a = np.asarray(matched["row_a"], dtype=np.intp)
        rows_b = np.asarray(matched["row_b"], dtype=np.intp)
        # matched table: target columns, then reference columns (renamed on clashes), then
        # the reference labels under fixed names REF_<label>
        out = targets[rows_a]
        rname = ref_cfg["name"]
        sub = ref[rows_b]
        for c in sub.colnames:
            name = c if c not in out.colnames else f"{c}_{rname}"
            out[name] = sub[c]
        for extra in ("sep_arcsec", "n_candidates"):
            if extra in matched.colnames:
                out[extra] = matched[extra]
        out["REF_ID"] = _str_ids(sub[ref_cfg["id_column"]]) if ref_cfg["id_column"] else np.asarray(rows_b).astype(str)
        for n in self.config.label_names:
            vals = _as_float(sub[ref_cfg["labels"][n]])
            vals = np.where(np.isin(vals, ref_cfg["missing_values"]), np.nan, vals)
            out[f"REF_{n}"] = MaskedColumn(vals, mask=~np.isfinite(vals))
            if n in ref_cfg["errors"]:
                e = _as_float(sub[ref_cfg["errors"][n]])
                e = np.where(np.isin(e, ref_cfg["missing_values"]), np.nan, e)
                out[f"REF_e_{n}"] = MaskedColumn(e, mask=~np.isfinite(e))
        # which stars are excluded from the reference set, and which simply have no partner
        excl = []
        for r in rejected:
            if r["table"] != "a":
                continue
            reason = str(r["reason"])
            if reason.startswith("no table_b row within") or reason == "no match in table_b":
                continue
            sid = str(targets["ID"][int(r["row"])])
            excl.append((sid, "", "crossmatch", True, reason.replace("table_b", f"{rname} catalogue")
                         .replace("table_a", "spectra")))
        self._write_excluded("crossmatch", excl)
        write_table(targets, self.step_dir("crossmatch") / "targets.fits")
        write_table(out, self.step_dir("crossmatch") / "matched.fits")
        write_table(rejected, self.step_dir("crossmatch") / "rejected.fits")
        if excl:
            logger.warning("crossmatch: %d star(s) kept out of the reference set; first: %s: %s",
                           len(excl), excl[0][0], excl[0][4])
        logger.info("crossmatch: %d of %d stars matched to the %s catalogue", len(out), len(targets), rname)
        return {"n_targets": len(targets), "n_matched": len(out), "n_excluded": len(excl)}

    # ---------------------------------------------------------------- step: cuts
    def _step_cuts(self) -> dict:

        self.manifest("crossmatch")
        matched = self._read_table("crossmatch", "matched.fits")
        spec = dict(self.config.data["cuts"])
        req = list(spec.get("require_finite", []))
        req += [f"REF_{n}" for n in self.config.label_names if f"REF_{n}" not in req]
        spec["require_finite"] = req
        cuts = QualityCuts.from_dict(spec)
        kept, excluded = apply_cuts(matched, cuts)
        rows = [(str(r["ID"]), "", "cuts", True, str(r["reason"])) for r in excluded]
        self._write_excluded("cuts", rows)
        write_table(kept, self.step_dir("cuts") / "reference.fits")
        _write_json(self.step_dir("cuts") / "cuts.json", cuts.to_dict())
        if rows:
            logger.warning("cuts: %d of %d matched star(s) fail the quality cuts; first: %s: %s",
                           len(rows), len(matched), rows[0][0], rows[0][4])
        if len(kept) == 0:
            raise InsufficientDataError(
                f"no star of the {len(matched)} cross-matched ones passes the quality cuts "
                f"(see {self.step_dir('cuts') / 'excluded.fits'})"
            )
        return {"n_in": len(matched), "n_kept": len(kept), "n_excluded": len(rows)}

    # ---------------------------------------------------------------- step: cleanup
    def _step_cleanup(self) -> dict:

        self.manifest("cuts")
        ref = self._read_table("cuts", "reference.fits")
        cfg = self.config.data["cleanup"]
        seed = int(self.config.data["seed"])
        n = len(ref)
        frac = float(self.config.data["train"]["holdout_fraction"])
        rng = np.random.default_rng(seed)
        n_hold = int(round(frac * n))
        hold = np.zeros(n, bool)
        hold[rng.permutation(n)[:n_hold]] = True
        keep_cols = ["ID", "REF_ID"] + [c for c in ref.colnames if c.startswith("REF_") and c != "REF_ID"]
        holdout = ref[hold][keep_cols]
        candidates = ref[~hold]
        rows: list[tuple] = []
        history = Table()
        if cfg["enabled"]:
            ds = self._select(self._load_preprocessed(), np.asarray(candidates["ID"]).astype(str))
            result = clean_reference_set(
                self._model_template(),
                np.asarray(ds["flux"].values),
                np.asarray(ds["ivar"].values),
                self._labels_of(candidates),
                ids=np.asarray(ds["star"].values).astype(str),
                wavelength=np.asarray(ds["wavelength"].values),
                n_sigma=float(cfg["n_sigma"]),
                max_iter=int(cfg["max_iter"]),
                mode=cfg["mode"],
                n_folds=int(cfg["n_folds"]),
                scatter=cfg["scatter"],
                random_state=seed,
                n_jobs=int(self.config.data["validate"]["n_jobs"]),
            )
            training = candidates[result.kept][keep_cols]
            rows = [(str(r["ID"]), "", "cleanup", True, str(r["REASON"])) for r in result.excluded]
            write_table(result.excluded, self.step_dir("cleanup") / "cleanup_details.fits")
            history = result.history
            write_table(history, self.step_dir("cleanup") / "history.fits")
            if rows:
                logger.warning("cleanup: %d reference star(s) dropped; first: %s: %s", len(rows), rows[0][0],
                               rows[0][4])
        else:
            training = candidates[keep_cols]
        self._write_excluded("cleanup", rows)
        write_table(training, self.step_dir("cleanup") / "training_set.fits")
        write_table(holdout, self.step_dir("cleanup") / "holdout.fits")
        return {
            "n_reference": n,
            "n_holdout": int(hold.sum()),
            "n_training": len(training),
            "n_dropped": len(rows),
            "n_iterations": len(history),
        }

    # ---------------------------------------------------------------- step: train
    def _step_train(self) -> dict:
        self.manifest("cleanup")
        training = self._read_table("cleanup", "training_set.fits")
        ds = self._select(self._load_preprocessed(), np.asarray(training["ID"]).astype(str))
        model = self._model_template()
        model.fit(np.asarray(ds["flux"].values), np.asarray(ds["ivar"].values), self._labels_of(training),
                  wavelength=np.asarray(ds["wavelength"].values), ids=np.asarray(ds["star"].values).astype(str))
        path = model.save(self.step_dir("train") / "model.nc")
        return {
            "model": str(path),
            "n_training": int(model.n_training_stars_),
            "n_pixels": int(model.theta_.shape[0]),
            "n_flagged_pixels": int((model.pixel_flags_ != 0).sum()),
            "training_hash": model.training_hash_,
        }

    # ---------------------------------------------------------------- step: validate
    def _step_validate(self) -> dict:

        self.manifest("cleanup")
        cfg = self.config.data["validate"]
        if not cfg["enabled"]:
            return {"skipped": True}
        training = self._read_table("cleanup", "training_set.fits")
        ds = self._select(self._load_preprocessed(), np.asarray(training["ID"]).astype(str))
        snr_col = self.config.data["cuts"].get("snr_column", "snr")
        snr = np.asarray(ds[snr_col].values, dtype=float) if snr_col in ds else np.asarray(ds["snr_pixels"].values)
        cv = cross_validate(
            self._model_template(),
            np.asarray(ds["flux"].values),
            np.asarray(ds["ivar"].values),
            self._labels_of(training),
            n_folds=int(cfg["n_folds"]),
            random_state=int(self.config.data["seed"]),
            snr=snr,
            ids=np.asarray(ds["star"].values).astype(str),
            wavelength=np.asarray(ds["wavelength"].values),
            n_jobs=int(cfg["n_jobs"]),
        )
        write_table(cv.to_table(), self.step_dir("validate") / "cross_validation.fits")
        summary = cv.summary
        write_table(summary, self.step_dir("validate") / "summary.fits")
        stats = {
            str(r["LABEL"]): {"bias": float(r["BIAS"]), "rms": float(r["RMS"]), "n": int(r["N"])} for r in summary
        }
        for name, s in stats.items():
            logger.info("validate: %s bias %.4g, scatter %.4g (%d stars)", name, s["bias"], s["rms"], s["n"])
        return {"n_folds": int(cfg["n_folds"]), "statistics": stats}

    # ---------------------------------------------------------------- step: infer
    def _step_infer(self) -> dict:

        self.manifest("train")
        model = CannonModel.load(self.step_dir("train") / "model.nc")
        ds = self._load_preprocessed()
        cfg = self.config.data["infer"]
        result = model.infer(ds, n_starts=cfg["n_starts"], chunk_size=int(cfg["chunk_size"]))
        _write_netcdf(result, self.step_dir("infer") / "labels.nc")
        flags = np.asarray(result["flags"].values)
        n_failed = int(((flags & _FAILED_FIT) != 0).sum())
        if n_failed:
            bad = np.asarray(result["star"].values)[(flags & _FAILED_FIT) != 0]
            logger.warning("infer: %d star(s) without reliable labels (no pixels / not converged): %s",
                           n_failed, ", ".join(map(str, bad[:5])))
        return {"n_stars": int(result.sizes["star"]), "n_failed": n_failed, "n_flagged": int((flags != 0).sum())}

    # ---------------------------------------------------------------- step: catalogue
    def _all_excluded(self) -> Table:
        parts = []
        for step in ("read", "preprocess", "crossmatch", "cuts", "cleanup"):
            path = self.step_dir(step) / "excluded.fits"
            if path.is_file():
                parts.append(Table.read(path))
        if not parts:
            return _excluded_table([])
        rows = []
        for p in parts:
            for r in p:
                rows.append(tuple(str(r[c]) if c != "LABELLED" else bool(r[c]) for c in _EXCLUDED_NAMES))
        return _excluded_table(rows)

    def _step_catalogue(self) -> dict:

        self.manifest("infer")
        result = xr.load_dataset(self.step_dir("infer") / "labels.nc", engine="h5netcdf")
        table = result_to_table(result, id_column="ID", meta={"PIPELINE": "bayescannon transfer"})
        ids = np.asarray(table["ID"]).astype(str)
        ds = read_spectra(self.step_dir("preprocess") / "spectra.nc")
        ds = self._select(ds, ids)
        tgt = self.config.data["target"]
        ref_cfg = self.config.data["reference"]
        tname, rname = tgt["name"], ref_cfg["name"]
        for col, name in ((tgt["ra_column"], "RA"), (tgt["dec_column"], "DEC")):
            if col in ds:
                table[name] = MaskedColumn(np.asarray(ds[col].values, dtype=float), unit="deg")
                table[name].mask = ~np.isfinite(np.asarray(ds[col].values, dtype=float))
        for col in ("snr_g", "snr", "snr_pixels", "source_file"):
            if col in ds:
                table[col.upper()] = np.asarray(ds[col].values)
        # survey Y's own labels
        targets = self._read_table("crossmatch", "targets.fits")
        t_index = {s: i for i, s in enumerate(np.asarray(targets["ID"]).astype(str))}
        t_rows = np.asarray([t_index.get(s, -1) for s in ids])
        for n in self.config.label_names:
            col = f"{tname}_{n}"
            if col in targets.colnames:
                vals = np.where(t_rows >= 0, _as_float(targets[col])[np.maximum(t_rows, 0)], np.nan)
                table[col] = MaskedColumn(vals, mask=~np.isfinite(vals),
                                          description=f"{n} from the {tname} pipeline")
        # reference labels and the role of every star in the reference set
        matched = self._read_table("crossmatch", "matched.fits")
        m_index = {s: i for i, s in enumerate(np.asarray(matched["ID"]).astype(str))}
        m_rows = np.asarray([m_index.get(s, -1) for s in ids])
        ref_id = np.where(m_rows >= 0, np.asarray(matched["REF_ID"]).astype(str)[np.maximum(m_rows, 0)], "")
        table[f"{rname}_ID"] = ref_id
        for n in self.config.label_names:
            vals = np.where(m_rows >= 0, _as_float(matched[f"REF_{n}"])[np.maximum(m_rows, 0)], np.nan)
            table[f"{rname}_{n}"] = MaskedColumn(vals, mask=~np.isfinite(vals),
                                                 description=f"{n} from the {rname} catalogue")
        status = np.where(m_rows >= 0, "reference candidate", f"not in the {rname} catalogue").astype(object)
        excluded = self._all_excluded()
        for r in excluded:
            if r["STEP"] in ("crossmatch", "cuts", "cleanup"):
                pos = np.flatnonzero(ids == str(r["ID"]))
                for p in pos:
                    status[p] = f"excluded ({r['STEP']}): {r['REASON']}"
        training = set(np.asarray(self._read_table("cleanup", "training_set.fits")["ID"]).astype(str))
        holdout = set(np.asarray(self._read_table("cleanup", "holdout.fits")["ID"]).astype(str))
        in_train = np.isin(ids, list(training))
        in_hold = np.isin(ids, list(holdout))
        status[in_train] = "training"
        status[in_hold] = "holdout"
        table["IN_TRAINING"] = in_train
        table["REFERENCE_STATUS"] = np.asarray(status, dtype=str)
        table.meta["REFNAME"] = rname
        table.meta["TGTNAME"] = tname
        cat_path = write_table(table, self.output / "catalogue.fits")
        exc_path = write_table(excluded, self.output / "excluded.fits")
        # summary: counts, validation, hold-out comparison on the reference scale
        summary = {
            "catalogue": str(cat_path),
            "excluded": str(exc_path),
            "n_labelled": len(table),
            "n_training": int(in_train.sum()),
            "n_holdout": int(in_hold.sum()),
            "n_excluded": {s: int((excluded["STEP"] == s).sum()) for s in ("read", "preprocess", "crossmatch",
                                                                           "cuts", "cleanup")},
            "n_unlabelled": int((~excluded["LABELLED"]).sum()) if len(excluded) else 0,
        }
        if self.is_done("validate"):
            summary["validation"] = self.manifest("validate").get("statistics")
        if in_hold.any():
            good = in_hold & ((np.asarray(table["FLAGS"]) & _FAILED_FIT) == 0)
            comp = {}
            for n in self.config.label_names:
                ref_v = _as_float(table[f"{rname}_{n}"])[good]
                d = _as_float(table[n])[good] - ref_v
                entry = {"n": int(np.isfinite(d).sum()), "bias": _nanmean(d), "rms": _nanstd(d)}
                if f"{tname}_{n}" in table.colnames:
                    dy = _as_float(table[f"{tname}_{n}"])[good] - ref_v
                    entry[f"{tname.lower()}_bias"] = _nanmean(dy)
                    entry[f"{tname.lower()}_rms"] = _nanstd(dy)
                comp[n] = entry
            summary["holdout_vs_reference"] = comp
        _write_json(self.output / "summary.json", summary)
        n_unl = summary["n_unlabelled"]
        logger.info("catalogue: %d stars labelled; %d file(s)/star(s) skipped without labels; %d reference "
                    "candidates excluded", len(table), n_unl, len(excluded) - n_unl)
        return summary

    # ---------------------------------------------------------------- step: evaluate
    def _step_evaluate(self) -> dict:

        self.manifest("catalogue")
        ev = self.config.data["evaluate"]
        catalogue = Table.read(self.output / "catalogue.fits")

        truth = read_labels(self.config.path(ev["truth"]), id_column=ev["id_column"])
        table, stats = evaluate(
            catalogue,
            truth,
            self.config.label_names,
            truth_id_column=ev["id_column"],
            truth_labels=ev["labels"] or None,
            offsets=ev["offsets"] or None,
            target_name=self.config.data["target"]["name"],
        )
        write_table(table, self.step_dir("evaluate") / "evaluation.fits")
        _write_json(self.step_dir("evaluate") / "evaluation.json", stats)
        return {"statistics": stats}


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.mean(x)) if x.size else float("nan")


def _nanstd(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(np.std(x, ddof=1)) if x.size > 1 else float("nan")


def evaluate(
    catalogue: Table,
    truth: Table,
    label_names,
    *,
    truth_id_column: str,
    truth_labels: Mapping | None = None,
    offsets: Mapping | None = None,
    target_name: str = "TARGET",
    include_training: bool = False,
) -> tuple[Table, dict]:
    """Transferred and survey-Y labels against the truth (for mocks).

    Parameters
    ----------
    catalogue : astropy.table.Table
        ``catalogue.fits`` of a run (columns ``ID``, the labels, ``FLAGS``,
        ``IN_TRAINING``, ``<target_name>_<label>``).
    truth : astropy.table.Table
        True labels, one row per star.
    label_names : sequence of str
    truth_id_column : str
        Column of ``truth`` matching the catalogue ``ID``.
    truth_labels : mapping, optional
        Label name -> truth column (default: the same names).
    offsets : mapping, optional
        Label name -> truth column of the simulated systematic offset of survey Y's
        pipeline.
    target_name : str
        Prefix of survey Y's own label columns in the catalogue.
    include_training : bool
        Also use the training stars (default: only stars kept out of training).

    Returns
    -------
    table : astropy.table.Table
        One row per label: ``N``, ``BIAS``, ``SCATTER`` (standard deviation), ``RMS``,
        ``SE_BIAS`` (``SCATTER / sqrt(N)``) of transferred - true; ``Y_BIAS``,
        ``Y_SCATTER``, ``Y_RMS`` of survey Y's labels - true; ``OFFSET_MEAN`` and
        ``OFFSET_RMS`` of the simulated offsets; ``BIAS_OVER_OFFSET`` (``|BIAS| /
        |OFFSET_MEAN|``).
    stats : dict
        The same, keyed by label.

    Raises
    ------
    InvalidInputError
        When no catalogue star has a truth row.
    """
    truth_labels = dict(truth_labels or {n: n for n in label_names})
    offsets = dict(offsets or {})
    tid = _str_ids(truth[truth_id_column])
    t_index = {s: i for i, s in enumerate(tid) if s}
    ids = np.asarray(catalogue["ID"]).astype(str)
    rows = np.asarray([t_index.get(s, -1) for s in ids])
    use = rows >= 0
    if "IN_TRAINING" in catalogue.colnames and not include_training:
        use &= ~np.asarray(catalogue["IN_TRAINING"], dtype=bool)
    if "FLAGS" in catalogue.colnames:
        use &= (np.asarray(catalogue["FLAGS"]) & _FAILED_FIT) == 0
    if not use.any():
        raise InvalidInputError("no catalogue star (outside the training set) has a row in the truth table")
    r = rows[use]
    out = Table()
    out["LABEL"] = list(label_names)
    cols: dict[str, list] = {k: [] for k in ("N", "BIAS", "SCATTER", "RMS", "SE_BIAS", "Y_BIAS", "Y_SCATTER",
                                             "Y_RMS", "OFFSET_MEAN", "OFFSET_RMS", "BIAS_OVER_OFFSET")}
    stats = {}
    for n in label_names:
        true = _as_float(truth[truth_labels.get(n, n)])[r]
        d = _as_float(catalogue[n])[use] - true
        ok = np.isfinite(d)
        entry = {"n": int(ok.sum()), "bias": _nanmean(d), "scatter": _nanstd(d),
                 "rms": float(np.sqrt(np.mean(d[ok] ** 2))) if ok.any() else float("nan")}
        entry["se_bias"] = entry["scatter"] / np.sqrt(max(entry["n"], 1))
        ycol = f"{target_name}_{n}"
        if ycol in catalogue.colnames:
            dy = _as_float(catalogue[ycol])[use] - true
            oky = np.isfinite(dy)
            entry.update({"y_bias": _nanmean(dy), "y_scatter": _nanstd(dy),
                          "y_rms": float(np.sqrt(np.mean(dy[oky] ** 2))) if oky.any() else float("nan")})
        else:
            entry.update({"y_bias": float("nan"), "y_scatter": float("nan"), "y_rms": float("nan")})
        if n in offsets:
            off = _as_float(truth[offsets[n]])[r][ok]
            entry["offset_mean"] = float(np.mean(off)) if off.size else float("nan")
            entry["offset_rms"] = float(np.sqrt(np.mean(off**2))) if off.size else float("nan")
            with np.errstate(divide="ignore", invalid="ignore"):
                entry["bias_over_offset"] = float(abs(entry["bias"]) / abs(entry["offset_mean"]))
        else:
            entry.update({"offset_mean": float("nan"), "offset_rms": float("nan"), "bias_over_offset": float("nan")})
        stats[n] = entry
        for k in cols:
            cols[k].append(entry[k.lower()])
    for k, v in cols.items():
        out[k] = np.asarray(v, dtype=np.int64 if k == "N" else np.float64)
    for n, e in stats.items():
        logger.info(
            "evaluate %s (%d stars): transferred bias %.4g scatter %.4g | %s pipeline bias %.4g scatter %.4g | "
            "simulated offset mean %.4g",
            n, e["n"], e["bias"], e["scatter"], target_name, e["y_bias"], e["y_scatter"], e["offset_mean"],
        )
    return out, stats


def run_transfer(config, *, start: str | None = None, only: str | None = None) -> dict:
    """Run the label-transfer pipeline (see :class:`TransferPipeline`).

    Parameters
    ----------
    config : TransferConfig, mapping or path of a TOML file
    start, only : str, optional
        First step to run, or the single step to run.

    Returns
    -------
    dict
        Step name -> summary.
    """
    return TransferPipeline(config).run(start=start, only=only)
