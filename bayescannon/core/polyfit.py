"""Test step on χ² as a polynomial in the labels (issue 12: fast at any order).

For a polynomial model every star's χ² is itself a polynomial in the scaled labels,

    χ²(ℓ) = Σ_λ w_λ (f_λ − θ_λ·v(ℓ))² = Σ_m a_m μ_m(ℓ),

over the monomials μ_m of degree ≤ 2·order (the terms of the order-2·order vectorizer, of
which the model's own terms v are the first T). Its coefficients are

    a = w Φ − 2 [w f θ, 0] + c e₀,   Φ_λm = Σ_{t≤u: v_t v_u = μ_m} (2 − δ_tu) θ_λt θ_λu,

one matrix product with M columns (M = 210 for 4 labels at order 3, 70 at order 2) instead
of the T(T+1)/2 (630, 120) of the sufficient statistics ``A = Σ w θθᵀ``
(:mod:`bayescannon.core.labelfit`): the terms θ_t θ_u that multiply the same monomial are
summed over pixels once. It is the same quadratic form ``c − 2bᵀv + vᵀAv`` with the
pairs of A folded by monomial, so its rounding (the cancellation of the large sums
``Σ w f²`` and ``vᵀAv`` down to χ²) is the same as that of the A form.

Levenberg–Marquardt then uses the exact gradient and Hessian of this polynomial (exact
Newton steps, damped until positive definite). The Fisher matrix ``JᵀAJ`` of the labels
needs A, which is not formed: at the best fit it is the exact half-Hessian plus the
residual curvature ``Σ_t (b − Av)_t ∇²v_t``, and ``Av`` costs two products with T
columns (:func:`fisher_at`).
"""

from __future__ import annotations

import logging
import math

import numba
import numpy as np

from bayescannon.core._kernels import cholesky_solve
from bayescannon.core.labelfit import LabelFit, invert_fisher, restarts_from_profiles, scan_grid
from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import InvalidInputError

logger = logging.getLogger(__name__)

__all__ = [
    "MonomialMap",
    "chi2_poly",
    "fisher_at",
    "fit_labels_poly",
    "poly_axis_profiles",
    "poly_coefficients",
    "poly_levenberg_marquardt",
    "use_polynomial_form",
]


def use_polynomial_form(vectorizer: PolynomialVectorizer) -> bool:
    """Whether the test step forms χ² as a polynomial (this module) rather than from the
    sufficient statistics A (:mod:`bayescannon.core.labelfit`).

    The cost of both is dominated by products with the (N, P) weights: M monomial columns
    plus 2T for the Fisher matrix at the best fit, against T(T+1)/2 pair columns. The
    polynomial form is used where it needs under 60 % of the columns (4 labels: order ≥ 3;
    order 2 from about 8 labels); measured on 7,214 pixels, at order 2 with 4 labels
    (100 vs 120 columns) the pair form is as fast, the memory-bound Fisher products taking
    back what the fewer columns save.
    """
    t = vectorizer.n_terms
    k = vectorizer.n_labels
    m = math.comb(k + 2 * vectorizer.order, k)
    return m + 2 * t < 0.6 * t * (t + 1) / 2


