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

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from astropy.table import Table

from bayescannon.errors import InvalidInputError
from bayescannon.survey.catalogue import write_table
from bayescannon.survey.transferconfig import _STEP_DIRS, DEFAULTS, STEPS, TransferConfig, _excluded_table, _write_json
from bayescannon.survey.transferdata import _DataSteps
from bayescannon.survey.transferevaluate import evaluate
from bayescannon.survey.transfermodel import _ModelSteps

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULTS",
    "STEPS",
    "TransferConfig",
    "TransferPipeline",
    "evaluate",
    "run_transfer",
]


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
