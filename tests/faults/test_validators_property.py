"""Property-based tests (hypothesis) of the input validators of :mod:`bayescannon.spectra`.

Every outcome must be either a valid result or a :class:`bayescannon.errors.BayesCannonError`:
never an untyped exception, never a silently wrong number (a masked, empty, "n/a",
non-finite or sentinel label that survives as a number; a flux/ivar pair returned with a
value it should have refused; duplicated ids let through). Settings are modest and
derandomised so that runs are reproducible.
"""

from __future__ import annotations

import numpy as np
from astropy.table import MaskedColumn, Table
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bayescannon.errors import BayesCannonError
from bayescannon.spectra import (
    LABEL_SENTINELS,
    MAX_ABS_FLUX,
    MAX_IVAR_RATIO,
    as_label_array,
    check_flux_ivar,
    check_ids,
)

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
SENTINELS = np.asarray(LABEL_SENTINELS)
SPECIAL = [np.nan, np.inf, -np.inf, *LABEL_SENTINELS, 0.0, -0.0, 1e308, -1e-308]


def _is_sentinel(x):
    x = np.asarray(x, dtype=float)
    return (np.abs(x[..., None] - SENTINELS) <= 1e-6 * np.abs(SENTINELS)).any(axis=-1)


@st.composite
def label_inputs(draw):
    """A (N, K) label input: an array of some dtype, possibly masked, with special values."""
    n = draw(st.integers(0, 6))
    k = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["float", "float32", "int", "bool", "complex", "object", "str", "masked"]))
    base = draw(hnp.arrays(np.float64, (n, k), elements=st.floats(-1e4, 1e4, allow_nan=False)))
    specials = draw(hnp.arrays(np.int8, (n, k), elements=st.integers(-1, len(SPECIAL) - 1)))
    vals = base.copy()
    pick = specials >= 0
    vals[pick] = np.asarray(SPECIAL)[specials[pick]]
    if kind == "float":
        arr = vals
    elif kind == "float32":
        with np.errstate(over="ignore"):
            arr = vals.astype(np.float32)
    elif kind == "int":
        arr = np.where(np.isfinite(vals), np.clip(vals, -1e6, 1e6), 0).astype(np.int64)
    elif kind == "bool":
        arr = vals > 0
    elif kind == "complex":
        arr = vals + 1j * draw(st.sampled_from([0.0, 1.0]))
    elif kind == "object":
        cells = draw(
            st.lists(st.sampled_from([None, "n/a", "", "abc", "1.5", 2, 3.25, 1j, True, b"4"]), min_size=n * k)
        )
        arr = np.empty((n, k), dtype=object)
        arr.ravel()[:] = [cells[i] if i % 2 else vals.ravel()[i] for i in range(n * k)]
    elif kind == "str":
        texts = np.array(["n/a", "", " 12.5 ", "NULL", "x1", "-9999", "nan", "1e3"])
        pick_t = draw(hnp.arrays(np.int8, (n, k), elements=st.integers(0, texts.size - 1)))
        arr = np.where(pick_t % 2 == 0, texts[pick_t], vals.astype(str))
    else:
        mask = draw(hnp.arrays(np.bool_, (n, k)))
        arr = np.ma.MaskedArray(vals, mask=mask)
    return arr


def _check_label_result(inp, out, k):
    """A returned label array must be all numbers and carry no missing value as one."""
    assert out.dtype == np.float64 and out.shape == (np.shape(inp)[0], k)
    assert np.isfinite(out).all()
    assert not _is_sentinel(out).any()
    if isinstance(inp, np.ma.MaskedArray):
        assert not np.ma.getmaskarray(inp).any()
    arr = np.asarray(inp)
    if arr.dtype.kind in "fiu":  # numbers pass through exactly
        np.testing.assert_array_equal(out, arr.astype(np.float64))


@SETTINGS
@given(label_inputs())
def test_label_arrays_give_numbers_or_typed_errors(inp):
    k = np.shape(inp)[1]
    names = [f"L{i}" for i in range(k)]
    try:
        out = as_label_array(inp, names)
    except BayesCannonError:
        return
    _check_label_result(inp, out, k)


@SETTINGS
@given(label_inputs(), st.sampled_from(["table", "dict", "masked_table"]))
def test_label_tables_give_numbers_or_typed_errors(inp, how):
    k = np.shape(inp)[1]
    names = [f"L{i}" for i in range(k)]
    if how == "dict":
        labels = {n: inp[:, i] for i, n in enumerate(names)}
    else:
        cols = []
        for i in range(k):
            col = inp[:, i]
            if how == "masked_table" and not isinstance(col, np.ma.MaskedArray):
                col = MaskedColumn(np.asarray(col), mask=np.arange(col.shape[0]) % 3 == 1)
            cols.append(col)
        try:
            labels = Table(cols, names=names)
        except (ValueError, TypeError):  # astropy refuses some object columns: not our validator
            return
    try:
        out = as_label_array(labels, names)
    except BayesCannonError:
        return
    masked = np.zeros(out.shape, bool)
    for i, n in enumerate(names):
        masked[:, i] = np.ma.getmaskarray(labels[n]) if hasattr(labels[n], "mask") else False
    assert not masked.any(), "a masked label survived as a number"
    _check_label_result(np.ma.getdata(inp), out, k)


