"""Microturbulence from Teff and log g: the GALAH relation (for Nandakumar+2022 App. A3).

Nandakumar+2022 (MNRAS, "Combined APOGEE-GALAH stellar catalogues using the Cannon",
arXiv:2011.02783) give APOGEE stars a microturbulence from a GALAH-style relation in their
Appendix A3. **The appendix's exact form could not be checked** (issue 14: no copy of the
appendix could be read). What is implemented is the relation of the GALAH analysis
pipeline (Buder+2018, DR2; Buder+2021, DR3), its function ``vmic_vmac`` called by the
DR3 stellar-parameter code (``analysis/stellar_parameters/galah_sp.pro`` of
github.com/svenbuder/GALAH_DR3); the coefficients were read in a Python port of that
pipeline's start-value step, not in the papers' text. Compare with App. A3 before
reproducing the paper's numbers.
"""

from __future__ import annotations

import numpy as np

from bayescannon.errors import ShapeMismatchError

__all__ = ["galah_vmic"]

_T0 = 5500.0  # K: reference temperature of the relation
_LOGG_DWARF = 4.2  # cool dwarfs (log g > 4.2 and Teff < 5500 K) take the linear branch


def galah_vmic(teff, logg) -> np.ndarray:
    """Microturbulence (km/s) from Teff and log g, the GALAH pipeline's relation.

    With ``ΔT = Teff − 5500 K``::

        vmic = 1.1 + 1.0e-4 ΔT + 4.0e-7 ΔT²    if log g ≤ 4.2 or Teff ≥ 5500 K
        vmic = 1.1 + 1.6e-4 ΔT                 otherwise (cool dwarfs)

    Source and caveat: see the module docstring (the form of Nandakumar+2022 App. A3 could
    not be verified; this is the GALAH DR2/DR3 pipeline's relation).

    Parameters
    ----------
    teff : array_like
        Effective temperature (K).
    logg : array_like
        Surface gravity (log10 cm s⁻²), broadcastable against ``teff``.

    Returns
    -------
    ndarray
        vmic in km/s; NaN where Teff or log g is NaN or masked.

    Raises
    ------
    ShapeMismatchError
        When ``teff`` and ``logg`` do not broadcast.

    Examples
    --------
    >>> galah_vmic([4500.0, 5000.0], [2.5, 4.5]).round(3).tolist()
    [1.4, 1.02]
    """
    t = np.ma.filled(np.ma.asarray(teff, dtype=float), np.nan)
    g = np.ma.filled(np.ma.asarray(logg, dtype=float), np.nan)
    try:
        t, g = np.broadcast_arrays(t, g)
    except ValueError:
        raise ShapeMismatchError(f"teff has shape {np.shape(teff)} but logg has shape {np.shape(logg)}") from None
    dt = t - _T0
    giant_or_hot = (g <= _LOGG_DWARF) | (t >= _T0)
    out = np.where(giant_or_hot, 1.1 + 1.0e-4 * dt + 4.0e-7 * dt * dt, 1.1 + 1.6e-4 * dt)
    return np.where(np.isfinite(t) & np.isfinite(g), out, np.nan)
