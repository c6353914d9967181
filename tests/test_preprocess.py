"""Tests of the preprocessing steps (bayescannon.preprocess) against known truth."""

from __future__ import annotations

import functools
import logging
import os

import numpy as np
import pytest
import xarray as xr

from bayescannon import io as bio
from bayescannon import preprocess as pp
from bayescannon.core import grid as core_grid
from bayescannon.errors import GridMismatchError, InvalidInputError, NegativeIvarError, NonFiniteError
from bayescannon.io.apogee import mask_bits_attr
from bayescannon.preprocess import normalise as pp_normalise
from bayescannon.spectra import make_spectra


@pytest.fixture(params=["numba", "numpy"])
def engine(request, monkeypatch):
    """Run a test with the compiled kernels and with the numpy reference."""
    monkeypatch.setattr(core_grid, "_USE_NUMBA", request.param == "numba")
    monkeypatch.setattr(pp_normalise, "_USE_NUMBA", request.param == "numba")
    return request.param


def container(wl, flux, ivar, **kw):
    flux = np.atleast_2d(flux)
    ivar = np.broadcast_to(ivar, flux.shape)
    ds = make_spectra(wl, flux, ivar, **kw)
    ds["wavelength"].attrs.update(medium="vacuum", frame="observed")
    return ds


def loglin(lo, hi, step=1e-4):
    return 10 ** np.arange(np.log10(lo), np.log10(hi), step)


def unchanged(step, ds, *args, **kw):
    """Run a step and check that it left its input alone."""
    before = ds.copy(deep=True)
    out = step(ds, *args, **kw)
    xr.testing.assert_identical(ds, before)
    return out


# --------------------------------------------------------------------------------------
# resampling and shifts
# --------------------------------------------------------------------------------------


def test_resample_linear_function_is_exact(engine):
    wl = np.sort(np.random.default_rng(0).uniform(5000, 5100, 300))
    flux = np.stack([2.0 + 0.01 * wl, -1.0 + 0.003 * wl])
    ds = container(wl, flux, np.ones_like(flux), ids=["a", "b"])
    new = np.linspace(5000.5, 5099.5, 517)
    new = new[(new >= wl[0]) & (new <= wl[-1])]
    out = unchanged(pp.resample, ds, new)
    np.testing.assert_allclose(
        out["flux"].values, np.stack([2.0 + 0.01 * new, -1.0 + 0.003 * new]), rtol=1e-13, atol=1e-12
    )
    assert np.all(out["ivar"].values > 0)
    same = pp.resample(ds, wl)
    np.testing.assert_array_equal(same["flux"].values, ds["flux"].values)
    np.testing.assert_array_equal(same["ivar"].values, ds["ivar"].values)


