"""Realistic check on the APOGEE emulator (../shared/data; skipped when absent)."""

import numpy as np
from conftest import shared_file

from bayescannon import CannonModel
from bayescannon.core.likelihood import adjusted_ivar

LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]


def test_emulator_spectra_fit_at_least_as_well_as_the_truth():
    from bayescannon.simulate.emulator import load_emulator

    emu = load_emulator(shared_file("apogee_payne_emulator.npz"))
    rng = np.random.default_rng(0)
    train = emu.survey(emu.draw_labels(400, rng, vmacro=6.0), snr=(100, 250), rng=rng)
    test = emu.survey(emu.draw_labels(100, rng, vmacro=6.0), snr=(30, 250), rng=rng)
    model = CannonModel(LABELS, random_state=0).fit(train)
    assert model.pixel_flags_[~emu.bad_pixel_mask].sum() == 0
    res = model.infer(test)
    assert res["converged"].values.all()
    # the optimiser must find a χ² no worse than at the true labels (it is the minimum)
    y = np.column_stack([test[n].values for n in LABELS])
    flux = np.where(test["ivar"].values > 0, test["flux"].values, 0.0)
    w = adjusted_ivar(test["ivar"].values, model.s2_)
    w[:, model.pixel_flags_ != 0] = 0
    chi2_truth = np.sum(w * (flux - model.predict(y)) ** 2, axis=1)
    assert np.all(res["chi2"].values <= chi2_truth + 1e-6)
    # labels land inside the training range for stars drawn from the same distribution
    assert np.mean(res["flags"].values == 0) > 0.9
