"""Errors-in-variables correction of offset models: extreme deconvolution and Tweedie's formula.

An offset model learns ``E[target - v | v]`` from a survey's *observed* labels ``v``. With
noisy inputs this is not the offset at the star's true labels: it also holds the
regression towards the population mean, ``D(v) = E[x | v] - v`` (``x``: the noise-free
labels on the survey's own scale). Added to every measurement, that term turns each
calibrated value into a shrinkage estimate, biased against the true label (low values
pulled up, high ones down) and sharing the same pull across surveys, so that a
combination of several surveys under-covers.

The population of noise-free labels is modelled as a Gaussian mixture fitted by extreme
deconvolution (Bovy, Hogg & Roweis 2011: EM with each star's own noise covariance), on
the survey's labels standardised by their median and robust scatter. For a star with
noise covariance ``S`` Tweedie's formula is then exact for the mixture,

.. math:: E[x \\mid v, S] = \\sum_k r_k(v) \\left(m_k + C_k (C_k + S)^{-1} (v - m_k)\\right),

with ``r_k`` the responsibilities of the components convolved with ``S``. The homogeniser
subtracts ``D`` from the offsets of the common stars before the offset model is fitted, so
that the trees learn the smooth offset alone and ``D``, which grows with a star's noise,
is computed exactly for every star, also beyond the S/N range of the common stars. Missing labels get a very large noise
variance (they do not inform the others).
"""

from __future__ import annotations

import logging

import numpy as np

from bayescannon.errors import InsufficientDataError
from bayescannon.homogenise.npmle import MedianTable

logger = logging.getLogger(__name__)

__all__ = [
    "Deconvolution",
    "noise_covariance",
    "skew_shift",
    "split_normal_median",
    "split_normal_variance",
    "sum_median_shift",
]

#: Standardised noise variance given to a missing label.
_MISSING_VAR = 1e8
_MIN_FIT_STARS = 20  # fewest stars (with every label measured) a deconvolution is fitted on


def split_normal_variance(s1, s2):
    """Variance of a split normal with scales ``s1`` and ``s2``: ``s1 s2 + (1 - 2/pi) (s2 - s1)^2``
    (``s1^2`` when they are equal)."""
    return s1 * s2 + (1.0 - 2.0 / np.pi) * (s2 - s1) ** 2


def noise_covariance(s1, s2, cov=None) -> np.ndarray:
    """(n, k, k) noise covariance of every star: ``cov`` where given, else diagonal with
    the variance of the split normal (:func:`split_normal_variance`: its second moment, not
    the square of the mean scale, which is ~5 % less for scales 1:2); missing labels get
    NaN on the diagonal."""
    s1, s2 = np.asarray(s1, dtype=float), np.asarray(s2, dtype=float)
    n, k = s1.shape
    sig = np.sqrt(split_normal_variance(s1, s2))
    out = np.zeros((n, k, k))
    out[:, range(k), range(k)] = sig**2
    if cov is not None:
        ok = np.isfinite(cov) & np.isfinite(sig)[:, :, None] & np.isfinite(sig)[:, None, :]
        out = np.where(ok, cov, out)
        out[:, range(k), range(k)] = sig**2
    return out


def split_normal_median(s1, s2):
    """Median of a split normal with mode 0, scale ``s1`` below and ``s2`` above."""
    from scipy.special import ndtri  # lazy: heavy third-party import

    s1, s2 = np.asarray(s1, dtype=float), np.asarray(s2, dtype=float)
    p_lo = s1 / (s1 + s2)  # mass below the mode
    return np.where(
        p_lo <= 0.5,
        s2 * ndtri(np.clip(0.5 + (0.5 - p_lo) * (s1 + s2) / (2.0 * s2), 0.5, 1.0 - 1e-16)),
        -s1 * ndtri(np.clip(0.5 + (p_lo - 0.5) * (s1 + s2) / (2.0 * s1), 0.5, 1.0 - 1e-16)),
    )


