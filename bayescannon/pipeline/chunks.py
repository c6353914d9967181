"""One resumable chunk protocol for every long run (preprocessing, inference).

A chunk folder holds chunk files and ``chunks.json``, a manifest that records for each
chunk the *key* of everything that determines its content (the digest of its input, the
options or steps with their values, the model hash, the package version) and the
checksum of the file written. A rerun reuses a chunk only when its recorded key equals
the key asked for and the file's checksum equals the recorded one; a chunk that does
not match (other input, other options, another model or version), is truncated,
corrupted or missing is recomputed with a logged warning. Every file is written through
:func:`bayescannon.pipeline.atomic.atomic_path`, and temporary files left by an
interrupted run (:data:`~bayescannon.pipeline.atomic.TMP_PREFIX`) are removed when the
folder is opened.

Only the process that owns the :class:`ChunkStore` writes the manifest; worker processes
write chunk files with :func:`write_chunk` and hand back the checksum.

Examples
--------
>>> store = ChunkStore(folder)  # doctest: +SKIP
>>> key = chunk_key(input=digest_of(part), options={"n_starts": 4})  # doctest: +SKIP
>>> if not store.is_valid("chunk_000000.nc", key):  # doctest: +SKIP
...     store.record("chunk_000000.nc", key, write_chunk(store.path("chunk_000000.nc"), writer))
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

from bayescannon._version import __version__
from bayescannon.errors import InvalidInputError
from bayescannon.pipeline.atomic import TMP_PREFIX, atomic_path, write_json

logger = logging.getLogger(__name__)

__all__ = ["MANIFEST", "ChunkStore", "chunk_key", "describe", "digest_of", "file_checksum", "write_chunk"]

#: Name of the manifest file inside a chunk folder.
MANIFEST = "chunks.json"
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
        Remove stale temporary files of an interrupted run (default). Readers of a
        folder that another process may be writing pass False.

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
        for stale in self.folder.glob(f"{TMP_PREFIX}*") if clean else ():
            logger.info("%s: removing %s left by an interrupted run", self.folder, stale.name)
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        self._entries: dict[str, dict] = {}
        self._order: list[str] = []
        mpath = self.folder / MANIFEST
        if mpath.exists():
            try:
                data = json.loads(mpath.read_text())
                if data.get("schema") != _SCHEMA:
                    raise ValueError(f"schema {data.get('schema')!r}")
                self._entries = dict(data["chunks"])
                self._order = list(data.get("order", []))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                logger.warning("%s: unreadable manifest (%s); every chunk will be recomputed", mpath, exc)
                self._entries, self._order = {}, []

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

    def info(self, name: str) -> dict:
        """The extra information recorded with chunk ``name`` (empty if none)."""
        return dict(self._entries.get(name, {}).get("info", {}))

    def record(self, name: str, key, checksum: str | None, info: Mapping | None = None) -> None:
        """Record a chunk written with :func:`write_chunk` (``checksum`` None: no file) and save the manifest."""
        self._entries[name] = {"key": key, "checksum": checksum, "info": dict(info or {})}
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

    def _save(self) -> None:
        write_json(
            self.folder / MANIFEST, {"schema": _SCHEMA, "order": self._order, "chunks": self._entries}, overwrite=True
        )
