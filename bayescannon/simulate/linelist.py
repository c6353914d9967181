"""Line lists for the simulator: atomic, ionised, alpha-element, molecular and hydrogen
lines (species, wavelength, excitation, strength at a reference star, damping).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import numbers
from dataclasses import dataclass

import numpy as np

from bayescannon.core.grid import C_KMS, vacuum_to_air_wavelength
from bayescannon.errors import InvalidInputError
from bayescannon.simulate.instruments import APOGEE, Instrument, get_instrument

logger = logging.getLogger(__name__)

__all__ = [
    "LineList",
    "default_line_list",
    "make_line_list",
]


_DEFAULT_LINE_SEED = 20_240_917
_REFERENCE_STAR = {"TEFF": 4750.0, "LOGG": 2.5, "FE_H": 0.0, "ALPHA_FE": 0.0}


# --------------------------------------------------------------------------------------
# line list
# --------------------------------------------------------------------------------------


_KINDS = ("fe1", "fe2", "alpha", "molecule", "hydrogen")


@dataclass(frozen=True, eq=False)
class LineList:
    """Spectral lines of the mock atmosphere.

    All attributes are arrays of equal length ``L`` (one entry per line).

    Attributes
    ----------
    wavelength : ndarray of float
        Line centre (Angstrom) in ``medium``.
    species : ndarray of str
        ``"Fe I"``, ``"Fe II"``, ``"Mg I"``, ``"CO"``, ``"H I"``, ...
    kind : ndarray of str
        Class: ``"fe1"`` (neutral iron-peak, strength ~ 10**[Fe/H]), ``"fe2"``
        (ionised iron, gravity sensitive), ``"alpha"`` (Mg, Si, Ca, Ti: strength ~
        10**([Fe/H] + [alpha/Fe])), ``"molecule"`` (strongly Teff dependent, strong in
        cool giants), ``"hydrogen"`` (Teff dependent, Stark wings growing with logg).
    excitation : ndarray of float
        Lower-level excitation potential ``chi`` (eV).
    ionisation : ndarray of float
        First ionisation potential of the element (eV; atoms only, else 0).
    stage : ndarray of int
        1 = neutral, 2 = singly ionised (0 for molecules).
    mass : ndarray of float
        Mass of the absorber (amu), sets the thermal width.
    log_strength : ndarray of float
        ``log10`` of the integrated opacity ``S`` (km/s; the equivalent width of the
        line in the weak-line limit) in the reference star (Teff 4750 K, logg 2.5,
        [Fe/H] = [alpha/Fe] = 0).
    log_damping : ndarray of float
        ``log10`` of the Lorentzian half width (km/s) at Teff 5777 K, logg 4.44.
    damping_logg_power, damping_teff_power : ndarray of float
        The Lorentzian width scales as ``10**(p_g (logg - 4.44)) (Teff/5777)**p_T``.
    metal_weight, alpha_weight : ndarray of float
        The abundance of the absorber is ``10**(w_m [Fe/H] + w_a [alpha/Fe])``.
    dissociation : ndarray of float
        Effective dissociation energy (eV) of molecules (strength ~ 10**(theta D)).
    gravity_power : ndarray of float
        Molecules only: strength ~ 10**(gravity_power * logg).
    max_window : ndarray of float
        Largest half width (km/s) over which the Lorentzian wings are computed (they
        are tapered smoothly to zero at the window edge).
    medium : str
        ``"vacuum"`` or ``"air"``.
    """

    wavelength: np.ndarray
    species: np.ndarray
    kind: np.ndarray
    excitation: np.ndarray
    ionisation: np.ndarray
    stage: np.ndarray
    mass: np.ndarray
    log_strength: np.ndarray
    log_damping: np.ndarray
    damping_logg_power: np.ndarray
    damping_teff_power: np.ndarray
    metal_weight: np.ndarray
    alpha_weight: np.ndarray
    dissociation: np.ndarray
    gravity_power: np.ndarray
    max_window: np.ndarray
    medium: str = "vacuum"

    def __post_init__(self):
        """Store read-only 1-D copies of the fields and check their lengths."""
        sizes = set()
        for f in dataclasses.fields(self):
            if f.name == "medium":
                continue
            value = np.array(getattr(self, f.name))  # private, read-only copies
            if value.ndim != 1:
                raise InvalidInputError(f"LineList.{f.name} must be 1-D; got shape {value.shape}")
            value.setflags(write=False)
            object.__setattr__(self, f.name, value)
            sizes.add(value.size)
        if len(sizes) > 1:
            raise InvalidInputError(f"LineList fields differ in length: {sorted(sizes)}")
        if self.medium not in ("vacuum", "air"):
            raise InvalidInputError(f"LineList.medium must be 'vacuum' or 'air'; got {self.medium!r}")

    def __len__(self) -> int:
        """Number of lines."""
        return int(self.wavelength.size)

    def select(self, keep) -> LineList:
        """Return the sub-list of lines where ``keep`` (bool array or indices) holds."""
        fields = {
            f.name: (getattr(self, f.name)[keep] if f.name != "medium" else self.medium)
            for f in dataclasses.fields(self)
        }
        return LineList(**fields)


# Element data: (species, kind, ionisation potential eV, stage, mass amu, metal w, alpha w)
_ATOMS = {
    "Fe I": ("fe1", 7.90, 1, 55.85, 1.0, 0.0),
    "Ni I": ("fe1", 7.64, 1, 58.69, 1.0, 0.0),
    "Cr I": ("fe1", 6.77, 1, 52.00, 1.0, 0.0),
    "Mn I": ("fe1", 7.43, 1, 54.94, 1.0, 0.0),
    "Fe II": ("fe2", 7.90, 2, 55.85, 1.0, 0.0),
    "Mg I": ("alpha", 7.65, 1, 24.31, 1.0, 1.0),
    "Si I": ("alpha", 8.15, 1, 28.09, 1.0, 1.0),
    "Ca I": ("alpha", 6.11, 1, 40.08, 1.0, 1.0),
    "Ti I": ("alpha", 6.83, 1, 47.87, 1.0, 1.0),
    "Ca II": ("alpha", 6.11, 2, 40.08, 1.0, 1.0),
}
# Excitation-potential ranges (eV) of the random lines: (infrared, optical)
_CHI_RANGE = {
    "Fe I": ((3.0, 6.5), (0.0, 5.0)),
    "Ni I": ((3.5, 6.0), (1.5, 4.5)),
    "Cr I": ((2.5, 5.0), (0.9, 4.0)),
    "Mn I": ((4.0, 6.0), (2.0, 5.0)),
    "Fe II": ((5.5, 8.0), (2.5, 4.5)),
    "Mg I": ((5.0, 6.8), (2.7, 5.5)),
    "Si I": ((5.0, 6.8), (4.9, 6.0)),
    "Ca I": ((2.5, 5.0), (1.9, 4.5)),
    "Ti I": ((0.8, 2.5), (0.0, 2.5)),
}
# Random atomic lines: species and relative frequency
_RANDOM_ATOMS = (
    ("Fe I", 0.40),
    ("Ni I", 0.07),
    ("Cr I", 0.05),
    ("Mn I", 0.03),
    ("Fe II", 0.06),
    ("Mg I", 0.09),
    ("Si I", 0.12),
    ("Ca I", 0.08),
    ("Ti I", 0.10),
)
# Molecules: (mass amu, metal w, alpha w, effective dissociation eV, gravity power)
_MOLECULES = {
    "CO": (28.0, 1.0, 0.0, 3.0, -0.25),
    "CN": (26.0, 1.0, 0.0, 3.0, -0.25),
    "OH": (17.0, 1.0, 1.0, 4.0, -0.20),
    "CH": (13.0, 1.0, 0.0, 2.0, -0.20),
    "MgH": (25.3, 1.0, 1.0, 2.5, 0.40),
    "TiO": (63.9, 1.0, 1.0, 6.0, -0.10),
}
# Band heads (vacuum Angstrom): species, head, direction (+1 degraded to the red),
# span (A), number of lines, peak log10 S_ref (km/s), vibrational excitation (eV),
# rotational constant (eV)
_BANDS = (
    ("CN", 3884.5, -1, 30.0, 50, 1.2, 0.00, 2.4e-4),
    ("CN", 4217.3, -1, 40.0, 50, 0.8, 0.00, 2.4e-4),
    ("CH", 4315.0, -1, 40.0, 50, 1.0, 0.00, 1.8e-3),
    ("MgH", 5213.0, -1, 150.0, 60, 0.0, 0.00, 7.0e-4),
    ("TiO", 7055.5, +1, 120.0, 60, 0.3, 0.00, 6.6e-5),
    ("TiO", 7591.5, +1, 120.0, 60, 0.1, 0.00, 6.6e-5),
    ("CN", 7877.0, +1, 100.0, 50, 0.3, 0.00, 2.4e-4),
    ("TiO", 8434.5, +1, 100.0, 50, -0.2, 0.00, 6.6e-5),
    ("CO", 15582.0, +1, 180.0, 70, 0.55, 0.00, 2.4e-4),
    ("CO", 15780.0, +1, 180.0, 70, 0.45, 0.26, 2.4e-4),
    ("CO", 15982.0, +1, 180.0, 70, 0.35, 0.52, 2.4e-4),
    ("CO", 16189.0, +1, 180.0, 70, 0.25, 0.78, 2.4e-4),
    ("CO", 16401.5, +1, 180.0, 70, 0.15, 1.03, 2.4e-4),
    ("CO", 16618.0, +1, 180.0, 70, 0.05, 1.28, 2.4e-4),
    ("CO", 16840.0, +1, 160.0, 60, -0.05, 1.53, 2.4e-4),
)
# Named strong lines (vacuum Angstrom): species, wavelength, chi, log10 S_ref, log10 damping
_STRONG_LINES = (
    ("Ca II", 3934.8, 0.00, 5.8, -0.6),
    ("Ca II", 3969.6, 0.00, 5.5, -0.6),
    ("Ca I", 4227.9, 0.00, 4.3, -0.8),
    ("Mg I", 5168.8, 2.71, 4.2, -0.7),
    ("Mg I", 5174.1, 2.71, 4.4, -0.7),
    ("Mg I", 5185.0, 2.72, 4.6, -0.7),
    ("Fe I", 5271.2, 1.61, 3.2, -1.0),
    ("Fe I", 5329.5, 1.56, 3.0, -1.0),
    ("Ca I", 6124.0, 1.89, 3.0, -0.9),
    ("Ca I", 6163.8, 2.52, 3.0, -0.9),
    ("Ca II", 8500.4, 1.69, 4.2, -0.5),
    ("Ca II", 8544.4, 1.70, 4.6, -0.5),
    ("Ca II", 8664.5, 1.69, 4.5, -0.5),
    ("Fe I", 15211.7, 3.21, 1.7, -0.9),
    ("Fe I", 15298.7, 5.31, 1.5, -0.9),
    ("Mg I", 15745.0, 5.93, 2.1, -0.5),
    ("Mg I", 15753.3, 5.93, 2.2, -0.5),
    ("Mg I", 15770.2, 5.93, 2.3, -0.5),
    ("Ti I", 15548.0, 2.27, 1.3, -1.0),
    ("Si I", 15964.4, 5.98, 1.9, -0.6),
    ("Fe I", 16044.9, 5.87, 1.5, -0.9),
    ("Si I", 16064.4, 5.95, 2.0, -0.6),
    ("Ca I", 16155.2, 4.53, 1.5, -0.7),
    ("Ca I", 16161.8, 4.53, 1.4, -0.7),
    ("Ti I", 16639.7, 2.34, 1.2, -1.0),
    ("Si I", 16685.3, 5.98, 1.9, -0.6),
    ("Mg I", 15886.2, 5.95, 1.6, -0.5),
)
# Hydrogen (vacuum Angstrom): wavelength, effective lower-level excitation (eV),
# log10 S_ref, log10 Stark half width (km/s) at the Sun, line window half width (km/s).
# The effective excitation of the Brackett lines is lowered from 12.75 eV to the
# Balmer value so that their Teff sensitivity stays moderate, as in real H-band spectra.
_HYDROGEN = (
    (3890.2, 10.20, 0.50, 1.30, 2500.0),  # H8
    (3971.2, 10.20, 0.65, 1.40, 2500.0),  # H epsilon
    (4102.9, 10.20, 0.80, 1.50, 2500.0),  # H delta
    (4341.7, 10.20, 0.95, 1.55, 2500.0),  # H gamma
    (4862.7, 10.20, 1.10, 1.60, 2500.0),  # H beta
    (6564.6, 10.20, 1.20, 1.65, 2500.0),  # H alpha
    (15196.0, 10.20, -0.35, 1.10, 1500.0),  # Br 20
    (15265.0, 10.20, -0.28, 1.10, 1500.0),  # Br 19
    (15345.99, 10.20, -0.20, 1.15, 1500.0),  # Br 18
    (15443.1, 10.20, -0.12, 1.15, 1500.0),  # Br 17
    (15560.7, 10.20, -0.04, 1.20, 1500.0),  # Br 16
    (15704.9, 10.20, 0.05, 1.20, 1500.0),  # Br 15
    (15884.9, 10.20, 0.13, 1.25, 1500.0),  # Br 14
    (16113.7, 10.20, 0.22, 1.25, 1500.0),  # Br 13
    (16411.7, 10.20, 0.31, 1.30, 1500.0),  # Br 12
    (16811.1, 10.20, 0.40, 1.30, 1500.0),  # Br 11
)
_BLOCK_ANGSTROM = 50.0
_MARGIN_KMS = 3000.0


def _atomic_density(wavelength):
    """Random atomic lines per Angstrom (before ``density`` scaling): 0.4 (15,500 A / lambda)**1.8."""
    return 0.40 * (15500.0 / np.asarray(wavelength, dtype=float)) ** 1.8


def _molecular_density(wavelength):
    """Random molecular (CN, OH in the IR; CN, CH in the blue) lines per Angstrom."""
    wl = np.asarray(wavelength, dtype=float)
    return np.where(wl > 10000.0, 0.18, np.where(wl < 4600.0, 0.10, 0.02))


_LINE_FIELDS = [
    "wavelength",
    "species",
    "kind",
    "excitation",
    "ionisation",
    "stage",
    "mass",
    "log_strength",
    "log_damping",
    "damping_logg_power",
    "damping_teff_power",
    "metal_weight",
    "alpha_weight",
    "dissociation",
    "gravity_power",
    "max_window",
]


def _new_columns():
    """Empty per-field lists that line-list builders append to."""
    return {name: [] for name in _LINE_FIELDS}


def _append_lines(cols, wavelength, **values):
    """Append lines to the column lists; scalars are broadcast to every line."""
    wavelength = np.atleast_1d(np.asarray(wavelength, dtype=float))
    n = wavelength.size
    cols["wavelength"].append(wavelength)
    for name in _LINE_FIELDS[1:]:
        v = np.asarray(values[name])
        cols[name].append(np.broadcast_to(v.astype(object) if v.dtype.kind in "US" else v, (n,)))


def _add_atom(cols, species, wavelength, chi, log_s, log_damp, window=400.0):
    """Append atomic lines of ``species`` (a key of ``_ATOMS``)."""
    kind, chi_ion, stage, mass, wm, wa = _ATOMS[species]
    _append_lines(
        cols, wavelength, species=species, kind=kind, excitation=chi, ionisation=chi_ion, stage=stage,
        mass=mass, log_strength=log_s, log_damping=log_damp, damping_logg_power=0.4,
        damping_teff_power=0.3, metal_weight=wm, alpha_weight=wa, dissociation=0.0, gravity_power=0.0,
        max_window=window,
    )  # fmt: skip


def _add_molecule(cols, species, wavelength, chi, log_s, log_damp):
    """Append molecular lines of ``species`` (a key of ``_MOLECULES``)."""
    mass, wm, wa, d_eff, g_pow = _MOLECULES[species]
    _append_lines(
        cols, wavelength, species=species, kind="molecule", excitation=chi, ionisation=0.0, stage=0,
        mass=mass, log_strength=log_s, log_damping=log_damp, damping_logg_power=0.4,
        damping_teff_power=0.3, metal_weight=wm, alpha_weight=wa, dissociation=d_eff,
        gravity_power=g_pow, max_window=400.0,
    )  # fmt: skip


def _add_hydrogen(cols, wavelength, chi, log_s, log_damp, window):
    """Append one hydrogen line."""
    _append_lines(
        cols, wavelength, species="H I", kind="hydrogen", excitation=chi, ionisation=13.6, stage=1,
        mass=1.008, log_strength=log_s, log_damping=log_damp, damping_logg_power=0.3,
        damping_teff_power=1.0, metal_weight=0.0, alpha_weight=0.0, dissociation=0.0, gravity_power=0.0,
        max_window=window,
    )  # fmt: skip


def _random_block(cols, lo, hi, rng, density):
    """Random atomic and molecular lines between ``lo`` and ``hi`` (vacuum A)."""
    mid = 0.5 * (lo + hi)
    ir = mid > 10000.0
    n_atom = rng.poisson(density * float(_atomic_density(mid)) * (hi - lo))
    names = [s for s, _ in _RANDOM_ATOMS]
    p = np.array([f for _, f in _RANDOM_ATOMS])
    which = rng.choice(len(names), size=n_atom, p=p / p.sum())
    wl = rng.uniform(lo, hi, size=n_atom)
    # log10 S_ref: exponential tail above a floor -> many weak, few strong lines
    log_s = -1.5 + rng.exponential(0.95, size=n_atom)
    log_s = np.minimum(log_s, 2.6)
    log_damp = rng.normal(math.log10(0.08), 0.3, size=n_atom)
    u = rng.random(n_atom)
    for i, name in enumerate(names):
        sel = which == i
        if not sel.any():
            continue
        c_lo, c_hi = _CHI_RANGE[name][0 if ir else 1]
        chi = c_lo + (c_hi - c_lo) * u[sel]
        _add_atom(cols, name, wl[sel], chi, log_s[sel], log_damp[sel])
    n_mol = rng.poisson(density * float(_molecular_density(mid)) * (hi - lo))
    if n_mol:
        species = np.where(rng.random(n_mol) < 0.5, "OH", "CN") if ir else np.where(rng.random(n_mol) < 0.5, "CH", "CN")
        wl = rng.uniform(lo, hi, size=n_mol)
        chi = rng.uniform(0.0, 1.5, size=n_mol)
        log_s = -1.2 + rng.exponential(0.6, size=n_mol)
        log_s = np.minimum(log_s, 1.6)
        log_damp = np.full(n_mol, math.log10(0.03))
        for name in ("OH", "CN", "CH"):
            sel = species == name
            if sel.any():
                _add_molecule(cols, name, wl[sel], chi[sel], log_s[sel], log_damp[sel])


def _band_lines(cols, lo, hi):
    """Molecular band lines (rotational ladders from each band head) in [lo, hi]."""
    for species, head, direction, span, n_lines, log_peak, chi_vib, b_rot in _BANDS:
        if min(head, head + direction * span) > hi or max(head, head + direction * span) < lo:
            continue
        j = np.arange(1, n_lines + 1, dtype=float)
        wl = head + direction * span * (j / n_lines) ** 2
        chi = chi_vib + b_rot * j * (j + 1)
        theta_ref = 5040.0 / _REFERENCE_STAR["TEFF"]
        rel = np.log10(2 * j + 1) - theta_ref * (chi - chi_vib)
        log_s = log_peak + rel - rel.max()
        keep = (wl >= lo) & (wl <= hi) & (log_s > -2.0)
        if keep.any():
            _add_molecule(cols, species, wl[keep], chi[keep], log_s[keep], np.full(keep.sum(), math.log10(0.03)))


def _line_list_seed(rng) -> int:
    """Base seed of the line-list blocks from ``None`` (default list), an int or a Generator."""
    if rng is None:
        return _DEFAULT_LINE_SEED
    if isinstance(rng, np.random.Generator):
        return int(rng.integers(0, 2**62))
    if isinstance(rng, numbers.Integral) and not isinstance(rng, bool) and rng >= 0:
        return int(rng)
    raise InvalidInputError(f"rng must be None, a non-negative int seed or a numpy.random.Generator; got {rng!r}")


def make_line_list(instrument_or_range, rng=None, density: float = 1.0, margin_kms: float = _MARGIN_KMS) -> LineList:
    """Build the line list of the mock atmosphere over a wavelength range.

    Random atomic and molecular lines are drawn in fixed 50-A blocks of vacuum
    wavelength, each from its own seed derived from ``rng`` and the block number:
    two instruments that overlap in wavelength see the same lines there.  Named
    strong lines, molecular band heads and hydrogen lines are fixed lists.

    Parameters
    ----------
    instrument_or_range : Instrument, str or (float, float)
        An instrument (or preset name), or a ``(lo, hi)`` wavelength range in
        Angstrom (vacuum).
    rng : None, int or numpy.random.Generator, optional
        Seed of the random lines.  ``None`` gives the package's default line list.
    density : float, optional
        Multiplier of the density of random lines (default 1: about 0.4 lines per A
        at 15,500 A, 3 per A at 5,000 A, plus molecular lines).
    margin_kms : float, optional
        Lines are generated this far (km/s) beyond the range, so that wings of lines
        just outside still reach in.

    Returns
    -------
    LineList
        Sorted by wavelength; wavelengths in the instrument's medium (vacuum for a
        plain range).

    Raises
    ------
    InvalidInputError
        For a bad range, density or seed.
    """
    medium = "vacuum"
    if isinstance(instrument_or_range, (Instrument, str)):
        inst = get_instrument(instrument_or_range)
        lo, hi = inst.wavelength_range
        medium = inst.medium
    else:
        try:
            lo, hi = (float(v) for v in instrument_or_range)
        except (TypeError, ValueError):
            raise InvalidInputError(
                f"expected an Instrument, a preset name or a (lo, hi) range in Angstrom; got {instrument_or_range!r}"
            ) from None
        if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < hi):
            raise InvalidInputError(f"wavelength range must satisfy 0 < lo < hi; got ({lo}, {hi})")
    density = float(density)
    if not (np.isfinite(density) and density >= 0):
        raise InvalidInputError(f"density must be a finite number >= 0; got {density}")
    margin_kms = float(margin_kms)
    if not (np.isfinite(margin_kms) and margin_kms >= 0):
        raise InvalidInputError(f"margin_kms must be >= 0; got {margin_kms}")
    seed = _line_list_seed(rng)
    if medium == "air":  # generate in vacuum, covering the air range
        lo, hi = lo * 1.0003, hi * 1.0003
    lo_m = lo * math.exp(-margin_kms / C_KMS)
    hi_m = hi * math.exp(margin_kms / C_KMS)

    cols = _new_columns()
    for b in range(int(lo_m // _BLOCK_ANGSTROM), int(hi_m // _BLOCK_ANGSTROM) + 1):
        block_rng = np.random.default_rng([seed, b])
        b_lo, b_hi = b * _BLOCK_ANGSTROM, (b + 1) * _BLOCK_ANGSTROM
        _random_block(cols, b_lo, b_hi, block_rng, density)
    _band_lines(cols, lo_m, hi_m)
    for species, wl, chi, log_s, log_damp in _STRONG_LINES:
        if lo_m <= wl <= hi_m:
            _add_atom(cols, species, wl, chi, log_s, log_damp, window=3000.0)
    for wl, chi, log_s, log_damp, window in _HYDROGEN:
        if lo_m <= wl <= hi_m:
            _add_hydrogen(cols, wl, chi, log_s, log_damp, window)

    arrays = {k: (np.concatenate(v) if v else np.zeros(0)) for k, v in cols.items()}
    wl = arrays["wavelength"].astype(float)
    keep = (wl >= lo_m) & (wl <= hi_m)
    order = np.argsort(wl[keep], kind="stable")
    out = {}
    for k, v in arrays.items():
        v = v[keep][order]
        if k in ("species", "kind"):
            v = v.astype(str)
        elif k == "stage":
            v = v.astype(int)
        else:
            v = v.astype(float)
        out[k] = v
    if medium == "air":
        out["wavelength"] = vacuum_to_air_wavelength(out["wavelength"])
    lines = LineList(**out, medium=medium)
    logger.debug(
        "line list %.0f-%.0f A (%s): %d lines (%s)",
        lo_m,
        hi_m,
        medium,
        len(lines),
        ", ".join(f"{k}={int(np.sum(lines.kind == k))}" for k in _KINDS),
    )
    return lines


@functools.lru_cache(maxsize=16)
def default_line_list(instrument=APOGEE) -> LineList:
    """The package's default (fixed-seed) line list of an instrument, cached.

    Every call of :func:`simulate_spectra` without an explicit ``line_list`` uses it,
    so that spectra simulated with different random seeds share the same physics.

    Parameters
    ----------
    instrument : Instrument or str, optional

    Returns
    -------
    LineList
    """
    return make_line_list(get_instrument(instrument), rng=None)
