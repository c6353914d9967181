"""The one result schema: label dimensions, units and descriptions shared by every result.

Every label-valued result (inference, cross-validation, bootstrap, calibration,
posteriors) uses the dimension ``label_name`` and carries ``units`` attributes from
:func:`label_unit`; catalogues take their column units and descriptions from here.
"""

from __future__ import annotations

import re

__all__ = ["LABEL_UNITS", "LABEL_DESCRIPTIONS", "label_unit", "label_description"]

LABEL_UNITS = {"TEFF": "K", "VMACRO": "km/s", "VMIC": "km/s", "VSINI": "km/s", "VBROAD": "km/s",
               "RV": "km/s", "RA": "deg", "DEC": "deg"}

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