@st.composite
def flux_ivar_inputs(draw):
    n = draw(st.integers(0, 5))
    p = draw(st.integers(0, 6))
    shape_f = (n, p)
    shape_i = draw(st.sampled_from([(n, p), (n, p), (n, p), (p,), (n, p + 1), (n,)]))
    kind = draw(st.sampled_from(["float", "float32", "int", "bool", "complex", "object", "str", "masked"]))
    elem = st.one_of(
        st.floats(-10, 10, allow_nan=False),
        st.sampled_from([np.nan, np.inf, -np.inf, 1e10, -1e11, 1e100, 0.0, 1e30, 1e16, -1.0]),
    )
    flux = draw(hnp.arrays(np.float64, shape_f, elements=elem))
    ivar = draw(hnp.arrays(np.float64, shape_i, elements=elem))
    if kind == "float32":
        with np.errstate(over="ignore"):
            flux = flux.astype(np.float32)
    elif kind == "int":
        ivar = np.where(np.isfinite(ivar), np.clip(ivar, -5, 1e6), 0).astype(np.int64)
    elif kind == "bool":
        flux = flux > 0
    elif kind == "complex":
        flux = flux + 0j
    elif kind == "object":
        flux = flux.astype(object)
        if flux.size:
            flux.ravel()[0] = draw(st.sampled_from([None, "1.0", "x", 1j, 2]))
    elif kind == "str":
        ivar = ivar.astype(str)
    else:
        flux = np.ma.MaskedArray(flux, mask=draw(hnp.arrays(np.bool_, shape_f)))
    return flux, ivar


@SETTINGS
@given(flux_ivar_inputs(), st.booleans())
def test_flux_ivar_give_clean_arrays_or_typed_errors(pair, zero_masked):
    flux, ivar = pair
    try:
        f, iv = check_flux_ivar(flux, ivar, zero_masked=zero_masked)
    except BayesCannonError:
        return
    assert f.dtype == np.float64 and iv.dtype == np.float64 and f.shape == iv.shape and f.ndim == 2
    assert np.isfinite(iv).all() and (iv >= 0).all() and np.isfinite(f).all()
    use = iv > 0
    assert not (np.abs(f[use]) >= MAX_ABS_FLUX).any(), "an absurd flux survived"
    if use.any():
        assert iv.max() < MAX_IVAR_RATIO * np.median(iv[use]), "an absurd ivar survived"
    if zero_masked:
        assert (f[~use] == 0).all()
    fin = np.ma.getdata(flux).astype(np.float64).reshape(f.shape)
    mask = np.ma.getmaskarray(flux).reshape(f.shape) if isinstance(flux, np.ma.MaskedArray) else None
    if mask is not None:  # masked pixels carry no information
        assert (iv[mask] == 0).all()
    np.testing.assert_array_equal(f[use], fin[use])  # usable values are never changed
    iv_in = np.broadcast_to(np.asarray(ivar, dtype=np.float64), f.shape)
    keep = use if mask is None else use & ~mask
    np.testing.assert_array_equal(iv[keep], iv_in[keep])


@st.composite
def id_inputs(draw):
    n = draw(st.integers(0, 8))
    kind = draw(st.sampled_from(["str", "int", "float", "bytes", "object", "bool", "complex", "masked", "2d"]))
    pool = draw(st.lists(st.sampled_from(["a", "b", "c1", "", " ", "é", "a ", "0", "1", "-3"]), min_size=n, max_size=n))
    ints = draw(st.lists(st.integers(-3, 5), min_size=n, max_size=n))
    if kind == "str":
        return np.array(pool, dtype=str)
    if kind == "int":
        return np.array(ints, dtype=np.int64)
    if kind == "float":
        return np.array(ints, dtype=float) + draw(st.sampled_from([0.0, 0.5, np.nan]))
    if kind == "bytes":
        return np.array([s.encode("utf-8", "replace") for s in pool], dtype=bytes)
    if kind == "object":
        cells = draw(st.lists(st.sampled_from([None, "a", "b", 1, 2.0, b"c", True, "", "a"]), min_size=n, max_size=n))
        out = np.empty(n, dtype=object)
        out[:] = cells
        return out
    if kind == "bool":
        return np.array(ints, dtype=bool)
    if kind == "complex":
        return np.array(ints, dtype=complex)
    if kind == "masked":
        return np.ma.MaskedArray(np.array(pool, dtype=str), mask=draw(hnp.arrays(np.bool_, (n,))))
    return np.array(pool, dtype=str).reshape(n, 1)


@SETTINGS
@given(id_inputs())
def test_ids_are_unique_strings_or_typed_errors(ids):
    n = np.shape(ids)[0]
    try:
        out = check_ids(ids, n)
    except BayesCannonError:
        return
    assert out.shape == (n,) and out.dtype.kind == "U"
    assert np.unique(out).size == n, "duplicated ids were let through"
    assert (np.char.str_len(np.char.strip(out)) > 0).all()
    if isinstance(ids, np.ma.MaskedArray):
        assert not np.ma.getmaskarray(ids).any()
    raw = np.ma.getdata(ids)
    if raw.dtype.kind in "Uiu":  # strings and integers keep their text exactly
        np.testing.assert_array_equal(out, raw.astype(str))
