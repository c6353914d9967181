"""Censoring windows: where in the spectrum a label may act (Nandakumar+2022 §3.3).

A censored label's terms are zero outside its windows, so that e.g. [α/Fe] is learned
only from the lines of α elements and not from correlations with other lines.

Shipped windows
---------------
``"nandakumar2022-apogee"``: the APOGEE DR12 ASPCAP windows of Ca, Mg, Si and Ti (the
pixels with filter weight > 0 in jobovy/apogee ``spec/filter/dr12/*.filt``; BSD 3-clause,
Copyright (c) 2013 Jo Bovy, notice in ``bayescannon/data/LICENSE_jobovy_apogee.txt``),
as vacuum-wavelength windows. Nandakumar+2022 censored [α/Fe] to their union on the
APOGEE side.

Window tables (e.g. the GALAH windows of Buder+2021 Table A2, not shipped)
-----------------------------------------------------------------------------
Any table astropy reads (ECSV, CSV, FITS) with one row per window and the columns

=========== ===================================================================
``ELEMENT`` element (or label) the window belongs to, e.g. ``Mg``
``WAVE_LO`` lower edge in Angstrom, on the same (air/vacuum) scale as the spectra
``WAVE_HI`` upper edge in Angstrom
=========== ===================================================================

Give it to :func:`read_windows` or, as a path, to ``CannonModel(censors=...)``.

Mapping windows to labels (:func:`resolve_censors`)
---------------------------------------------------
``censors`` may be a preset name or a window-table path (then every label named after
an element of the table — ``MG_FE``, ``MG_H``, ``Mg`` — gets that element's windows, and
every label whose name contains ``ALPHA`` gets the union of the α elements O, Mg, Si,
S, Ca, Ti present), or a dict whose values are boolean pixel masks, ``(lo, hi)`` window
lists, or a preset name / table path (the union of all its windows).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np

from bayescannon.errors import InvalidInputError, LabelError

logger = logging.getLogger(__name__)

__all__ = ["ALPHA_ELEMENTS", "PRESETS", "preset_windows", "read_windows", "resolve_censors"]

#: Named window tables shipped under ``bayescannon/data``.
PRESETS = {"nandakumar2022-apogee": "apogee_dr12_alpha_windows.ecsv"}

#: Elements whose windows make up an α label's windows.
ALPHA_ELEMENTS = ("O", "Mg", "Si", "S", "Ca", "Ti")

_COLUMNS = ("ELEMENT", "WAVE_LO", "WAVE_HI")


def _check_table(t, source: str) -> dict[str, np.ndarray]:
    missing = [c for c in _COLUMNS if c not in t.colnames]
    if missing:
        raise InvalidInputError(f"{source}: window table lacks column(s) {missing}; expected {list(_COLUMNS)}")
    lo = np.asarray(t["WAVE_LO"], dtype=float)
    hi = np.asarray(t["WAVE_HI"], dtype=float)
    bad = ~(np.isfinite(lo) & np.isfinite(hi) & (hi > lo))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InvalidInputError(f"{source}: window in row {i} has WAVE_LO={lo[i]}, WAVE_HI={hi[i]} (need lo < hi)")
    el = np.char.strip(np.asarray(t["ELEMENT"]).astype(str))
    return {str(e): np.column_stack([lo[el == e], hi[el == e]]) for e in np.unique(el)}


def read_windows(path) -> dict[str, np.ndarray]:
    """Windows per element from a table (format in the module docstring).

    Returns
    -------
    dict of str to ndarray (n, 2)
        ``(lo, hi)`` in Angstrom per element.
    """
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"window table {p} does not exist")
    from astropy.table import Table  # lazy: training and the test step never need astropy

    return _check_table(Table.read(p), str(p))


def preset_windows(name: str) -> dict[str, np.ndarray]:
    """Windows per element of a shipped preset (:data:`PRESETS`)."""
    if name not in PRESETS:
        raise InvalidInputError(f"unknown censoring preset {name!r}; presets are {sorted(PRESETS)}")
    with resources.as_file(resources.files("bayescannon") / "data" / PRESETS[name]) as p:
        from astropy.table import Table  # lazy, as above

        return _check_table(Table.read(p, format="ascii.ecsv"), name)


def _windows(spec) -> dict[str, np.ndarray]:
    return preset_windows(spec) if spec in PRESETS else read_windows(spec)


def _element_of(label: str, elements) -> str | None:
    head = label.split("_")[0].lower()
    for e in elements:
        if head == e.lower():
            return e
    return None


def resolve_censors(censors, label_names) -> dict | None:
    """``censors`` as ``{label: boolean mask or (lo, hi) windows}`` (see the module
    docstring for what a preset name or table path maps to).

    Raises
    ------
    LabelError
        A preset or table that applies to none of the labels.
    InvalidInputError
        An unknown preset, a missing or malformed table.
    """
    if censors is None or (isinstance(censors, Mapping) and not censors):
        return censors
    if isinstance(censors, (str, Path)):
        win = _windows(str(censors))
        out = {}
        alpha = [w for e, w in win.items() if e in ALPHA_ELEMENTS]
        for name in label_names:
            if "ALPHA" in name.upper():
                if alpha:
                    out[name] = np.vstack(alpha)
            else:
                e = _element_of(name, win)
                if e is not None:
                    out[name] = win[e]
        if not out:
            raise LabelError(
                f"censoring windows {censors!r} (elements {sorted(win)}) apply to none of the labels {list(label_names)}"
            )
        logger.info("censoring %s: %s", censors, {k: len(v) for k, v in out.items()})
        return out
    if not isinstance(censors, Mapping):
        raise InvalidInputError(f"censors must be a dict, a preset name or a window-table path; got {type(censors)}")
    out = {}
    for name, spec in censors.items():
        if isinstance(spec, (str, Path)):
            out[name] = np.vstack(list(_windows(str(spec)).values()))
        else:
            out[name] = spec
    return out
