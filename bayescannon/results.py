"""The one result schema: label dimensions, units and descriptions shared by every result.

Every label-valued result (inference, cross-validation, bootstrap, calibration,
posteriors) uses the dimension ``label_name`` and carries ``units`` attributes from
:func:`label_unit`; catalogues take their column units and descriptions from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "LabelInfo",
    "LABEL_METADATA",
    "LABEL_UNITS",
    "LABEL_DESCRIPTIONS",
    "label_info",
    "label_unit",
    "label_description",
    "label_display_name",
    "label_axis_text",
    "label_units_text",
    "set_label_units",
    "LABEL_DIM",
    "LABEL_DIM2",
    "numpy_variable",
    "index_coordinates",
    "result_dataset",
]


class LabelInfo(NamedTuple):
    """Metadata of one label: how figures name it, its units, how catalogues describe it.

    Attributes
    ----------
    display : str
        Name for figures (matplotlib mathtext allowed): ``"$T_\\mathrm{eff}$"``, ``"[Fe/H]"``.
    units : str
        Units as text (``"K"``, ``"dex"``, ``"km/s"``; ``""`` when dimensionless or unknown).
    fits_unit : str or None
        Unit written to FITS columns; None for dex, which does not survive a FITS round trip.
    description : str
        Human description written beside catalogue columns.
    """

    display: str
    units: str
    fits_unit: str | None
    description: str


#: The one label-metadata table: display names and units for figures, units and
#: descriptions for catalogue columns. Abundances ``X_H``/``X_FE``/``X_M`` not listed here are
#: derived by :func:`label_info` (``MG_FE`` → ``[Mg/Fe]``, dex).
LABEL_METADATA: dict[str, LabelInfo] = {
    "TEFF": LabelInfo(r"$T_\mathrm{eff}$", "K", "K", "effective temperature"),
    "LOGG": LabelInfo(r"$\log g$", "dex", None, "log10 of surface gravity g in cm s-2 (dex)"),
    "FE_H": LabelInfo("[Fe/H]", "dex", None, "[Fe/H] (dex)"),
    "M_H": LabelInfo("[M/H]", "dex", None, "[M/H] (dex)"),
    "ALPHA_FE": LabelInfo("[α/Fe]", "dex", None, "[alpha/Fe] (dex)"),
    "ALPHA_M": LabelInfo("[α/M]", "dex", None, "[alpha/M] (dex)"),
    "VMACRO": LabelInfo(r"$v_\mathrm{macro}$", "km/s", "km/s", "macroturbulent velocity"),
    "VMIC": LabelInfo(r"$v_\mathrm{mic}$", "km/s", "km/s", "microturbulent velocity"),
    "VSINI": LabelInfo(r"$v \sin i$", "km/s", "km/s", "projected rotational velocity"),
    "VBROAD": LabelInfo(r"$v_\mathrm{broad}$", "km/s", "km/s", "line broadening velocity"),
    "RV": LabelInfo("RV", "km/s", "km/s", "radial velocity"),
    "RA": LabelInfo("RA", "deg", "deg", "right ascension"),
    "DEC": LabelInfo("Dec", "deg", "deg", "declination"),
    "SNR": LabelInfo("S/N", "", None, "signal-to-noise ratio per pixel"),
}
LABEL_METADATA["LOG_G"] = LABEL_METADATA["LOGG"]

#: FITS units of labels (derived from :data:`LABEL_METADATA`; dex labels are absent).
LABEL_UNITS = {k: v.fits_unit for k, v in LABEL_METADATA.items() if v.fits_unit is not None and k != "LOG_G"}

#: Descriptions written beside labels (and their errors), from :data:`LABEL_METADATA`.
LABEL_DESCRIPTIONS = {k: v.description for k, v in LABEL_METADATA.items() if k not in ("LOG_G", "SNR")}

_ABUNDANCE = re.compile(r"^([A-Z][A-Z]?|ALPHA)_(H|FE|M)$", re.IGNORECASE)


def label_info(name: str) -> LabelInfo:
    """Metadata of a label from :data:`LABEL_METADATA`, derived for abundances not listed.

    Parameters
    ----------
    name : str
        Label name, any case (``"TEFF"``, ``"mg_fe"``).

    Returns
    -------
    LabelInfo
        An unknown label gets its own name as display name and description, and no units.
    """
    key = str(name).upper()
    if key in LABEL_METADATA:
        return LABEL_METADATA[key]
    m = _ABUNDANCE.match(key)
    if m:
        x, ref = m.group(1), m.group(2)
        x = "α" if x == "ALPHA" else x.capitalize()
        ref = "Fe" if ref == "FE" else ref
        text = f"[{x}/{ref}]"
        return LabelInfo(text, "dex", None, f"{text.replace('α', 'alpha')} (dex)")
    return LabelInfo(str(name), "", None, str(name))


def label_unit(name: str):
    """FITS unit string of a label, or None (gravities, abundances, unknown labels)."""
    return label_info(name).fits_unit


def label_description(name: str) -> str:
    """Human description of a label: ``"[Mg/Fe] (dex)"`` for ``MG_FE`` etc."""
    return label_info(name).description


def label_display_name(name: str) -> str:
    """Name of a label for figures: ``"$T_\\mathrm{eff}$"``, ``"[α/Fe]"``, ``"[Mg/Fe]"``."""
    return label_info(name).display


def label_axis_text(name: str, *, delta: bool = False, prefix: str = "", units: str | None = None) -> str:
    """Axis label of a label with its units, as a paper would print it.

    Parameters
    ----------
    name : str
        Label name (``"TEFF"``).
    delta : bool
        A difference of the label (``Δ[Fe/H] [dex]``): differences always show their units.
    prefix : str
        Text put before the name (``"reference "``).
    units : str, optional
        Units to show instead of the table's.

    Returns
    -------
    str
        ``"$T_\\mathrm{eff}$ [K]"``, ``"$\\log g$ [dex]"``, ``"[Fe/H]"`` (bracket abundances are
        dex by definition), ``"Δ[Fe/H] [dex]"``.
    """
    info = label_info(name)
    unit = info.units if units is None else units
    text = f"{prefix}{'Δ' if delta else ''}{info.display}"
    bracket = info.display.startswith("[") and info.display.endswith("]")
    if unit and (delta or not (bracket and unit == "dex")):
        text += f" [{unit}]"
    return text


#: The label dimension of every result (ArviZ breaks on a dimension called ``label``).
LABEL_DIM = "label_name"
#: The second label dimension of covariance matrices.
LABEL_DIM2 = "label_name_2"


def label_units_text(name: str) -> str:
    """Units of a label as text for xarray ``units`` attributes: ``"K"``, ``"dex"``, ``"km/s"``.

    Surface gravity is ``log10(g / (cm s-2))`` and abundances are logarithmic ratios, so
    both are in dex; unknown labels get ``""`` (dimensionless or not known).
    """
    return label_info(name).units


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
    ds.coords["label_unit"] = numpy_variable(LABEL_DIM, np.array(units))
    for v in variables or list(ds.data_vars):
        dims = ds[v].dims
        if LABEL_DIM not in dims:
            continue
        if LABEL_DIM2 in dims:
            ds[v].attrs["units"] = "products of the label units (label_unit[i] * label_unit[j])"
        else:
            ds[v].attrs["units"] = ", ".join(u or "1" for u in units)
    return ds


# --------------------------------------------------------------------------- builders
# xarray asks, for every array it wraps without ``fastpath``, whether it is a dask array, and
# the first such question imports dask.array when dask is installed (~0.5 s idle, with
# scipy.fft and scipy.sparse behind it: xarray.namedarray.pycompat.array_type("dask") in
# Variable's as_compatible_data, and is_dask_collection in safe_cast_to_index for index
# coordinates). A result made only of numpy arrays needs no such question: these builders
# wrap numpy arrays directly and give the same Dataset (``identical``, same dtypes and
# indexes), so that the first ``infer`` of a process does not pay for dask.


def numpy_variable(dims: str | Sequence[str], data: Any, attrs: Mapping[str, Any] | None = None) -> xr.Variable:
    """An :class:`xarray.Variable` of a numpy array, built without xarray's duck-array probes.

    Parameters
    ----------
    dims : str or sequence of str
        Dimension names.
    data : array_like
        Values; turned into a numpy array (``np.asarray``).
    attrs : mapping, optional
        Attributes.

    Returns
    -------
    xarray.Variable
        The same Variable ``xarray.Variable(dims, data, attrs)`` gives. Object, datetime
        and timedelta arrays (which xarray converts) take xarray's ordinary path.
    """
    arr = np.asarray(data)
    if arr.dtype.kind in "OMm":
        return xr.Variable(dims, arr, attrs)
    return xr.Variable(dims, arr, attrs, fastpath=True)


def index_coordinates(coords: Mapping[str, Any]) -> xr.Coordinates:
    """Dimension coordinates with their pandas indexes, built without xarray's dask probe.

    Parameters
    ----------
    coords : mapping
        ``{dim: values}``; each becomes the coordinate of dimension ``dim`` with a
        :class:`xarray.indexes.PandasIndex` (the index ``xr.Dataset(coords=...)`` makes).

    Returns
    -------
    xarray.Coordinates
        Coordinates whose variables keep the dtype of ``values`` (``<U8`` stays ``<U8``).
    """
    variables: dict[str, xr.Variable] = {}
    indexes: dict[str, xr.indexes.Index] = {}
    for dim, values in coords.items():
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"index coordinate {dim!r} must be one-dimensional; got shape {arr.shape}")
        if arr.dtype.kind in "OMm":  # xarray's own conversions apply
            coord = xr.Coordinates({dim: arr})
            variables[dim], indexes[dim] = coord.variables[dim], coord.xindexes[dim]
            continue
        index = xr.indexes.PandasIndex(pd.Index(arr), dim, coord_dtype=arr.dtype)
        variables.update(index.create_variables())
        indexes[dim] = index
    out = xr.Coordinates(variables, indexes=indexes)
    return out


def result_dataset(
    data_vars: Mapping[str, tuple],
    index_coords: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """A result Dataset of numpy arrays, built without importing dask.

    Parameters
    ----------
    data_vars : mapping
        ``{name: (dims, values)}`` or ``{name: (dims, values, attrs)}``, as for
        :class:`xarray.Dataset`.
    index_coords : mapping
        ``{dim: values}``: dimension coordinates (see :func:`index_coordinates`).
    attrs : mapping, optional
        Dataset attributes.

    Returns
    -------
    xarray.Dataset
        Identical to ``xr.Dataset(data_vars, coords=index_coords, attrs=attrs)``.
    """
    variables = {name: numpy_variable(*spec) for name, spec in data_vars.items()}
    return xr.Dataset(variables, coords=index_coordinates(index_coords), attrs=attrs)
