"""Spectra as chunked arrays: a zarr (v3) store of spectra on one wavelength grid.

A :class:`SpectraStore` is a folder that zarr reads, chunked by star, so that a survey of
millions of spectra is read one chunk of stars at a time by one process or by many
(``bayescannon infer``, the Dask workers)::

    store.zarr/
      zarr.json            group attributes: format tag, committed star count, schema,
                           provenance (package version, sources, preprocessing, time)
      wavelength           (pixel,) float64, Angstrom
      flux, ivar           (star, pixel) float32, chunks (stars_per_chunk, pixel)
      star                 (star,) str: the container's ``star`` ids
      images/mask ...      other (star, pixel) variables of the container (e.g. ``mask``)
      columns/snr ...      per-star variables of the container (``snr``, ``filename``, ...)

Spectra are stored in float32 (a relative rounding of 6e-8, far below any spectrum's
noise) and read back as the float64 container of ``docs/guides/conventions.md``: what
:meth:`SpectraStore.read` returns is what :meth:`CannonModel.infer` accepts, and
:meth:`SpectraStore.digest` is :func:`bayescannon.pipeline.chunks.dataset_digest` of it,
so the resume keys of a chunk are the same whether it came from a store or from memory.

Append-friendly and safe to interrupt: :meth:`SpectraStore.append` grows the arrays,
writes the new stars and only then raises the committed star count (``n_stars``) in
the group attributes; readers trust only the committed count, so an append killed
half-way leaves a store that reads as before it. Every chunk carries a CRC32C checksum
and missing chunks read as NaN inverse variances, so a truncated or corrupted store is
a :class:`~bayescannon.errors.SurveyFormatError` naming the file and the array, never
silently different spectra. One writer at a time.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from bayescannon._version import __version__
from bayescannon.errors import GridMismatchError, InvalidInputError, ShapeMismatchError, SurveyFormatError
from bayescannon.pipeline.atomic import atomic_path
from bayescannon.pipeline.chunks import dataset_digest
from bayescannon.spectra import check_spectra

logger = logging.getLogger(__name__)

__all__ = ["FORMAT_TAG", "SpectraStore", "is_spectra_store"]

#: Value of the ``bayescannon_format`` attribute of a spectra store's root group.
FORMAT_TAG = "bayescannon-spectra-store"
_SCHEMA = 1
_COLUMNS = "columns"
_IMAGES = "images"
_CORE = ("flux", "ivar", "wavelength", "star")
_F32 = np.finfo(np.float32)


def is_spectra_store(path) -> bool:
    """Whether ``path`` is a folder holding a spectra store (its root ``zarr.json`` carries the format tag)."""
    meta = Path(path) / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("bayescannon_format") == FORMAT_TAG
    except (OSError, ValueError):
        return False


def _jsonable(value):
    """``value`` made JSON-able (numpy scalars and arrays, paths, tuples; anything else as text)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _codecs():
    """Compressors of every array: zstd, then a CRC32C checksum per chunk (corruption is an error)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec  # lazy: zarr takes ~1 s to import

    return [ZstdCodec(level=1), Crc32cCodec()]


def _fill(dtype: np.dtype):
    if dtype.kind in "US":
        return ""
    if dtype.kind == "f":
        return np.nan
    if dtype.kind == "b":
        return False
    return 0


def _text(values: np.ndarray) -> np.ndarray:
    """Fixed-width numpy text of zarr's variable-length strings (numpy ``StringDType``)."""
    return np.asarray(values).astype(object).astype(str)


def _storage_dtype(values: np.ndarray):
    """The zarr dtype of a per-star or image variable (text as variable-length strings)."""
    if values.dtype.kind in "UO":
        return str
    if values.dtype.kind not in "biuf":
        raise InvalidInputError(f"cannot store a variable of dtype {values.dtype} in a spectra store")
    return values.dtype.newbyteorder("=")  # FITS columns come big-endian: one schema whatever the source


