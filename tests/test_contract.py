"""scikit-learn estimator contract of CannonModel: get_params / set_params / clone."""

import inspect

import numpy as np
import pytest
from conftest import LABELS

from bayescannon import CannonModel
from bayescannon.errors import InvalidInputError

SETTINGS = {
    "order": 2,
    "regularization": 0.5,
    "censors": {"FE_H": [(5000.0, 5010.0)]},
    "n_starts": 3,
    "n_candidates": 32,
    "bounds_margin": 0.25,
    "extrapolation_tolerance": 0.2,
    "max_reduced_chi2": 3.0,
    "random_state": 7,
}


def test_get_params_lists_every_constructor_argument():
    m = CannonModel(LABELS, **SETTINGS)
    params = m.get_params()
    names = [p for p in inspect.signature(CannonModel.__init__).parameters if p != "self"]
    assert sorted(params) == sorted(names)
    assert params == {"label_names": LABELS, **SETTINGS}
    assert m.get_params(deep=False) == params


def test_set_params_returns_self_and_rejects_unknown_names():
    m = CannonModel(LABELS)
    assert m.set_params(regularization=2.0, n_starts=8) is m
    assert (m.regularization, m.n_starts) == (2.0, 8)
    with pytest.raises(InvalidInputError, match="regularisation"):
        m.set_params(regularisation=1.0)
    assert m.regularization == 2.0


def test_clone_is_unfitted_with_equal_but_independent_settings(trained):
    _, model = trained
    c = model.clone()
    assert type(c) is CannonModel and c is not model and not c.is_fitted
    assert c.get_params() == model.get_params()
    c.label_names.append("X")
    assert model.label_names == LABELS
    m = CannonModel(LABELS, **SETTINGS)
    c = m.clone()
    c.censors["FE_H"].append((5020.0, 5030.0))
    assert m.censors["FE_H"] == [(5000.0, 5010.0)]


def test_sklearn_clone_accepts_the_model():
    base = pytest.importorskip("sklearn.base")
    m = CannonModel(LABELS, **SETTINGS)
    c = base.clone(m)
    assert c is not m and c.get_params() == m.get_params()


def test_misspelt_latent_option_raises_type_error(trained):
    tr, _ = trained
    y = tr.labels(60)
    flux, ivar = tr.spectra(y, np.median(y, 0), np.ptp(y, 0))
    with pytest.raises(TypeError, match="spectral_informaton"):
        CannonModel(LABELS).fit(flux, ivar, y, label_errors=np.ones_like(y), spectral_informaton="formal")
    sig = inspect.signature(CannonModel.fit).parameters
    assert {"max_iter", "tol", "lm_iter", "anderson", "spectral_information", "trend_order"} <= set(sig)
    assert not any(p.kind is p.VAR_KEYWORD for p in sig.values())
