import numpy as np
import pytest

from bayescannon.core import scaling
from bayescannon.core.likelihood import adjusted_ivar, log_likelihood
from bayescannon.errors import LabelError


def test_scaling_is_median_and_central_95_percent():
    rng = np.random.default_rng(0)
    y = rng.normal([4800, 2.5], [300, 0.7], size=(5000, 2))
    offset, scale = scaling.fit_scaling(y)
    np.testing.assert_allclose(offset, np.median(y, 0))
    np.testing.assert_allclose(scale, np.percentile(y, 97.5, 0) - np.percentile(y, 2.5, 0))
    np.testing.assert_allclose(scaling.unscale(scaling.scale(y, offset, scale), offset, scale), y)


def test_constant_label_is_rejected():
    y = np.column_stack([np.arange(10.0), np.ones(10)])
    with pytest.raises(LabelError, match="B has no spread"):
        scaling.fit_scaling(y, ["A", "B"])


def test_adjusted_ivar_keeps_zero():
    iv = np.array([0.0, 1.0, 100.0])
    np.testing.assert_allclose(adjusted_ivar(iv, 0.01), [0.0, 1 / 1.01, 100 / 2.0])


def test_log_likelihood_numpy_matches_gaussian_and_pytensor():
    from scipy.stats import norm

    rng = np.random.default_rng(1)
    flux = rng.normal(size=(4, 7))
    ivar = rng.uniform(0.5, 2.0, size=(4, 7))
    ivar[0, 3] = 0.0  # no information: contributes nothing
    model = rng.normal(size=(4, 7))
    s2 = rng.uniform(0, 0.3, size=7)
    got = log_likelihood(flux, ivar, model, s2)
    used = ivar > 0
    sd = np.sqrt(1 / np.where(used, ivar, 1) + s2)
    want = norm.logpdf(flux, model, sd)[used].sum()
    np.testing.assert_allclose(got, want, rtol=1e-12)

    pt = pytest.importorskip("pytensor.tensor")
    import pytensor

    args = [pt.matrix(), pt.matrix(), pt.matrix(), pt.vector()]
    f = pytensor.function(args, log_likelihood(*args, xp=pt))
    np.testing.assert_allclose(f(flux, ivar, model, s2), got, rtol=1e-12)