class SpectraStore:
    """A zarr store of spectra on one wavelength grid, chunked by star (see the module).

    Use :meth:`create` or :meth:`open`, not the constructor.

    Attributes
    ----------
    path : pathlib.Path
    mode : {"r", "r+"}
    """

    def __init__(self, path, group, mode: str):
        self.path = Path(path)
        self.mode = mode
        self._group = group
        self._validate()

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path,
        wavelength,
        *,
        stars_per_chunk: int = 1000,
        overwrite: bool = False,
        provenance: Mapping | None = None,
        wavelength_attrs: Mapping | None = None,
    ) -> SpectraStore:
        """Create an empty store on the grid ``wavelength`` (atomically: a complete empty store or nothing).

        Parameters
        ----------
        path : path-like
            The store folder (conventionally ``*.zarr``).
        wavelength : array_like (P,)
            Strictly increasing, finite wavelengths in Angstrom.
        stars_per_chunk : int
            Stars per zarr chunk: the unit of reading (:meth:`chunk_bounds`).
        overwrite : bool
            Replace an existing store.
        provenance : mapping, optional
            Recorded (JSON) with the package version and the creation time, e.g.
            ``{"sources": [...], "preprocessing": {...}}``.
        wavelength_attrs : mapping, optional
            Attributes of the wavelength coordinate (``units`` is always Angstrom).

        Returns
        -------
        SpectraStore
            Opened for appending (mode ``"r+"``).

        Raises
        ------
        InvalidInputError
            A bad grid or chunk size.
        OutputExistsError
            ``path`` exists and ``overwrite`` is False.
        """
        import zarr  # lazy: zarr takes ~1 s to import

        wl = np.asarray(wavelength, dtype=np.float64)
        if wl.ndim != 1 or wl.size == 0:
            raise ShapeMismatchError(f"{path}: the wavelength grid must be 1-D and non-empty; got shape {wl.shape}")
        check_spectra(
            xr.Dataset(
                {
                    "flux": (("star", "pixel"), np.zeros((0, wl.size))),
                    "ivar": (("star", "pixel"), np.zeros((0, wl.size))),
                },
                coords={"wavelength": ("pixel", wl)},
            )
        )
        if int(stars_per_chunk) < 1:
            raise InvalidInputError(f"stars_per_chunk must be >= 1; got {stars_per_chunk}")
        spc = int(stars_per_chunk)
        prov = {
            "package_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **_jsonable(dict(provenance or {})),
        }
        attrs = {
            "bayescannon_format": FORMAT_TAG,
            "schema": _SCHEMA,
            "n_stars": 0,
            "stars_per_chunk": spc,
            "n_pixels": int(wl.size),
            "columns": {},
            "images": {},
            "dataset_attrs": None,
            "wavelength_attrs": {**_jsonable(dict(wavelength_attrs or {})), "units": "Angstrom"},
            "provenance": prov,
        }
        with atomic_path(path, overwrite=overwrite, directory=True) as tmp:
            group = zarr.open_group(tmp, mode="w", zarr_format=3)
            group.create_array("wavelength", data=wl, chunks=(wl.size,), compressors=_codecs())
            for name in ("flux", "ivar"):
                group.create_array(
                    name,
                    shape=(0, wl.size),
                    chunks=(spc, wl.size),
                    dtype="float32",
                    fill_value=np.nan,
                    compressors=_codecs(),
                )
            group.create_array("star", shape=(0,), chunks=(spc,), dtype=str, fill_value="", compressors=_codecs())
            group.create_group(_COLUMNS)
            group.create_group(_IMAGES)
            group.attrs.update(attrs)
        logger.info("created spectra store %s (%d pixels, %d stars per chunk)", path, wl.size, spc)
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path, mode: str = "r") -> SpectraStore:
        """Open an existing store (``mode="r"`` to read, ``"r+"`` to append), validating its layout.

        Raises
        ------
        SurveyFormatError
            Not a spectra store; an array missing; shapes that disagree; a non-finite or
            non-increasing wavelength grid (naming the file and the array).
        """
        import zarr  # lazy: zarr takes ~1 s to import

        if mode not in ("r", "r+"):
            raise InvalidInputError(f"mode must be 'r' or 'r+'; got {mode!r}")
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise SurveyFormatError(f"{path}: not a spectra store (no zarr.json)")
        try:
            group = zarr.open_group(path, mode=mode, zarr_format=3)
        except Exception as exc:  # zarr raises many kinds on a damaged store: name the file
            raise SurveyFormatError(f"{path}: not a readable zarr v3 store ({type(exc).__name__}: {exc})") from exc
        return cls(path, group, mode)

    # -- layout ---------------------------------------------------------------------------

    def _error(self, array: str, what: str) -> SurveyFormatError:
        return SurveyFormatError(f"{self.path}: array {array!r}: {what}")

    def _array(self, name: str):
        try:
            return self._group[name]
        except (KeyError, FileNotFoundError) as exc:
            raise self._error(name, "missing (truncated or not a spectra store)") from exc
        except Exception as exc:  # damaged metadata: zarr raises many kinds
            raise self._error(name, f"unreadable ({type(exc).__name__}: {exc})") from exc

    def _validate(self) -> None:
        attrs = dict(self._group.attrs)
        if attrs.get("bayescannon_format") != FORMAT_TAG:
            raise SurveyFormatError(f"{self.path}: not a bayescannon spectra store (no {FORMAT_TAG!r} tag)")
        if attrs.get("schema") != _SCHEMA:
            raise SurveyFormatError(
                f"{self.path}: spectra store schema {attrs.get('schema')}; this version reads {_SCHEMA}"
            )
        self._attrs = attrs
        n, p = self.n_stars, int(attrs["n_pixels"])
        wl = self._array("wavelength")
        if wl.shape != (p,):
            raise self._error("wavelength", f"shape {wl.shape}; expected ({p},)")
        self._wavelength = self._load("wavelength", wl, slice(None)).astype(np.float64)
        if not np.isfinite(self._wavelength).all():
            bad = int(np.flatnonzero(~np.isfinite(self._wavelength))[0])
            raise self._error("wavelength", f"non-finite value at pixel {bad}")
        if p > 1 and not (np.diff(self._wavelength) > 0).all():
            bad = int(np.argmax(~(np.diff(self._wavelength) > 0))) + 1
            raise self._error("wavelength", f"not strictly increasing at pixel {bad}")
        spc = self.stars_per_chunk
        for name in ("flux", "ivar", *(f"{_IMAGES}/{k}" for k in attrs["images"])):
            a = self._array(name)
            if a.ndim != 2 or a.shape[1] != p or a.shape[0] < n:
                raise self._error(name, f"shape {a.shape}; expected ({n} or more, {p}) for {n} committed stars")
            if a.chunks[0] != spc:
                raise self._error(name, f"chunks {a.chunks}; expected ({spc}, {p})")
        for name in ("star", *(f"{_COLUMNS}/{k}" for k in attrs["columns"])):
            a = self._array(name)
            if a.ndim != 1 or a.shape[0] < n:
                raise self._error(name, f"shape {a.shape}; expected ({n} or more,) for {n} committed stars")

    @property
    def n_stars(self) -> int:
        """Committed stars (what readers see)."""
        return int(self._attrs["n_stars"])

    @property
    def n_pixels(self) -> int:
        """Pixels of the grid."""
        return int(self._attrs["n_pixels"])

    @property
    def stars_per_chunk(self) -> int:
        """Stars per zarr chunk."""
        return int(self._attrs["stars_per_chunk"])

    @property
    def wavelength(self) -> np.ndarray:
        """The wavelength grid (a copy), Angstrom."""
        return self._wavelength.copy()

    @property
    def provenance(self) -> dict:
        """Package version, creation time and what the creator recorded."""
        return dict(self._attrs["provenance"])

    @property
    def columns(self) -> list[str]:
        """Per-star variables stored besides the ids."""
        return list(self._attrs["columns"])

    def chunk_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` of each zarr chunk of the committed stars, in order."""
        n, spc = self.n_stars, self.stars_per_chunk
        return [(a, min(a + spc, n)) for a in range(0, n, spc)]

    # -- reading --------------------------------------------------------------------------

    def _load(self, name: str, array, sel) -> np.ndarray:
        try:
            return np.asarray(array[sel])
        except Exception as exc:  # checksum mismatch, truncated chunk: zarr/numcodecs raise many kinds
            raise self._error(name, f"corrupted or truncated data ({type(exc).__name__}: {exc})") from exc

    def _check_range(self, start, stop) -> tuple[int, int]:
        n = self.n_stars
        start = 0 if start is None else int(start)
        stop = n if stop is None else int(stop)
        if not 0 <= start <= stop <= n:
            raise InvalidInputError(f"{self.path}: star range [{start}, {stop}) is outside [0, {n})")
        return start, stop

    def read(self, start: int | None = None, stop: int | None = None) -> xr.Dataset:
        """Stars ``start:stop`` as the spectra container that :meth:`CannonModel.infer` accepts.

        Returns
        -------
        xarray.Dataset
            float64 ``flux``/``ivar`` (the stored float32 values), the ``wavelength``
            coordinate, ``star`` ids, the stored image and per-star variables and the
            dataset attributes of the first append.

        Raises
        ------
        SurveyFormatError
            A missing, truncated or corrupted chunk (naming the file, the array and the star).
        """
        start, stop = self._check_range(start, stop)
        sel = slice(start, stop)
        flux = self._load("flux", self._array("flux"), sel).astype(np.float64)
        ivar = self._load("ivar", self._array("ivar"), sel).astype(np.float64)
        ids = _text(self._load("star", self._array("star"), sel))
        bad = ~np.isfinite(ivar)
        badf = (ivar > 0) & ~np.isfinite(flux)
        if badf.any():
            i = int(np.flatnonzero(badf.any(axis=1))[0])
            raise self._error("flux", f"missing chunk or non-finite value at star {start + i} (a damaged store)")
        if bad.any():
            i = int(np.flatnonzero(bad.any(axis=1))[0])
            raise self._error("ivar", f"missing chunk or non-finite value at star {start + i} (a damaged store)")
        empty = ids == ""
        if empty.any():
            raise self._error("star", f"missing chunk or empty id at star {start + int(np.flatnonzero(empty)[0])}")
        attrs = self._attrs
        wl = xr.Variable("pixel", self._wavelength.copy(), attrs=dict(attrs["wavelength_attrs"]))
        ds = xr.Dataset(
            {"flux": (("star", "pixel"), flux), "ivar": (("star", "pixel"), ivar)},
            coords={"star": ids, "wavelength": wl},
            attrs=json.loads(attrs["dataset_attrs"]) if attrs["dataset_attrs"] else {},
        )
        for k, dtype in attrs["images"].items():
            name = f"{_IMAGES}/{k}"
            ds[k] = (("star", "pixel"), self._load(name, self._array(name), sel).astype(dtype))
        for k, dtype in attrs["columns"].items():
            name = f"{_COLUMNS}/{k}"
            values = self._load(name, self._array(name), sel)
            ds[k] = ("star", _text(values) if dtype == "str" else values.astype(dtype))
        return check_spectra(ds)

    def read_columns(self) -> xr.Dataset:
        """The ids and per-star variables of every committed star (no spectra): e.g. the
        ``snr`` that a catalogue reports."""
        sel = slice(0, self.n_stars)
        ds = xr.Dataset(coords={"star": _text(self._load("star", self._array("star"), sel))})
        for k, dtype in self._attrs["columns"].items():
            name = f"{_COLUMNS}/{k}"
            values = self._load(name, self._array(name), sel)
            ds[k] = ("star", _text(values) if dtype == "str" else values.astype(dtype))
        return ds

    def digest(self, start: int | None = None, stop: int | None = None) -> str:
        """Content digest of stars ``start:stop``: :func:`~bayescannon.pipeline.chunks.dataset_digest` of :meth:`read`."""
        return dataset_digest(self.read(start, stop))

    def ids(self) -> np.ndarray:
        """Ids of the committed stars."""
        return _text(self._load("star", self._array("star"), slice(0, self.n_stars)))

    # -- appending ------------------------------------------------------------------------

    def _schema_of(self, ds: xr.Dataset) -> tuple[dict, dict]:
        columns, images = {}, {}
        for k, var in ds.data_vars.items():
            if k in ("flux", "ivar"):
                continue
            if var.dims == ("star",):
                dt = _storage_dtype(np.asarray(var.values))
                columns[str(k)] = "str" if dt is str else np.dtype(dt).str
            elif var.dims == ("star", "pixel"):
                images[str(k)] = np.dtype(_storage_dtype(np.asarray(var.values))).str
            else:
                raise InvalidInputError(
                    f"{self.path}: variable {k!r} has dims {var.dims}; a spectra store holds (star,) and "
                    "(star, pixel) variables only"
                )
        extra = [str(c) for c in ds.coords if c not in ("star", "wavelength")]
        if extra:
            raise InvalidInputError(f"{self.path}: coordinate(s) {extra} cannot be stored; make them data variables")
        return columns, images

    def _check_duplicates(self, new_ids: np.ndarray) -> None:
        uniq, counts = np.unique(new_ids, return_counts=True)
        if (counts > 1).any():
            raise InvalidInputError(f"{self.path}: the spectra appended repeat ids {', '.join(uniq[counts > 1][:5])}")
        star = self._array("star")
        hit = np.zeros(new_ids.size, dtype=bool)
        for a, b in self.chunk_bounds():  # chunk by chunk: bounded memory on any store
            hit |= np.isin(new_ids, _text(self._load("star", star, slice(a, b))))
        if hit.any():
            dup = new_ids[hit]
            raise InvalidInputError(
                f"{self.path}: {dup.size} star id(s) already in the store: {', '.join(dup[:10])}"
                + (" ..." if dup.size > 10 else "")
            )

    def append(self, ds: xr.Dataset) -> tuple[int, int]:
        """Append the stars of a container (on the store's grid, with new ids).

        The data are written first and the committed star count raised last, so an
        interrupted append is invisible (and overwritten by the next one).

        Returns
        -------
        (start, stop)
            The rows the stars now occupy.

        Raises
        ------
        GridMismatchError
            ``ds`` is on another wavelength grid (naming the first differing pixel).
        InvalidInputError
            Ids already in the store or repeated (naming them); other per-star variables
            than the store's; values that float32 cannot hold.
        """
        if self.mode != "r+":
            raise InvalidInputError(f"{self.path}: opened read-only; open with mode='r+' to append")
        check_spectra(ds)
        wl = np.asarray(ds["wavelength"].values, dtype=np.float64)
        if wl.shape != self._wavelength.shape or not np.array_equal(wl, self._wavelength):
            if wl.shape != self._wavelength.shape:
                what = f"{wl.size} pixels, the store has {self._wavelength.size}"
            else:
                j = int(np.flatnonzero(wl != self._wavelength)[0])
                what = f"pixel {j} is at {wl[j]!r} A, the store's at {self._wavelength[j]!r} A"
            raise GridMismatchError(f"{self.path}: the spectra appended are on another wavelength grid ({what})")
        columns, images = self._schema_of(ds)
        first = self.n_stars == 0 and self._attrs["dataset_attrs"] is None
        if not first and (columns != self._attrs["columns"] or images != self._attrs["images"]):
            raise InvalidInputError(
                f"{self.path}: the spectra appended have variables {sorted(columns) + sorted(images)} "
                f"({columns}, {images}); the store has {self._attrs['columns']}, {self._attrs['images']}"
            )
        ids = np.asarray(ds["star"].values).astype(str)
        if (ids == "").any():
            raise InvalidInputError(f"{self.path}: empty star id at row {int(np.flatnonzero(ids == '')[0])}")
        self._check_duplicates(ids)
        flux = np.asarray(ds["flux"].values, dtype=np.float64)
        ivar = np.asarray(ds["ivar"].values, dtype=np.float64)
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            f32, iv32 = flux.astype(np.float32), ivar.astype(np.float32)
        lost = (np.isfinite(ivar) & ~np.isfinite(iv32)) | ((ivar > 0) & ~(iv32 > 0))
        lost |= (ivar > 0) & np.isfinite(flux) & ~np.isfinite(f32)
        if not np.isfinite(ivar).all() or (ivar < 0).any() or lost.any():
            i, j = np.argwhere(lost | ~np.isfinite(ivar) | (ivar < 0))[0]
            raise InvalidInputError(
                f"{self.path}: star {ids[i]} pixel {j}: flux {flux[i, j]!r}, ivar {ivar[i, j]!r} cannot be stored "
                f"(ivar must be finite and >= 0, and float32 holds |values| in [{_F32.tiny:.1e}, {_F32.max:.1e}])"
            )
        n, m = self.n_stars, ids.size
        if m == 0:
            return n, n
        g, sel = self._group, slice(n, n + m)
        if first:  # the variables are declared by the first stars (re-created: an interrupted first append left junk)
            for k, dt in columns.items():
                g[_COLUMNS].create_array(
                    k,
                    shape=(0,),
                    chunks=(self.stars_per_chunk,),
                    dtype=str if dt == "str" else np.dtype(dt),
                    fill_value=_fill(np.dtype("U1") if dt == "str" else np.dtype(dt)),
                    compressors=_codecs(),
                    overwrite=True,
                )
            for k, dt in images.items():
                g[_IMAGES].create_array(
                    k,
                    shape=(0, self.n_pixels),
                    chunks=(self.stars_per_chunk, self.n_pixels),
                    dtype=np.dtype(dt),
                    fill_value=_fill(np.dtype(dt)),
                    compressors=_codecs(),
                    overwrite=True,
                )
        writes = [("flux", f32), ("ivar", iv32), ("star", ids)]
        writes += [(f"{_COLUMNS}/{k}", np.asarray(ds[k].values)) for k in columns]
        writes += [(f"{_IMAGES}/{k}", np.asarray(ds[k].values)) for k in images]
        for name, values in writes:
            a = g[name]
            a.resize((n + m, *a.shape[1:]))
            if values.dtype.kind in "UO":
                values = values.astype(str)
            a[sel] = values
        # commit last: until this attribute is written, readers see the old n_stars
        update = {"n_stars": n + m}
        if first:
            update.update(
                columns=columns,
                images=images,
                dataset_attrs=json.dumps(_jsonable(dict(ds.attrs))),
            )
        g.attrs.update(update)
        self._attrs.update(update)
        logger.debug("%s: appended %d stars (now %d)", self.path, m, n + m)
        return n, n + m

    def __repr__(self) -> str:
        return f"SpectraStore({os.fspath(self.path)!r}, n_stars={self.n_stars}, n_pixels={self.n_pixels})"
