"""Errors-in-variables training: exact label term, better θ than ignoring label noise,
typed errors, and (slow) NUTS with θ marginalised that mixes."""

import numpy as np
import pytest

from bayescannon import CannonModel
from bayescannon.errors import LabelError, ShapeMismatchError
from bayescannon.errorsinvariables import affine_alignment, label_prior_statistics
from bayescannon.likelihood import adjusted_ivar
from bayescannon.vectorizer import PolynomialVectorizer

NAMES = ["A", "B", "C"]


def _data(rng, n=1500, p=120, label_noise=0.15, noise=0.005):
    vec = PolynomialVectorizer(NAMES, 2)
    theta = rng.normal(scale=0.05, size=(p, vec.n_terms))
    theta[:, 0] = 1.0
    x = rng.uniform(-0.5, 0.5, (n, 3))
    flux = vec(x) @ theta.T + noise * rng.standard_normal((n, p))
    err = np.full((n, 3), label_noise)
    obs = x + err * rng.standard_normal((n, 3))
    return vec, theta, x, flux, np.full(flux.shape, noise**-2), obs, err


def test_label_term_is_an_exact_quadratic_form_in_v():
    rng = np.random.default_rng(0)
    vec = PolynomialVectorizer(NAMES, 2)
    o, prec, x = rng.normal(size=(5, 3)), rng.uniform(1, 10, (5, 3)), rng.normal(size=(5, 3))
    A, b, c = label_prior_statistics(vec, o, prec)
    v = vec(x)
    quad = np.einsum("nt,ntu,nu->n", v, A, v) - 2 * np.einsum("nt,nt->n", b, v) + c
    np.testing.assert_allclose(quad, np.sum(prec * (x - o) ** 2, axis=1), rtol=1e-12)


def test_latent_labels_recover_theta_better_than_ignoring_label_errors():
    rng = np.random.default_rng(1)
    vec, theta, x, flux, ivar, obs, err = _data(rng)
    naive = CannonModel(NAMES).fit(flux, ivar, obs)
    eiv = CannonModel(NAMES).fit(flux, ivar, obs, label_errors=err)
    assert int(eiv.extra_state_["extra_latent_converged"][1]) == 1
    test = rng.uniform(-0.45, 0.45, (400, 3))
    truth = vec(test) @ theta.T
    rms_naive = np.sqrt(np.mean((naive.predict(test) - truth) ** 2))
    rms_eiv = np.sqrt(np.mean((eiv.predict(test) - truth) ** 2))
    # label noise of 0.15 (30% of the range) attenuates the naive θ strongly
    assert rms_eiv < 0.7 * rms_naive, (rms_eiv, rms_naive)
    latent = eiv.extra_state_["extra_latent_labels_scaled"][1] * eiv.label_scale_ + eiv.label_offset_
    # the latent labels are much closer to the truth than the observed ones
    assert np.sqrt(np.mean((latent - x) ** 2)) < 0.5 * np.sqrt(np.mean((obs - x) ** 2))
    # label noise inflates the apparent scatter s²; the latent fit removes most of it
    assert np.median(eiv.s2_) < 0.5 * np.median(naive.s2_)


def test_affine_alignment_is_the_weighted_least_squares_optimum():
    rng = np.random.default_rng(5)
    obs = rng.normal(size=(300, 3))
    prec = rng.uniform(0.5, 4.0, (300, 3))
    m, c = rng.normal(size=(3, 3)) + 3 * np.eye(3), rng.normal(size=3)
    # an exact affine image of the observed labels is mapped back onto them
    np.testing.assert_allclose(affine_alignment(obs @ m.T + c, obs, prec), obs, atol=1e-10)
    # in general the result is the weighted projection: residuals orthogonal to [x, 1]
    x = obs + 0.3 * rng.normal(size=obs.shape)
    y = affine_alignment(x, obs, prec)
    x1 = np.column_stack([x, np.ones(len(x))])
    np.testing.assert_allclose(x1.T @ (prec * (y - obs)), 0.0, atol=1e-9)


def test_latent_label_map_is_a_stationary_point_of_the_joint_posterior():
    # at the returned θ, s², each star's latent labels must maximise
    # ln L(spectrum | ℓ) − ½ Σ (ℓ − ℓ_obs)²/e²: a Newton step from them must be ≪ tol
    rng = np.random.default_rng(6)
    vec, theta, x, flux, ivar, obs, err = _data(rng, n=800, p=80, label_noise=0.1)
    model = CannonModel(NAMES).fit(flux, ivar, obs, label_errors=err, tol=1e-3)
    assert int(model.extra_state_["extra_latent_converged"][1]) == 1
    xs = model.extra_state_["extra_latent_labels_scaled"][1]
    o = (obs - model.label_offset_) / model.label_scale_
    prec = (model.label_scale_ / err) ** 2
    w = adjusted_ivar(ivar, model.s2_[None, :])
    v = vec(xs)
    J = vec.jacobian(xs, v)  # (N, T, K)
    r = flux - v @ model.theta_.T  # (N, P)
    dm = np.einsum("pt,ntk->npk", model.theta_, J)  # d model / d label
    grad = np.einsum("np,np,npk->nk", w, r, dm) - prec * (xs - o)
    hess = np.einsum("np,npk,npj->nkj", w, dm, dm) + prec[:, :, None] * np.eye(3)
    newton = np.linalg.solve(hess, grad[..., None])[..., 0]
    step_in_errors = np.abs(newton) * np.sqrt(prec)
    assert np.max(step_in_errors) < 0.01, np.max(step_in_errors)


@pytest.mark.parametrize("bad, exc", [(0.0, LabelError), (-0.1, LabelError), (None, ShapeMismatchError)])
def test_bad_label_errors_in_fit(bad, exc):
    rng = np.random.default_rng(2)
    vec, theta, x, flux, ivar, obs, err = _data(rng, n=60, p=20)
    err = err.copy()
    if bad is None:
        err = err[:, :2]
    else:
        err[7, 1] = bad
    with pytest.raises(exc):
        CannonModel(NAMES).fit(flux, ivar, obs, label_errors=err)


@pytest.mark.slow
def test_nuts_with_theta_marginalised_mixes():
    from bayescannon.errorsinvariables import sample_latent_labels

    rng = np.random.default_rng(3)
    vec, theta, x, flux, ivar, obs, err = _data(rng, n=100, p=50, label_noise=0.1)
    model = CannonModel(NAMES).fit(flux, ivar, obs, label_errors=err)
    tree = sample_latent_labels(model, flux, ivar, obs, err, draws=1000, tune=1000, chains=4)
    diag = tree["diagnostics"].to_dataset()
    assert float(diag["r_hat_labels"].max()) < 1.01 and float(diag["r_hat_s"].max()) < 1.01
    assert int(diag["n_divergent"]) == 0
    mean = tree["posterior"]["labels"].mean(("chain", "draw")).values
    assert np.sqrt(np.mean((mean - x) ** 2)) < np.sqrt(np.mean((obs - x) ** 2))