class MonomialMap:
    """The monomials of degree ≤ 2·order and how the pairs of model terms fold onto them.

    Parameters
    ----------
    vectorizer : PolynomialVectorizer
        The model's vectorizer (T terms).

    Attributes
    ----------
    quad : PolynomialVectorizer
        Vectorizer of order 2·order: its M terms are the monomials; the first T are the
        model's terms (same order).
    pair_monomial : ndarray of int, shape (T(T+1)/2,)
        Monomial of each pair t ≤ u (``np.triu_indices`` order).
    pair_weight : ndarray, shape (T(T+1)/2,)
        1 for t = u, 2 for t < u.
    """

    def __init__(self, vectorizer: PolynomialVectorizer):
        self.vectorizer = vectorizer
        self.quad = PolynomialVectorizer(vectorizer.label_names, 2 * vectorizer.order)
        t = vectorizer.n_terms
        index = {tuple(e): m for m, e in enumerate(self.quad.exponents)}
        iu, ju = np.triu_indices(t)
        ex = vectorizer.exponents
        self.pair_monomial = np.array([index[tuple(ex[a] + ex[b])] for a, b in zip(iu, ju)], dtype=np.int64)
        self.pair_weight = np.where(iu == ju, 1.0, 2.0)
        self.n_terms = t
        self.n_monomials = self.quad.n_terms
        # derivatives of Σ_m a_m μ_m are polynomials of degree 2·order − 1 and − 2 whose
        # coefficients are gathered from a: ∂_k μ_m = e_mk μ_{m − e_k}
        qe = self.quad.exponents
        deg = qe.sum(axis=1)
        k = vectorizer.n_labels
        eye = np.eye(k, dtype=np.int64)
        self.n_grad = int(np.count_nonzero(deg <= 2 * vectorizer.order - 1))
        self.n_hess = int(np.count_nonzero(deg <= 2 * vectorizer.order - 2))
        e1 = qe[: self.n_grad]
        self.grad_src = np.array([[index[tuple(e + eye[j])] for e in e1] for j in range(k)], dtype=np.int64)
        self.grad_factor = (e1.T + 1).astype(np.float64)  # (K, M1)
        e2 = qe[: self.n_hess]
        self.hess_src = np.array(
            [[[index[tuple(e + eye[i] + eye[j])] for e in e2] for j in range(k)] for i in range(k)], dtype=np.int64
        )
        self.hess_factor = np.array(
            [[(e2[:, i] + 1) * (e2[:, j] + 1 + (i == j)) for j in range(k)] for i in range(k)], dtype=np.float64
        )  # (K, K, M2)

    def derivative_coefficients(self, a):
        """Coefficients of the gradient (N, K, M1) and Hessian (N, K, K, M2) of Σ_m a_m μ_m
        over the first M1 and M2 monomials."""
        return a[:, self.grad_src] * self.grad_factor, a[:, self.hess_src] * self.hess_factor

    def hessian(self, a, x):
        """Hessian (N, K, K) of Σ_m a_m μ_m at the scaled labels ``x`` (N, K)."""
        h = a[:, self.hess_src] * self.hess_factor
        mu = self.quad(x)[:, : self.n_hess]
        return np.einsum("nkqm,nm->nkq", h, mu)

    def theta_monomials(self, theta):
        """Φ (P, M): the coefficient of each monomial in ``(θ_λ·v)²``, per pixel.

        Parameters
        ----------
        theta : ndarray, shape (P, T)
        """
        t = self.n_terms
        iu, ju = np.triu_indices(t)
        fold = np.zeros((iu.size, self.n_monomials))
        fold[np.arange(iu.size), self.pair_monomial] = self.pair_weight
        return np.ascontiguousarray((theta[:, iu] * theta[:, ju]) @ fold)


def poly_coefficients(w, wf, c, theta, phi):
    """Coefficients a (N, M) of χ² over the monomials, and b = w f θ (N, T).

    Parameters
    ----------
    w, wf : ndarray, shape (N, P)
        Adjusted inverse variances (0 for unusable pixels) and ``w·f``.
    c : ndarray, shape (N,)
        ``Σ w f²``.
    theta : ndarray, shape (P, T)
    phi : ndarray, shape (P, M)
        :meth:`MonomialMap.theta_monomials` of ``theta``.
    """
    a = w @ phi
    b = wf @ theta
    t = theta.shape[1]
    a[:, :t] -= 2.0 * b
    a[:, 0] += c
    return a, b


def chi2_poly(a, mono):
    """χ² (N, S) at monomial vectors ``mono`` (S, M) (the same S points for every star)."""
    return a @ mono.T


@numba.njit(cache=True, inline="always")
def _poly_value(x, parent, last, mu):  # pragma: no cover - compiled
    m_n = mu.shape[0]
    mu[0] = 1.0
    for m in range(1, m_n):
        mu[m] = mu[parent[m]] * x[last[m]]


