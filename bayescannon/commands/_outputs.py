"""The one pre-flight check of what a CLI command writes, run before it reads or computes anything.

Every command that writes files declares them with ``outputs(args) -> list[Output]``;
:func:`bayescannon.cli.main` calls :func:`check_outputs` on that list before the command
runs. For each declared output:

* its name ends with a suffix the writer supports (``kind="file"``);
* it is not an input of the same command (the same file by path, symlink or hard link),
  not even with ``--overwrite``;
* it does not exist, unless ``--overwrite`` (``kind="file"``), or the folder is absent or
  empty, unless ``--overwrite`` (``kind="empty-dir"``);
* the nearest existing folder above it is a folder that this process can write into
  (tried by creating and removing a temporary file; missing folders below it are created
  by the writer, as before).

``kind="workspace"`` is a resumable folder (``preprocess -o``, ``infer --work-dir``, the
transfer pipeline's output): re-running into it resumes and is not overwriting, so only
the last two checks apply.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bayescannon.errors import OutputExistsError, OutputIsInputError, OutputNotWritableError, OutputPathError
from bayescannon.pipeline.atomic import TMP_PREFIX, same_file
from bayescannon.survey.catalogue import TABLE_SUFFIXES

__all__ = [
    "Output",
    "check_outputs",
    "input_paths",
    "MODEL_SUFFIXES",
    "SPECTRA_SUFFIXES",
    "TABLE_SUFFIXES",
    "REPORT_SUFFIXES",
    "report_outputs",
]

#: Model files (``CannonModel.save``): netCDF or a zarr folder.
MODEL_SUFFIXES = (".nc", ".zarr")
#: Spectra containers (``bayescannon.io.write_spectra``).
SPECTRA_SUFFIXES = (".nc", ".npz", ".fits", ".fit")
#: Reports (``bayescannon.report.Report.write``).
REPORT_SUFFIXES = (".md", ".html", ".htm")

_KINDS = ("file", "empty-dir", "workspace")


@dataclass(frozen=True)
class Output:
    """One path a command will write.

    Parameters
    ----------
    path : pathlib.Path
    dest : str
        The argument (attribute of the parsed arguments) that names it or its folder, e.g.
        ``"output"``; that argument is not an input.
    suffixes : tuple of str, optional
        Name endings the writer supports (lower case); None: any.
    kind : {"file", "empty-dir", "workspace"}
        A file (or zarr folder) that is replaced only with ``--overwrite``; a folder that
        must be absent or empty unless ``--overwrite``; a resumable folder.
    """

    path: Path
    dest: str
    suffixes: tuple[str, ...] | None = None
    kind: str = "file"

    @property
    def option(self) -> str:
        """The option as the user typed it (for messages)."""
        return "--" + self.dest.replace("_", "-")


def report_outputs(folder, stem: str, report_format: str, figures: Sequence[str], plot_formats, dest: str):
    """A report ``<folder>/<stem>.<report_format>`` and its figures ``<name>.<fmt>`` beside it
    (as :class:`bayescannon.report.Report` writes them)."""
    folder = Path(folder)
    outs = [Output(folder / f"{stem}.{report_format}", dest, REPORT_SUFFIXES)]
    outs += [Output(folder / f"{name}.{fmt}", dest) for name in figures for fmt in dict.fromkeys(plot_formats)]
    return outs


def input_paths(args, outputs: Iterable[Output]) -> list[Path]:
    """Existing files and folders named by any argument of ``args`` that does not name an output."""
    out_dests = {o.dest for o in outputs}
    found = []
    for name, value in vars(args).items():
        if name.startswith("_") or name in out_dests:
            continue
        for v in value if isinstance(value, list | tuple) else [value]:
            if isinstance(v, str | Path) and str(v) and os.path.exists(v):
                found.append(Path(v))
    return found


def _probe_folder(folder: Path, output: Output) -> None:
    """Raise OutputNotWritableError unless a file can be created in ``folder`` (or above)."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputNotWritableError(
            f"{output.option} {output.path}: {existing} is not a folder, so {output.path.name} cannot be written there"
        )
    try:
        fd, name = tempfile.mkstemp(dir=existing, prefix=f"{TMP_PREFIX}probe.")
    except OSError as exc:
        raise OutputNotWritableError(
            f"{output.option} {output.path}: the folder {existing} cannot be written ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name)


def _check_one(out: Output, inputs: Sequence[Path], overwrite: bool) -> None:
    path = Path(out.path)
    if out.kind not in _KINDS:
        raise OutputPathError(f"unknown output kind {out.kind!r} for {path}")
    if out.suffixes is not None and not path.name.lower().endswith(tuple(out.suffixes)):
        raise OutputPathError(f"{out.option} {path}: the suffix must be one of {', '.join(out.suffixes)}")
    for inp in inputs:
        if same_file(path, inp):
            raise OutputIsInputError(
                f"{out.option} {path} is also an input of this command ({inp}): choose another output path "
                "(inputs are never overwritten, not even with --overwrite)"
            )
    if out.kind == "file" and os.path.lexists(path) and not overwrite:
        raise OutputExistsError(f"{out.option} {path} exists: pass --overwrite to replace it")
    if out.kind == "empty-dir" and path.exists():
        if not path.is_dir():
            raise OutputPathError(f"{out.option} {path} exists and is not a folder")
        if not overwrite and any(path.iterdir()):
            raise OutputExistsError(f"{out.option} {path} exists and is not empty: pass --overwrite to write into it")
    if out.kind == "workspace" and path.exists() and not path.is_dir():
        raise OutputPathError(f"{out.option} {path} exists and is not a folder")
    _probe_folder(path if out.kind != "file" else path.parent, out)


def check_outputs(outputs: Iterable[Output], inputs: Iterable = (), *, overwrite: bool = False) -> None:
    """Check every output of a command before it does any work; see the module docstring.

    Parameters
    ----------
    outputs : iterable of Output
    inputs : iterable of path-like
        Files and folders the command reads.
    overwrite : bool
        ``--overwrite``: existing outputs may be replaced (inputs never are).

    Raises
    ------
    OutputPathError
        Unsupported suffix, or a path that is not what its kind needs.
    OutputIsInputError
        An output is an input of the same command.
    OutputExistsError
        An output exists and ``overwrite`` is False.
    OutputNotWritableError
        The folder of an output cannot be written.
    """
    outputs = list(outputs)
    inputs = [Path(p) for p in inputs if p is not None]
    seen: dict[str, Output] = {}
    for out in outputs:
        key = os.path.abspath(out.path)
        if key in seen and seen[key].option != out.option:
            raise OutputPathError(f"{out.option} and {seen[key].option} both name {out.path}")
        seen[key] = out
        _check_one(out, inputs, overwrite)


def add_outdir_argument(p) -> None:
    """The positional ``outdir`` of the commands that write a whole new folder (the mocks)."""
    p.add_argument("outdir", help="folder to write (absent or empty unless --overwrite)")


def outdir_outputs(args) -> list[Output]:
    """The command's folder ``args.outdir``: absent or empty unless ``--overwrite``."""
    return [Output(Path(args.outdir), "outdir", kind="empty-dir")]
