"""Compiled L1-regularised θ-step of training (numba, cached on disk).

The lasso ``min ½θᵀGθ − bᵀθ + λ Σ_{t≥1}|θ_t|`` of every pixel, on the packed normal
equations of :func:`bayescannon.core.train.theta_step`, parallel over pixels: coordinate
descent with an exact solve on the support once it is stable. Checked against
``scipy.optimize`` in ``tests/test_train.py``.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["lasso_packed"]


@numba.njit(cache=True)
def _support_solve(G, b, th, lam, allowed, out, M):  # pragma: no cover - compiled
    """Exact lasso solution on the support and signs of ``th``: θ_S = G_SS⁻¹(b_S − λ sign θ_S)
    (term 0 unpenalised), written into ``out``; True where the optimality conditions hold
    (signs kept, |b − Gθ|_j ≤ λ off the support)."""
    t = b.shape[0]
    d = np.zeros(t)
    for i in range(t):
        on = allowed[i] and (i == 0 or th[i] != 0.0)
        d[i] = 1.0 / np.sqrt(G[i, i]) if on and G[i, i] > 0.0 else 0.0
    for i in range(t):
        rhs = b[i] - (lam * np.sign(th[i]) if i > 0 else 0.0)
        out[i] = rhs * d[i]
        for j in range(t):
            M[i, j] = G[i, j] * d[i] * d[j] if d[i] > 0.0 and d[j] > 0.0 else (1.0 if i == j else 0.0)
    for j in range(t):  # Cholesky of the Jacobi-scaled system (lower)
        s = M[j, j]
        for q in range(j):
            s -= M[j, q] * M[j, q]
        if not (s > 1e-12):
            return False
        M[j, j] = np.sqrt(s)
        for i in range(j + 1, t):
            s2 = M[i, j]
            for q in range(j):
                s2 -= M[i, q] * M[j, q]
            M[i, j] = s2 / M[j, j]
    for i in range(t):
        s = out[i]
        for q in range(i):
            s -= M[i, q] * out[q]
        out[i] = s / M[i, i]
    for i in range(t - 1, -1, -1):
        s = out[i]
        for q in range(i + 1, t):
            s -= M[q, i] * out[q]
        out[i] = s / M[i, i]
    for i in range(t):
        out[i] *= d[i]
        if i > 0 and th[i] != 0.0 and out[i] * th[i] <= 0.0:
            return False
    for i in range(1, t):
        if allowed[i] and th[i] == 0.0:
            r = b[i]
            for j in range(t):
                r -= G[i, j] * out[j]
            if abs(r) > lam * (1.0 + 1e-9):
                return False
    return True


@numba.njit(parallel=True, cache=True)
def lasso_packed(packed, b, theta0, lam, allowed, tol, max_sweeps):  # pragma: no cover - compiled
    """min ½θᵀGθ − bᵀθ + λ Σ_{t≥1}|θ_t| per row (G packed as in :func:`solve_packed`).

    Coordinate descent from ``theta0`` (censored terms fixed at 0) keeping the gradient
    ``Gθ − b`` up to date (T² per sweep); once a sweep leaves the support and signs
    unchanged, the exact solution on that support is tried (:func:`_support_solve`) and
    accepted where the optimality conditions hold, so the result is exact to rounding
    instead of to the tolerance of the sweeps. Otherwise sweeps stop when no coefficient
    moves by more than ``tol · max(1, max|θ|)``.

    Returns θ (M, T) and the number of sweeps per row (``max_sweeps + 1`` where neither
    test was met).
    """
    m, t = b.shape
    theta = np.zeros((m, t))
    sweeps = np.zeros(m, dtype=np.int64)
    for a in numba.prange(m):
        G = np.zeros((t, t))
        k = 0
        for i in range(t):
            for j in range(i, t):
                G[i, j] = packed[a, k]
                G[j, i] = packed[a, k]
                k += 1
        th = np.zeros(t)
        for i in range(t):
            if allowed[a, i] and G[i, i] > 0.0:
                th[i] = theta0[a, i]
        grad = np.zeros(t)
        for i in range(t):
            s = -b[a, i]
            for j in range(t):
                s += G[i, j] * th[j]
            grad[i] = s
        out = np.zeros(t)
        M = np.zeros((t, t))
        n_sw = max_sweeps + 1
        for sw in range(max_sweeps):
            change = 0.0
            support_changed = False
            for j in range(t):
                gjj = G[j, j]
                if not allowed[a, j] or not (gjj > 0.0):
                    continue
                rho = gjj * th[j] - grad[j]
                if j == 0:
                    new = rho / gjj
                else:
                    new = np.sign(rho) * max(abs(rho) - lam, 0.0) / gjj
                dlt = new - th[j]
                if dlt != 0.0:
                    if (new == 0.0) != (th[j] == 0.0) or new * th[j] < 0.0:
                        support_changed = True
                    th[j] = new
                    for i in range(t):
                        grad[i] += dlt * G[i, j]
                    change = max(change, abs(dlt))
            big = 1.0
            for j in range(t):
                big = max(big, abs(th[j]))
            if not support_changed and _support_solve(G, b[a], th, lam, allowed[a], out, M):
                for j in range(t):
                    th[j] = out[j]
                n_sw = sw + 1
                break
            if change < tol * big:
                n_sw = sw + 1
                break
        for j in range(t):
            theta[a, j] = th[j]
        sweeps[a] = n_sw
    return theta, sweeps