def sum_median_shift(sigma, s1, s2, *, n_iter: int = 8) -> np.ndarray:
    """Median of ``sigma Z + E`` (elementwise), ``Z`` standard normal and ``E`` a split normal
    with mode 0, scale ``s1`` below and ``s2`` above, shifted to median 0.

    A chained survey's target is its parent's calibrated median ``x + E``: median-unbiased
    (``E`` has median 0 at a fixed true label) but skewed when the parent's errors are split
    normals. The child's offset model learns the conditional median of ``E`` plus its own
    posterior scatter (``sigma Z``), which is this median, not 0: between 0 and the mean of
    ``E``. Exact: ``sigma Z - s1 |Z'|`` and ``sigma Z + s2 |Z'|`` are skew normals (scale
    ``omega = sqrt(sigma^2 + s^2)``, shape ``-s1 / sigma`` and ``s2 / sigma``) mixed with the
    weights ``s1 / (s1 + s2)`` and ``s2 / (s1 + s2)``, whose CDF is ``Phi(t / omega) - 2
    T(t / omega, alpha)`` (Owen's T); the median of the mixture comes from Newton steps from
    the split normal's own median (the root for ``sigma = 0``). 0 where ``s1 == s2``.

    Parameters
    ----------
    sigma : array-like
        Standard deviation of the symmetric (Gaussian) part, >= 0.
    s1, s2 : array-like
        Lower and upper scales of the split normal (> 0).
    n_iter : int
        Newton steps (the CDF is smooth and monotone: 8 reach ~1e-12 of the scale).

    Returns
    -------
    numpy.ndarray
        The median of the sum (0 for a symmetric ``E``); NaN where an input is.
    """
    from scipy.special import ndtr, owens_t  # lazy: heavy third-party import

    sigma, s1, s2 = np.broadcast_arrays(*(np.asarray(a, dtype=float) for a in (sigma, s1, s2)))
    scale = np.maximum(s1, s2)
    sig = np.maximum(sigma, 1e-6 * scale)  # sigma = 0: the split normal itself (alpha large, finite)
    w1 = s1 / (s1 + s2)
    om1, om2 = np.sqrt(sig**2 + s1**2), np.sqrt(sig**2 + s2**2)
    a1, a2 = -s1 / sig, s2 / sig
    med0 = split_normal_median(s1, s2)

    def cdf_pdf(t):
        h1, h2 = t / om1, t / om2
        cdf = w1 * (ndtr(h1) - 2.0 * owens_t(h1, a1)) + (1.0 - w1) * (ndtr(h2) - 2.0 * owens_t(h2, a2))
        phi1 = np.exp(-0.5 * h1**2) / np.sqrt(2.0 * np.pi)
        phi2 = np.exp(-0.5 * h2**2) / np.sqrt(2.0 * np.pi)
        pdf = w1 * 2.0 / om1 * phi1 * ndtr(a1 * h1) + (1.0 - w1) * 2.0 / om2 * phi2 * ndtr(a2 * h2)
        return cdf, pdf

    t = med0.copy()
    for _ in range(n_iter):  # a handful of Newton steps, vectorised over stars
        cdf, pdf = cdf_pdf(t)
        t = t - (cdf - 0.5) / np.maximum(pdf, 1e-300)
    out = t - med0
    return np.where(np.isclose(s1, s2), 0.0, out)


