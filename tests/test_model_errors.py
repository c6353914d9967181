"""Bad input at the API boundary: typed errors naming the star, pixel or label."""

import numpy as np
import pytest
import xarray as xr
from conftest import LABELS, Truth

from bayescannon import CannonModel
from bayescannon.errors import (
    GridMismatchError,
    InsufficientDataError,
    LabelError,
    NegativeIvarError,
    NonFiniteError,
    NotFittedError,
    ShapeMismatchError,
)
from bayescannon.flags import PixelFlag


@pytest.fixture
def data():
    tr = Truth(n_pixels=40, seed=2)
    y = tr.labels(80)
    flux, ivar = tr.spectra(y, np.median(y, 0), np.ptp(y, 0))
    return flux, ivar, y


def test_shape_mismatch(data):
    flux, ivar, y = data
    with pytest.raises(ShapeMismatchError, match=r"flux has shape \(80, 40\) but ivar has shape \(80, 39\)"):
        CannonModel(LABELS).fit(flux, ivar[:, :-1], y)
    with pytest.raises(ShapeMismatchError, match="labels have 79 rows"):
        CannonModel(LABELS).fit(flux, ivar, y[:-1])
    with pytest.raises(ShapeMismatchError, match="2 columns"):
        CannonModel(LABELS).fit(flux, ivar, y[:, :2])


def test_nan_flux_where_ivar_positive_names_star_and_pixel(data):
    flux, ivar, y = data
    flux = flux.copy()
    flux[7, 12] = np.nan
    with pytest.raises(NonFiniteError, match=r"star 7 \(id s7\), pixel 12"):
        CannonModel(LABELS).fit(flux, ivar, y, ids=[f"s{i}" for i in range(80)])
    ivar = ivar.copy()
    ivar[7, 12] = 0.0  # masked: fine
    CannonModel(LABELS).fit(flux, ivar, y)


def test_negative_and_infinite_ivar(data):
    flux, ivar, y = data
    bad = ivar.copy()
    bad[3, 4] = -1.0
    with pytest.raises(NegativeIvarError, match="star 3, pixel 4"):
        CannonModel(LABELS).fit(flux, bad, y)
    bad[3, 4] = np.inf
    with pytest.raises(NonFiniteError, match="ivar is not finite at star 3, pixel 4"):
        CannonModel(LABELS).fit(flux, bad, y)


def test_bad_labels(data):
    flux, ivar, y = data
    y = y.copy()
    y[5, 1] = np.nan
    with pytest.raises(LabelError, match="label LOGG of star 5"):
        CannonModel(LABELS).fit(flux, ivar, y)
    with pytest.raises(LabelError, match=r"no column\(s\) \['FE_H'\]"):
        CannonModel(LABELS).fit(flux, ivar, {"TEFF": y[:, 0], "LOGG": y[:, 1]})


def test_too_few_training_stars(data):
    flux, ivar, y = data
    with pytest.raises(InsufficientDataError, match="5 training stars are too few.*10 terms"):
        CannonModel(LABELS).fit(flux[:5], ivar[:5], y[:5])


def test_star_without_any_pixel_in_training(data):
    flux, ivar, y = data
    ivar = ivar.copy()
    ivar[9] = 0
    with pytest.raises(InsufficientDataError, match="star 9 has no pixel"):
        CannonModel(LABELS).fit(flux, ivar, y)


def test_not_fitted():
    with pytest.raises(NotFittedError):
        CannonModel(LABELS).infer(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(NotFittedError):
        CannonModel(LABELS).predict([1, 2, 3])


def test_grid_mismatch_and_wrong_pixel_count(data):
    flux, ivar, y = data
    wl = np.linspace(15000, 15100, 40)
    m = CannonModel(LABELS).fit(flux, ivar, y, wavelength=wl)
    with pytest.raises(GridMismatchError, match="30 pixels but the model was trained on 40"):
        m.infer(flux[:, :30], ivar[:, :30])
    with pytest.raises(GridMismatchError, match="pixel 0 is at"):
        m.infer(flux, ivar, wavelength=wl + 1.0)
    m.infer(flux[:2], ivar[:2], wavelength=wl)  # same grid: fine


def test_infer_validates_flux_and_ivar(data):
    flux, ivar, y = data
    m = CannonModel(LABELS).fit(flux, ivar, y)
    f = flux.copy()
    f[2, 3] = np.inf
    with pytest.raises(NonFiniteError, match=r"star 2 \(id star000002\), pixel 3"):
        m.infer(f, ivar)
    iv = ivar.copy()
    iv[1, 0] = -2
    with pytest.raises(NegativeIvarError, match="star 1"):
        m.infer(flux, iv)
    with pytest.raises(ShapeMismatchError):
        m.infer(flux, ivar[:, :-1])


def test_label_names_must_match_a_dataset(data):
    flux, ivar, y = data
    ds = xr.Dataset(
        {"flux": (("star", "pixel"), flux), "ivar": (("star", "pixel"), ivar), "TEFF": ("star", y[:, 0])},
        coords={"star": [f"s{i}" for i in range(80)], "wavelength": ("pixel", np.arange(40.0) + 5000)},
    )
    with pytest.raises(LabelError, match="LOGG"):
        CannonModel(LABELS).fit(ds)
    for k, name in enumerate(LABELS):
        ds[name] = ("star", y[:, k])
    m = CannonModel(LABELS).fit(ds)
    res = m.infer(ds)
    assert list(res["star"].values[:2]) == ["s0", "s1"]


def test_censor_for_unknown_label(data):
    flux, ivar, y = data
    with pytest.raises(LabelError, match="unknown label 'MG_FE'"):
        CannonModel(LABELS, censors={"MG_FE": np.ones(40, bool)}).fit(flux, ivar, y)


def test_collinear_labels_are_a_label_error_naming_them(data):
    # issue 11: collinear labels gave a "fitted" model with every pixel flagged SINGULAR
    flux, ivar, y = data
    linear = y.copy()
    linear[:, 2] = 2.0 * y[:, 1] + 3.0  # FE_H an exact linear function of LOGG
    with pytest.raises(LabelError, match=r"\['LOGG', 'FE_H'\] are linearly dependent"):
        CannonModel(LABELS).fit(flux, ivar, linear)
    square = y.copy()
    square[:, 0] = 5000.0 + 100.0 * (y[:, 2] - 0.1) ** 2  # TEFF a quadratic of FE_H: a model term
    with pytest.raises(LabelError, match=r"\['TEFF', 'FE_H'\] are polynomially dependent"):
        CannonModel(LABELS).fit(flux, ivar, square)
    # a linear model (order 1) can hold a label and the square of another
    model = CannonModel(LABELS, order=1).fit(flux, ivar, square)
    assert not model.pixel_flags_.any()
    constant = y.copy()
    constant[:, 1] = 2.5
    with pytest.raises(LabelError, match="LOGG has no spread"):
        CannonModel(LABELS).fit(flux, ivar, constant)


def test_one_absurd_ivar_flags_its_pixel_and_trains_the_rest(data):
    # issue 11: ivar >= 1e16 at one star and pixel crashed training (matmul size mismatch)
    flux, ivar, y = data
    ivar = ivar.copy()
    ivar[7, 5] = 1e30
    model = CannonModel(LABELS).fit(flux, ivar, y)
    assert model.pixel_flags_[5] & PixelFlag.SINGULAR
    assert not np.delete(model.pixel_flags_, 5).any()
    res = model.infer(flux[:3], ivar[:3])
    assert np.all(res["n_pixels"].values == 39)  # the neutral pixel is left out of the test step
