"""The one result schema: label dimensions, units and descriptions shared by every result.

Every label-valued result (inference, cross-validation, bootstrap, calibration,
posteriors) uses the dimension ``label_name`` and carries ``units`` attributes from
:func:`label_unit`; catalogues take their column units and descriptions from here.
"""

from __future__ import annotations

import re

__all__ = ["LABEL_UNITS", "LABEL_DESCRIPTIONS", "label_unit", "label_description"]

LABEL_UNITS = {
    "TEFF": "K",
    "VMACRO": "km/s",
    "VMIC": "km/s",
    "VSINI": "km/s",
    "VBROAD": "km/s",
    "RV": "km/s",
    "RA": "deg",
    "DEC": "deg",
}

#: Descriptions written beside labels (and their errors).
LABEL_DESCRIPTIONS = {
    "TEFF": "effective temperature",
    "LOGG": "log10 of surface gravity g in cm s-2 (dex)",
    "FE_H": "[Fe/H] (dex)",
    "M_H": "[M/H] (dex)",
    "ALPHA_FE": "[alpha/Fe] (dex)",
    "ALPHA_M": "[alpha/M] (dex)",
    "VMACRO": "macroturbulent velocity",
    "VMIC": "microturbulent velocity",
    "VSINI": "projected rotational velocity",
}

_ABUNDANCE = re.compile(r"^([A-Z][A-Z]?|ALPHA)_(H|FE|M)$", re.IGNORECASE)


def label_unit(name: str):
    """FITS unit string of a label, or None (gravities, abundances, unknown labels)."""
    return LABEL_UNITS.get(str(name).upper())


def label_description(name: str) -> str:
    """Human description of a label: ``"[Mg/Fe] (dex)"`` for ``MG_FE`` etc."""
    key = str(name).upper()
    if key in LABEL_DESCRIPTIONS:
        return LABEL_DESCRIPTIONS[key]
    m = _ABUNDANCE.match(key)
    if m:
        x, ref = m.group(1), m.group(2)
        x = "alpha" if x == "ALPHA" else x.capitalize()
        ref = "Fe" if ref == "FE" else ref
        return f"[{x}/{ref}] (dex)"
    return str(name)


#: The label dimension of every result (ArviZ breaks on a dimension called ``label``).
LABEL_DIM = "label_name"
#: The second label dimension of covariance matrices.
LABEL_DIM2 = "label_name_2"


def label_units_text(name: str) -> str:
    """Units of a label as text for xarray ``units`` attributes: ``"K"``, ``"dex"``, ``"km/s"``.

    Surface gravity is ``log10(g / (cm s-2))`` and abundances are logarithmic ratios, so
    both are in dex; unknown labels get ``""`` (dimensionless or not known).
    """
    key = str(name).upper()
    unit = LABEL_UNITS.get(key)
    if unit is not None:
        return unit
    if key in ("LOGG", "LOG_G") or _ABUNDANCE.match(key):
        return "dex"
    return ""


def set_label_units(ds, variables=None):
    """Attach units to the label-valued variables of a result, in place; returns ``ds``.

    Adds the coordinate ``label_unit`` along ``label_name`` and, on every variable with a
    ``label_name`` dimension (or the listed ``variables``), an attribute ``units`` that
    lists the unit of each label in order (``"K, dex, dex"``); covariances (two label
    dimensions) get the products of the two labels' units described the same way.
    """
    if LABEL_DIM not in ds.dims:
        return ds
    names = [str(n) for n in ds[LABEL_DIM].values]
    units = [label_units_text(n) for n in names]
    ds.coords["label_unit"] = (LABEL_DIM, units)
    for v in variables or list(ds.data_vars):
        dims = ds[v].dims
        if LABEL_DIM not in dims:
            continue
        if LABEL_DIM2 in dims:
            ds[v].attrs["units"] = "products of the label units (label_unit[i] * label_unit[j])"
        else:
            ds[v].attrs["units"] = ", ".join(u or "1" for u in units)
    return ds