@numba.njit(cache=True, inline="always")
def _poly_chi2(a, x, parent, last, mu):  # pragma: no cover - compiled
    _poly_value(x, parent, last, mu)
    s = 0.0
    for m in range(mu.shape[0]):
        s += a[m] * mu[m]
    return s


@numba.njit(cache=True, inline="always")
def _poly_derivatives(a, ga, ha, x, parent, last, mu, g, H):  # pragma: no cover - compiled
    """χ², half its gradient ``g`` and half its Hessian ``H`` at ``x`` from the derivative
    coefficients ``ga`` (K, M1), ``ha`` (K, K, M2) (already halved)."""
    k_n = x.shape[0]
    chi2 = _poly_chi2(a, x, parent, last, mu)
    m1 = ga.shape[1]
    m2 = ha.shape[2]
    for k in range(k_n):
        s = 0.0
        for m in range(m1):
            s += ga[k, m] * mu[m]
        g[k] = s
        for q in range(k, k_n):
            s = 0.0
            for m in range(m2):
                s += ha[k, q, m] * mu[m]
            H[k, q] = s
            H[q, k] = s
    return chi2


@numba.njit(cache=True, inline="always")
def _newton_solve(H, lam, scale, g, step, M, free):  # pragma: no cover - compiled
    """step = −(H + λ diag(scale))⁻¹ g by Cholesky on the free labels (0 for the others);
    returns False if the damped matrix is not positive definite."""
    k_n = g.shape[0]
    for i in range(k_n):
        for k in range(k_n):
            M[i, k] = H[i, k] if free[i] and free[k] else 0.0
        M[i, i] = M[i, i] + lam * scale[i] if free[i] else 1.0
    return cholesky_solve(M, g, step, free)


@numba.njit(cache=True, inline="always")
def _damping_scale(H, scale):  # pragma: no cover - compiled
    """|diag H|, floored at 1e-9 of its largest entry (a label χ² hardly depends on
    still gets damped)."""
    k_n = H.shape[0]
    top = 0.0
    for k in range(k_n):
        top = max(top, abs(H[k, k]))
    floor = max(1e-9 * top, 1e-300)
    for k in range(k_n):
        scale[k] = max(abs(H[k, k]), floor)