def skew_shift(value, shrink, lam, s1, s2, *, lam_clip=(0.02, 0.98)) -> np.ndarray:
    """What a split-normal error adds to the deconvolution term ``D`` (elementwise).

    The offset model learns the conditional *median* of ``target - v - D``; for it to be
    one constant (the error's own median, which makes ``v`` plus it median-unbiased at a
    fixed true label) wherever the star lies in the population, ``D`` must be ``med[x | v]
    - v - med(error)``. With a symmetric error and a Gaussian population this is Tweedie's
    ``D``; with a skewed one it is not: the population truncates the error's long tail,
    more where it is narrow (a peak, an edge) than where it is broad.

    The label ``x`` of a star measured as ``v`` with a split-normal error (``x - v`` has
    mode 0, scale ``s1`` below and ``s2`` above) is taken in a local Gaussian population
    ``N(m, C)`` read from the deconvolution at ``v``: ``C = S lam / (1 - lam)`` and ``m = v
    + shrink / (1 - lam) + mu``, with ``S`` the split normal's variance (the Gaussian noise
    of the deconvolution), ``shrink`` its ``D``, ``lam = 1 + dD/dv`` the posterior-to-noise
    variance ratio (clipped to ``lam_clip``; ``lam -> 1``, a broad population, gives 0) and
    ``mu`` the error's mean (the deconvolution, taking the noise as zero-mean, put the
    population ``mu`` lower). The posterior is two truncated Gaussians, one on each side
    of ``v``, whose median is exact. Returns ``med[x | v] - v - shrink - med(error)``.
    """
    from scipy.special import expit, log_ndtr, ndtri  # lazy: heavy third-party import

    v, dsh = np.asarray(value, dtype=float), np.asarray(shrink, dtype=float)
    s1, s2 = np.asarray(s1, dtype=float), np.asarray(s2, dtype=float)
    lam = np.clip(np.asarray(lam, dtype=float), *lam_clip)
    c = split_normal_variance(s1, s2) * lam / (1.0 - lam)
    m = v + dsh / (1.0 - lam) + np.sqrt(2.0 / np.pi) * (s2 - s1)
    pieces = []
    for s, side in ((s1, -1.0), (s2, 1.0)):  # the piece below v, the piece above it
        mu = (m * s**2 + v * c) / (c + s**2)
        sd = np.sqrt(c * s**2 / (c + s**2))
        beta = side * (mu - v) / sd  # the piece's mass within its side is Phi(beta)
        logw = np.log(s) - 0.5 * (v - m) ** 2 / (c + s**2) - 0.5 * np.log(c + s**2) + log_ndtr(beta)
        pieces.append((mu, sd, beta, logw))
    (mu1, sd1, b1, lw1), (mu2, sd2, b2, lw2) = pieces
    p1, p2 = expit(lw1 - lw2), expit(lw2 - lw1)  # posterior mass below / above v (no overflow far from v)
    # the median lies in the lower piece when p1 >= 1/2 (its CDF at t: p1 Phi((t - mu1)/sd1) / Phi(b1)),
    # else in the upper one (its upper tail at t: p2 Phi((mu2 - t)/sd2) / Phi(b2))
    q1 = np.clip(0.5 * np.exp(log_ndtr(b1)) / np.maximum(p1, 1e-300), 1e-300, 1.0 - 1e-16)
    q2 = np.clip(0.5 * np.exp(log_ndtr(b2)) / np.maximum(p2, 1e-300), 1e-300, 1.0 - 1e-16)
    med = np.where(p1 >= 0.5, mu1 + sd1 * ndtri(q1), mu2 - sd2 * ndtri(q2))
    return (med - v - dsh) - split_normal_median(s1, s2)


