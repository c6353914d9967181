"""The Ho+2017 recipes of the ``ho2017`` transfer preset: pre-selection of the stars to
label on the target survey's own pipeline labels, and the bootstrap of 20 models, each
cross-validated."""

from __future__ import annotations

import numpy as np
import pytest

from bayescannon.errors import InsufficientDataError, InvalidInputError
from bayescannon.model import CannonModel
from bayescannon.survey.transferconfig import PRESETS, TransferConfig
from bayescannon.survey.transferrecipes import bootstrap_cross_validated, preselect


def _minimal(**extra):
    cfg = {
        "label_names": ["TEFF", "LOGG"],
        "reference": {"catalogue": "ref.fits", "labels": {"TEFF": "TEFF", "LOGG": "LOGG"}},
        "target": {"spectra": ["spec-*.fits"]},
    }
    cfg.update(extra)
    return cfg


def test_ho_preset_turns_both_recipes_on_with_the_papers_numbers(tmp_path):
    d = TransferConfig(_minimal(), base_dir=tmp_path).data
    assert d["preset"] == "ho2017"
    assert d["preselect"] == {"enabled": True, "cut": 2.5, "n_neighbours": 1}
    assert d["bootstrap"]["enabled"] is True and d["bootstrap"]["n_models"] == 20
    off = TransferConfig(_minimal(preset="none"), base_dir=tmp_path).data
    assert off["preselect"]["enabled"] is False and off["bootstrap"]["enabled"] is False
    # an explicit value wins over the preset
    mixed = TransferConfig(_minimal(bootstrap={"enabled": False}), base_dir=tmp_path).data
    assert mixed["bootstrap"]["enabled"] is False and mixed["preselect"]["enabled"] is True
    assert set(PRESETS) == {"ho2017", "none"}


def test_new_options_enter_the_step_keys(tmp_path):
    base = TransferConfig(_minimal(), base_dir=tmp_path)
    cut = TransferConfig(_minimal(preselect={"cut": 3.0}), base_dir=tmp_path)
    boot = TransferConfig(_minimal(bootstrap={"n_models": 10}), base_dir=tmp_path)
    assert base.digest("train") == cut.digest("train")  # steps before infer are unaffected
    assert base.digest("infer") != cut.digest("infer")
    assert base.digest("infer") == boot.digest("infer")
    assert base.digest("bootstrap") != boot.digest("bootstrap")
    assert base.digest("catalogue") != boot.digest("catalogue")


@pytest.mark.parametrize(
    "change, match",
    [
        ({"preset": "ho2016"}, "preset"),
        ({"preselect": {"cut": -1}}, "cut"),
        ({"bootstrap": {"n_models": 1}}, "n_models"),
        ({"bootstrap": {"n_folds": 1}}, "n_folds"),
    ],
)
def test_bad_recipe_options_are_rejected(tmp_path, change, match):
    with pytest.raises(InvalidInputError, match=match):
        TransferConfig(_minimal(**change), base_dir=tmp_path)


def test_preselection_removes_exactly_the_stars_beyond_the_cut():
    rng = np.random.default_rng(3)
    training = rng.normal(size=(2000, 3)) * [300.0, 0.5, 0.2] + [4800.0, 2.5, -0.2]
    sd = training.std(axis=0, ddof=1)
    inside = training[:50] + rng.normal(size=(50, 3)) * 0.05 * sd  # the training population
    far = np.array([[4800.0, 2.5, -0.2]]) + np.array([[12.0, 0, 0], [0, -10.0, 0], [0, 0, 9.0]]) * sd
    near_edge = training[[np.argmax(training[:, 0])]] + np.array([[1.0, 0, 0]]) * sd  # 1 sd past the hottest
    missing = np.array([[np.nan, 2.5, -0.2]])
    labels = np.vstack([inside, far, near_edge, missing])
    selected, distance = preselect(labels, training, cut=2.5)
    assert selected[:50].all()
    assert not selected[50:53].any()
    assert selected[53]  # 1 sd beyond the edge: within 2.5 of its nearest training star
    assert np.isclose(distance[53], 1.0, atol=1e-9)
    assert selected[54] and np.isnan(distance[54])  # cannot be tested: kept, distance NaN
    assert np.all(distance[50:53] > 4.0)  # 9-12 sd from the centre, >= 5 beyond the outermost training star
    # a tighter cut removes the edge star too
    assert not preselect(labels, training, cut=0.5)[0][53]


def test_preselection_needs_training_pipeline_labels():
    with pytest.raises(InsufficientDataError, match="finite pipeline labels"):
        preselect(np.zeros((3, 2)), np.array([[np.nan, 1.0], [1.0, 2.0]]))


def _quadratic_survey(rng, n, theta, noise):
    lab = np.column_stack([rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)])
    a, b = lab.T
    design = np.column_stack([np.ones(n), a, b, a * a, a * b, b * b])
    flux = design @ theta.T + rng.normal(size=(n, theta.shape[0])) * noise
    return flux, np.full(flux.shape, 1.0 / noise**2), lab


def test_bootstrap_gives_twenty_cross_validated_models_and_a_per_star_error():
    rng = np.random.default_rng(11)
    theta = np.column_stack([np.ones(40), rng.normal(0, 0.1, (40, 5))])
    noise = 0.01
    flux, ivar, lab = _quadratic_survey(rng, 80, theta, noise)
    tflux, tivar, tlab = _quadratic_survey(rng, 31, theta, noise)
    tivar[30] = 0.0  # a star without usable pixels: no label from any model, never a number
    model = CannonModel(["A", "B"], 2, regularization=0.0)
    boot = bootstrap_cross_validated(
        model, flux, ivar, lab, test_flux=tflux, test_ivar=tivar, n_models=20, n_folds=3, random_state=0, n_jobs=1
    )
    assert boot.labels.sizes == {"boot": 20, "star": 31, "label_name": 2}
    table = boot.star_table()
    assert table.colnames == ["ID", "e_BOOT_A", "e_BOOT_B", "N_BOOT"]
    assert np.all(table["N_BOOT"][:30] == 20) and table["N_BOOT"][30] == 0
    assert table["e_BOOT_A"].mask[30] and table["e_BOOT_B"].mask[30]
    e = np.column_stack([np.asarray(table["e_BOOT_A"]), np.asarray(table["e_BOOT_B"])])[:30]
    assert np.all(np.isfinite(e)) and np.all(e > 0)
    # the spread over 20 models equals the sample standard deviation of their labels
    np.testing.assert_allclose(e, np.std(boot.labels.values[:, :30], axis=0, ddof=1), rtol=1e-12)
    # each model is cross-validated on its own resample: scatter of the order of the noise-limited
    # precision, and the model-to-model spread of the labels is smaller than that scatter
    models = boot.model_table()
    assert len(models) == 20 and np.all(models["N_DISTINCT"] < 80) and np.all(models["N_DISTINCT"] > 40)
    cv = np.asarray(boot.cv_scatter)
    assert np.all(np.isfinite(cv)) and np.all(cv > 0)
    assert np.all(np.median(e, axis=0) < np.median(cv, axis=0))
    # every model recovers the test labels within a few CV scatters
    err = np.abs(boot.labels.values[:, :30] - tlab[None, :30]).max(axis=(0, 1))
    assert np.all(err < 10 * cv.max(axis=0))