@numba.njit(parallel=True, cache=True)
def poly_levenberg_marquardt(a, ga, ha, starts, parent, last, lo, hi, max_iter, chi2_tol):  # pragma: no cover
    """Damped Newton (Levenberg–Marquardt) on χ²(x) = Σ_m a_m μ_m(x) for every star and start.

    ``ga``, ``ha``: half the gradient and Hessian coefficients
    (:meth:`MonomialMap.derivative_coefficients`). Steps solve ``(H + λ diag|H|) step = −g``
    with the exact half-Hessian H and half-gradient g of the polynomial; λ grows tenfold until the damped matrix is positive definite (far
    from a minimum, where H is indefinite, the step turns towards scaled gradient descent).
    Projection onto [lo, hi], the active set of labels held on a bound and the convergence
    tests are those of :func:`bayescannon.core._kernels.levenberg_marquardt`: an accepted
    step lowers χ² by less than ``chi2_tol``, or a rejected step's predicted decrease
    ``−g·step`` is below it; λ above 1e12 ends the search (converged only if the predicted
    decrease is tiny).

    Returns x (N, S, K), chi2 (N, S), converged (N, S), iterations (N, S).
    """
    n, s_n, k_n = starts.shape
    m_n = parent.shape[0]
    x_out = np.empty((n, s_n, k_n))
    chi2_out = np.empty((n, s_n))
    done_out = np.zeros((n, s_n), dtype=np.bool_)
    it_out = np.zeros((n, s_n), dtype=np.int64)
    for idx in numba.prange(n * s_n):
        i = idx // s_n
        si = idx % s_n
        ai = a[i]
        gai = ga[i]
        hai = ha[i]
        x = np.empty(k_n)
        xn = np.empty(k_n)
        for k in range(k_n):
            x[k] = min(max(starts[i, si, k], lo[k]), hi[k])
        mu = np.empty(m_n)
        g = np.empty(k_n)
        H = np.empty((k_n, k_n))
        M = np.empty((k_n, k_n))
        scale = np.empty(k_n)
        step = np.empty(k_n)
        free = np.ones(k_n, dtype=np.bool_)
        chi2 = _poly_derivatives(ai, gai, hai, x, parent, last, mu, g, H)
        _damping_scale(H, scale)
        lam = 1e-3
        done = False
        it = 0
        while it < max_iter and not done:
            it += 1
            for k in range(k_n):
                free[k] = not ((x[k] <= lo[k] and g[k] > 0.0) or (x[k] >= hi[k] and g[k] < 0.0))
            ok = _newton_solve(H, lam, scale, g, step, M, free)
            while not ok and lam <= 1e12:
                lam *= 10.0
                ok = _newton_solve(H, lam, scale, g, step, M, free)
            if not ok:
                break
            for k in range(k_n):
                xn[k] = min(max(x[k] + step[k], lo[k]), hi[k])
            chi2n = _poly_chi2(ai, xn, parent, last, mu)
            decrement = 0.0
            for k in range(k_n):
                decrement -= g[k] * step[k]
            if chi2n < chi2:
                decrease = chi2 - chi2n
                for k in range(k_n):
                    x[k] = xn[k]
                chi2 = _poly_derivatives(ai, gai, hai, x, parent, last, mu, g, H)
                _damping_scale(H, scale)
                lam = max(lam / 10.0, 1e-12)
                if decrease < chi2_tol:
                    done = True
            else:
                lam *= 10.0
                if decrement < chi2_tol:
                    done = True
                elif lam > 1e12:
                    done = decrement < 1e3 * chi2_tol
                    break
        for k in range(k_n):
            x_out[i, si, k] = x[k]
        chi2_out[i, si] = chi2
        done_out[i, si] = done
        it_out[i, si] = it
    return x_out, chi2_out, done_out, it_out


def fisher_at(a, b, w, theta, mono_map, x, work=None):
    """Fisher matrices ``JᵀAJ`` (N, K, K) of the labels at ``x`` without forming A.

    ``JᵀAJ = ½∇²χ² + Σ_t (b − Av)_t ∇²v_t``, with ``Av = Σ_λ w_λ θ_λ (θ_λ·v(x))``: the
    Hessian of the polynomial with coefficients ``½a + [b − Av, 0]``.

    Parameters
    ----------
    a, b : ndarray, shapes (N, M), (N, T)
        From :func:`poly_coefficients`.
    w : ndarray, shape (N, P)
    theta : ndarray, shape (P, T)
    mono_map : MonomialMap
    x : ndarray, shape (N, K)
        Scaled labels.
    work : ndarray, shape (≥ N, P), optional
        Buffer for the model fluxes (reused across chunks).
    """
    n = x.shape[0]
    v = mono_map.vectorizer(x)
    model = v @ theta.T if work is None else np.matmul(v, theta.T, out=work[:n])
    model *= w
    av = model @ theta
    coef = 0.5 * a
    coef[:, : b.shape[1]] += b - av
    return mono_map.hessian(coef, x)


def poly_axis_profiles(a, mono_map, x, grid):
    """χ² along each label axis through ``x`` at the values of ``grid`` (N, K, G).

    Along an axis χ² is a polynomial of degree 2·order in the shift of the label: its
    coefficients come from χ² at 2·order + 1 nodes per axis; the grid then costs a
    Horner evaluation per point (as :func:`bayescannon.core.labelfit.axis_profiles`).
    """
    n, k = x.shape
    d = 2 * mono_map.vectorizer.order + 1
    nodes = np.linspace(-1.0, 1.0, d)
    to_coef = np.linalg.inv(np.vander(nodes, d, increasing=True))
    pts = np.repeat(x[:, None, None, :], k, axis=1).repeat(d, axis=2)  # (N, K, D, K)
    ax = np.arange(k)
    pts[:, ax, :, ax] += nodes
    mono = mono_map.quad(pts).reshape(n, k * d, -1)
    vals = (mono @ a[:, :, None]).reshape(n, k, d)
    poly = vals @ to_coef.T  # (N, K, D): χ² = Σ_e poly_e sᵉ
    shift = grid[None, :, :] - x[:, :, None]
    out = np.broadcast_to(poly[:, :, -1:], shift.shape).copy()
    for m in range(d - 2, -1, -1):  # Horner
        out *= shift
        out += poly[:, :, m : m + 1]
    return out


