"""Atomic output files: every writer of :mod:`bayescannon.io` goes through :func:`write_atomic`.

A file is written under a temporary name in its destination folder and moved into
place only when complete, so a reader (or a resumed run) never sees half a file. The
temporary file is given the mode an ordinary ``open(path, "w")`` would give
(``0o666`` less the process umask, e.g. ``0o644`` under umask ``022``) rather than the
``0o600`` of :func:`tempfile.mkstemp`. An existing file is replaced only when
``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = ["current_umask", "write_atomic"]


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read with the
    set-and-restore idiom of :func:`os.umask`.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _exists_error(path: Path) -> InvalidInputError:
    return InvalidInputError(f"{path} exists; pass overwrite=True to replace it")


def write_atomic(path, write: Callable[[Path], object], *, overwrite: bool = False) -> Path:
    """Write a file atomically with ``write(tmp_path)``.

    Parameters
    ----------
    path : str or path-like
        The destination; its folder is created when missing.
    write : callable
        Called with the temporary path (an existing empty file in the destination
        folder whose name ends with the destination's name, so that writers that
        choose compression by suffix, such as astropy for ``.fits.gz``, behave as
        for ``path``). It must write the whole file there (replacing the empty one).
    overwrite : bool
        Replace an existing ``path``. Without it an existing file is never
        replaced, even one that appears while ``write`` runs.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    InvalidInputError
        When ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise _exists_error(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=f".tmp-{path.name}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            _move_no_clobber(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    logger.debug("wrote %s", path)
    return path


def _move_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (a hard link fails if it does)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError:  # no hard links on this file system: check, then replace
        if path.exists():
            raise _exists_error(path) from None
        os.replace(tmp, path)
    else:
        tmp.unlink()
