"""End-to-end label transfer from survey X to survey Y (Ho et al. 2017), step by step.

Ho+2017 put APOGEE labels on LAMOST spectra: the stars observed by both surveys (the
*reference set*) train a Cannon model on their LAMOST spectra with their APOGEE labels;
the model then gives every LAMOST spectrum labels on the APOGEE scale, including
[alpha/M], which the LAMOST pipeline does not measure. :class:`TransferPipeline` runs
this from survey files to a catalogue, driven by one TOML file
(:class:`TransferConfig`; annotated example: ``examples/transfer.toml``; guide:
``docs/guides/transfer.md``).

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
``done.json`` (written last) records what it wrote with the checksum of every file, its
counts, and its *key*: a digest of the configuration sections it and the steps before it
use, of the content of every input file named by the configuration (spectra, catalogues,
truth), of the package version and of the key and files of the step before it.

Resuming (:meth:`TransferPipeline.run` without ``start``/``only``; the CLI without
``--from``/``--step``) reuses a step's saved output only when its recorded key equals the
key asked for and every file it recorded is intact; the first step that does not match
(other configuration, other input files, other version, a file edited, truncated or
missing) and every step after it are recomputed, with a log line naming the reason.
Running from a step (``start``/``only``) reads the saved output of the steps before it
only when it matches in the same way, and otherwise refuses with
:class:`~bayescannon.errors.InvalidInputError` naming the step and the difference: saved
output made from another configuration or other inputs is never mixed in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from astropy.table import Table

from bayescannon._version import __version__
from bayescannon.errors import InvalidInputError
from bayescannon.pipeline.atomic import TMP_PREFIX
from bayescannon.pipeline.chunks import file_checksum
from bayescannon.survey.catalogue import write_table
from bayescannon.survey.transferconfig import _STEP_DIRS, DEFAULTS, STEPS, TransferConfig, _excluded_table, _write_json
from bayescannon.survey.transferdata import _DataSteps
from bayescannon.survey.transferevaluate import evaluate
from bayescannon.survey.transfermodel import _ModelSteps

logger = logging.getLogger(__name__)

#: Files of the ``catalogue`` step written in the run's output folder itself.
_RUN_FILES = ("catalogue.fits", "excluded.fits", "summary.json")

__all__ = [
    "DEFAULTS",
    "STEPS",
    "TransferConfig",
    "TransferPipeline",
    "evaluate",
    "run_transfer",
]


def _config_changes(old, new, *, limit: int = 5) -> str:
    """The configuration values that differ between a saved step and this run, as
    ``"cleanup.n_sigma: 4.0 -> 3.0"`` (at most ``limit``; "" when ``old`` was not saved)."""
    if not isinstance(old, Mapping):
        return ""
    out: list[str] = []

    def walk(a, b, prefix):
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b), key=str):
                walk(a.get(k, "<unset>"), b.get(k, "<unset>"), f"{prefix}.{k}" if prefix else str(k))
        elif a != b:
            out.append(f"{prefix}: {a!r} -> {b!r}")

    walk(old, new, "")
    more = f"; {len(out) - limit} more" if len(out) > limit else ""
    return "; ".join(out[:limit]) + more


# --------------------------------------------------------------------------------------
# the pipeline
# --------------------------------------------------------------------------------------


class TransferPipeline(_DataSteps, _ModelSteps):
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
        """The ``done.json`` of a finished step, verified.

        The step's recorded key must equal the key of the current configuration, input files,
        package version and (verified) saved output of the steps before it, and every file it
        recorded must be intact.

        Raises
        ------
        InvalidInputError
            When the step has no saved output, or its saved output does not match (the message
            names the step and the difference, and says which step to re-run from).
        """
        data, problem, culprit = self._check(step)
        if problem is not None:
            via = "" if culprit == step else f" (step {step!r} depends on it)"
            raise InvalidInputError(
                f"the saved output of step {culprit!r} cannot be used{via}: {problem}; re-run the pipeline "
                f"from that step (bayescannon transfer CONFIG --from {culprit})"
            )
        return data

    # ---------------------------------------------------------------- keys and verification
    def _inputs_digest(self) -> str:
        """Digest of the content of every input file the configuration names (cached per run)."""
        if getattr(self, "_inputs_digest_cache", None) is None:
            h = hashlib.blake2b(digest_size=20)
            base = self.config.base_dir
            for path in sorted(set(self._input_files()), key=str):
                # named relative to the configuration, so that a moved or copied folder still matches
                h.update(str(path.relative_to(base) if path.is_relative_to(base) else path).encode())
                h.update(file_checksum(path).encode())
            self._inputs_digest_cache = h.hexdigest()
        return self._inputs_digest_cache

    def _input_files(self) -> list[Path]:
        files = list(self._spectra_paths())

        def walk(value):
            if isinstance(value, Mapping):
                for v in value.values():
                    walk(v)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    walk(v)
            elif isinstance(value, str) and value and not any(c in value for c in "*?["):
                try:
                    path = self.config.path(value)
                    if path.is_file():
                        files.append(path)
                except (OSError, ValueError):
                    pass

        walk({k: v for k, v in self.config.data.items() if k != "output"})
        return files

    def _key(self, step: str, upstream: dict | None) -> str:
        parts = {
            "step": step,
            "config": self.config.digest(step),
            "inputs": self._inputs_digest(),
            "version": __version__,
            "upstream": None if upstream is None else {"key": upstream.get("key"), "files": upstream.get("files")},
        }
        return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=20).hexdigest()

    def _step_files(self, step: str) -> dict:
        """Checksums of the files a step wrote (its folder, and the run-level files of ``catalogue``)."""
        paths = [p for p in self.step_dir(step).rglob("*") if p.is_file()]
        if step == "catalogue":
            paths += [self.output / n for n in _RUN_FILES if (self.output / n).is_file()]
        out = {}
        for p in sorted(paths):
            if p.name == "done.json" or p.name.startswith(TMP_PREFIX):
                continue
            out[str(p.relative_to(self.output))] = file_checksum(p)
        return out

    def _verify(self, step: str) -> tuple[dict | None, str | None]:
        """(the step's verified ``done.json``, None), or (None, why it cannot be used)."""
        data, problem, culprit = self._check(step)
        if problem is not None and culprit != step:
            problem = f"step {culprit!r} before it does not match: {problem}"
        return data, problem

    def _check(self, step: str) -> tuple[dict | None, str | None, str]:
        """(verified ``done.json``, None, step), or (None, why, the first step that does not match)."""
        cache = self.__dict__.setdefault("_verified", {})
        if step in cache:
            return cache[step], None, step
        path = self._done_path(step)
        if not path.is_file():
            return None, f"it has no saved output in {path.parent}", step
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            return None, f"{path} is unreadable ({exc})", step
        i = STEPS.index(step)
        upstream = None
        if i > 0:
            prev = next((s for s in reversed(STEPS[:i]) if s != "evaluate"), None)
            if prev is not None:
                upstream, problem, culprit = self._check(prev)
                if problem is not None:
                    return None, problem, culprit
        if data.get("key") != self._key(step, upstream):
            if data.get("config_digest") != self.config.digest(step):
                changed = _config_changes(data.get("config"), self.config.sections(step))
                why = "it was made with a different configuration" + (f" [{changed}]" if changed else "")
            elif data.get("inputs_digest") != self._inputs_digest():
                why = "it was made from other input files (spectra or catalogues changed)"
            elif data.get("version") != __version__:
                why = f"it was made by bayescannon {data.get('version')} (this is {__version__})"
            else:
                why = "the saved output of the steps before it changed since"
            return None, why, step
        recorded = data.get("files")
        if not isinstance(recorded, dict) or not recorded:
            return None, "it records no files", step
        for rel, checksum in recorded.items():
            p = self.output / rel
            if not p.is_file():
                return None, f"{p} is missing", step
            if file_checksum(p) != checksum:
                return None, f"{p} was changed or corrupted since it was written", step
        cache[step] = data
        return data, None, step

    def _finish(self, step: str, summary: dict, t0: float) -> dict:
        i = STEPS.index(step)
        prev = next((s for s in reversed(STEPS[:i]) if s != "evaluate"), None) if i > 0 else None
        upstream = None if prev is None else self.manifest(prev)
        summary = dict(summary)
        summary["step"] = step
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        summary["config_digest"] = self.config.digest(step)
        summary["config"] = self.config.sections(step)  # to name what changed on a rerun
        summary["inputs_digest"] = self._inputs_digest()
        summary["version"] = __version__
        summary["key"] = self._key(step, upstream)
        summary["files"] = self._step_files(step)
        summary["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write_json(self._done_path(step), summary)
        cache = self.__dict__.setdefault("_verified", {})
        for s in STEPS[i:]:  # this step and every later one must be verified again
            cache.pop(s, None)
        cache[step] = summary
        logger.info("step %s done in %.1f s", step, summary["seconds"])
        return summary

    def _write_excluded(self, step: str, rows) -> Path:
        table = _excluded_table(rows)

        return write_table(table, self.step_dir(step) / "excluded.fits", overwrite=True)

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
        steps = list(STEPS[STEPS.index(start) :] if start else STEPS)
        if not self.config.has_evaluate and "evaluate" in steps:
            steps.remove("evaluate")
        return steps

    def run(self, start: str | None = None, only: str | None = None) -> dict:
        """Run steps: all (default, resuming), ``start`` and the ones after it, or ``only`` one.

        Without ``start`` and ``only`` the run resumes: the saved output of a step is reused
        when its key and files match (see the module docstring); from the first step that does
        not match, every step is recomputed.

        Parameters
        ----------
        start : str, optional
            First step to run (later steps follow); the steps before it must have matching
            saved output.
        only : str, optional
            The one step to run (its inputs must have been saved before and match).

        Returns
        -------
        dict
            Step name -> the summary saved in its ``done.json``.
        """
        return {step: summary for step, summary, _ in self.iter_run(start, only)}

    def iter_run(self, start: str | None = None, only: str | None = None):
        """:meth:`run`, one step at a time: yields ``(step, summary, reused)`` as each step ends."""
        resuming = start is None and only is None
        for step in self.steps_to_run(start, only):
            if resuming:
                data, problem = self._verify(step)
                if problem is None:
                    n = len(data["files"])
                    logger.info("step %s: saved output matches (key and %d files verified): reused", step, n)
                    yield step, data, True
                    continue
                if self.is_done(step):
                    logger.warning("step %s: saved output not reused (%s): recomputing from here", step, problem)
                resuming = False
            yield step, self.run_step(step), False

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