def fit_labels_poly(
    a,
    b,
    w,
    theta,
    mono_map,
    starts,
    *,
    bounds=None,
    max_iter: int = 100,
    chi2_tol: float = 1e-9,
    restart: bool = False,
    n_grid: int = 64,
    work=None,
) -> LabelFit:
    """Labels of many stars from their χ² polynomials (the polynomial form of
    :func:`bayescannon.core.labelfit.fit_labels`, same options, same result).

    Parameters
    ----------
    a, b : ndarray, shapes (N, M), (N, T)
        From :func:`poly_coefficients`.
    w : ndarray, shape (N, P)
        Adjusted inverse variances (for the Fisher matrix at the best fit).
    theta : ndarray, shape (P, T)
    mono_map : MonomialMap
    starts : ndarray, shape (N, S, K)
        Starting points in scaled units.
    bounds : ndarray, shape (K, 2), optional
    max_iter, chi2_tol, restart, n_grid
        As in :func:`bayescannon.core.labelfit.fit_labels`.
    work : ndarray, shape (≥ N, P), optional
        Buffer reused for the model fluxes of :func:`fisher_at`.

    Returns
    -------
    LabelFit
        The start with the lowest χ² for each star; ``covariance`` is the inverse of the
        Fisher matrix ``JᵀAJ`` at the best fit.
    """
    n, s, k = starts.shape
    if bounds is None:
        if restart:
            raise InvalidInputError("restart=True needs finite bounds for its scans")
        lo, hi = np.full(k, -np.inf), np.full(k, np.inf)
    else:
        lo, hi = np.ascontiguousarray(bounds[:, 0]), np.ascontiguousarray(bounds[:, 1])
    q = mono_map.quad
    a = np.ascontiguousarray(a)

    ga, ha = mono_map.derivative_coefficients(0.5 * a)

    def run(rows, st):
        return poly_levenberg_marquardt(
            a[rows],
            ga[rows],
            ha[rows],
            np.ascontiguousarray(st, dtype=np.float64),
            q.parent,
            q.last,
            lo,
            hi,
            int(max_iter),
            float(chi2_tol),
        )

    x, chi2, done, iters = run(slice(None), starts)
    best = np.argmin(np.where(np.isfinite(chi2), chi2, np.inf), axis=1)
    rows = np.arange(n)
    xb = x[rows, best]
    chi2b, doneb, itb = chi2[rows, best], done[rows, best], iters[rows, best]
    if restart and n:
        grid = scan_grid(np.column_stack([lo, hi]), n_grid)
        start2, has = restarts_from_profiles(poly_axis_profiles(a, mono_map, xb, grid), grid, xb)
        if has.any():
            idx = np.flatnonzero(has)
            x2, chi22, done2, iters2 = run(idx, start2[idx][:, None, :])
            win = chi22[:, 0] < chi2b[idx] - chi2_tol
            idx, wi = idx[win], np.flatnonzero(win)
            xb[idx], chi2b[idx], doneb[idx], itb[idx], best[idx] = (
                x2[wi, 0],
                chi22[wi, 0],
                done2[wi, 0],
                iters2[wi, 0],
                s,
            )
            if idx.size:
                logger.debug("second-round restarts lowered χ² for %d of %d stars", idx.size, n)
    cov = invert_fisher(fisher_at(a, b, w, theta, mono_map, xb, work))
    at_bound = np.zeros(n, dtype=bool)
    if bounds is not None:
        tol = 1e-9 * (hi - lo)
        at_bound = np.any((xb <= lo + tol) | (xb >= hi - tol), axis=1)
    return LabelFit(xb, cov, chi2b, doneb, at_bound, itb, best)
