"""Latent reference labels by NUTS: the labels of the training stars as random variables.

θ is integrated out in closed form (Zellner g-prior), so the sampler faces only the
labels and the scatter; the MAP counterpart lives in :mod:`bayescannon.core.latent`.
"""

from __future__ import annotations

import logging

import numpy as np
import xarray as xr

from bayescannon.core.likelihood import adjusted_ivar, log_weight
from bayescannon.core.uncertainty import check_label_errors
from bayescannon.errors import InvalidInputError, ShapeMismatchError
from bayescannon.spectra import as_label_array

logger = logging.getLogger(__name__)

__all__ = ["sample_latent_labels", "population_prior"]


def population_prior(x_obs, err_s, rows):
    """Prior mean and Cholesky factor of the latent labels of ``rows`` (scaled units).

    The true labels of the reference set are a population, ``ℓ ~ N(μ, Σ)``, observed with
    errors ``E``: ``ℓ_obs ~ N(ℓ, E²)``. Empirical Bayes: ``μ`` the mean of the observed
    labels, ``Σ = cov(ℓ_obs) − mean(E²)`` (eigenvalues floored at 1 % of the observed
    variance). The prior of one star's latent labels given its observation is then
    ``N(m, V)``, ``V = (Σ⁻¹ + E⁻²)⁻¹``, ``m = V (Σ⁻¹ μ + E⁻² ℓ_obs)``.

    Why not ``N(ℓ_obs, E²)`` (a flat population prior): the spectra fix the labels only up
    to an affine map (θ absorbs it), so the label scale comes from the reference labels
    alone, and the observed labels are wider than the true ones by ``E²`` (variance): the
    latent labels were stretched by ``√(1 + E²/var ℓ)`` and their intervals missed the truth
    (68 %/95 % coverage 0.49/0.87 in the slow test, 0.68/0.98 after removing the affine part).

    Returns
    -------
    m : ndarray, shape (len(rows), K)
    chol : ndarray, shape (len(rows), K, K)
    """
    mu = x_obs.mean(axis=0)
    obs_cov = np.atleast_2d(np.cov(x_obs, rowvar=False))
    sigma = obs_cov - np.diag(np.mean(err_s**2, axis=0))
    w, q = np.linalg.eigh(sigma)
    w = np.maximum(w, 0.01 * np.min(np.diag(obs_cov)))
    sigma_inv = (q / w) @ q.T
    prec = sigma_inv[None] + np.einsum("nk,kj->nkj", err_s[rows] ** -2, np.eye(len(mu)))
    v = np.linalg.inv(prec)
    m = np.einsum("nkj,nj->nk", v, (sigma_inv @ mu)[None] + x_obs[rows] * err_s[rows] ** -2)
    return m, np.linalg.cholesky(v)


def _marginal_model(model, flux, ivar, prior_mean, prior_chol, s_scale):
    """PyMC model of latent labels and s with θ integrated out under a g-prior (g = N)."""
    import pymc as pm
    import pytensor.tensor as pt

    n, p = flux.shape
    vec = model.vectorizer
    t = vec.n_terms
    g = float(n)
    coords = {"training_star": np.arange(n), "label_name": list(model.label_names), "pixel": np.arange(p)}
    used = (ivar > 0).astype(float)
    wsum = ivar.sum(axis=0)
    mu = np.where(wsum > 0, (np.where(used > 0, flux, 0.0) * ivar).sum(axis=0) / np.where(wsum > 0, wsum, 1.0), 0.0)
    fz = np.where(ivar > 0, flux - mu[None, :], 0.0)  # centred on the prior mean of θ
    iu, ju = np.triu_indices(t)
    with pm.Model(coords=coords) as pmm:
        z = pm.Normal("z", 0.0, 1.0, dims=("training_star", "label_name"))
        x = pt.as_tensor(prior_mean) + (pt.as_tensor(prior_chol) * z[:, None, :]).sum(axis=-1)
        s = pm.HalfNormal("s", sigma=s_scale, dims="pixel")
        w = adjusted_ivar(pt.as_tensor(ivar), (s**2)[None, :])
        v = vec(x, xp=pt)  # (N, T)
        vv = v[:, iu] * v[:, ju]  # (N, T(T+1)/2)
        packed = w.T @ vv  # (P, T(T+1)/2)
        G = pt.zeros((p, t, t))
        G = pt.set_subtensor(G[:, iu, ju], packed)
        G = pt.set_subtensor(G[:, ju, iu], packed)
        wf = w * pt.as_tensor(fz)
        bvec = wf.T @ v  # (P, T)
        L = pt.linalg.cholesky(G)
        y = pt.linalg.solve_triangular(L, bvec[..., None], lower=True)[..., 0]
        logw = log_weight(w, pt.as_tensor(used), xp=pt)
        ll = (
            -0.5 * ((wf * pt.as_tensor(fz)).sum(axis=0) - (g / (1.0 + g)) * (y**2).sum(axis=-1))
            - 0.5 * t * np.log1p(g)
            + 0.5 * (used * logw).sum(axis=0)
        )
        pm.Potential("marginal_likelihood", ll.sum())
        pm.Deterministic(
            "labels",
            x * pt.as_tensor(model.label_scale_) + pt.as_tensor(model.label_offset_),
            dims=("training_star", "label_name"),
        )
    return pmm


