"""The Cannon's per-pixel likelihood, written once for numpy and PyTensor.

Each pixel of each star is modelled as ``f = θ·v(ℓ) + N(0, σ² + s²)``. With
``ivar = 1/σ²`` the *adjusted* inverse variance is ``ivar / (1 + ivar s²)``; a pixel with
``ivar = 0`` keeps weight 0 (no information), never a division by zero.

Functions take ``xp`` (``numpy`` or ``pytensor.tensor``) so that the MAP engine and the
PyMC models evaluate the same expressions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["adjusted_ivar", "log_likelihood", "LOG_2PI"]

LOG_2PI = float(np.log(2.0 * np.pi))


def adjusted_ivar(ivar, s2):
    """Inverse variance including the intrinsic scatter: ``ivar / (1 + ivar s²)``.

    ``ivar = 0`` stays 0: a masked pixel, not a crash.
    """
    return ivar / (1.0 + ivar * s2)


def log_likelihood(flux, ivar, model_flux, s2, xp=np, axis=None):
    """Gaussian log-likelihood ``-½ Σ [w r² − ln w + ln 2π]`` over pixels with ivar > 0.

    Parameters
    ----------
    flux, ivar : array or tensor
        Observed flux and inverse variance (broadcastable with ``model_flux``).
    model_flux : array or tensor
        ``θ·v(ℓ)``.
    s2 : array or tensor
        Intrinsic scatter (variance), broadcastable.
    xp : module
        ``numpy`` or ``pytensor.tensor``.
    axis : int or tuple, optional
        Axes summed over (all by default).

    Returns
    -------
    array or tensor
    """
    w = adjusted_ivar(ivar, s2)
    used = ivar > 0
    r = flux - model_flux
    # log(w + 1) = 0 where the pixel is unused: no log(0), no NaN gradient
    logw = xp.log(w + (1.0 - used))
    terms = used * (w * r * r - logw + LOG_2PI)
    return -0.5 * xp.sum(terms, axis=axis)
