"""Atomic writes: a file either exists complete or not at all.

Every writer of the package goes through :func:`atomic_path`: the content is written to
a temporary file in the target's own folder (so :func:`os.replace` is an atomic rename
on the same file system), given the permissions that the process's umask asks for (a
plain ``open`` would give 0644 under umask 022; :func:`tempfile.mkstemp` gives 0600),
and renamed onto the target only when the writer finished without an exception.
Existing files are not replaced unless ``overwrite=True``.

Temporary files belong to their writer: their names carry the writer's process id and
host (``.tmp_<pid>@<host>_<name>.<random><suffix>``), and :func:`remove_stale_temps`
removes only those whose owner is dead (same host) or that are older than
:data:`STALE_AGE_S` (any host, or a name without an owner), so two runs writing into one
folder never delete each other's files.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bayescannon.errors import OutputExistsError, OutputIsInputError

logger = logging.getLogger(__name__)

__all__ = [
    "STALE_AGE_S",
    "TMP_PREFIX",
    "atomic_path",
    "check_writable",
    "current_umask",
    "file_mode",
    "remove_stale_temps",
    "same_file",
    "temp_owner",
    "write_atomic",
    "write_json",
]

#: Prefix of every temporary file or folder the package creates beside a target.
TMP_PREFIX = ".tmp_"
#: Age (seconds since the last modification) after which a temporary file is stale whoever
#: owns it: 24 hours. A writer alive on this host keeps its files younger than that.
STALE_AGE_S = 24 * 3600.0
_OWNER = re.compile(re.escape(TMP_PREFIX) + r"(\d+)@([^_/]*)_")


def _host() -> str:
    return socket.gethostname().replace("_", "-").replace("/", "-") or "localhost"


def _tmp_prefix(name: str) -> str:
    return f"{TMP_PREFIX}{os.getpid()}@{_host()}_{name}."


def temp_owner(name: str) -> tuple[int, str] | None:
    """``(pid, host)`` of the writer of a temporary file named ``name``; None when the name carries none."""
    m = _OWNER.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps(folder, *, max_age_s: float = STALE_AGE_S) -> list[Path]:
    """Remove the stale temporary files of ``folder`` left by interrupted writers.

    A temporary file (name starting with :data:`TMP_PREFIX`) is stale when its owner
    process (from its name) no longer runs on this host, or when it was last modified
    more than ``max_age_s`` seconds ago (the only test for files of another host or
    without an owner in their name). Files of live writers are left alone.

    Returns
    -------
    list of pathlib.Path
        The files (or folders) removed.
    """
    removed = []
    now = time.time()
    for tmp in Path(folder).glob(f"{TMP_PREFIX}*"):
        owner = temp_owner(tmp.name)
        try:
            age = now - tmp.stat().st_mtime
        except FileNotFoundError:  # its writer finished meanwhile
            continue
        dead = owner is not None and owner[1] == _host() and owner[0] != os.getpid() and not _pid_alive(owner[0])
        if not (dead or age > max_age_s):
            continue
        logger.info("%s: removing %s left by an interrupted run", folder, tmp.name)
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    Linux reports it in ``/proc/self/status``; elsewhere it is read with the
    set-and-restore idiom of :func:`os.umask` (not thread-safe, hence the first way).
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


def file_mode() -> int:
    """Permission bits a new regular file gets under the current umask (0o666 & ~umask)."""
    return 0o666 & ~current_umask()


def _exists_error(path: Path) -> OutputExistsError:
    return OutputExistsError(f"{path} exists: pass overwrite=True (--overwrite) to replace it")


def same_file(a, b) -> bool:
    """Whether two paths name the same file: equal after resolving symlinks, or the same
    inode (hard links). False when either does not exist."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _move_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists, even one that appeared meanwhile
    (a hard link fails when the target exists)."""
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


def check_writable(path, *, overwrite: bool = False, inputs=()) -> Path:
    """Refuse to write ``path`` over an existing file (unless ``overwrite``) or over an input.

    Parameters
    ----------
    path : path-like
        The output.
    overwrite : bool
        Allow replacing an existing output.
    inputs : iterable of path-like
        Files the run reads; an output never replaces one of them, even with ``overwrite``.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    OutputIsInputError
        The output is one of the inputs (by path, symlink or hard link).
    OutputExistsError
        The output exists and ``overwrite`` is False.
    """
    path = Path(path)
    for inp in inputs:
        if inp is not None and same_file(path, inp):
            raise OutputIsInputError(f"output {path} is also an input of this run: choose another output path")
    if path.exists() and not overwrite:
        raise _exists_error(path)
    return path


#: files that mark a folder as one data store (zarr v3 / v2), replaced as a whole
_STORE_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def _check_folder_replaceable(path: Path, new: Path) -> None:
    """Refuse to replace an existing folder that holds anything the new output does not
    (a user's own files: ``--overwrite`` replaces outputs, never deletes other files), and
    the working folder or one above it. A data store (zarr) is replaced as a whole."""
    if not path.is_dir():
        return
    here = Path.cwd().resolve()
    if path.resolve() == here or path.resolve() in here.parents:
        raise OutputExistsError(f"{path} is the working folder or contains it: choose a new folder for the output")
    if any((path / m).exists() for m in _STORE_MARKERS):
        return
    foreign = sorted(e.name for e in path.iterdir() if not (new / e.name).exists())
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(
            f"{path} holds files this output does not write ({shown}): --overwrite replaces outputs but never "
            "deletes other files; remove them or choose another folder"
        )


@contextlib.contextmanager
def atomic_path(path, *, overwrite: bool = False, directory: bool = False, inputs=()) -> Iterator[Path]:
    """Context manager yielding a temporary path that becomes ``path`` on success.

    Parameters
    ----------
    path : path-like
        The final file (or folder, with ``directory=True``, e.g. a zarr store).
    overwrite : bool
        Replace an existing ``path``; when False an existing file raises before anything
        is written. An existing folder is replaced only when it holds nothing the new one
        does not (or is a zarr store), never when it is the working folder or above it.
    directory : bool
        The writer creates a folder at the yielded path instead of a file.
    inputs : iterable of path-like
        Input files that the output must not replace.

    Yields
    ------
    pathlib.Path
        Where to write. The temporary file exists (empty) when ``directory`` is False.

    Examples
    --------
    >>> with atomic_path("table.fits") as tmp:  # doctest: +SKIP
    ...     table.write(tmp, format="fits")
    """
    path = check_writable(path, overwrite=overwrite, inputs=inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    if directory:
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=_tmp_prefix(path.name), suffix=suffix))
        os.chmod(tmp, 0o777 & ~current_umask())
    else:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=_tmp_prefix(path.name), suffix=suffix)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, file_mode())
    try:
        yield tmp
        if directory:
            if path.exists():
                _check_folder_replaceable(path, tmp)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            os.replace(tmp, path)
        elif overwrite:
            os.chmod(tmp, file_mode())  # the writer may have replaced the file
            os.replace(tmp, path)
        else:
            os.chmod(tmp, file_mode())
            _move_no_clobber(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def write_json(path, data, *, overwrite: bool = False) -> Path:
    """Write ``data`` as indented JSON, atomically. Returns the path."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def write_atomic(path, write, *, overwrite: bool = False) -> Path:
    """Write a file atomically with ``write(tmp_path)``; see :func:`atomic_path`.

    ``write`` is called with a temporary path in the destination folder whose name ends
    with the destination's suffixes (so writers that choose compression by suffix, such
    as astropy for ``.fits.gz``, behave as for ``path``). Returns ``path``.
    """
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        write(tmp)
    logger.debug("wrote %s", path)
    return path
