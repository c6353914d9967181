"""The one-standard-error rule of the calibration's cross-validated model choice
(:mod:`bayescannon.core.selection`): the simpler candidate when the gain is within the
noise of the CV score, the more complex one when it is not."""

import numpy as np
import pytest

from bayescannon.core.conditional import fit_bias_model, fit_smooth_width
from bayescannon.core.selection import select_candidate
from bayescannon.errors import InvalidInputError


def _losses(rng, n, gain):
    """Per-star losses of a simple and a complex candidate: the complex one lower by
    ``gain`` exactly on average, with per-star noise of sd ~1 in the difference."""
    base = rng.chisquare(1, n)
    e = rng.standard_normal(n)
    return np.vstack([base, base - gain + e - e.mean()])


def test_select_candidate_takes_the_simpler_model_within_one_standard_error():
    rng = np.random.default_rng(0)
    n = 2000  # standard error of the mean difference 1/sqrt(2000) = 0.022
    small = _losses(rng, n, 0.005)  # gain ~0.2 standard errors: within noise
    large = _losses(rng, n, 0.2)  # gain ~9 standard errors
    keys = [(1, 0.0), (5, 0.0)]
    assert np.argmin(small.mean(axis=1)) == 1  # the best score alone would take the complex model
    assert select_candidate(small, keys, "best") == 1
    assert select_candidate(small, keys, "one-se") == 0
    assert select_candidate(large, keys, "one-se") == 1
    assert select_candidate(large, keys, "one-se-classic") == 1
    # the complexity keys, not the row order, define "simpler"
    assert select_candidate(small[::-1], keys[::-1], "one-se") == 1
    # a stronger ridge is simpler at the same number of terms
    three = np.vstack([small[1], small[0], small[0] + 1.0])
    assert select_candidate(three, [(5, -1e-3), (5, -1e-1), (1, 0.0)], "one-se") == 1


def test_select_candidate_refuses_unknown_rules_and_mismatched_keys():
    with pytest.raises(InvalidInputError, match="selection rule"):
        select_candidate(np.ones((2, 3)), [(0,), (1,)], "aic")
    with pytest.raises(InvalidInputError, match="complexity keys"):
        select_candidate(np.ones((2, 3)), [(0,)], "best")


def test_one_se_bias_model_drops_a_null_correction_and_keeps_a_real_one():
    rng = np.random.default_rng(3)
    n = 1500
    x = rng.standard_normal((n, 2))
    noise = rng.standard_normal((n, 2))
    # label a: no bias at all; label b: a linear bias of 0.3 sd per unit x (t ~ 0.3 sqrt(1500) = 12)
    resid = noise + np.column_stack([np.zeros(n), 0.3 * x[:, 1]])
    kw = dict(degrees=(0, 1, 2), alphas=(1e-3, 1e-1), splines=(False,))  # a small candidate set: fast
    p, _ = fit_bias_model(resid, x, np.ones((n, 2)), ["a", "b"], selection="one-se", **kw)
    assert p["degree"][0] == -1  # no correction: the CV gain of any form is within its noise
    assert p["degree"][1] == 1  # the real (linear) trend is kept, without the quadratic terms
    assert p["alpha"][1] == 1e-1  # and with the stronger of two ridges that fit it equally well


def test_one_se_width_model_stays_flat_on_noise_and_follows_a_real_width_trend():
    rng = np.random.default_rng(4)
    n = 1500
    x = rng.standard_normal((n, 2))
    u = rng.uniform(0.2, 0.9, (n, 2))
    # label a: unit width everywhere; label b: log-width 0.3 x_0 (a factor e^0.6 = 1.8 across +-1 sd)
    z = np.abs(rng.standard_normal((n, 2)) * np.exp(np.column_stack([np.zeros(n), 0.3 * x[:, 0]])))
    p = fit_smooth_width(z, x, u, ["a", "b"], selection="one-se", degrees=(0, 1, 2), alphas=(1e-2,))
    assert p["degree"][0] == 0
    assert p["degree"][1] >= 1
    assert not p["interaction"][1]  # the trend does not change with u: the simpler form is enough