def sample_latent_labels(
    model,
    flux,
    ivar,
    labels,
    label_errors,
    *,
    stars=None,
    pixels=None,
    draws: int = 1000,
    tune: int = 1000,
    chains: int = 4,
    seed: int = 0,
    adaptation: str = "low_rank",
    label_prior: str = "population",
) -> xr.DataTree:
    """NUTS for the latent labels and per-pixel scatter of a subset, θ marginalised.

    Parameters
    ----------
    model : CannonModel
        A fitted model (for the label scaling, vectorizer and a scale for the s prior).
    flux, ivar : ndarray, shape (N, P)
        Training spectra.
    labels, label_errors : ndarray, shape (N, K)
        Observed labels and their 1σ errors (physical units).
    stars, pixels : array_like of int, optional
        Subset of rows and columns (default all; keep it to ~100 × 50).
    draws, tune, chains, seed
        Sampler settings (nutpie).
    adaptation : str
        nutpie mass-matrix adaptation. ``"low_rank"`` (default) learns the few collective
        directions (the affine modes of the labels, fixed only by the reference labels,
        are ~1/(e·√curvature) wider than a single star's direction) that a diagonal mass
        matrix cannot; ``"diag"`` is nutpie's default.
    label_prior : {"population", "flat"}
        ``"population"`` (default): the true labels are a Gaussian population whose mean and
        covariance are estimated from the observed labels of all N stars
        (:func:`population_prior`); ``"flat"``: ``ℓ ~ N(ℓ_obs, E²)`` alone, whose intervals
        are too narrow for the truth (the label scale is the observed labels', too wide).
        With a Gaussian population of true labels the population prior's intervals cover
        nominally; a platykurtic one (e.g. uniform) gives wider, conservative intervals. The
        coverage of one set's labels is not binomial: the affine map that the spectra leave
        free is shared by all stars (docs/guides/bayes.md, §4).

    Returns
    -------
    xarray.DataTree
        ``posterior`` with ``labels`` (chain, draw, training_star, label_name) and
        ``s`` (chain, draw, pixel); ``diagnostics`` with R-hat and ESS per variable.
    """
    import arviz as az
    import nutpie

    model._check_fitted()
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.shape != ivar.shape:
        raise ShapeMismatchError(f"flux has shape {flux.shape} but ivar has shape {ivar.shape}")
    n = flux.shape[0]
    y = as_label_array(labels, model.label_names, n)
    err = check_label_errors(label_errors, n, model.label_names)
    rows = np.arange(n) if stars is None else np.asarray(stars)
    cols = np.arange(flux.shape[1]) if pixels is None else np.asarray(pixels)
    f, iv = flux[np.ix_(rows, cols)], ivar[np.ix_(rows, cols)]
    if label_prior not in ("population", "flat"):
        raise InvalidInputError(f"label_prior must be 'population' or 'flat'; got {label_prior!r}")
    x_all = (y - model.label_offset_) / model.label_scale_
    e_all = err / model.label_scale_
    if label_prior == "population":
        prior_mean, prior_chol = population_prior(x_all, e_all, rows)
    else:
        prior_mean, prior_chol = x_all[rows], np.einsum("nk,kj->nkj", e_all[rows], np.eye(len(model.label_names)))
    noise = np.sqrt(np.median(1.0 / iv[iv > 0])) if (iv > 0).any() else 0.01
    s_scale = float(max(5.0 * noise, 3.0 * np.sqrt(np.max(model.s2_[cols])), 1e-4))
    pmm = _marginal_model(model, f, iv, prior_mean, prior_chol, s_scale)
    cm = nutpie.compile_pymc_model(pmm, var_names=["labels", "s"])
    trace = nutpie.sample(
        cm,
        draws=draws,
        tune=tune,
        chains=chains,
        cores=min(chains, 2),
        seed=seed,
        progress_bar=False,
        save_warmup=False,
        adaptation=adaptation,
    )
    post = trace["posterior"].to_dataset()[["labels", "s"]]
    post = post.assign_coords(training_star=rows, pixel=cols)
    stats = trace["sample_stats"].to_dataset()[["diverging"]]
    tree = xr.DataTree.from_dict({"posterior": post, "sample_stats": stats})
    rh = az.rhat(tree)
    es = az.ess(tree, method="bulk")
    rh = rh["posterior"] if "posterior" in rh.children else rh
    es = es["posterior"] if "posterior" in es.children else es
    diag = xr.Dataset(
        {
            "r_hat_labels": rh.to_dataset()["labels"],
            "r_hat_s": rh.to_dataset()["s"],
            "ess_bulk_labels": es.to_dataset()["labels"],
            "ess_bulk_s": es.to_dataset()["s"],
            "n_divergent": int(np.asarray(stats["diverging"].values).sum()),
        }
    )
    tree["diagnostics"] = xr.DataTree(diag)
    tree.attrs = {
        "model": "latent labels + per-pixel scatter, theta integrated out (g-prior, g = N)",
        "label_prior": label_prior,
    }
    return tree
