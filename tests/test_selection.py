"""Model complexity chosen by cross-validation (issue 12): bayescannon.validate.select_model
and ``bayescannon train --order cv``."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from astropy.table import Table

from bayescannon import CannonModel
from bayescannon.cli import main
from bayescannon.core.vectorizer import PolynomialVectorizer
from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.simulate.quadratic import mock_quadratic_survey
from bayescannon.validate import select_model

LABELS = ["TEFF", "LOGG", "FE_H"]


def cubic_survey(n_stars, n_pixels=100, snr=100.0, rng=0):
    """Spectra exactly cubic in scaled labels x ~ U(-1, 1) (+ noise 1/snr, scatter 0.002);
    returns (flux, ivar, labels)."""
    gen = np.random.default_rng(rng)
    vec = PolynomialVectorizer(LABELS, 3)
    x = gen.uniform(-1.0, 1.0, size=(n_stars, len(LABELS)))
    degree = vec.exponents.sum(axis=1)
    theta = gen.normal(0.0, 0.04, size=(n_pixels, vec.n_terms))
    theta[:, 0] = 1.0 - gen.uniform(0.0, 0.3, size=n_pixels)
    theta[:, degree == 3] = gen.normal(0.0, 0.04, size=(n_pixels, int((degree == 3).sum())))
    flux = vec(x) @ theta.T + gen.normal(0.0, 0.002, size=(n_stars, n_pixels))
    flux += gen.normal(size=flux.shape) / snr
    labels = np.column_stack([5000 + 500 * x[:, 0], 2.5 + x[:, 1], -0.3 + 0.5 * x[:, 2]])
    return flux, np.full_like(flux, snr**2), labels


@pytest.fixture(scope="module")
def cubic_selection():
    flux, ivar, labels = cubic_survey(400)
    return select_model(CannonModel(LABELS), flux, ivar, labels, regularizations=(0.0,), n_folds=4)


def quadratic_data():
    return mock_quadratic_survey(300, 60, LABELS, snr=(50.0, 200.0), rng=1)


@pytest.fixture(scope="module")
def quadratic_selection():
    # two L1 strengths: the grid and the tie-break (larger Λ is simpler) are exercised
    return select_model(CannonModel(LABELS), quadratic_data(), regularizations=(0.0, 10.0), n_folds=4)


def test_cubic_truth_selects_order_3(cubic_selection):
    sel = cubic_selection
    t = sel.table
    assert sel.order == 3 and sel.model.order == 3 and sel.model.is_fitted
    assert sel.model.n_training_stars_ == 400
    i2, i3 = (int(np.flatnonzero(t["order"].values == o)[0]) for o in (2, 3))
    # the quadratic model is worse by more than the noise of the comparison (many SE)
    assert t["delta"].values[i2] > 5 * t["delta_se"].values[i2]
    assert t["delta"].values[i3] == 0.0
    # per label: the cubic model's CV error is smaller for every label
    assert np.all(t["rms"].values[i3] < t["rms"].values[i2])
    assert bool(t["selected"].values[i3]) and t["selected"].values.sum() == 1


def test_quadratic_truth_selects_order_2(quadratic_selection):
    sel = quadratic_selection
    t = sel.table
    assert sel.order == 2
    assert set(t["order"].values.tolist()) == {2, 3}
    assert t.sizes["candidate"] == 4 and list(t["label_name"].values) == LABELS
    # every candidate within the noise of the best, or worse: the chosen one is not
    # significantly worse than the best (the one-standard-error rule)
    chosen = int(np.flatnonzero(t["selected"].values)[0])
    assert t["delta"].values[chosen] <= t["delta_se"].values[chosen]
    # the table's score is the RMS of the per-label scaled RMS
    rs = t["rms_scaled"].values
    np.testing.assert_allclose(t["score"].values, np.sqrt(np.mean(rs**2, axis=1)), rtol=1e-12)
    # rms is in physical units: it matches the CV predictions
    cv = sel.cross_validations[(2, 0.0)]
    np.testing.assert_allclose(
        t["rms"].values[t["order"].values.tolist().index(2)], np.sqrt(np.nanmean(cv.differences**2, axis=0))
    )
    assert t["rms"].attrs["units"] == "K, dex, dex"


def test_selection_is_deterministic_and_refit_matches_plain_fit():
    ds = mock_quadratic_survey(120, 20, LABELS, rng=6)
    first, again = (
        select_model(CannonModel(LABELS), ds, regularizations=(0.0,), n_folds=3, random_state=np.random.default_rng(7))
        for _ in range(2)
    )
    np.testing.assert_array_equal(again.table["score"].values, first.table["score"].values)
    np.testing.assert_array_equal(again.table["rms"].values, first.table["rms"].values)
    plain = CannonModel(LABELS, again.order, regularization=again.regularization).fit(ds)
    np.testing.assert_array_equal(again.model.theta_, plain.theta_)


def test_orders_with_too_many_terms_are_skipped_with_a_reason(caplog):
    ds = mock_quadratic_survey(90, 30, LABELS, rng=2)
    # 4 folds: 67 training stars; /5 → 13.4 terms: order 2 (10 terms) runs, order 3 (20) is skipped
    with caplog.at_level(logging.WARNING, logger="bayescannon.validate.selection"):
        sel = select_model(CannonModel(LABELS), ds, regularizations=(0.0,), n_folds=4)
    t = sel.table
    assert sel.order == 2
    status = dict(zip(t["order"].values.tolist(), t["status"].values.tolist(), strict=True))
    assert status[2] == "ok" and status[3].startswith("skipped: 20 terms > 13.4")
    assert np.isnan(t["score"].values[1]) and "order 3 not cross-validated" in caplog.text
    with pytest.raises(InsufficientDataError, match="no order in 3..3"):
        select_model(CannonModel(LABELS), ds, min_order=3, max_order=3, regularizations=(0.0,), n_folds=4)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"min_order": 3, "max_order": 2}, "min_order <= max_order"),
        ({"regularizations": (0.0, -1.0)}, "regularizations"),
        ({"regularizations": ()}, "regularizations"),
        ({"n_se": -1.0}, "n_se"),
        ({"min_stars_per_term": 0}, "min_stars_per_term"),
    ],
)
def test_bad_arguments_are_refused(kw, match):
    ds = mock_quadratic_survey(40, 10, LABELS, rng=3)
    with pytest.raises(InvalidInputError, match=match):
        select_model(CannonModel(LABELS), ds, **kw)


def test_censoring_is_kept_in_every_candidate():
    ds = mock_quadratic_survey(120, 30, LABELS, rng=4)
    wl = ds["wavelength"].values
    window = [(wl[0] - 1, wl[9] + 1)]  # FE_H may act on the first 10 pixels only
    sel = select_model(CannonModel(LABELS, censors={"FE_H": window}), ds, regularizations=(0.0,), n_folds=4)
    m = sel.model
    fe_terms = m.vectorizer.exponents[:, 2] > 0
    assert np.all(m.theta_[10:, fe_terms] == 0.0) and np.any(m.theta_[:10, fe_terms] != 0.0)
    assert m.censors == {"FE_H": window}


def test_table_as_astropy(quadratic_selection):
    t = quadratic_selection.to_table()
    assert isinstance(t, Table) and len(t) == 4
    assert {"ORDER", "REGULARIZATION", "SCORE", "SELECTED", "RMS_TEFF", "BIAS_FE_H"} <= set(t.colnames)
    assert str(t["RMS_TEFF"].unit) == "K" and int(t["SELECTED"].sum()) == 1


def test_cli_train_order_cv(tmp_path, capsys):
    ds = mock_quadratic_survey(150, 20, LABELS, rng=5)
    spectra = tmp_path / "spectra.nc"
    ds.drop_vars(["true_theta", "true_s2"]).to_netcdf(spectra)
    out = tmp_path / "model.nc"
    rc = main(
        ["train", str(spectra), "--labels", *LABELS, "-o", str(out), "--order", "cv", "--order-max", "3",
         "--regularization-grid", "0", "--cv-folds", "3", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    model = CannonModel.load(out)
    table = Table.read(tmp_path / "model.cv.ecsv")
    assert len(table) == 2 and int(table["SELECTED"].sum()) == 1
    row = table[np.asarray(table["SELECTED"])][0]
    assert model.order == int(row["ORDER"]) and float(model.regularization) == float(row["REGULARIZATION"])
    printed = capsys.readouterr().out
    assert "chosen by cross-validation" in printed and "model.cv.ecsv" in printed  # human-readable by default
    assert not printed.lstrip().startswith("{")


def test_cli_order_must_be_an_integer_or_cv(tmp_path):
    with pytest.raises(SystemExit):
        main(["train", str(tmp_path / "x.nc"), "--labels", "A", "-o", str(tmp_path / "m.nc"), "--order", "two"])


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--order-max", "3"], r"--order-max only apply with --order cv \(--order is 2\)"),
        (["--order", "3", "--cv-folds", "4", "--regularization-grid", "0", "10"], "--regularization-grid, --cv-folds"),
        (["--order", "cv", "--regularization", "50"], "chosen by cross-validation"),
    ],
)
def test_cli_cv_options_are_never_ignored_silently(tmp_path, capsys, extra, match):
    """`train --order-max 3` without `--order cv` trained an order-2 model and said nothing; `--order cv
    --regularization 50` dropped the 50. Both are refused before any file is read or written."""
    out = tmp_path / "m.nc"
    rc = main(["train", str(tmp_path / "absent.nc"), "--labels", *LABELS, "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 1 and re.search(match, err), err
    assert not out.exists()
