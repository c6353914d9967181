"""Stores of survey runs: spectra stores built from chunk folders and spectra files, and the
zarr catalogue store of per-chunk inference results.

* :func:`spectra_store_from_chunks` and :func:`spectra_store_from_files` convert the chunk
  folder of ``bayescannon preprocess`` or a folder of container files (bayescannon FITS,
  ``.nc``, ``.npz``) into a :class:`~bayescannon.io.zarrstore.SpectraStore`, streaming (one
  chunk of stars in memory at a time) and atomically (the store appears complete or not at
  all).
* :class:`CatalogueStore` holds the inference results of a run chunk by chunk: every chunk
  is a zarr group ``chunks/<name>`` written into a temporary folder and renamed into place,
  recorded with its chunk key (:mod:`bayescannon.pipeline.chunks`) and the digest of its
  content, so a rerun verifies and reuses it. :meth:`CatalogueStore.finalise` joins the
  chunks into the one catalogue (:func:`~bayescannon.survey.catalogue.build_catalogue`),
  written as FITS or parquet, and refuses a run where a chunk is missing or a star is there
  twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon.errors import GridMismatchError, InvalidInputError, SurveyFormatError
from bayescannon.io import read_spectra
from bayescannon.io.zarrstore import SpectraStore
from bayescannon.pipeline.atomic import atomic_path, remove_stale_temps
from bayescannon.pipeline.chunks import MANIFEST, dataset_digest
from bayescannon.preprocess import chunk_files
from bayescannon.survey.catalogue import build_catalogue, write_table

logger = logging.getLogger(__name__)

__all__ = ["CatalogueStore", "spectra_store_from_chunks", "spectra_store_from_files"]

_SPECTRA_SUFFIXES = (".fits", ".fit", ".fits.gz", ".nc", ".npz")
_CATALOGUE_TAG = "bayescannon-catalogue-store"
_CHUNKS = "chunks"
_RECORD = "bayescannon_chunk"


def _stream_into(parts, path, *, stars_per_chunk: int, overwrite: bool, provenance: dict) -> SpectraStore:
    """Append containers from the iterable ``parts`` to a new store, whole zarr chunks at a time."""
    with atomic_path(path, overwrite=overwrite, directory=True) as tmp:
        store, buffer, held = None, [], 0

        def flush():
            nonlocal buffer, held
            if buffer:
                part = buffer[0] if len(buffer) == 1 else xr.concat(buffer, dim="star", combine_attrs="override")
                store.append(part)
            buffer, held = [], 0

        for label, ds in parts:
            if store is not None:  # each file against the first: the error names it
                wl = np.asarray(ds["wavelength"].values, dtype=np.float64)
                if wl.shape != store.wavelength.shape or not np.array_equal(wl, store.wavelength):
                    raise GridMismatchError(f"{label} is on another wavelength grid than the first spectra of {path}")
                if buffer and set(ds.data_vars) != set(buffer[0].data_vars):
                    raise InvalidInputError(
                        f"{label} has variables {sorted(map(str, ds.data_vars))}; the spectra before it "
                        f"{sorted(map(str, buffer[0].data_vars))}"
                    )
            if store is None:
                store = SpectraStore.create(
                    tmp,
                    ds["wavelength"].values,
                    stars_per_chunk=stars_per_chunk,
                    overwrite=True,
                    provenance=provenance,
                    wavelength_attrs={k: v for k, v in ds["wavelength"].attrs.items() if k != "units"},
                )
            buffer.append(ds)
            held += ds.sizes["star"]
            if held >= stars_per_chunk:
                flush()
        if store is None:
            raise InvalidInputError(f"{path}: no spectra to store")
        flush()
        n = store.n_stars
    logger.info("wrote %d stars to spectra store %s", n, path)
    return SpectraStore.open(path)


def spectra_store_from_chunks(
    chunk_dir, path, *, stars_per_chunk: int = 1000, overwrite: bool = False, provenance: dict | None = None
) -> SpectraStore:
    """Convert a chunk folder of ``bayescannon preprocess`` into a spectra store.

    Parameters
    ----------
    chunk_dir : path
        Folder written by :func:`bayescannon.preprocess.process_in_chunks`.
    path : path
        The store to write (``*.zarr``), atomically.
    stars_per_chunk : int
        Stars per zarr chunk.
    overwrite : bool
    provenance : dict, optional
        Recorded besides the chunk folder and its manifest's options.

    Returns
    -------
    SpectraStore
        Opened read-only.
    """
    chunk_dir = Path(chunk_dir)
    files = chunk_files(chunk_dir)
    options = None
    if (chunk_dir / MANIFEST).is_file():
        options = json.loads((chunk_dir / MANIFEST).read_text()).get("options")
    prov = {"sources": [os.fspath(chunk_dir.resolve())], "preprocessing": options, **dict(provenance or {})}
    return _stream_into(
        ((f, read_spectra(f)) for f in files),
        path,
        stars_per_chunk=stars_per_chunk,
        overwrite=overwrite,
        provenance=prov,
    )


def spectra_store_from_files(
    paths_or_folder, path, *, stars_per_chunk: int = 1000, overwrite: bool = False, provenance: dict | None = None
) -> SpectraStore:
    """Convert container files (bayescannon FITS, ``.nc``, ``.npz``; one or many stars each,
    all on one grid) into a spectra store, one file in memory at a time.

    Parameters
    ----------
    paths_or_folder : path or sequence of paths
        Files, or a folder whose container files are taken in sorted order.
    path : path
        The store to write (``*.zarr``), atomically.
    stars_per_chunk : int
    overwrite : bool
    provenance : dict, optional

    Raises
    ------
    GridMismatchError
        A file on another grid than the first (naming the store and the pixel).
    InvalidInputError
        An id in two files (naming it); no files.
    """
    if isinstance(paths_or_folder, (str, os.PathLike)) and Path(paths_or_folder).is_dir():
        folder = Path(paths_or_folder)
        paths = sorted(p for p in folder.rglob("*") if p.name.lower().endswith(_SPECTRA_SUFFIXES))
        sources = [os.fspath(folder.resolve())]
    elif isinstance(paths_or_folder, (str, os.PathLike)):
        paths = [Path(paths_or_folder)]
        sources = [os.fspath(paths[0].resolve())]
    else:
        paths = [Path(p) for p in paths_or_folder]
        sources = [os.fspath(p.resolve()) for p in paths[:100]] + (
            [f"... {len(paths)} files"] if len(paths) > 100 else []
        )
    if not paths:
        raise InvalidInputError(f"{paths_or_folder}: no spectra files ({', '.join(_SPECTRA_SUFFIXES)})")
    prov = {"sources": sources, "n_files": len(paths), **dict(provenance or {})}
    return _stream_into(
        ((p, read_spectra(p)) for p in paths),
        path,
        stars_per_chunk=stars_per_chunk,
        overwrite=overwrite,
        provenance=prov,
    )


def _key_text(key) -> str:
    return json.dumps(key, sort_keys=True, default=str)


class CatalogueStore:
    """A zarr store of per-chunk inference results (see the module).

    Parameters
    ----------
    path : path
        The store folder (``*.zarr``); created when missing.

    Notes
    -----
    Chunks are written by any process (each chunk its own folder, renamed into place);
    the order of a run (:meth:`set_order`) by the one process that owns the run.
    """

    def __init__(self, path):
        import zarr  # lazy: zarr takes ~1 s to import

        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            with atomic_path(
                self.path, overwrite=self.path.is_dir() and not any(self.path.iterdir()), directory=True
            ) as t:
                g = zarr.open_group(t, mode="w", zarr_format=3)
                g.create_group(_CHUNKS)
                g.attrs.update({"bayescannon_format": _CATALOGUE_TAG, "order": None})
        try:
            self._group = zarr.open_group(self.path, mode="r+", zarr_format=3)
        except Exception as exc:  # zarr raises many kinds on a damaged store: name the file
            raise SurveyFormatError(f"{self.path}: not a readable zarr v3 store ({exc})") from exc
        if self._group.attrs.get("bayescannon_format") != _CATALOGUE_TAG:
            raise SurveyFormatError(f"{self.path}: not a bayescannon catalogue store")
        (self.path / _CHUNKS).mkdir(exist_ok=True)
        remove_stale_temps(self.path / _CHUNKS)

    def exclusive(self):
        """Context of one run (kept for the interface of :class:`~bayescannon.pipeline.chunks.ChunkStore`:
        chunks are independent folders, so nothing is locked)."""
        return contextlib.nullcontext(self)

    def set_order(self, names) -> None:
        """Declare the chunks of the run, in order (what :meth:`finalise` expects)."""
        self._group.attrs["order"] = [str(n) for n in names]

    @property
    def order(self) -> list[str] | None:
        """The declared chunks, or None."""
        try:  # read from disk: another process (the run's owner) may have declared it since
            order = json.loads((self.path / "zarr.json").read_text())["attributes"].get("order")
        except (OSError, ValueError, KeyError) as exc:
            raise SurveyFormatError(f"{self.path}: unreadable zarr.json ({exc})") from exc
        return None if order is None else list(order)

    def chunk_path(self, name: str) -> Path:
        """Folder of chunk ``name``."""
        if not name or "/" in name or name.startswith("."):
            raise InvalidInputError(f"bad chunk name {name!r}")
        return self.path / _CHUNKS / name

    def names(self) -> list[str]:
        """Chunks present (complete groups), sorted."""
        return sorted(p.name for p in (self.path / _CHUNKS).iterdir() if (p / "zarr.json").is_file())

    def _load(self, name: str) -> tuple[xr.Dataset, dict]:
        path = self.chunk_path(name)
        try:
            with xr.open_zarr(path, zarr_format=3, consolidated=False) as f:
                ds = f.load()
        except Exception as exc:  # missing, truncated or corrupted: zarr raises many kinds
            raise SurveyFormatError(f"{self.path}: chunk {name!r} is unreadable ({type(exc).__name__}: {exc})") from exc
        record = ds.attrs.pop(_RECORD, None)
        if not isinstance(record, dict):
            raise SurveyFormatError(f"{self.path}: chunk {name!r} has no chunk record (not written by CatalogueStore)")
        if "star" in ds.coords:
            ds = ds.assign_coords(star=np.asarray(ds["star"].values).astype(object).astype(str))
        return ds, record

    def is_valid(self, name: str, key) -> bool:
        """True when chunk ``name`` exists, was made with ``key`` and its content matches its digest.

        A chunk that exists but does not match is named in a logged warning (it will be recomputed).
        """
        recorded = self.valid_key(name)
        if recorded is None:
            return False
        if recorded != _key_text(key):
            logger.warning("%s: chunk %s was made from other inputs or options; recomputing it", self.path, name)
            return False
        return True

    def valid_key(self, name: str) -> str | None:
        """The recorded key of chunk ``name`` (its canonical JSON text) when the chunk is
        intact (:meth:`is_valid` with its own key), else None: a worker that computes the key
        of the chunk's input can then tell, without asking back, whether the chunk is done."""
        if not (self.chunk_path(name) / "zarr.json").is_file():
            return None
        try:
            ds, record = self._load(name)
        except SurveyFormatError as exc:
            logger.warning("%s; recomputing it", exc)
            return None
        if record.get("digest") != dataset_digest(ds):
            logger.warning("%s: chunk %s is corrupted (digest differs); recomputing it", self.path, name)
            return None
        return record.get("key")

    def write(self, name: str, key, result: xr.Dataset) -> Path:
        """Write one chunk's result atomically with its key (replacing an older one)."""
        path = self.chunk_path(name)
        out = result.copy()
        out.attrs = {**result.attrs, _RECORD: {"key": _key_text(key), "digest": dataset_digest(result)}}
        if "star" in out.coords:
            out = out.assign_coords(star=np.asarray(out["star"].values).astype(str))
        with atomic_path(path, overwrite=True, directory=True) as tmp:
            out.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False)
        return path

    def read(self, name: str) -> xr.Dataset:
        """The result of chunk ``name``."""
        return self._load(name)[0]

    def results(self, *, expected_ids=None) -> xr.Dataset:
        """All chunks' results along ``star`` (declared order, else sorted by name), every star exactly once.

        Raises
        ------
        InvalidInputError
            A declared chunk is missing; a star is in two chunks (naming the ids and the
            chunks); with ``expected_ids``, a star missing or not expected.
        """
        present = self.names()
        names = self.order if self.order is not None else present
        missing = [n for n in names if n not in present]
        if missing:
            raise InvalidInputError(
                f"{self.path}: {len(missing)} of {len(names)} chunk(s) missing: {', '.join(missing[:10])}"
                + (" ..." if len(missing) > 10 else "")
                + "; rerun to compute them"
            )
        if not names:
            raise InvalidInputError(f"{self.path}: no chunks")
        pieces = [self.read(n) for n in names]
        ids = np.concatenate([np.asarray(p["star"].values).astype(str) for p in pieces])
        owner = np.repeat(np.arange(len(names)), [p.sizes["star"] for p in pieces])
        uniq, first, counts = np.unique(ids, return_index=True, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            where = sorted({names[owner[i]] for i in np.flatnonzero(np.isin(ids, dup[:10]))})
            raise InvalidInputError(
                f"{self.path}: {dup.size} star(s) in more than one chunk (e.g. {', '.join(dup[:10])} in "
                f"{', '.join(where)}): every star must be there exactly once"
            )
        if expected_ids is not None:
            expected = np.asarray(expected_ids).astype(str)
            lost, extra = np.setdiff1d(expected, ids), np.setdiff1d(ids, expected)
            if lost.size or extra.size:
                raise InvalidInputError(
                    f"{self.path}: {lost.size} expected star(s) missing (e.g. {', '.join(lost[:5])}), "
                    f"{extra.size} not expected (e.g. {', '.join(extra[:5])})"
                )
        return xr.concat(pieces, dim="star")

    def finalise(
        self, output=None, model=None, *, spectra=None, expected_ids=None, overwrite: bool = False, **catalogue_kwargs
    ):
        """The one catalogue of the run, written to ``output`` (FITS, parquet, CSV, ECSV by suffix).

        Parameters
        ----------
        output : path, optional
            Written atomically with :func:`~bayescannon.survey.catalogue.write_table`.
        model : CannonModel, optional
            For the quality flags and the error model (see
            :func:`~bayescannon.survey.catalogue.build_catalogue`).
        spectra : xarray.Dataset, optional
            Per-star columns (``snr``) joined by id, e.g. :meth:`SpectraStore.read_columns`.
        expected_ids : array_like, optional
            Every star the run was for (e.g. :meth:`SpectraStore.ids`): each must be there once.
        overwrite : bool
        **catalogue_kwargs
            Passed to :func:`~bayescannon.survey.catalogue.build_catalogue`.

        Returns
        -------
        astropy.table.Table

        Raises
        ------
        InvalidInputError
            See :meth:`results`.
        """
        table = build_catalogue(model, self.results(expected_ids=expected_ids), spectra=spectra, **catalogue_kwargs)
        if output is not None:
            write_table(table, output, overwrite=overwrite)
        return table
