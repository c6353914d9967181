import numpy as np
import pytest

from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import InvalidInputError, LabelError


def test_exact_quadratic_vector():
    vec = PolynomialVectorizer(["a", "b", "c"], 2)
    np.testing.assert_array_equal(vec([1.0, 2.0, 3.0]), [1, 1, 2, 3, 1, 2, 3, 4, 6, 9])
    assert vec.term_names == ["1", "a", "b", "c", "a^2", "a*b", "a*c", "b^2", "b*c", "c^2"]


def test_cubic_terms_and_names():
    vec = PolynomialVectorizer(["TEFF", "LOGG"], 3)
    assert vec.n_terms == 10
    assert vec.term_names[-4:] == ["TEFF^3", "TEFF^2*LOGG", "TEFF*LOGG^2", "LOGG^3"]
    np.testing.assert_allclose(vec([2.0, 3.0]), [1, 2, 3, 4, 6, 9, 8, 12, 18, 27])


@pytest.mark.parametrize("order", [1, 2, 3])
def test_jacobian_matches_finite_differences(order):
    rng = np.random.default_rng(order)
    vec = PolynomialVectorizer(list("wxyz"), order)
    x = rng.normal(size=(6, 2, 4))  # arbitrary leading batch axes
    jac = vec.jacobian(x)
    assert jac.shape == (6, 2, vec.n_terms, 4)
    eps = 1e-6
    num = np.stack([(vec(x + eps * np.eye(4)[k]) - vec(x - eps * np.eye(4)[k])) / (2 * eps) for k in range(4)], -1)
    # central differences of a polynomial of degree ≤ 3: error O(eps²·|x|) plus rounding
    np.testing.assert_allclose(jac, num, atol=1e-7)


def test_numpy_and_pytensor_agree():
    pt = pytest.importorskip("pytensor.tensor")
    import pytensor

    vec = PolynomialVectorizer(["a", "b", "c"], 2)
    x = np.random.default_rng(0).normal(size=(5, 3))
    sym = pt.matrix("x")
    f = pytensor.function([sym], vec(sym, xp=pt))
    np.testing.assert_allclose(f(x), vec(x), rtol=1e-12)


def test_bad_vectorizer_inputs():
    with pytest.raises(LabelError, match="duplicated"):
        PolynomialVectorizer(["a", "a"])
    with pytest.raises(LabelError):
        PolynomialVectorizer([])
    with pytest.raises(InvalidInputError):
        PolynomialVectorizer(["a"], order=0)
    with pytest.raises(LabelError, match="3 labels"):
        PolynomialVectorizer(["a", "b", "c"])(np.zeros((2, 4)))