def test_kernels_agree_with_numpy(monkeypatch):
    rng = np.random.default_rng(1)
    wl = loglin(4000, 4400)
    n = 7
    flux = rng.normal(1, 0.1, (n, wl.size))
    ivar = rng.uniform(0.5, 2, (n, wl.size))
    ivar[rng.random(ivar.shape) < 0.05] = 0
    mask = rng.integers(0, 8, (n, wl.size)).astype(np.uint32)
    ds = container(wl, flux, ivar, mask=mask, rv=np.array([-300, -20, 0, 5, 60, 250, np.nan]))
    new = loglin(4010, 4390, 1.3e-4)
    results = {}
    for use in (True, False):
        monkeypatch.setattr(core_grid, "_USE_NUMBA", use)
        monkeypatch.setattr(pp_normalise, "_USE_NUMBA", use)
        results[use] = (
            pp.shift_and_resample(ds, new, variance="interpolate"),
            pp.resample(ds, new),
            pp.normalise_ho2017(ds, L=20.0, segments=[(4000, 4200), (4200.5, 4400)], precision="double"),
        )
    for a, b in zip(results[True], results[False]):
        np.testing.assert_allclose(a["flux"].values, b["flux"].values, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(a["ivar"].values, b["ivar"].values, rtol=1e-12, atol=0)
        if "mask" in a:
            np.testing.assert_array_equal(a["mask"].values, b["mask"].values)


def test_variance_propagation_matches_monte_carlo(engine):
    rng = np.random.default_rng(2)
    wl = np.linspace(6000, 6100, 101)
    sigma = rng.uniform(0.5, 2.0, wl.size)
    ds = container(wl, np.ones(wl.size), 1 / sigma**2)
    new = np.linspace(6000.3, 6099.7, 263)
    out = pp.resample(ds, new)
    k = 4000
    draws = rng.normal(0, 1, (k, wl.size)) * sigma
    mc = container(wl, draws, np.broadcast_to(1 / sigma**2, draws.shape))
    mc_out = pp.resample(mc, new)
    mc_var = mc_out["flux"].values.var(axis=0, ddof=1)
    pred_var = 1 / out["ivar"].values[0]
    ratio = mc_var / pred_var
    # the sample variance of k Gaussian draws has relative sd sqrt(2 / (k - 1))
    se = np.sqrt(2 / (k - 1))
    assert abs(ratio.mean() - 1) < 3 * se  # neighbouring new pixels share draws: not averaged down
    assert np.all(np.abs(ratio - 1) < 5 * se)
    conservative = pp.resample(ds, new, variance="interpolate")
    assert np.all(1 / conservative["ivar"].values[0] >= pred_var * (1 - 1e-12))


def test_bad_pixels_propagate_and_absent_pixels_are_masked(engine):
    wl = np.arange(100.0, 200.0)
    ivar = np.ones(wl.size)
    ivar[50] = 0.0  # wavelength 150
    mask = np.zeros((1, wl.size), np.uint32)
    mask[0, 60] = 4
    ds = container(wl, np.ones(wl.size), ivar, mask=mask)
    new = np.arange(90.25, 210.0, 0.5)
    out = pp.resample(ds, new)
    iv = out["ivar"].values[0]
    touching = (new > 149) & (new < 151)
    outside = (new < 100) | (new > 199)
    assert np.all(iv[touching] == 0) and np.all(iv[outside] == 0)
    assert np.all(iv[~touching & ~outside] > 0)
    m = out["mask"].values[0]
    assert np.all(m[(new > 159) & (new < 161)] == 4) and m[(new > 170)].max() == 0
    on_grid = pp.resample(ds, np.array([149.0, 150.0, 151.0]))
    assert list(on_grid["ivar"].values[0]) == [1.0, 0.0, 1.0]


def test_grid_errors(engine):
    wl = np.linspace(5000, 5100, 50)
    ds = container(wl, np.ones(50), np.ones(50), redshift=[0.0])
    with pytest.raises(GridMismatchError, match="does not overlap"):
        pp.resample(ds, np.linspace(6000, 6100, 10))
    with pytest.raises(GridMismatchError, match="does not overlap"):
        pp.shift_and_resample(ds, np.linspace(6000, 6100, 10))
    with pytest.raises(InvalidInputError, match="strictly increasing"):
        pp.resample(ds, np.array([5010.0, 5020.0, 5015.0]))
    with pytest.raises(GridMismatchError, match="no pixel"):
        pp.wavelength_cut(ds, 7000, 8000)
    with pytest.raises(InvalidInputError, match="variance"):
        pp.resample(ds, wl, variance="sum")


def test_invalid_flux_and_ivar_are_named():
    wl = np.linspace(5000, 5100, 20)
    flux = np.ones((2, 20))
    ivar = np.ones((2, 20))
    flux[0, 3] = np.nan
    ivar[0, 3] = 0.0  # a NaN flux is fine where there is no information
    ds = container(wl, flux, ivar, ids=["a", "b"])
    assert pp.resample(ds, wl)["ivar"].values[0, 3] == 0
    bad = ds.copy(deep=True)
    bad["flux"].values[1, 5] = np.inf
    with pytest.raises(NonFiniteError, match=r"star 1 \(id b\), pixel 5"):
        pp.normalise_ho2017(bad)
    neg = ds.copy(deep=True)
    neg["ivar"].values[1, 7] = -1.0
    with pytest.raises(NegativeIvarError, match="pixel 7"):
        pp.shift_and_resample(neg, rv=[1.0, 2.0])


def test_shift_there_and_back(engine):
    wl = loglin(5000, 5600, 2e-5)
    lines = 1 - 0.5 * np.exp(-0.5 * ((wl[None, :] - np.array([[5150.0], [5300.0], [5420.0]])) / 1.5) ** 2)
    flux = lines.prod(axis=0)[None, :] * np.array([[1.0], [0.7]])
    ds = container(wl, flux, np.full(flux.shape, 100.0), ids=["a", "b"])
    v = np.array([87.0, -143.0])
    there = pp.shift_and_resample(ds, rv=v)
    back = pp.shift_and_resample(there, rv=-v)
    inner = (wl > 5010) & (wl < 5590)
    # each linear interpolation errs by at most h**2/8 * max|f''| (depth/sigma**2 here)
    h = np.diff(wl).max()
    tol = 2 * h**2 / 8 * 0.5 / 1.5**2
    np.testing.assert_allclose(back["flux"].values[:, inner], flux[:, inner], rtol=0, atol=tol)
    assert np.abs(back["flux"].values[:, inner] - flux[:, inner]).max() > tol / 10  # tol is not loose
    assert np.all(back["ivar"].values[:, inner] > 0)
    assert np.all(back["ivar"].values[:, ~((wl > 5001.5) & (wl < 5598))] >= 0)
    # a linear spectrum comes back exactly (relativistic factors compose to 1)
    lin = container(wl, 1 + 1e-4 * (wl - 5000), np.ones(wl.size))
    lin_back = pp.shift_and_resample(pp.shift_and_resample(lin, rv=300.0), rv=-300.0)
    np.testing.assert_allclose(lin_back["flux"].values[0, inner], lin["flux"].values[0, inner], rtol=1e-12)


def test_to_rest_frame_columns_and_flags(engine, caplog):
    wl = loglin(5000, 5200)
    line = 5100.0
    z = np.array([1e-4, -2e-4, np.nan])
    flux = 1 - 0.5 * np.exp(-0.5 * ((wl[None, :] - line * (1 + z[:, None])) / 1.0) ** 2)
    flux = np.where(np.isfinite(flux), flux, 1.0)
    ds = container(wl, flux, np.ones_like(flux), redshift=z)
    with caplog.at_level(logging.WARNING):
        rest = unchanged(pp.to_rest_frame, ds)
    assert rest["wavelength"].attrs["frame"] == "rest"
    assert list(rest["all_masked"].values) == [False, False, True]
    assert "all_masked" in caplog.text or "no valid rv" in caplog.text
    w = rest["wavelength"].values
    for i in range(2):
        f = rest["flux"].values[i]
        sel = np.abs(w - line) < 5
        assert np.sum(w[sel] * (1 - f[sel])) / np.sum(1 - f[sel]) == pytest.approx(line, abs=0.02)
    with pytest.raises(InvalidInputError, match="already in the rest frame"):
        pp.to_rest_frame(rest)
    no_v = container(wl, flux[:1], np.ones(wl.size))
    with pytest.raises(InvalidInputError, match="rv or redshift"):
        pp.to_rest_frame(no_v)


def test_doppler_factor():
    c = pp.C_KMS
    assert pp.doppler_factor(rv=0.1 * c) == pytest.approx(np.sqrt(1.1 / 0.9))
    assert pp.doppler_factor(rv=0.1 * c, relativistic=False) == pytest.approx(1.1)
    assert pp.doppler_factor(redshift=0.01) == pytest.approx(1.01)
    np.testing.assert_allclose(pp.doppler_factor(rv=[100.0]) * pp.doppler_factor(rv=[-100.0]), 1.0, rtol=1e-15)
    with pytest.raises(InvalidInputError):
        pp.doppler_factor(rv=1.0, redshift=0.1)
    with pytest.raises(InvalidInputError, match="speed of light"):
        pp.doppler_factor(rv=4e5)


def test_air_vacuum_round_trip():
    wl = np.linspace(4000, 9000, 50)
    ds = container(wl, np.ones(50), np.ones(50))
    ds["wavelength"].attrs["medium"] = "air"
    vac = pp.air_to_vacuum(ds)
    assert vac["wavelength"].attrs["medium"] == "vacuum"
    assert np.all(vac["wavelength"].values > wl)
    assert vac["wavelength"].values[0] - wl[0] == pytest.approx(1.13, abs=0.02)  # ~1.1 A at 4000 A
    back = pp.vacuum_to_air(vac)
    np.testing.assert_allclose(back["wavelength"].values, wl, rtol=1e-9)
    with pytest.raises(InvalidInputError, match="already"):
        pp.air_to_vacuum(vac)


# --------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------


def test_normalise_ho2017_single_precision_matches_double(engine):
    # realistic dynamic range: continua from 1e-2 to 1e4 counts, S/N 5-500, masked pixels
    rng = np.random.default_rng(11)
    wl = loglin(3700, 9100)
    n = 40
    level = 10 ** rng.uniform(-2, 4, n)
    shape = 1 + 0.5 * np.sin((wl[None, :] - 3700) / rng.uniform(300, 2000, (n, 1)))
    cont = level[:, None] * shape
    sn = rng.uniform(5, 500, n)[:, None]
    flux = cont * (1 + rng.standard_normal(cont.shape) / sn)
    ivar = (sn / cont) ** 2
    ivar[rng.random(ivar.shape) < 0.02] = 0.0
    ds = container(wl, flux, ivar)
    single, c1 = pp.normalise_ho2017(ds, return_continuum=True)
    double, c2 = pp.normalise_ho2017(ds, return_continuum=True, precision="double")
    ok = np.isfinite(c2)
    assert np.array_equal(ok, np.isfinite(c1))
    # float32 sums of ~500 positive terms (inputs rounded to float32 too): a few 1e-7
    # relative per sum, ~100 float32 ulps at most for their ratio
    assert np.max(np.abs(c1[ok] / c2[ok] - 1)) < 1e-5
    np.testing.assert_allclose(single["flux"].values, double["flux"].values, rtol=1e-5, atol=0)
    np.testing.assert_array_equal(single["ivar"].values == 0, double["ivar"].values == 0)
    with pytest.raises(InvalidInputError):
        pp.normalise_ho2017(ds, precision="half")


def test_normalise_ho2017_recovers_lines(engine):
    wl = loglin(4000, 6000)
    centres = np.arange(4100, 5950, 150.0)
    lines = np.prod(1 - 0.5 * np.exp(-0.5 * ((wl[:, None] - centres[None, :]) / 1.0) ** 2), axis=1)
    cont = np.stack([1000 * (1 + 2e-4 * (wl - 4000)), 50 * (2 - 1e-4 * (wl - 4000))])
    ivar = np.full(cont.shape, 1.0)
    ivar[0, 1000:1010] = 0
    ds = container(wl, cont * lines, ivar, ids=["a", "b"])
    out, c = unchanged(pp.normalise_ho2017, ds, L=50.0, return_continuum=True)
    assert out.attrs["normalised"] is True
    inner = (wl > 4000 + 200) & (wl < 6000 - 200)
    # The smoothed continuum of a linear continuum times lines is the continuum times
    # (1 - eps), where eps <= depth * sigma / L (a line's equivalent width over the
    # kernel's, at most one line within reach): normalised = lines / (1 - eps).
    # 5% margin for the discrete, log-spaced sampling of the kernel. (Star 0's masked
    # pixels near 5036 A give a nearby line more weight: checked only away from them.)
    eps_max = 1.05 * 0.5 * 1.0 / 50.0
    far = inner & (np.abs(wl - wl[1005]) > 4 * 50.0)
    for star, sel in ((0, far), (1, inner)):
        ratio = out["flux"].values[star, sel] / lines[sel]
        assert ratio.min() >= 1 - 1e-6
        assert ratio.max() <= 1 / (1 - eps_max) + 1e-4
    good = ivar > 0
    np.testing.assert_allclose(out["ivar"].values[good], (ivar * c**2)[good], rtol=1e-12)
    assert np.all(out["ivar"].values[0, 1000:1010] == 0)
    # segments are smoothed separately: a jump in one does not leak into the other
    jump = cont * lines
    jump[:, wl > 5000] *= 10
    seg = pp.normalise_ho2017(container(wl, jump, ivar), L=50.0, segments=[(4000, 5000), (5000.01, 6000)])
    near = (wl > 4800) & (wl < 5000)
    # next to a segment edge the kernel is one-sided (a line there weighs up to twice
    # as much); a leak of the x10 jump would push the ratio far above 1
    ratio = seg["flux"].values[:, near] / lines[near]
    assert ratio.min() >= 1 - 1e-6 and ratio.max() <= 1 / (1 - 2 * eps_max)
    gap = pp.normalise_ho2017(ds, segments=[(4000, 4500)])
    assert np.all(gap["ivar"].values[:, wl > 4500] == 0)


def test_normalise_ho2017_all_masked_star_is_flagged(engine, caplog):
    wl = np.linspace(5000, 5100, 100)
    ivar = np.ones((2, 100))
    ivar[1] = 0
    ds = container(wl, np.ones((2, 100)), ivar, ids=["ok", "dead"])
    with caplog.at_level(logging.WARNING):
        out = pp.normalise_ho2017(ds)
    assert list(out["all_masked"].values) == [False, True]
    assert "dead" in caplog.text
    with pytest.raises(InvalidInputError, match="L must be"):
        pp.normalise_ho2017(ds, L=-1)


def poly_setup(kind="chebyshev", n=3):
    rng = np.random.default_rng(5)
    wl = np.linspace(15100, 16900, 900)
    cont_pix = np.zeros(wl.size, bool)
    cont_pix[rng.choice(wl.size, 150, replace=False)] = True
    centres = rng.uniform(15150, 16850, 60)
    lines = np.prod(1 - 0.4 * np.exp(-0.5 * ((wl[:, None] - centres[None, :]) / 0.8) ** 2), axis=1)
    lines[cont_pix] = 1.0
    x = 2 * (wl - wl[0]) / (wl[-1] - wl[0]) - 1
    coefs = rng.normal(0, 0.1, (n, 4))
    coefs[:, 0] = rng.uniform(100, 1000, n)
    if kind == "chebyshev":
        cont = np.stack([np.polynomial.chebyshev.chebval(x, c) for c in coefs])
    else:
        arg = np.pi * (wl - wl[0]) / (wl[-1] - wl[0])
        cont = np.stack([c[0] + c[1] * np.sin(arg) + c[2] * np.cos(arg) + c[3] * np.sin(2 * arg) for c in coefs])
    return wl, cont, lines, cont_pix


@pytest.mark.parametrize("kind", ["chebyshev", "sincos"])
def test_continuum_fit_recovers_known_continuum(kind):
    wl, cont, lines, cont_pix = poly_setup(kind)
    ivar = np.random.default_rng(6).uniform(0.5, 2.0, cont.shape)
    ds = container(wl, cont * lines, ivar)
    out, fitted = unchanged(
        pp.normalise_continuum, ds, cont_pix, order=3 if kind == "chebyshev" else 2, kind=kind, return_continuum=True
    )
    np.testing.assert_allclose(fitted, cont, rtol=1e-9)
    np.testing.assert_allclose(out["flux"].values, np.broadcast_to(lines, cont.shape), rtol=1e-9)
    np.testing.assert_allclose(out["ivar"].values, ivar * cont**2, rtol=1e-9)
    idx = pp.normalise_continuum(ds, np.flatnonzero(cont_pix), order=3 if kind == "chebyshev" else 2, kind=kind)
    np.testing.assert_allclose(idx["flux"].values, out["flux"].values)


def test_continuum_fit_segments_and_failures(caplog):
    wl, cont, lines, cont_pix = poly_setup()
    half = wl > 16000
    cont2 = cont.copy()
    cont2[:, half] *= 0.5  # a detector with another throughput
    ivar = np.ones(cont.shape)
    ivar[2][cont_pix & half] = 0  # star 2 has no continuum left in segment 2
    ds = container(wl, cont2 * lines, ivar, ids=["a", "b", "c"])
    with caplog.at_level(logging.WARNING):
        out = pp.normalise_continuum(ds, cont_pix, order=3, segments=[(15000, 16000), (16000.5, 17000)])
    np.testing.assert_allclose(out["flux"].values[:2], np.broadcast_to(lines, (2, wl.size)), rtol=1e-8)
    assert np.all(out["ivar"].values[2, half] == 0) and np.all(out["ivar"].values[2, ~half] > 0)
    assert "too few good continuum pixels" in caplog.text and "c" in caplog.text
    with pytest.raises(InvalidInputError, match="overlap"):
        pp.normalise_continuum(ds, cont_pix, segments=[(15000, 16000), (15900, 17000)])
    with pytest.raises(InvalidInputError, match="entries"):
        pp.normalise_continuum(ds, cont_pix[:-1])


def test_continuum_pixels_found_in_a_training_set():
    rng = np.random.default_rng(7)
    n, p = 60, 400
    wl = np.linspace(5000, 5400, p)
    truth = np.zeros(p, bool)
    truth[rng.choice(p, 80, replace=False)] = True
    depth = np.where(truth, 0.0, rng.uniform(0.05, 0.5, p))
    scatter = np.where(truth, 0.0005, 0.05)
    flux = 1 - depth * rng.uniform(0.5, 1.5, (n, p)) + rng.normal(0, 1, (n, p)) * scatter
    ivar = np.ones((n, p))
    ds = container(wl, flux, ivar)
    ds.attrs["normalised"] = True
    found = pp.continuum_pixels(ds, f_cut=0.003, sig_cut=0.003)
    assert np.array_equal(found, truth)
    ranked = pp.continuum_pixels(flux, ivar, fraction=0.2)
    assert ranked.sum() == 80 and np.array_equal(ranked, truth)
    per_seg = pp.continuum_pixels(ds, fraction=0.1, segments=[(5000, 5200), (5201, 5400)])
    assert per_seg[wl <= 5200].sum() == round(0.1 * (wl <= 5200).sum())


# --------------------------------------------------------------------------------------
# masks and S/N
# --------------------------------------------------------------------------------------


def test_mask_windows_and_bits(caplog):
    wl = np.linspace(7500, 7700, 201)
    mask = np.zeros((2, wl.size), np.uint32)
    mask[0, 10] = 1 << 3
    mask[1, 20] = 1 << 12
    ds = container(wl, np.ones((2, wl.size)), np.ones((2, wl.size)), ids=["a", "b"], mask=mask, rv=[0.0, 300.0])
    ds.attrs["mask_bits"] = mask_bits_attr(bio.APOGEE_PIXMASK_BITS)
    out = unchanged(pp.mask_windows, ds, [(7594, 7621), (7650, 7651)])
    iv = out["ivar"].values
    inside = ((wl >= 7594) & (wl <= 7621)) | ((wl >= 7650) & (wl <= 7651))
    assert np.all(iv[:, inside] == 0) and np.all(iv[:, ~inside] == 1)
    rest = ds.copy()
    rest["wavelength"].attrs["frame"] = "rest"
    shifted = pp.mask_windows(rest, [(7594, 7621)], frame="observed")
    obs_b = wl * pp.doppler_factor(rv=300.0)
    assert np.all(shifted["ivar"].values[1, (obs_b >= 7594) & (obs_b <= 7621)] == 0)
    assert shifted["ivar"].values[1, (obs_b < 7594)].min() == 1
    by_name = unchanged(pp.mask_bits, ds, ["SIG_SKYLINE"])
    assert by_name["ivar"].values[1, 20] == 0 and by_name["ivar"].values[0, 10] == 1
    by_num = pp.mask_bits(ds, 3)
    assert by_num["ivar"].values[0, 10] == 0 and by_num["ivar"].values.sum() == 2 * wl.size - 1
    with pytest.raises(InvalidInputError, match="unknown mask bit"):
        pp.mask_bits(ds, ["NOPE"])
    # the simulator writes bit *values*: "8=NAME: description; ..."
    sim_style = ds.copy()
    sim_style.attrs["mask_bits"] = "1=BADPIX: bad (ivar=0, garbage); 8=WINDOW: telluric, sky; 4096=SKY: lines"
    assert pp.mask_bits(sim_style, "WINDOW")["ivar"].values[0, 10] == 0
    with pytest.raises(InvalidInputError, match="no 'mask'"):
        pp.mask_bits(ds.drop_vars("mask"), [3])
    with caplog.at_level(logging.WARNING):
        dead = pp.mask_windows(ds, [(7000, 8000)])
    assert dead["all_masked"].values.all()


def test_snr():
    wl = np.linspace(4000, 6000, 201)
    flux = np.vstack([np.full(wl.size, 10.0), np.where(wl < 5000, 4.0, 8.0), np.ones(wl.size)])
    ivar = np.vstack([np.full(wl.size, 4.0), np.full(wl.size, 1.0), np.zeros(wl.size)])
    ds = container(wl, flux, ivar, ids=["a", "b", "c"])
    s = pp.snr(ds)
    assert s[0] == 20.0 and s[1] in (4.0, 6.0, 8.0) and np.isnan(s[2])
    sg = pp.snr(ds, band=(4000, 4900))
    assert sg[1] == 4.0
    out = unchanged(pp.add_snr, ds, band=(5100, 6000), name="snr_r")
    assert out["snr_r"].values[1] == 8.0
    with pytest.raises(GridMismatchError):
        pp.snr(ds, band=(7000, 8000))


def test_wavelength_cut_keeps_extras():
    wl = np.linspace(4000, 5000, 101)
    ds = container(wl, np.ones((1, 101)), np.ones((1, 101)), teff=[4500.0])
    cut = unchanged(pp.wavelength_cut, ds, 4200, 4300)
    assert cut.sizes["pixel"] == 11 and cut["teff"].values[0] == 4500.0
    assert "wavelength_cut" in cut.attrs["history"]


# --------------------------------------------------------------------------------------
# streaming
# --------------------------------------------------------------------------------------


def lamost_files(folder, n, bad=()):
    rng = np.random.default_rng(8)
    wl = bio.lamost_wavelength(npix=600)
    paths = []
    for i in range(n):
        path = folder / f"spec-{i:03d}.fits"
        if i in bad:
            path.write_bytes(b"not fits")
        else:
            flux = 100 * (1 + 0.1 * np.sin(wl / 300)) + rng.normal(0, 1, wl.size)
            bio.write_lamost(path, wl, flux, np.ones(wl.size), header={"OBSID": i, "Z": rng.normal(0, 1e-4)})
        paths.append(path)
    return paths


def test_process_in_chunks_from_files_with_resume(tmp_path, caplog):
    paths = lamost_files(tmp_path, 7, bad=(2,))
    grid = loglin(3750, 4100)
    calls = []

    def spy(ds):
        calls.append(list(ds["star"].values))
        return ds

    steps = [
        functools.partial(pp.to_rest_frame, new_wavelength=grid),
        (pp.normalise_ho2017, {"L": 30.0}),
        pp.add_snr,
        spy,
    ]
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        files, skipped = pp.process_in_chunks(paths, steps, 3, out, return_skipped=True)
    assert [f.name for f in files] == ["chunk_000000.nc", "chunk_000001.nc", "chunk_000002.nc"]
    assert list(skipped["path"]) == [str(paths[2])]
    assert len(calls) == 3
    combined = pp.read_chunks(out)
    assert combined.sizes["star"] == 6 and combined.attrs.get("normalised") in (True, 1)
    direct = pp.add_snr(
        pp.normalise_ho2017(
            pp.to_rest_frame(bio.read_many([p for i, p in enumerate(paths) if i != 2]), new_wavelength=grid), L=30.0
        )
    )
    # chunking changes the float32 blocking of the smoothing products (precision="single")
    np.testing.assert_allclose(combined["flux"].values, direct["flux"].values, rtol=1e-5)
    np.testing.assert_allclose(combined["snr"].values, direct["snr"].values, rtol=1e-5)
    reference = [f.read_bytes() for f in files]

    # resume after an interruption: only the missing chunk is redone; the skipped list survives
    stamps = [f.stat().st_mtime_ns for f in files]
    os.remove(files[1])
    calls.clear()
    files2, skipped2 = pp.process_in_chunks(paths, steps, 3, out, return_skipped=True)
    assert len(calls) == 1 and len(calls[0]) == 3  # files 3, 4, 5
    assert files2[0].stat().st_mtime_ns == stamps[0] and files2[2].stat().st_mtime_ns == stamps[2]
    assert [f.read_bytes() for f in files2] == reference  # bit for bit as uninterrupted
    assert list(skipped2["path"]) == [str(paths[2])]

    # a truncated chunk is recomputed, with a warning naming it
    files2[2].write_bytes(files2[2].read_bytes()[:100])
    calls.clear()
    with caplog.at_level(logging.WARNING):
        caplog.clear()
        pp.process_in_chunks(paths, steps, 3, out)
    assert len(calls) == 1 and "chunk_000002.nc" in caplog.text and "corrupted" in caplog.text
    assert [f.read_bytes() for f in files2] == reference

    # other step options: every chunk is recomputed, and the result follows them
    calls.clear()
    other = steps[:1] + [(pp.normalise_ho2017, {"L": 60.0})] + steps[2:]
    pp.process_in_chunks(paths, other, 3, out)
    assert len(calls) == 3
    redone = pp.read_chunks(out)
    assert not np.allclose(redone["flux"].values, combined["flux"].values, rtol=1e-5)

    # another chunk size: recomputed, and no stale chunk of the old layout is listed
    files4 = pp.process_in_chunks(paths, steps, 4, out)
    assert [f.name for f in files4] == ["chunk_000000.nc", "chunk_000001.nc"]
    assert pp.chunk_files(out) == files4
    np.testing.assert_array_equal(pp.read_chunks(out)["star"].values, combined["star"].values)

    # other inputs in the same folder: recomputed, never reused
    paths_b = lamost_files(tmp_path / "b", 7) if (tmp_path / "b").mkdir() is None else None
    calls.clear()
    pp.process_in_chunks(paths_b, steps, 4, out)
    assert len(calls) == 2
    assert pp.read_chunks(out).sizes["star"] == 7


def test_process_in_chunks_from_container(tmp_path):
    wl = np.linspace(5000, 5100, 80)
    rng = np.random.default_rng(9)
    ds = container(wl, rng.normal(1, 0.01, (10, 80)), np.ones((10, 80)), ids=[f"s{i}" for i in range(10)])
    src = bio.write_spectra(ds, tmp_path / "all.nc")
    files = pp.process_in_chunks(src, [(pp.wavelength_cut, {"lo": 5010, "hi": 5090})], 4, tmp_path / "o", format="npz")
    assert len(files) == 3 and files[0].suffix == ".npz"
    back = pp.read_chunks(tmp_path / "o")
    assert list(back["star"].values) == list(ds["star"].values)
    np.testing.assert_array_equal(back["flux"].values, pp.wavelength_cut(ds, 5010, 5090)["flux"].values)
    in_memory = pp.process_in_chunks(ds, [pp.add_snr], 5, tmp_path / "m")
    assert len(in_memory) == 2
    with pytest.raises(InvalidInputError, match="step"):
        pp.process_in_chunks(ds, ["not callable"], 5, tmp_path / "x")


@pytest.mark.slow  # spawns worker processes that import the package: several seconds
def test_process_in_chunks_parallel_matches_serial(tmp_path):
    paths = lamost_files(tmp_path, 6)
    grid = loglin(3750, 4100)
    steps = [functools.partial(pp.to_rest_frame, new_wavelength=grid), (pp.normalise_ho2017, {"L": 30.0})]
    serial = pp.process_in_chunks(paths, steps, 2, tmp_path / "serial")
    parallel = pp.process_in_chunks(paths, steps, 2, tmp_path / "parallel", n_jobs=2)
    assert [p.name for p in serial] == [p.name for p in parallel]
    a, b = pp.read_chunks(tmp_path / "serial"), pp.read_chunks(tmp_path / "parallel")
    np.testing.assert_array_equal(a["flux"].values, b["flux"].values)
    np.testing.assert_array_equal(a["ivar"].values, b["ivar"].values)


def test_process_in_chunks_real_folder_faults(tmp_path, caplog):
    """A grid off by rounding is resampled, a grid off the target is skipped and reported (skip
    mode: never fatal), an id repeated in a later chunk is kept once (the first) and reported."""
    paths = lamost_files(tmp_path, 6)
    wl = bio.lamost_wavelength(npix=600)
    flux = 100 * (1 + 0.1 * np.sin(wl / 300))
    bio.write_lamost(paths[3], wl * (1 + 3e-9), flux, np.ones(wl.size), header={"OBSID": 3, "Z": 0.0}, overwrite=True)
    bio.write_lamost(paths[4], wl * 2.6, flux, np.ones(wl.size), header={"OBSID": 4, "Z": 0.0}, overwrite=True)
    bio.write_lamost(
        paths[5], wl, flux, np.ones(wl.size), header={"OBSID": 1, "Z": 0.0}, overwrite=True
    )  # repeats file 1's id
    steps = [functools.partial(pp.to_rest_frame, new_wavelength=loglin(3750, 4100)), pp.add_snr]
    with caplog.at_level(logging.WARNING):
        files, skipped = pp.process_in_chunks(paths, steps, 3, tmp_path / "out", return_skipped=True)
    combined = pp.read_chunks(tmp_path / "out")
    assert list(combined["star"].values) == ["0", "1", "2", "3"]  # file 1 keeps id 1; file 3 resampled
    assert (combined["ivar"].values[3] > 0).sum() > 300
    by_error = {str(e): str(p) for p, e in zip(skipped["path"], skipped["error"], strict=True)}
    assert by_error["GridMismatchError"] == str(paths[4])
    assert by_error["DuplicateIdError"].endswith(paths[5].name)
    assert "chunk_000000.nc" in skipped["reason"][list(skipped["error"]).index("DuplicateIdError")]
    # resumed: nothing recomputed, the same report; another option value: refused, naming it
    again, skipped2 = pp.process_in_chunks(
        paths, steps, 3, tmp_path / "out", return_skipped=True, options={"--L": 50.0}
    )
    assert [f.read_bytes() for f in again] == [f.read_bytes() for f in files]
    assert list(skipped2["error"]) == list(skipped["error"])
    with pytest.raises(InvalidInputError, match=r"--L: \"50.0\" before, \"5.0\" now"):
        pp.process_in_chunks(paths, steps, 3, tmp_path / "out", options={"--L": 5.0})