class Deconvolution:
    """Gaussian mixture of a survey's noise-free labels, fitted by extreme deconvolution.

    Parameters
    ----------
    n_components : int
    n_iter : int
        EM iterations.
    max_stars : int
        Stars (with every label) used for the fit, drawn at random.
    random_state : int
    edge_npmle : bool
        Also fit, per label, a one-label non-parametric population
        (:class:`~bayescannon.homogenise.npmle.MedianTable`, a binned grid NPMLE) and,
        where the other labels do not inform the label, take ``D`` from its posterior
        *median* instead of the mixture's mean (see :meth:`median_shrinkage`).
    edge_guard, edge_taper : float
        The weight of that median (:meth:`edge_weight`): 1 where the mixture's posterior
        mean and that of its one-label marginal differ by less than ``edge_taper *
        edge_guard`` of the label's noise, 0 from ``edge_guard`` on, linear in between.
    """

    def __init__(
        self,
        n_components: int = 6,
        *,
        n_iter: int = 40,
        max_stars: int = 5000,
        random_state: int = 0,
        edge_npmle: bool = True,
        edge_guard: float = 0.3,
        edge_taper: float = 0.0,
    ):
        self.n_components = n_components
        self.n_iter = n_iter
        self.max_stars = max_stars
        self.random_state = random_state
        self.edge_npmle = edge_npmle
        self.edge_guard = edge_guard
        self.edge_taper = edge_taper

    def _standard(self, v, ncov):
        z = (v - self.loc_) / self.scale_
        s = ncov / np.outer(self.scale_, self.scale_)[None]
        miss = ~np.isfinite(z)
        k = z.shape[1]
        diag = s[:, range(k), range(k)]
        diag = np.where(miss | ~np.isfinite(diag), _MISSING_VAR, diag)
        s = np.where(np.isfinite(s), s, 0.0)
        s[:, range(k), range(k)] = diag
        return np.where(miss, 0.0, z), s

    def fit(self, value, ncov, s1=None, s2=None) -> Deconvolution:
        """Fit on ``value`` (n, k) with noise covariances ``ncov`` (n, k, k). Returns self.

        ``s1``, ``s2`` (n, k), optional: the split-normal scales of asymmetric errors (below,
        above), used by the one-label populations (``edge_npmle``); without them every
        error is taken as Gaussian with the variance in ``ncov``."""
        from sklearn.mixture import GaussianMixture  # lazy: heavy third-party import

        value = np.asarray(value, dtype=float)
        ncov = np.asarray(ncov, dtype=float)
        k_all = value.shape[1]
        finite = np.isfinite(value) & np.isfinite(ncov[:, range(k_all), range(k_all)])
        # a label the survey (almost) never measures is left out of the fit and embedded below as an
        # independent unit Gaussian: a missing value's huge noise variance then marginalises it exactly
        cols = np.flatnonzero(finite.sum(axis=0) >= _MIN_FIT_STARS)
        sub = np.ix_(cols, cols)
        ok = finite[:, cols].all(axis=1) & np.isfinite(ncov[(slice(None), *sub)]).all(axis=(1, 2))
        if cols.size == 0 or ok.sum() < _MIN_FIT_STARS:
            raise InsufficientDataError(
                f"deconvolution: {int(ok.sum())} stars with every measured label (of labels {cols.tolist()}); "
                f"at least {_MIN_FIT_STARS} are needed"
            )
        rng = np.random.default_rng(self.random_state)
        idx = np.flatnonzero(ok)
        if len(idx) > self.max_stars:
            idx = np.sort(rng.choice(idx, self.max_stars, replace=False))
        v = value[np.ix_(idx, cols)]
        self.loc_ = np.median(v, axis=0)
        self.scale_ = np.maximum(1.4826 * np.median(np.abs(v - self.loc_), axis=0), 1e-12)
        z, s = self._standard(v, ncov[idx][(slice(None), *sub)])
        n, k = z.shape
        kk = max(1, min(self.n_components, n // 50))
        gm = GaussianMixture(kk, covariance_type="full", random_state=self.random_state, reg_covar=1e-4).fit(z)
        w, m, c = gm.weights_, gm.means_, gm.covariances_
        eye = np.eye(k)[None, None]
        for _ in range(self.n_iter):  # EM of extreme deconvolution, vectorised over stars
            # batched matrix products (matmul) rather than many-operand einsums: the same sums
            t = c[None] + s[:, None]  # (n, K, k, k)
            tinv = np.linalg.inv(t)
            d = z[:, None, :] - m[None]
            tinv_d = (tinv @ d[..., None])[..., 0]
            maha = (d * tinv_d).sum(axis=-1)
            logdet = np.linalg.slogdet(t)[1]
            logp = np.log(w)[None] - 0.5 * (maha + logdet)
            r = np.exp(logp - logp.max(axis=1, keepdims=True))
            r /= r.sum(axis=1, keepdims=True)
            gain = c[None] @ tinv  # C_k T^-1
            b = m[None] + (c[None] @ tinv_d[..., None])[..., 0]
            bcov = c[None] - gain @ c[None]
            rs = r.sum(axis=0) + 1e-300
            w = rs / n
            rt = np.ascontiguousarray(r.T)[:, None, :]  # (K, 1, n)
            m = (rt @ b.transpose(1, 0, 2))[:, 0, :] / rs[:, None]
            db = (b - m[None]).transpose(1, 0, 2)  # (K, n, k)
            scat = (db * rt.transpose(0, 2, 1)).transpose(0, 2, 1) @ db
            pcov = (rt @ bcov.reshape(n, kk, k * k).transpose(1, 0, 2)).reshape(kk, k, k)
            c = (scat + pcov) / rs[:, None, None]
            c = c + 1e-6 * eye[0]
        if cols.size < k_all:
            logger.info(
                "extreme deconvolution: labels %s too rarely measured; left out", sorted(set(range(k_all)) - set(cols))
            )
            loc, scale = np.zeros(k_all), np.ones(k_all)
            loc[cols], scale[cols] = self.loc_, self.scale_
            mm, cc = np.zeros((kk, k_all)), np.tile(np.eye(k_all), (kk, 1, 1))
            mm[:, cols] = m
            cc[(slice(None), *sub)] = c
            self.loc_, self.scale_, m, c = loc, scale, mm, cc
        self.weights_, self.means_, self.covariances_ = w, m, c
        logger.debug("extreme deconvolution: %d components on %d stars", kk, n)
        self.median_tables_ = None
        self.edge_split_ = s1 is not None and s2 is not None  # the tables know the errors' asymmetry
        if self.edge_npmle:  # binned: all stars at the cost of a few thousand cells
            sig = np.sqrt(ncov[:, range(k_all), range(k_all)])
            lo = sig if s1 is None else np.where(np.isfinite(s1), s1, sig)
            hi = sig if s2 is None else np.where(np.isfinite(s2), s2, sig)
            good = np.isfinite(value) & np.isfinite(sig) & (sig > 0)
            self.median_tables_ = [  # a label too rarely measured gets no table (no term)
                MedianTable().fit(value[:, j], sig[:, j], lo[:, j], hi[:, j])
                if good[:, j].sum() >= _MIN_FIT_STARS
                else None
                for j in range(k_all)
            ]
        return self

    def _marginal_mean(self, value, ncov) -> np.ndarray:
        """(n, k) posterior mean of each label under the mixture's one-label marginal
        (the other labels ignored), label units."""
        z, s = self._standard(np.asarray(value, dtype=float), ncov)
        k = z.shape[1]
        s2 = s[:, range(k), range(k)]
        m, c = self.means_, self.covariances_[:, range(k), range(k)]  # (K, k)
        t = c[None] + s2[:, None, :]  # (n, K, k)
        lp = np.log(self.weights_)[None, :, None] - 0.5 * ((z[:, None, :] - m[None]) ** 2 / t + np.log(t))
        r = np.exp(lp - lp.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        e = (r * (m[None] + c[None] / t * (z[:, None, :] - m[None]))).sum(axis=1)
        return e * self.scale_ + self.loc_

    def edge_weight(self, value, ncov, shrink=None) -> np.ndarray:
        """(n, k) weight in [0, 1] of the one-label non-parametric population's posterior
        median in :meth:`median_shrinkage`: 1 where the other labels do not inform the
        star's label (the mixture's posterior mean moves by less than ``edge_taper *
        edge_guard`` of the label's noise when they are ignored), 0 where they do (by
        ``edge_guard`` or more), linear in between; 0 where a label is missing or has no
        table. The guard keeps a one-label prior out of labels whose marginal is
        multi-modal where the other labels pick the mode (LOGG: giants and dwarfs told
        apart by TEFF; TEFF at the giants' cool edge). ``shrink``: :meth:`shrinkage` if
        already computed."""
        value = np.asarray(value, dtype=float)
        out = np.zeros(value.shape)
        if getattr(self, "median_tables_", None) is None:
            return out
        k = value.shape[1]
        sig = np.sqrt(np.asarray(ncov, dtype=float)[:, range(k), range(k)])
        full = value + (self.shrinkage(value, ncov) if shrink is None else shrink)
        r = np.abs(full - self._marginal_mean(value, ncov)) / sig
        lo = self.edge_taper * self.edge_guard
        w = np.clip((self.edge_guard - r) / max(self.edge_guard - lo, 1e-12), 0.0, 1.0)
        has = np.array([t is not None for t in self.median_tables_])
        return np.where(np.isfinite(w) & has[None], w, 0.0)

    def edge_median(self, value, ncov, s1, s2) -> np.ndarray:
        """(n, k) ``med[x | v] - v - med(error)`` under each label's one-label non-parametric
        population (:class:`~bayescannon.homogenise.npmle.MedianTable`, with the star's
        split-normal error), NaN where a label is missing or has no table."""
        value = np.asarray(value, dtype=float)
        s1, s2 = np.asarray(s1, dtype=float), np.asarray(s2, dtype=float)
        out = np.full(value.shape, np.nan)
        k = value.shape[1]
        sig = np.sqrt(np.asarray(ncov, dtype=float)[:, range(k), range(k)])
        asym = np.isfinite(s1) & np.isfinite(s2) & ~np.isclose(s1, s2)
        # tables fitted without the split normals (fit(value, ncov)) read a skewed error as a Gaussian:
        # their median would be wrong for it, so such stars keep the mixture's D (NaN: no term)
        known = getattr(self, "edge_split_", False) | ~asym
        nm = np.where(asym, split_normal_median(np.where(asym, s1, 1.0), np.where(asym, s2, 1.0)), 0.0)
        for j, tab in enumerate(self.median_tables_ or ()):  # a few labels
            if tab is not None:
                ok = np.isfinite(value[:, j]) & known[:, j]
                out[ok, j] = tab.median_shift(value[ok, j], sig[ok, j]) - nm[ok, j]
        return out

    def _posterior(self, value, ncov):
        """Standardised labels ``z``, responsibilities ``r`` (n, K), component posterior
        means ``post`` (n, K, k), gains ``A = C T^-1`` and ``g = -T^-1 (z - m)``."""
        z, s = self._standard(np.asarray(value, dtype=float), ncov)
        w, m, c = self.weights_, self.means_, self.covariances_
        t = c[None] + s[:, None]
        tinv = np.linalg.inv(t)
        d = z[:, None, :] - m[None]
        tinv_d = np.einsum("nkij,nkj->nki", tinv, d)
        maha = np.einsum("nki,nki->nk", d, tinv_d)
        logp = np.log(w)[None] - 0.5 * (maha + np.linalg.slogdet(t)[1])
        r = np.exp(logp - logp.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        post = m[None] + np.einsum("kij,nkj->nki", c, tinv_d)
        return z, r, post, tinv, -tinv_d

    def shrinkage(self, value, ncov) -> np.ndarray:
        """``D = E[x | v, S] - v`` (n, k) in label units (NaN where ``v`` is missing)."""
        value = np.asarray(value, dtype=float)
        z, r, post, _, _ = self._posterior(value, ncov)
        e = np.einsum("nk,nki->ni", r, post)
        return np.where(np.isfinite(value), (e - z) * self.scale_, np.nan)

    def shrinkage_and_slope(self, value, ncov):
        """``D`` (n, k) and its Jacobian ``dD_j/dv_i`` (n, k, k), analytic (0 where label
        ``i`` is missing).

        With ``post_k = m_k + C_k T_k^-1 (z - m_k)`` and ``g_k = -T_k^-1 (z - m_k)``, the
        derivative of ``E = sum_k r_k post_k`` is ``sum_k r_k (C_k T_k^-1 + post_k (g_k -
        sum_j r_j g_j)^T)``; ``D = E - z`` in standardised units, scaled back per label. One
        pass over the stars (central differences took seven)."""
        value = np.asarray(value, dtype=float)
        z, r, post, tinv, g = self._posterior(value, ncov)
        n, k = value.shape
        c = self.covariances_
        e = np.einsum("nk,nki->ni", r, post)
        gbar = np.einsum("nk,nki->ni", r, g)
        jac = np.einsum("nk,kij,nkjl->nil", r, c, tinv)
        jac += np.einsum("nk,nki,nkj->nij", r, post, g - gbar[:, None, :])
        jac -= np.eye(k)[None]
        jac *= self.scale_[None, :, None] / self.scale_[None, None, :]
        ok = np.isfinite(value)
        d0 = np.where(ok, (e - z) * self.scale_, np.nan)
        jac = np.where(ok[:, :, None] & ok[:, None, :] & np.isfinite(jac), jac, 0.0)
        return d0, jac

    def median_shrinkage(self, value, ncov, s1, s2) -> np.ndarray:
        """The deconvolution term the offset model needs, (n, k): :meth:`shrinkage` where
        a label's error is symmetric, ``D + skew_shift(...)`` where it is a split normal
        (``s1 != s2``).

        The offset model learns a conditional *median*, ``D`` is the posterior *mean*
        shift. With a skewed error the median of ``x - v - D`` given ``v`` is not one
        constant: under a broad population the posterior is as skewed as the error, where
        the population is narrow (a peak, an edge) the population cuts the error's long
        tail. The trees then have to learn a sharp function of ``v`` on top of the offset,
        and where they smooth it (early stopping, few stars) the calibrated values of
        those stars come out biased (the mock's LAMOST LOGG: +0.02...+0.03 in its giant
        and dwarf bins with every model seed, from the long upper tail of its errors).
        :func:`skew_shift` makes that median constant, the label's local population read
        from the mixture's own shrinkage (``lam = 1 + dD/dv``). At a hard edge of the
        population the posterior is a truncated normal whose median is not its mean at
        all, and whose far tail shrinks more than a Gaussian mixture's: where the other
        labels do not inform a label (:meth:`edge_weight`), ``D`` is blended towards
        :meth:`edge_median`, the posterior median shift under a one-label non-parametric
        population with the star's own split-normal error (which then replaces the
        mixture's mean and :func:`skew_shift` alike).
        """
        value = np.asarray(value, dtype=float)
        s1, s2 = np.asarray(s1, dtype=float), np.asarray(s2, dtype=float)
        asym = np.isfinite(value) & np.isfinite(s1) & np.isfinite(s2) & ~np.isclose(s1, s2)
        if not asym.any():
            d0 = self.shrinkage(value, ncov)
            out = d0.copy()
        else:
            d0, jac = self.shrinkage_and_slope(value, ncov)
            k = value.shape[1]
            lam = 1.0 + jac[:, range(k), range(k)]
            out = d0.copy()
            out[asym] += skew_shift(value[asym], d0[asym], lam[asym], s1[asym], s2[asym])
        if getattr(self, "median_tables_", None) is None:
            return out
        w = self.edge_weight(value, ncov, shrink=d0)
        npm = self.edge_median(value, ncov, s1, s2)
        return np.where((w > 0) & np.isfinite(npm), out + w * (npm - out), out)

    def to_dict(self) -> dict:
        """JSON-ready parameters."""
        return {
            "loc": self.loc_.tolist(),
            "scale": self.scale_.tolist(),
            "weights": self.weights_.tolist(),
            "means": self.means_.tolist(),
            "covariances": self.covariances_.tolist(),
            "median_tables": None
            if getattr(self, "median_tables_", None) is None
            else [None if t is None else t.to_dict() for t in self.median_tables_],
            "edge_split": bool(getattr(self, "edge_split_", False)),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Deconvolution:
        """Rebuild from :meth:`to_dict`."""
        self = cls(len(d["weights"]))
        self.loc_, self.scale_ = np.asarray(d["loc"]), np.asarray(d["scale"])
        self.weights_, self.means_ = np.asarray(d["weights"]), np.asarray(d["means"])
        self.covariances_ = np.asarray(d["covariances"])
        tabs = d.get("median_tables")
        self.median_tables_ = None if tabs is None else [None if t is None else MedianTable.from_dict(t) for t in tabs]
        self.edge_split_ = bool(d.get("edge_split", False))
        return self
