"""The spectra container: one ``xarray.Dataset`` that every step accepts.

See ``docs/guides/conventions.md``. Dimensions are ``star`` and ``pixel``; ``flux`` and
``ivar`` are (star, pixel) float64; ``wavelength`` is a (pixel,) coordinate in
Angstrom; ``star`` holds unique string identifiers.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from bayescannon.errors import (
    CrossMatchError,
    InvalidInputError,
    LabelError,
    NegativeIvarError,
    NonFiniteError,
    ShapeMismatchError,
)
from bayescannon.results import numpy_variable, result_dataset

__all__ = [
    "BAD_PIXEL_KINDS",
    "LABEL_SENTINELS",
    "MAX_ABS_FLUX",
    "MAX_IVAR_RATIO",
    "MISSING_TEXTS",
    "as_flux_ivar_arrays",
    "as_label_array",
    "check_flux_ivar",
    "check_flux_ivar_values",
    "check_ids",
    "check_spectra",
    "default_ids",
    "describe_pixel",
    "label_values",
    "make_spectra",
    "raise_bad_pixel",
    "unpack_spectra",
    "join_ids",
]


def default_ids(n: int, prefix: str = "star") -> np.ndarray:
    """Identifiers ``star000000``, ``star000001``, ... for ``n`` anonymous stars."""
    return np.array([f"{prefix}{i:06d}" for i in range(n)])


#: Label values that catalogues write for "no measurement"; they are missing values,
#: never numbers (matched to a relative 1e-6, so that a float32 column's 99.99 matches).
#: Pass ``sentinels=()`` (or your own tuple) to change them.
LABEL_SENTINELS: tuple[float, ...] = (-9999.0, -999.0, 99.99)

#: Cell texts read as missing values (compared stripped and case-insensitive).
MISSING_TEXTS = frozenset({"", "n/a", "na", "nan", "null", "none", "--", "-", "?", "missing"})

#: ``|flux|`` at or above this where ``ivar > 0`` is refused: no spectrum, normalised or in
#: survey units, comes near it (and flux ≥ 1e100 overflowed the training kernels).
MAX_ABS_FLUX = 1.0e10

#: An ivar at or above this multiple of the median positive ivar of the set is refused
#: (a file holding ivar = 1e30 among ivar ~ 1e4 broke training).
MAX_IVAR_RATIO = 1.0e12

# rows sampled to estimate the median positive ivar (bounded memory on any N)
_MEDIAN_SAMPLE = 1_000_000
# stars checked at once by check_flux_ivar_values (bounded temporaries)
_BLOCK_ELEMENTS = 4_000_000


def _describe_star(i: int, ids) -> str:
    if ids is None:
        return f"star {i}"
    return f"star {i} (id {np.asarray(ids)[i]!s})"


def describe_pixel(i: int, j: int, ids=None, wavelength=None) -> str:
    """``"star i (id X), pixel j (λ A)"``: where a bad value sits, for error messages."""
    wl = "" if wavelength is None else f" ({float(np.asarray(wavelength)[j]):.3f} A)"
    return f"{_describe_star(int(i), ids)}, pixel {int(j)}{wl}"


#: The three kinds of bad flux/ivar pixels, in the order of the compiled validators'
#: ``bad`` columns (:func:`bayescannon.core._kernels.prepare_training`, ``test_weights``).
BAD_PIXEL_KINDS = (
    (NonFiniteError, "ivar is not finite"),
    (NegativeIvarError, "ivar is negative (use ivar = 0 for pixels without information)"),
    (NonFiniteError, "flux is not finite where ivar > 0 (set ivar = 0 there to mask it)"),
)


def raise_bad_pixel(kind: int, i: int, j: int, *, ids=None, wavelength=None, count: str = "") -> None:
    """Raise the typed error of a bad pixel of kind ``kind`` (see :data:`BAD_PIXEL_KINDS`).

    Raises
    ------
    NonFiniteError, NegativeIvarError
        Always, naming star ``i`` and pixel ``j``.
    """
    exc, what = BAD_PIXEL_KINDS[kind]
    raise exc(f"{what} at {describe_pixel(i, j, ids, wavelength)}{count}")


def _real_array(values, name: str):
    """``values`` as a float64 array and its mask (None when unmasked).

    Raises
    ------
    InvalidInputError
        For complex, boolean, text or other non-real data (never a numpy warning).
    """
    if isinstance(values, xr.DataArray):
        values = values.values
    mask = None
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values)
        values = np.ma.getdata(values)
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{name} is not an array of numbers ({exc})") from exc
    kind = arr.dtype.kind
    if kind == "c":
        raise InvalidInputError(
            f"{name} is complex (dtype {arr.dtype}); expected real numbers (take .real or abs() yourself)"
        )
    if kind in "fiu":
        return arr.astype(np.float64, copy=False), mask
    if kind == "O":
        try:
            return np.asarray(arr, dtype=np.float64), mask
        except (ValueError, TypeError) as exc:
            raise InvalidInputError(f"{name} holds values that are not real numbers ({exc})") from exc
    raise InvalidInputError(f"{name} has dtype {arr.dtype}; expected real numbers")


def as_flux_ivar_arrays(flux, ivar, *, name: str = "flux"):
    """Flux and ivar as float64 arrays of one (N, P) shape, without value checks.

    A 1-D pair is one star. Masked entries (numpy masked arrays) get ``ivar = 0``.
    Arrays are copied only when a conversion needs it.

    Raises
    ------
    InvalidInputError
        Complex, boolean or text data.
    ShapeMismatchError
        Not 2-D, or flux and ivar shapes differ.
    """
    flux, fmask = _real_array(flux, name)
    ivar, imask = _real_array(ivar, "ivar")
    if flux.ndim == 1:
        flux = flux[None, :]
        fmask = None if fmask is None else fmask[None, :]
    if ivar.ndim == 1:
        ivar = ivar[None, :]
        imask = None if imask is None else imask[None, :]
    if flux.ndim != 2:
        raise ShapeMismatchError(f"{name} must be 2-D (stars, pixels); got shape {flux.shape}")
    if flux.shape != ivar.shape:
        raise ShapeMismatchError(f"{name} has shape {flux.shape} but ivar has shape {ivar.shape}")
    masked = np.zeros(flux.shape, bool)
    for m in (fmask, imask):
        if m is not None:
            masked |= np.broadcast_to(m, flux.shape)
    if masked.any():
        ivar = np.where(masked, 0.0, ivar)
        flux = np.where(masked, 0.0, flux)
    return flux, ivar


def _median_positive_ivar(ivar: np.ndarray) -> float:
    """Median of the finite positive ivar values (estimated on evenly spaced stars)."""
    n, p = ivar.shape
    take = max(1, min(n, _MEDIAN_SAMPLE // max(p, 1)))
    rows = ivar if take >= n else ivar[np.unique(np.linspace(0, n - 1, take).astype(np.int64))]
    v = rows[(rows > 0) & np.isfinite(rows)]
    if v.size == 0 and take < n:
        v = ivar[(ivar > 0) & np.isfinite(ivar)]
    return float(np.median(v)) if v.size else np.nan


def check_flux_ivar_values(
    flux,
    ivar,
    *,
    ids=None,
    wavelength=None,
    name: str = "flux",
    max_abs_flux: float = MAX_ABS_FLUX,
    max_ivar_ratio: float = MAX_IVAR_RATIO,
) -> None:
    """Refuse absurd values among the usable pixels (finite ``ivar > 0``).

    Parameters
    ----------
    flux, ivar : ndarray (N, P) float64
        As returned by :func:`as_flux_ivar_arrays` (NaN or negative entries are left to
        the checks of :func:`check_flux_ivar` and the compiled validators).
    ids, wavelength : array_like, optional
        Named in messages.
    max_abs_flux : float
        Largest ``|flux|`` accepted (see :data:`MAX_ABS_FLUX`).
    max_ivar_ratio : float
        Largest ivar accepted, as a multiple of the median positive ivar of the whole set
        (see :data:`MAX_IVAR_RATIO`).

    Raises
    ------
    InvalidInputError
        Naming the first offending star and pixel and the value.
    """
    n, p = flux.shape
    if n == 0 or p == 0:
        return
    limit = max_ivar_ratio * _median_positive_ivar(ivar)
    step = max(1, _BLOCK_ELEMENTS // p)
    for a in range(0, n, step):  # blocks of stars: bounded temporaries
        f, iv = flux[a : a + step], ivar[a : a + step]
        big = np.abs(f) >= max_abs_flux  # cheap first pass; refined only when something is big
        if big.any():
            big &= (iv > 0) & np.isfinite(iv) & np.isfinite(f)
        if big.any():
            i, j = np.argwhere(big)[0]
            raise InvalidInputError(
                f"{name} is absurd at {describe_pixel(a + i, j, ids, wavelength)}: {f[i, j]:.4g} "
                f"(|{name}| >= {max_abs_flux:.0e}; {int(big.sum())} such pixels in these stars); "
                "set ivar = 0 there or fix the input"
            )
        if np.isfinite(limit):
            huge = iv >= limit
            if huge.any():
                huge &= np.isfinite(iv)
            if huge.any():
                i, j = np.argwhere(huge)[0]
                raise InvalidInputError(
                    f"ivar is absurd at {describe_pixel(a + i, j, ids, wavelength)}: {iv[i, j]:.4g}, "
                    f">= {max_ivar_ratio:.0e} x the median ivar {limit / max_ivar_ratio:.4g} of these spectra "
                    f"({int(huge.sum())} such pixels in these stars); fix the input or set ivar = 0 there"
                )


def check_flux_ivar(
    flux,
    ivar,
    *,
    ids=None,
    wavelength=None,
    name: str = "flux",
    max_abs_flux: float = MAX_ABS_FLUX,
    max_ivar_ratio: float = MAX_IVAR_RATIO,
    zero_masked: bool = True,
):
    """Validate a flux/ivar pair and return clean float64 arrays: the one validator.

    Parameters
    ----------
    flux, ivar : array_like, shape (N, P)
        Fluxes and inverse variances. ``ivar == 0`` marks pixels without information;
        flux there may be anything (NaN included). Masked entries of numpy masked arrays
        are pixels without information too.
    ids : array_like, optional
        Star identifiers used in error messages.
    wavelength : array_like, optional
        Wavelengths used in error messages.
    name : str
        What ``flux`` is called in messages.
    max_abs_flux, max_ivar_ratio : float
        Limits of :func:`check_flux_ivar_values`.
    zero_masked : bool, default True
        Set flux to 0 wherever ``ivar == 0`` (new arrays are returned). With False only
        non-finite flux at ``ivar == 0`` is set to 0 and the inputs' float64 arrays are
        returned without a copy when nothing needs changing.

    Returns
    -------
    flux, ivar : ndarray, shape (N, P)
        float64 arrays; the inputs are never modified.

    Raises
    ------
    InvalidInputError
        Complex, boolean or text data; an absurd flux or ivar value.
    ShapeMismatchError, NonFiniteError, NegativeIvarError
        Naming the first offending star and pixel.
    """
    flux, ivar = as_flux_ivar_arrays(flux, ivar, name=name)

    def first(mask):
        return np.argwhere(mask)[0]

    bad = ~np.isfinite(ivar)
    if bad.any():
        raise_bad_pixel(0, *first(bad), ids=ids, wavelength=wavelength, count=f" ({int(bad.sum())} pixels in all)")
    neg = ivar < 0
    if neg.any():
        raise_bad_pixel(1, *first(neg), ids=ids, wavelength=wavelength, count=f" ({int(neg.sum())} pixels in all)")
    finite = np.isfinite(flux)
    badf = (ivar > 0) & ~finite
    if badf.any():
        raise_bad_pixel(2, *first(badf), ids=ids, wavelength=wavelength, count=f" ({int(badf.sum())} pixels in all)")
    check_flux_ivar_values(
        flux, ivar, ids=ids, wavelength=wavelength, name=name, max_abs_flux=max_abs_flux, max_ivar_ratio=max_ivar_ratio
    )
    if zero_masked:
        flux = np.where(ivar == 0, 0.0, flux)
        ivar = np.array(ivar, copy=True)
    elif not finite.all():
        flux = np.where(finite, flux, 0.0)
    return flux, ivar


def check_ids(ids, n: int | None = None, *, what: str = "spectra") -> np.ndarray:
    """Star identifiers as a unique 1-D array of non-empty strings.

    Parameters
    ----------
    ids : array_like (N,)
        Strings, bytes (decoded as ASCII) or integers; floats only when integral.
    n : int, optional
        Expected number of ids.
    what : str
        What the ids belong to, for messages.

    Returns
    -------
    ndarray of str (N,)

    Raises
    ------
    ShapeMismatchError
        Not 1-D, or not ``n`` ids.
    InvalidInputError
        Masked, empty, non-integral float, boolean or complex ids; duplicated ids (the
        message names them: ids are never de-duplicated silently).
    """
    if isinstance(ids, xr.DataArray):
        ids = ids.values
    if isinstance(ids, np.ma.MaskedArray) and np.ma.getmaskarray(ids).any():
        i = int(np.flatnonzero(np.ma.getmaskarray(ids).ravel())[0])
        raise InvalidInputError(f"the id of {what} star {i} is masked")
    try:
        arr = np.asarray(np.ma.getdata(ids))
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{what} ids are not an array ({exc})") from exc
    if arr.ndim != 1:
        raise ShapeMismatchError(f"{what} ids must be 1-D; got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ShapeMismatchError(f"there are {arr.shape[0]} ids but {n} {what}")
    kind = arr.dtype.kind
    if kind == "S":
        out = np.char.decode(arr, "ascii", errors="replace")
    elif kind in "Uiu":
        out = arr.astype(str)
    elif kind == "f":
        ok = np.isfinite(arr) & (arr == np.round(arr))
        if not ok.all():
            i = int(np.flatnonzero(~ok)[0])
            raise InvalidInputError(f"{what} id of star {i} is {arr[i]!r}; ids must be strings or integers")
        out = arr.astype(np.int64).astype(str)
    elif kind == "O":
        bad = np.array([v is None or v is np.ma.masked or isinstance(v, (float, complex, bool)) for v in arr], bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InvalidInputError(f"{what} id of star {i} is {arr[i]!r}; ids must be strings or integers")
        out = np.array([v.decode("ascii", "replace") if isinstance(v, bytes) else str(v) for v in arr], dtype=str)
    else:
        raise InvalidInputError(f"{what} ids have dtype {arr.dtype}; expected strings or integers")
    out = out.astype(str)
    empty = np.char.str_len(np.char.strip(out)) == 0 if out.size else np.zeros(0, bool)
    if empty.any():
        raise InvalidInputError(f"{what} id of star {int(np.flatnonzero(empty)[0])} is empty")
    uniq, counts = np.unique(out, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise InvalidInputError(
            f"{dup.size} {what} id(s) occur more than once: "
            + ", ".join(f"{d!s} ({c}x)" for d, c in zip(dup[:5], counts[counts > 1][:5], strict=True))
            + (" ..." if dup.size > 5 else "")
            + "; every star needs its own id"
        )
    return out


def make_spectra(wavelength, flux, ivar, ids=None, mask=None, attrs=None, **extras) -> xr.Dataset:
    """Build a validated spectra container.

    Parameters
    ----------
    wavelength : array_like, shape (P,)
        Wavelength grid in Angstrom.
    flux, ivar : array_like, shape (N, P)
        Flux and inverse variance.
    ids : array_like of str, shape (N,), optional
        Unique star identifiers (default ``star000000`` ...).
    mask : array_like of int, shape (N, P), optional
        Survey pixel-mask bits (0 = good).
    attrs : dict, optional
        Dataset attributes (``survey``, ``instrument``, ...).
    **extras : array_like, shape (N,)
        Per-star columns (``snr``, ``rv``, label columns, ...).

    Returns
    -------
    xarray.Dataset
    """
    wavelength = np.asarray(wavelength, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.ndim != 2:
        raise ShapeMismatchError(f"flux must be 2-D (stars, pixels); got shape {flux.shape}")
    n, p = flux.shape
    if ids is None:
        ids = default_ids(n)
    ids = np.asarray(ids).astype(str)
    data = {"flux": (("star", "pixel"), flux), "ivar": (("star", "pixel"), ivar)}
    if mask is not None:
        data["mask"] = (("star", "pixel"), np.asarray(mask, dtype=np.uint32))
    data.update({key: ("star", np.asarray(value)) for key, value in extras.items()})
    # numpy arrays without xarray's dask probe (bayescannon.results)
    ds = result_dataset(data, {"star": ids}, attrs=dict(attrs or {}))
    ds.coords["wavelength"] = numpy_variable("pixel", wavelength, {"units": "Angstrom"})
    check_spectra(ds)
    return ds


def check_spectra(ds: xr.Dataset) -> xr.Dataset:
    """Check that ``ds`` follows the container convention; return it unchanged.

    Raises
    ------
    InvalidInputError
        When a variable, coordinate or dimension is missing or inconsistent, or when ids
        are duplicated.
    """
    if not isinstance(ds, xr.Dataset):
        raise InvalidInputError(f"expected an xarray.Dataset of spectra; got {type(ds).__name__}")
    for var in ("flux", "ivar"):
        if var not in ds:
            raise InvalidInputError(f"spectra dataset has no '{var}' variable")
        if ds[var].dims != ("star", "pixel"):
            raise InvalidInputError(f"'{var}' must have dims ('star', 'pixel'); got {ds[var].dims}")
    if "wavelength" not in ds.coords:
        raise InvalidInputError("spectra dataset has no 'wavelength' coordinate")
    if ds["wavelength"].dims != ("pixel",):
        raise InvalidInputError(f"'wavelength' must have dims ('pixel',); got {ds['wavelength'].dims}")
    wl = np.asarray(ds["wavelength"].values, dtype=float)
    if not np.all(np.isfinite(wl)):
        raise NonFiniteError("wavelength grid contains non-finite values")
    if wl.size > 1 and not np.all(np.diff(wl) > 0):
        i = int(np.argmax(~(np.diff(wl) > 0)))
        raise InvalidInputError(f"wavelength grid is not strictly increasing at pixel {i + 1}")
    if "star" in ds.coords:
        ids = np.asarray(ds["star"].values).astype(str)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1][:5]
            raise InvalidInputError(f"duplicated star ids: {', '.join(map(str, dup))}")
    return ds


def _text_or_bad(v):
    """One object-column cell as text to parse ("\x00" marks a value that is no number)."""
    if v is None or v is np.ma.masked or type(v).__name__ in ("NAType", "NaTType"):
        return ""
    if isinstance(v, bytes):
        return v.decode("ascii", "replace")
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_, complex, np.complexfloating)):
        return "\x00"
    if isinstance(v, (int, float, np.integer, np.floating)):
        return repr(float(v))
    return "\x00"


_OBJECT_TO_TEXT = np.frompyfunc(_text_or_bad, 1, 1)


def _label_column(col, name: str, sentinels: np.ndarray):
    """One label column as float64 with NaN where missing, and a reason code per value.

    Codes: 0 a number, 1 masked, 2 a missing-value text, 3 not finite, 4 a sentinel.

    Raises
    ------
    LabelError
        For a column that is not 1-D, complex or boolean, or a text that is no number.
    """
    if isinstance(col, xr.DataArray):
        col = col.values
    elif hasattr(col, "to_numpy") and not isinstance(col, np.ndarray):  # pandas: nullable columns
        col = col.to_numpy(dtype=object) if str(getattr(col, "dtype", "")) in ("Int64", "Float64") else col.to_numpy()
    mask = np.ma.getmaskarray(col) if isinstance(col, np.ma.MaskedArray) else None
    arr = np.asarray(np.ma.getdata(col)) if mask is not None else np.asarray(col)
    if arr.ndim != 1:
        raise LabelError(f"label {name} must be one value per star; got shape {arr.shape}")
    code = np.zeros(arr.shape, np.int8)
    kind = arr.dtype.kind
    if kind in "fiu":
        vals = arr.astype(np.float64)
    elif kind in "USO":
        text = _OBJECT_TO_TEXT(arr).astype(str) if kind == "O" else arr.astype(str)
        low = np.char.lower(np.char.strip(text))
        miss = np.isin(low, list(MISSING_TEXTS))
        code[miss] = 2
        try:
            vals = np.where(miss, "nan", low).astype(np.float64)
        except ValueError:
            bad = [i for i, t in enumerate(np.where(miss, "nan", low)) if not _parses(t)]  # error path only
            raise LabelError(
                f"label {name} of star {bad[0]} is {str(arr[bad[0]])!r}, not a number ({len(bad)} such values)"
            ) from None
    else:
        raise LabelError(f"label {name} has dtype {arr.dtype}; expected real numbers")
    if mask is not None:
        code[mask & (code == 0)] = 1
    nonfinite = ~np.isfinite(vals)
    code[nonfinite & (code == 0)] = 3
    if sentinels.size:
        is_sent = (np.abs(vals[:, None] - sentinels[None, :]) <= 1e-6 * np.abs(sentinels)[None, :]).any(axis=1)
        code[is_sent & (code == 0)] = 4
    vals[code > 0] = np.nan
    return vals, code


def _parses(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


_WHY = {1: "masked", 2: "an empty or 'n/a' cell", 3: "not finite", 4: "a missing-value sentinel"}


def label_values(labels, label_names, *, sentinels=LABEL_SENTINELS):
    """Labels as an (N, K) float64 array with NaN where missing, without raising on them.

    Missing values are masked entries (astropy ``MaskedColumn``, numpy masked arrays),
    empty or ``"n/a"``-like cells (:data:`MISSING_TEXTS`), NaN/inf and the sentinels
    (:data:`LABEL_SENTINELS`): none of them survives as a number.

    Parameters
    ----------
    labels : ndarray (N, K), mapping, astropy/pandas table or xarray.Dataset
        Labels in ``label_names`` order (arrays) or columns named like the labels.
    label_names : sequence of str
    sentinels : sequence of float
        Values that mean "missing".

    Returns
    -------
    values : ndarray (N, K)
        NaN where missing.
    code : ndarray of int8 (N, K)
        0 a number; 1 masked; 2 an empty/"n/a" cell; 3 not finite; 4 a sentinel.

    Raises
    ------
    LabelError
        Missing columns, non-numeric values (text that is no number, complex, boolean).
    ShapeMismatchError
        Wrong array shapes or columns of different lengths.
    """
    label_names = list(label_names)
    try:
        sent = np.asarray(sentinels, dtype=np.float64).ravel()
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"sentinels must be numbers; got {sentinels!r}") from exc
    if isinstance(labels, xr.Dataset):
        missing = [n for n in label_names if n not in labels]
        if missing:
            raise LabelError(f"labels dataset has no column(s) {missing}; it has {list(labels.data_vars)}")
        cols = [labels[n] for n in label_names]
    elif isinstance(labels, Mapping) or hasattr(labels, "colnames") or hasattr(labels, "columns"):
        names = (
            list(labels.colnames)
            if hasattr(labels, "colnames")
            else list(labels.keys() if isinstance(labels, Mapping) else labels.columns)
        )
        missing = [n for n in label_names if n not in names]
        if missing:
            raise LabelError(f"label table has no column(s) {missing}; it has {names}")
        cols = [labels[n] for n in label_names]
    else:
        if isinstance(labels, np.ma.MaskedArray):
            arr = labels
        else:
            try:
                arr = np.asarray(labels)
            except (ValueError, TypeError) as exc:
                raise ShapeMismatchError(f"labels are not a rectangular (stars, labels) array ({exc})") from exc
        if arr.ndim == 1 and len(label_names) == 1:
            arr = arr[:, None]
        if arr.ndim != 2:
            raise ShapeMismatchError(f"labels must be 2-D (stars, labels); got shape {arr.shape}")
        if arr.shape[1] != len(label_names):
            raise ShapeMismatchError(
                f"labels have {arr.shape[1]} columns but the model has {len(label_names)} labels {label_names}"
            )
        cols = [arr[:, k] for k in range(arr.shape[1])]
    out = [_label_column(c, n, sent) for c, n in zip(cols, label_names, strict=True)]
    lengths = {v.shape[0] for v, _ in out}
    if len(lengths) > 1:
        raise ShapeMismatchError(f"label columns have different lengths {sorted(lengths)}")
    if not out:
        raise LabelError("no label names given")
    return np.column_stack([v for v, _ in out]), np.column_stack([c for _, c in out])


def as_label_array(labels, label_names, n_expected=None, *, ids=None, sentinels=LABEL_SENTINELS):
    """Labels as an (N, K) float64 array in ``label_names`` order, validated.

    A missing label (masked, empty or ``"n/a"`` cell, NaN/inf, a sentinel such as -9999;
    see :func:`label_values`) is an error, never a number: the library does not drop stars
    silently. Leave such stars out of the set yourself (``label_values`` finds them).

    Parameters
    ----------
    labels : ndarray (N, K), mapping, astropy/pandas table or xarray.Dataset
    label_names : sequence of str
    n_expected : int, optional
        Number of stars the labels must have.
    ids : array_like (N,), optional
        Star ids named in messages (a Dataset's ``star`` coordinate by default).
    sentinels : sequence of float
        Values that mean "missing" (default :data:`LABEL_SENTINELS`).

    Returns
    -------
    ndarray (N, K)

    Raises
    ------
    LabelError
        A missing or non-numeric label, naming the star, its id and the label.
    ShapeMismatchError
        Wrong shape or number of rows.
    """
    label_names = list(label_names)
    arr, code = label_values(labels, label_names, sentinels=sentinels)
    if n_expected is not None and arr.shape[0] != n_expected:
        raise ShapeMismatchError(f"labels have {arr.shape[0]} rows but there are {n_expected} spectra")
    if ids is None and isinstance(labels, xr.Dataset) and "star" in labels.coords:
        ids = np.asarray(labels["star"].values)
    if ids is not None and np.shape(ids) != (arr.shape[0],):
        ids = None
    bad = code > 0
    if bad.any():
        n, k = np.argwhere(bad)[0]
        rows = np.flatnonzero(bad.any(axis=1))
        some = (
            ""
            if ids is None
            else f" (ids {', '.join(map(str, np.asarray(ids)[rows[:5]]))}{' ...' if rows.size > 5 else ''})"
        )
        raise LabelError(
            f"label {label_names[k]} of {_describe_star(int(n), ids)} is missing ({_WHY[int(code[n, k])]}); "
            f"{int(bad.sum())} missing label values in {rows.size} stars{some}: remove those stars or give them values"
        )
    return arr


def unpack_spectra(flux, ivar, ids, wavelength):
    """Accept arrays or a spectra Dataset; return flux, ivar, ids, wavelength, dataset.

    Ids, when given or taken from the Dataset, are checked by :func:`check_ids` (one per
    star, unique, non-empty).
    """
    ds = None
    if isinstance(flux, xr.Dataset):
        ds = check_spectra(flux)
        if ivar is not None:
            raise InvalidInputError("pass either a spectra Dataset or flux and ivar arrays, not both")
        ivar = ds["ivar"].values
        if ids is None:
            ids = np.asarray(ds["star"].values).astype(str)
        if wavelength is None:
            wavelength = ds["wavelength"].values
        flux = ds["flux"].values
    elif ivar is None:
        raise InvalidInputError("ivar is required when flux is an array")
    if ids is not None:  # unique, one per star: never matched or reported twice
        shape = getattr(flux, "shape", None)
        n = None if shape is None or len(shape) not in (1, 2) else (shape[0] if len(shape) == 2 else 1)
        ids = check_ids(ids, n)
    return flux, ivar, ids, wavelength, ds


def join_ids(ids, other_ids, *, what: str = "table", require: str = "any"):
    """Rows of ``other_ids`` that hold each of ``ids``: the one join by star id.

    Parameters
    ----------
    ids : array_like (N,)
        Ids to look up (compared as strings).
    other_ids : array_like (M,)
        Ids of the table to join; must be unique.
    what : str
        Name of the joined table, for error messages.
    require : {"any", "all", "none"}
        ``"all"``: every id must be found; ``"any"``: at least one; ``"none"``: no check.

    Returns
    -------
    rows : ndarray of int (N,)
        Row of ``other_ids`` for each id (0 where not found).
    hit : ndarray of bool (N,)
        Whether the id was found.

    Raises
    ------
    CrossMatchError
        Duplicated ids in ``other_ids``, or fewer matches than ``require`` asks for.
    """
    ids = np.asarray(ids).astype(str)
    other = np.asarray(other_ids).astype(str)
    order = np.argsort(other, kind="stable")
    srt = other[order]
    if srt.size > 1 and np.any(srt[1:] == srt[:-1]):
        dup = np.unique(srt[1:][srt[1:] == srt[:-1]])
        raise CrossMatchError(f"{what} has duplicated ids, e.g. {dup[:3].tolist()}")
    if srt.size == 0:
        rows, hit = np.zeros(ids.size, np.int64), np.zeros(ids.size, bool)
    else:
        pos = np.clip(np.searchsorted(srt, ids), 0, srt.size - 1)
        hit = srt[pos] == ids
        rows = np.where(hit, order[pos], 0)
    if require == "all" and not hit.all():
        raise CrossMatchError(
            f"{int((~hit).sum())} of {ids.size} ids are missing from {what}, e.g. {ids[~hit][:3].tolist()}"
        )
    if require == "any" and ids.size and not hit.any():
        raise CrossMatchError(f"no id joins {what} (ids e.g. {ids[:2].tolist()}, {what} e.g. {other[:2].tolist()})")
    return rows, hit
