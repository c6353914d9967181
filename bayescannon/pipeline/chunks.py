"""One resumable chunk protocol for every long run (preprocessing, inference).

A chunk folder holds chunk files and ``chunks.json``, a manifest that records for each
chunk the *key* of everything that determines its content (the digest of its input, the
options or steps with their values, the model hash, the package version) and the
checksum of the file written. A rerun reuses a chunk only when its recorded key equals
the key asked for and the file's checksum equals the recorded one; a chunk that does
not match (other input, other options, another model or version), is truncated,
corrupted or missing is recomputed with a logged warning. Every file is written through
:func:`bayescannon.pipeline.atomic.atomic_path`; temporary files left by an interrupted
run are removed when the folder is opened, but only those whose writer is dead or that
are stale by age (:func:`bayescannon.pipeline.atomic.remove_stale_temps`), so a second run
on the same folder never deletes the files of a live one.

A run may also record its *options* (:meth:`ChunkStore.check_options`): the values of the
options that determine every chunk (a grid, a smoothing width, a chunk size). A rerun with
a changed value is refused with an :class:`~bayescannon.errors.InvalidInputError` naming
the option, rather than silently mixing chunks made two ways or silently recomputing a
folder the user may have meant to keep: the choice is to refuse, and to ask for another
folder (or for the old one to be removed).

Only the process that owns the :class:`ChunkStore` writes the manifest (worker processes
write chunk files with :func:`write_chunk` and hand back the checksum). The manifest is
rewritten under an exclusive lock (``chunks.lock``) and merged with the records on disk,
so two stores on one folder keep each other's records; a whole run holds the folder with
:meth:`ChunkStore.exclusive` (``chunks.run.lock``), so a second run on the same folder
waits for the first and then resumes from its chunks (the kernel releases the lock of a
run killed with ``kill -9``).

Examples
--------
>>> store = ChunkStore(folder)  # doctest: +SKIP
>>> key = chunk_key(input=digest_of(part), options={"n_starts": 4})  # doctest: +SKIP
>>> if not store.is_valid("chunk_000000.nc", key):  # doctest: +SKIP
...     store.record("chunk_000000.nc", key, write_chunk(store.path("chunk_000000.nc"), writer))
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from bayescannon._version import __version__
from bayescannon.errors import InvalidInputError
from bayescannon.pipeline.atomic import atomic_path, remove_stale_temps, write_json

try:  # POSIX advisory locks; elsewhere the manifest is written without a lock
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

logger = logging.getLogger(__name__)

__all__ = [
    "MANIFEST",
    "ChunkStore",
    "chunk_key",
    "dataset_digest",
    "describe",
    "digest_of",
    "file_checksum",
    "write_chunk",
]

#: Name of the manifest file inside a chunk folder.
MANIFEST = "chunks.json"
_LOCK = "chunks.lock"
_RUN_LOCK = "chunks.run.lock"
_SCHEMA = 1
_BLOCK = 1 << 20


def _hash() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=20)


def describe(obj):
    """A JSON-able description of ``obj`` that changes whenever its value does.

    Callables are named by module and qualified name, :func:`functools.partial` objects by
    their function, arguments and keywords, arrays by dtype, shape and a digest of their
    bytes, mappings and sequences element by element; anything else by its ``repr``.
    """
    if isinstance(obj, np.generic):
        return describe(obj.item())
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return repr(float(obj))
    if isinstance(obj, np.ndarray):
        return {"array": digest_of(obj), "dtype": obj.dtype.str, "shape": list(obj.shape)}
    if isinstance(obj, functools.partial):
        return {"partial": describe(obj.func), "args": describe(list(obj.args)), "kwargs": describe(obj.keywords)}
    if isinstance(obj, Mapping):
        return {str(k): describe(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [describe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '?')}.{obj.__qualname__}"
    return repr(obj)


def digest_of(*arrays) -> str:
    """BLAKE2b digest of arrays (dtype, shape and bytes) or strings, in order."""
    h = _hash()
    for a in arrays:
        if isinstance(a, str):
            h.update(b"s" + a.encode())
            continue
        a = np.asarray(a)
        if a.dtype.kind in "OU":
            a = a.astype(str)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update("\x00".join(a.ravel().tolist()).encode())
            continue
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def dataset_digest(ds) -> str:
    """Digest of every variable and coordinate of a container (names, dims, values) and its attributes.

    The one content key of a chunk of spectra, whatever holds them (a chunk file, a zarr
    spectra store, a slice of a container in memory): equal content, equal key (text is
    digested by its characters, so ``<U5`` and ``<U12`` arrays of the same ids agree).
    """
    parts = []
    for name in sorted(map(str, ds.variables)):
        var = ds.variables[name]
        values = np.asarray(var.values)
        if values.dtype.kind in "OUS":  # text by content, not by the width of its numpy dtype
            values = f"text{values.shape}:" + "\x00".join(values.astype(object).astype(str).ravel().tolist())
        parts += [f"{name}{var.dims}", values]
    parts.append(repr(describe(dict(ds.attrs))))
    return digest_of(*parts)


def chunk_key(**fields) -> dict:
    """The key of a chunk: ``fields`` described (:func:`describe`) plus the package version."""
    return describe({**fields, "bayescannon_version": __version__})


def file_checksum(path) -> str:
    """BLAKE2b checksum of a file's bytes."""
    h = _hash()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def write_chunk(path, writer: Callable[[Path], object]) -> str:
    """Write one chunk atomically with ``writer(tmp_path)`` and return its checksum.

    Safe in worker processes: it touches only the chunk's own file.
    """
    with atomic_path(path, overwrite=True) as tmp:
        writer(tmp)
        checksum = file_checksum(tmp)
    return checksum


