"""The Cannon's likelihood, written once for numpy, PyTensor and the compiled kernels.

Each pixel of each star is modelled as ``f = θ·v(ℓ) + N(0, σ² + s²)``. With
``ivar = 1/σ²`` the *adjusted* inverse variance is ``ivar / (1 + ivar s²)``; a pixel with
``ivar = 0`` keeps weight 0 (no information), never a division by zero.

The functions are plain array arithmetic: they take ``xp`` (``numpy`` or
``pytensor.tensor``) where a module function is needed, so that the MAP engine and the
PyMC models evaluate the same expressions. :func:`adjusted_ivar` is also compiled as it
is, inlined into the numba kernels of :mod:`bayescannon.core._kernels`.

* :func:`adjusted_ivar` — the scatter model;
* :func:`log_weight` — ``ln w`` of used pixels (0 elsewhere, with a finite gradient);
* :func:`log_likelihood` — the pixel log-likelihood (training, profile likelihood);
* :func:`statistics_chi2`, :func:`label_log_likelihood` — the same likelihood reduced to
  a star's sufficient statistics (``A``, ``b``, ``c`` of
  :func:`bayescannon.core.labelfit.sufficient_statistics`), as a function of ``v(ℓ)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["adjusted_ivar", "log_weight", "log_likelihood", "statistics_chi2", "label_log_likelihood", "LOG_2PI"]

LOG_2PI = float(np.log(2.0 * np.pi))


def adjusted_ivar(ivar, s2):
    """Inverse variance including the intrinsic scatter: ``ivar / (1 + ivar s²)``.

    Plain arithmetic: numpy arrays, PyTensor tensors, Python floats and (compiled by
    numba) scalars inside the kernels. ``ivar = 0`` stays 0: a masked pixel, not a crash.
    """
    return ivar / (1.0 + ivar * s2)


def log_weight(w, used, xp=np):
    """``ln w`` where ``used``, 0 elsewhere, without evaluating ``ln 0``.

    ``used`` is a boolean (or 0/1) array; ``ln(w + 1 − used)`` keeps the logarithm and
    its gradient finite on unused pixels (``w = 0`` there), which ``where`` alone would not
    (the gradient of the unselected branch is still evaluated).
    """
    return xp.log(w + (1.0 - used))


def log_likelihood(flux, ivar, model_flux, s2, xp=np, axis=None, constant: bool = True):
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
    constant : bool, default True
        Include the ``ln 2π`` term (the training engine reports the likelihood without it).

    Returns
    -------
    array or tensor
        Pixels with ``ivar = 0`` contribute exactly 0, whatever their flux.
    """
    w = adjusted_ivar(ivar, s2)
    used = ivar > 0
    r = flux - model_flux
    terms = w * r * r - log_weight(w, used, xp)
    if constant:
        terms = terms + LOG_2PI
    return -0.5 * xp.sum(xp.where(used, terms, 0.0), axis=axis)


def statistics_chi2(A, b, c, v):
    """``χ²(ℓ) = vᵀAv − 2bᵀv + c`` from a star's sufficient statistics (numpy or PyTensor).

    Exact for a polynomial model: ``Σ_λ w_λ (f_λ − θ_λ·v)²`` with ``A = Σ w θθᵀ``,
    ``b = Σ w f θ``, ``c = Σ w f²``.

    Parameters
    ----------
    A, b, c : array or tensor, shapes (..., T, T), (..., T), (...)
    v : array or tensor, shape (..., T)
        Design vectors ``v(ℓ)``.

    Returns
    -------
    array or tensor, shape (...)
    """
    av = (A * v[..., None, :]).sum(axis=-1)
    return (v * (av - 2.0 * b)).sum(axis=-1) + c


def label_log_likelihood(A, b, c, v, n_pix=None, eps=None, xp=np):
    """Log-likelihood of labels from sufficient statistics (numpy or PyTensor).

    With θ uncertainty propagated, each pixel variance grows by ``1 + ε(ℓ)``, so the
    pixel log-likelihood :func:`log_likelihood` becomes ``−½ χ²/(1+ε) − ½ n_pix ln(1+ε)``
    up to terms that do not depend on ℓ.

    Parameters
    ----------
    A, b, c : array or tensor, shapes (..., T, T), (..., T), (...)
        Sufficient statistics of each star.
    v : array or tensor, shape (..., T)
        Design vectors ``v(ℓ)``.
    n_pix : array or tensor, shape (...), optional
        Used pixels (needed when ``eps`` is given).
    eps : array or tensor, shape (...), optional
        Relative extra pixel variance from θ uncertainty.
    xp : module
        ``numpy`` or ``pytensor.tensor``.

    Returns
    -------
    array or tensor, shape (...)
        ``−½ χ²/(1+ε) − ½ n_pix ln(1+ε)`` (without the constant ``½ Σ ln(w/2π)``).
    """
    chi2 = statistics_chi2(A, b, c, v)
    if eps is None:
        return -0.5 * chi2
    return -0.5 * chi2 / (1.0 + eps) - 0.5 * n_pix * xp.log1p(eps)
