"""The TOML configuration of ``bayescannon cross-survey`` (Nandakumar+2022).

One file describes the two surveys, the cross-match, the four runs (each with its own
labels, model settings, censoring windows, training cuts and folds) and the clusters of
the validation report. Paths are relative to the file. Example (``docs/guides/crosssurvey.md``
has every key)::

    labels = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]
    giant_logg = 3.5            # giants: log g < 3.5; dwarfs: log g >= 3.5

    [surveys.A]
    name = "APOGEE"
    spectra = "apogee.nc"
    labels = "apogee_labels.fits"
    id_column = "ID"
    label_code = "AA"
    repeat_group = "STAR"       # spectra of one star share it (repeat calibration)
    flags_column = "ASPCAPFLAG"

    [surveys.B]
    name = "GALAH"
    ...

    [crossmatch]
    path = "crossmatch.fits"
    columns = ["ID_A", "ID_B"]

    [runs.default]
    folds = 12
    model = { order = 2, random_state = 0 }

    [runs.ACAA]
    censors = "nandakumar2022-apogee"
    cuts = { TEFF = [3500, 5500], SNR = [50, nan] }

    [clusters]
    membership = "members.fits"
    probability_column = "PROB"
    min_probability = 0.5
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from astropy.table import Table

from bayescannon.errors import InvalidInputError
from bayescannon.io import read_labels, read_spectra
from bayescannon.survey.crosssurvey import RunSettings, SurveyData

__all__ = ["ClusterSettings", "CrossSurveyConfig", "load_cross_survey_config"]

_TOP = {"labels", "giant_logg", "n_jobs", "surveys", "crossmatch", "runs", "clusters"}
_SURVEY = {
    "name",
    "spectra",
    "labels",
    "id_column",
    "code",
    "label_code",
    "repeat_group",
    "flags_column",
    "flag_mask",
    "passthrough",
}
_RUN = {
    "labels",
    "model",
    "censors",
    "cuts",
    "folds",
    "distance_threshold",
    "repeats",
    "repeat_combine",
    "compare_uncensored",
}
_CLUSTERS = {
    "membership",
    "id_column",
    "cluster_column",
    "probability_column",
    "min_probability",
    "min_members",
    "literature",
}


@dataclass
class ClusterSettings:
    """The ``[clusters]`` table: a membership table and how to read it."""

    membership: Path
    id_column: str = "ID"
    cluster_column: str = "CLUSTER"
    probability_column: str | None = "auto"
    min_probability: float | None = 0.5
    min_members: int = 3
    literature: Path | None = None


@dataclass
class CrossSurveyConfig:
    """A parsed configuration; the inputs are read by :meth:`load_surveys`."""

    path: Path
    labels: list
    surveys: dict
    crossmatch: dict | None
    runs: dict
    giant_logg: float = 3.5
    n_jobs: int | None = None
    clusters: ClusterSettings | None = None
    raw: dict = field(default_factory=dict)

    def input_paths(self) -> list[Path]:
        """Every file the configuration reads (for the output pre-flight check)."""
        out = [self.path]
        for s in self.surveys.values():
            out += [s["spectra"], s["labels"]]
        if self.crossmatch:
            out.append(self.crossmatch["path"])
        if self.clusters is not None:
            out.append(self.clusters.membership)
            if self.clusters.literature is not None:
                out.append(self.clusters.literature)
        return out

    def load_surveys(self):
        """(SurveyData A, SurveyData B, cross-match Table or None)."""
        built = []
        for key in ("A", "B"):
            s = self.surveys[key]
            built.append(
                SurveyData(
                    s["name"],
                    read_spectra(s["spectra"]),
                    read_labels(s["labels"], id_column=s["id_column"]),
                    id_column=s["id_column"],
                    code=s.get("code"),
                    label_code=s.get("label_code"),
                    groups=s.get("repeat_group"),
                    flags_column=s.get("flags_column"),
                    flag_mask=s.get("flag_mask"),
                    passthrough=s.get("passthrough"),
                )
            )
        xm = None
        if self.crossmatch:
            xm = read_labels(self.crossmatch["path"])
        return built[0], built[1], xm

    def membership(self) -> Table | None:
        """The cluster membership table (None without ``[clusters]``)."""
        if self.clusters is None:
            return None
        return read_labels(self.clusters.membership, id_column=self.clusters.id_column)


def _check_keys(table, allowed, where):
    if not isinstance(table, Mapping):
        raise InvalidInputError(f"{where} must be a table; got {type(table).__name__}")
    unknown = set(table) - allowed
    if unknown:
        raise InvalidInputError(f"unknown key(s) {sorted(unknown)} in {where}; allowed: {sorted(allowed)}")


def _run_settings(table, where) -> dict:
    _check_keys(table, _RUN, where)
    out = dict(table)
    model = dict(out.pop("model", {}))
    if "censors" in out:
        model["censors"] = out.pop("censors")
    out["model"] = model
    if "cuts" in out:
        cuts = {}
        for name, bounds in out["cuts"].items():
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise InvalidInputError(f"{where}.cuts.{name} must be [lo, hi] (nan for an open side); got {bounds!r}")
            cuts[name] = tuple(float(v) for v in bounds)
        out["cuts"] = cuts
    if str(out.get("repeats", "")).lower() == "none":
        out["repeats"] = None
    return out


def load_cross_survey_config(path) -> CrossSurveyConfig:
    """Read and check a cross-survey TOML file.

    Raises
    ------
    InvalidInputError
        Unreadable TOML, unknown keys, missing surveys or files.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{path}: not valid TOML ({exc})") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read the configuration {path}: {exc.strerror or exc}") from None
    _check_keys(raw, _TOP, path.name)
    base = path.parent

    def resolve(value, where):
        p = Path(value)
        p = p if p.is_absolute() else base / p
        if not p.exists():
            raise InvalidInputError(f"{path.name}: {where} {p} does not exist")
        return p

    labels = raw.get("labels")
    if not labels or not all(isinstance(n, str) for n in labels):
        raise InvalidInputError(f"{path.name}: 'labels' must be a non-empty list of label names")
    surveys = raw.get("surveys", {})
    if set(surveys) != {"A", "B"}:
        raise InvalidInputError(f"{path.name}: give exactly [surveys.A] and [surveys.B]; got {sorted(surveys)}")
    parsed = {}
    for key, s in surveys.items():
        _check_keys(s, _SURVEY, f"[surveys.{key}]")
        for need in ("name", "spectra", "labels"):
            if need not in s:
                raise InvalidInputError(f"{path.name}: [surveys.{key}] needs {need!r}")
        parsed[key] = {
            **s,
            "spectra": resolve(s["spectra"], f"[surveys.{key}] spectra"),
            "labels": resolve(s["labels"], f"[surveys.{key}] labels"),
            "id_column": s.get("id_column", "ID"),
        }
    xm = raw.get("crossmatch")
    if xm is not None:
        _check_keys(xm, {"path", "columns"}, "[crossmatch]")
        xm = {"path": resolve(xm["path"], "[crossmatch] path"), "columns": tuple(xm.get("columns", ("ID_A", "ID_B")))}
    runs = {}
    for code, table in raw.get("runs", {}).items():
        runs[code] = _run_settings(table, f"[runs.{code}]")
        RunSettings(**runs[code])  # fail early on bad values
    clusters = None
    if "clusters" in raw:
        c = dict(raw["clusters"])
        _check_keys(c, _CLUSTERS, "[clusters]")
        if "membership" not in c:
            raise InvalidInputError(f"{path.name}: [clusters] needs 'membership'")
        c["membership"] = resolve(c["membership"], "[clusters] membership")
        if "literature" in c:
            c["literature"] = resolve(c["literature"], "[clusters] literature")
        if isinstance(c.get("min_probability"), float) and math.isnan(c["min_probability"]):
            c["min_probability"] = None
        clusters = ClusterSettings(**c)
    giant = float(raw.get("giant_logg", 3.5))
    return CrossSurveyConfig(path, list(labels), parsed, xm, runs, giant, raw.get("n_jobs"), clusters, raw)