class ChunkStore:
    """A folder of chunk files with a manifest of their keys and checksums.

    Parameters
    ----------
    folder : path-like
        Created if needed.
    clean : bool
        Remove the temporary files of interrupted runs (default): only those whose owner
        process is dead or that are older than
        :data:`~bayescannon.pipeline.atomic.STALE_AGE_S`; a live writer's files stay.

    Raises
    ------
    InvalidInputError
        When ``folder`` exists and is not a folder.
    """

    def __init__(self, folder, *, clean: bool = True):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidInputError(f"{self.folder} exists and is not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        if clean:
            remove_stale_temps(self.folder)
        self._touched: set[str] = set()
        self._entries, self._order, self._options = self._load(warn=True)

    def _load(self, warn: bool = False) -> tuple[dict, list, dict | None]:
        mpath = self.folder / MANIFEST
        if not mpath.exists():
            return {}, [], None
        try:
            data = json.loads(mpath.read_text())
            if data.get("schema") != _SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}")
            return dict(data["chunks"]), list(data.get("order", [])), data.get("options")
        except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
            if warn:
                logger.warning("%s: unreadable manifest (%s); every chunk will be recomputed", mpath, exc)
            return {}, [], None

    def check_options(self, options: Mapping) -> None:
        """Record the run's option values, or refuse a resume with other values.

        Parameters
        ----------
        options : mapping
            Option name → value (described with :func:`describe`, so arrays and
            functions compare by value).

        Raises
        ------
        InvalidInputError
            The folder holds chunks of a run whose recorded value of an option differs;
            the message names every such option with both values.
        """
        new = describe(dict(options))
        old = self._options
        if old is not None and old != new and any(e.get("checksum") or e.get("info") for e in self._entries.values()):
            names = sorted(set(old) | set(new))
            diff = [k for k in names if old.get(k) != new.get(k)]
            shown = "; ".join(f"{k}: {_short(old.get(k))} before, {_short(new.get(k))} now" for k in diff)
            raise InvalidInputError(
                f"{self.folder} holds chunks made with other option values ({shown}): "
                "resume with the same options, or write to another (or an emptied) folder"
            )
        self._options = new
        self._save()

    def path(self, name: str) -> Path:
        """Path of chunk ``name`` inside the folder."""
        return self.folder / name

    def is_valid(self, name: str, key) -> bool:
        """True when chunk ``name`` exists, was made with ``key`` and is intact.

        A chunk that exists but does not match (other key, other checksum: truncated or
        corrupted) is named in a logged warning and will be recomputed.
        """
        entry = self._entries.get(name)
        path = self.path(name)
        if entry is None:
            if path.exists():
                logger.warning("%s: no manifest record for %s; recomputing it", self.folder, name)
            return False
        if entry.get("key") != key:
            logger.warning("%s: %s was made from other inputs or options; recomputing it", self.folder, name)
            return False
        if entry.get("checksum") is None:  # a chunk recorded without a file (nothing to write)
            return True
        if not path.exists():
            logger.warning("%s: %s is missing; recomputing it", self.folder, name)
            return False
        try:
            ok = file_checksum(path) == entry.get("checksum")
        except OSError as exc:
            logger.warning("%s: %s is unreadable (%s); recomputing it", self.folder, name, exc)
            return False
        if not ok:
            logger.warning("%s: %s is truncated or corrupted (checksum differs); recomputing it", self.folder, name)
        return ok

    def valid_key(self, name: str):
        """The recorded key of chunk ``name`` when its file is intact (:meth:`is_valid` with
        its own key), else None: a worker that computes the key of the chunk's input can
        then tell, without asking back, whether the chunk is done."""
        entry = self._entries.get(name)
        if entry is None or not self.is_valid(name, entry.get("key")):
            return None
        return entry.get("key")

    def info(self, name: str) -> dict:
        """The extra information recorded with chunk ``name`` (empty if none)."""
        return dict(self._entries.get(name, {}).get("info", {}))

    def record(self, name: str, key, checksum: str | None, info: Mapping | None = None) -> None:
        """Record a chunk written with :func:`write_chunk` (``checksum`` None: no file) and save the manifest."""
        self._entries[name] = {"key": key, "checksum": checksum, "info": dict(info or {})}
        self._touched.add(name)
        self._save()

    def write(self, name: str, key, writer: Callable[[Path], object], info: Mapping | None = None) -> Path:
        """Write chunk ``name`` with ``writer(tmp_path)`` atomically and record it."""
        checksum = write_chunk(self.path(name), writer)
        self.record(name, key, checksum, info)
        return self.path(name)

    def set_order(self, names: Iterable[str]) -> None:
        """Declare the chunks of the current run, in order; records of other chunks are dropped
        and their files removed (they belong to a run with another layout)."""
        names = list(names)
        keep = set(names)
        for old in [n for n in self._entries if n not in keep]:
            self.path(old).unlink(missing_ok=True)
            del self._entries[old]
        self._order = names
        self._save()

    @property
    def order(self) -> list[str]:
        """The chunks of the last run, in order."""
        return list(self._order)

    @contextlib.contextmanager
    def _locked(self, name: str = _LOCK):
        if fcntl is None:  # pragma: no cover - not POSIX
            yield
            return
        with open(self.folder / name, "a+b") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.warning("%s: another run is using this folder; waiting for it to finish", self.folder)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def exclusive(self):
        """Hold the folder for one run (a context manager): a second run on the folder waits
        (with a logged warning) and then resumes from what the first left, so two runs
        never interleave their chunks. The kernel releases the lock of a killed run.
        The manifest is read again once the folder is held."""
        with self._locked(_RUN_LOCK):
            self._entries, self._order, self._options = self._load()
            self._touched = set()
            yield self

    def _save(self) -> None:
        """Write the manifest: this process's records over those on disk (another run's
        records of other chunks are kept)."""
        with self._locked():
            disk, _, _ = self._load()
            keep = set(self._order) if self._order else set(disk) | set(self._entries)
            merged = {k: v for k, v in disk.items() if k in keep and k not in self._touched}
            merged.update({k: v for k, v in self._entries.items() if k in self._touched or k not in merged})
            self._entries = {k: merged[k] for k in sorted(merged)}
            data = {"schema": _SCHEMA, "order": self._order, "chunks": self._entries, "options": self._options}
            write_json(self.folder / MANIFEST, data, overwrite=True)


def _short(value, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."
