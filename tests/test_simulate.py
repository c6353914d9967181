"""Tests of the mock-survey simulator (bayescannon.simulate)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from bayescannon import simulate as sim
from bayescannon.core.grid import C_KMS
from bayescannon.errors import InvalidInputError, LabelError
from bayescannon.simulate import opacity

LABELS = sim.LABEL_NAMES

# a narrow H-band instrument: strong Mg I lines, a CO band head, a Brackett line
NARROW = sim.Instrument("NARROW", arms=((15680.0, 15800.0),), resolving_power=22500.0, pixels_per_resolution=2.85)


def reference_labels(n=1, **changes):
    """``n`` copies of the reference giant (Teff 4750, logg 2.5, solar), with changes."""
    lab = {"TEFF": 4750.0, "LOGG": 2.5, "FE_H": 0.0, "ALPHA_FE": 0.0}
    lab.update(changes)
    return {k: np.full(n, float(v)) for k, v in lab.items()}


def noiseless(labels, instrument=sim.APOGEE, **kw):
    ds = sim.simulate_spectra(labels, instrument, snr=100.0, rng=0, bad_pixel_fraction=0.0, return_noiseless=True, **kw)
    return ds["flux_true"].values


@pytest.fixture(scope="module")
def apogee_small():
    return sim.simulate_survey(25, instrument=sim.APOGEE, rng=11, return_noiseless=True)


# --------------------------------------------------------------------------------------
# labels
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("population", ["giants", "dwarfs", "mixed"])
def test_draw_labels_ranges_and_seed(population):
    a = sim.draw_labels(3000, rng=1, population=population)
    b = sim.draw_labels(3000, rng=np.random.default_rng(1), population=population)
    c = sim.draw_labels(3000, rng=2, population=population)
    assert set(a) == set(LABELS)
    lim = sim.POPULATION_LIMITS[population]
    for k in LABELS:
        assert a[k].shape == (3000,) and a[k].dtype == np.float64
        assert np.all(np.isfinite(a[k]))
        assert a[k].min() >= lim[k][0] and a[k].max() <= lim[k][1], k
        np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a[k], c[k])
    # [Fe/H] ~ N(-0.15, 0.3) truncated to [-1.5, 0.5]: the truncated mean is -0.162
    sd_mean = 0.3 / math.sqrt(3000)
    assert abs(a["FE_H"].mean() - (-0.162)) < 5 * sd_mean
    assert 0.25 < a["FE_H"].std() < 0.31


def test_giant_and_dwarf_populations_are_distinct():
    g = sim.draw_labels(2000, rng=3, population="giants")
    d = sim.draw_labels(2000, rng=3, population="dwarfs")
    m = sim.draw_labels(2000, rng=3, population="mixed")
    assert g["LOGG"].max() <= 3.6 < d["LOGG"].min()
    assert 3900 <= g["TEFF"].min() and g["TEFF"].max() <= 5300
    assert 4300 <= d["TEFF"].min() and d["TEFF"].max() <= 6800
    # giants follow an RGB relation: Teff rises with logg
    assert np.corrcoef(g["TEFF"], g["LOGG"])[0, 1] > 0.5
    # dwarfs: hotter stars have lower gravity on the main sequence
    assert np.corrcoef(d["TEFF"], d["LOGG"])[0, 1] < -0.3
    frac_giants = np.mean(m["LOGG"] < 3.8)
    assert abs(frac_giants - 0.6) < 5 * math.sqrt(0.24 / 2000)


def test_two_alpha_sequences():
    lab = sim.draw_labels(20000, rng=4)
    feh, alpha = lab["FE_H"], lab["ALPHA_FE"]
    high = alpha > 0.17
    assert high[feh < -0.6].mean() > 0.5  # thick disc dominates at low metallicity
    assert high[feh > 0.0].mean() < 0.1  # thin disc dominates at high metallicity
    # at intermediate [Fe/H] both sequences are populated, with a gap between them
    mid = (feh > -0.5) & (feh < -0.3)
    a = alpha[mid]
    assert np.mean(a > 0.2) > 0.15 and np.mean(a < 0.12) > 0.3
    assert np.mean((a > 0.14) & (a < 0.17)) < 0.5 * min(np.mean(a > 0.2), np.mean(a < 0.12))


# --------------------------------------------------------------------------------------
# instruments and line lists
# --------------------------------------------------------------------------------------


def test_instrument_presets():
    assert 7000 <= sim.APOGEE.n_pixels <= 8500
    assert 3700 <= sim.LAMOST.n_pixels <= 4100
    assert len(sim.GALAH.arms) == 4 and sim.GALAH.resolving_power == 28000
    assert sim.APOGEE.resolving_power == 22500 and sim.LAMOST.resolving_power == 1800
    for inst in (sim.APOGEE, sim.LAMOST, sim.GALAH):
        for grid, (lo, hi) in zip(inst.arm_grids(), inst.arms, strict=True):
            assert grid[0] == pytest.approx(lo) and grid[-1] <= hi
            np.testing.assert_allclose(np.diff(np.log(grid)), inst.log_step, rtol=1e-8)
        wl = inst.wavelength_grid()
        assert np.all(np.diff(wl) > 0) and wl.size == inst.n_pixels
    assert sim.LAMOST.window_mask().any() and sim.LAMOST.sky_lines
    assert sim.get_instrument("apogee") is sim.APOGEE
    assert sim.get_instrument(" LAMOST ") is sim.LAMOST


def test_line_lists_have_all_species():
    for inst, kinds in (
        (sim.APOGEE, {"fe1", "fe2", "alpha", "molecule", "hydrogen"}),
        (sim.LAMOST, {"fe1", "fe2", "alpha", "molecule", "hydrogen"}),
        (sim.GALAH, {"fe1", "fe2", "alpha", "hydrogen"}),
    ):
        lines = sim.default_line_list(inst)
        assert kinds <= set(np.unique(lines.kind)), inst.name
        assert np.all(np.diff(lines.wavelength) >= 0)
        assert lines.medium == inst.medium
        assert np.all(lines.excitation >= 0)
    assert {"CO", "OH", "CN"} <= set(sim.default_line_list(sim.APOGEE).species)
    assert {"Mg I", "Si I", "Ca I", "Ti I"} <= set(sim.default_line_list(sim.APOGEE).species)


def test_line_list_is_reproducible_and_shared_between_ranges():
    a = sim.make_line_list((5000.0, 5100.0), rng=7, margin_kms=0.0)
    b = sim.make_line_list((5000.0, 5100.0), rng=7, margin_kms=0.0)
    c = sim.make_line_list((4900.0, 5300.0), rng=7, margin_kms=0.0)
    np.testing.assert_array_equal(a.wavelength, b.wavelength)
    # lines are drawn in fixed wavelength blocks: overlapping ranges share them
    inside = (c.wavelength >= 5000.0) & (c.wavelength <= 5100.0)
    np.testing.assert_array_equal(a.wavelength, c.wavelength[inside])
    np.testing.assert_array_equal(a.log_strength, c.log_strength[inside])
    denser = sim.make_line_list((5000.0, 5100.0), rng=7, density=3.0, margin_kms=0.0)
    assert len(denser) > 2 * len(a)


# --------------------------------------------------------------------------------------
# spectra container
# --------------------------------------------------------------------------------------


def test_container_layout(apogee_small):
    ds = apogee_small
    n, p = 25, sim.APOGEE.n_pixels
    assert ds["flux"].dims == ("star", "pixel") and ds["flux"].shape == (n, p)
    assert ds["ivar"].shape == (n, p) and ds["mask"].dtype == np.uint32
    assert ds["flux"].dtype == np.float64 and ds["ivar"].dtype == np.float64
    np.testing.assert_allclose(ds["wavelength"].values, sim.APOGEE.wavelength_grid())
    assert ds["wavelength"].attrs["units"] == "Angstrom"
    assert ds["wavelength"].attrs["medium"] == "vacuum"
    assert ds["wavelength"].attrs["frame"] == "rest"
    assert len(set(ds["star"].values)) == n
    for k in (*LABELS, "snr"):
        assert ds[k].dims == ("star",)
    assert ds.attrs["instrument"] == "APOGEE" and ds.attrs["resolving_power"] == 22500.0
    assert ds.attrs["normalised"] == 1 and ds.attrs["population"] == "giants"
    assert "BADPIX" in ds.attrs["mask_bits"] and "WINDOW" in ds.attrs["mask_bits"]
    assert ds["flux_true"].shape == (n, p)
    assert "rv" not in ds and "continuum_true" not in ds
    # continuum-normalised: the noise-free flux is <= 1 and ~1 between lines
    ft = ds["flux_true"].values
    assert ft.max() <= 1.0 + 1e-9 and ft.min() > 0.0
    assert np.median(ft) > 0.97


def test_reproducible_with_seed():
    a = sim.simulate_survey(6, instrument=NARROW, rng=5)
    b = sim.simulate_survey(6, instrument=NARROW, rng=5)
    c = sim.simulate_survey(6, instrument=NARROW, rng=6)
    for var in ("flux", "ivar", "mask", *LABELS, "snr"):
        np.testing.assert_array_equal(a[var].values, b[var].values)
    assert not np.allclose(a["TEFF"].values, c["TEFF"].values)


def test_result_does_not_depend_on_chunking(monkeypatch):
    labels = sim.draw_labels(7, rng=9)
    whole = sim.simulate_spectra(labels, NARROW, rng=9, return_noiseless=True)
    monkeypatch.setattr(opacity, "_CHUNK_ELEMENTS", 1)  # one star per chunk
    one_by_one = sim.simulate_spectra(labels, NARROW, rng=9, return_noiseless=True)
    np.testing.assert_allclose(one_by_one["flux_true"].values, whole["flux_true"].values, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(one_by_one["mask"].values, whole["mask"].values)
    np.testing.assert_allclose(one_by_one["flux"].values, whole["flux"].values, rtol=0, atol=1e-12)


def test_masked_pixels_have_zero_ivar(apogee_small):
    ds = apogee_small
    mask, ivar, flux = ds["mask"].values, ds["ivar"].values, ds["flux"].values
    no_info = (mask & (sim.MASK_BITS["BADPIX"] | sim.MASK_BITS["WINDOW"])) != 0
    np.testing.assert_array_equal(ivar == 0.0, no_info)
    assert np.all(ivar[~no_info] > 0)
    assert np.all(np.isnan(flux[no_info]))  # garbage flux where there is no information
    assert np.all(np.isfinite(flux[~no_info]))
    window = sim.APOGEE.window_mask()
    assert window.any()
    assert np.all((mask[:, window] & sim.MASK_BITS["WINDOW"]) != 0)
    assert np.all((mask[:, ~window] & sim.MASK_BITS["WINDOW"]) == 0)
    # random bad pixels: binomial count around the requested fraction
    bad = (mask & sim.MASK_BITS["BADPIX"]) != 0
    n_pix = bad.size
    expected = 0.005 * n_pix
    assert abs(bad.sum() - expected) < 5 * math.sqrt(expected)


def test_measured_snr_matches_requested(apogee_small):
    ds = apogee_small
    flux, ivar, ft = ds["flux"].values, ds["ivar"].values, ds["flux_true"].values
    snr = ds["snr"].values
    assert np.all((snr >= 30.0) & (snr <= 250.0))
    for i in range(ds.sizes["star"]):
        good = (ivar[i] > 0) & (ft[i] > 0.99)  # continuum pixels
        m = int(good.sum())
        assert m > 1000
        # flux * sqrt(ivar) / continuum = snr + e / flux_true, e ~ N(0, 1): its median
        # is snr with sampling error 1.2533 / sqrt(m) (in S/N units)
        measured = np.median(flux[i, good] * np.sqrt(ivar[i, good]) / ft[i, good])
        assert abs(measured - snr[i]) < 5 * 1.2533 * 1.011 / math.sqrt(m), i
        # the noise is Gaussian with unit variance in units of 1 / sqrt(ivar)
        chi = (flux[i, good] - ft[i, good]) * np.sqrt(ivar[i, good])
        assert abs(chi.std() - 1.0) < 5 / math.sqrt(2 * m)


def test_snr_forms():
    lab = reference_labels(3)
    ds = sim.simulate_spectra(lab, NARROW, snr=80.0, rng=1)
    np.testing.assert_array_equal(ds["snr"].values, 80.0)
    good = ds["ivar"].values > 0
    np.testing.assert_allclose(ds["ivar"].values[good], 80.0**2)
    ds = sim.simulate_spectra(lab, NARROW, snr=[20, 40, 60], rng=1)
    np.testing.assert_array_equal(ds["snr"].values, [20, 40, 60])
    snr = sim.simulate_spectra(reference_labels(2000), sim.Instrument("T", ((15700, 15702),), 22500), rng=1)["snr"]
    logs = np.log(snr.values)
    # log-uniform in [log 30, log 250]: mean at the midpoint
    lo, hi = math.log(30), math.log(250)
    assert abs(logs.mean() - 0.5 * (lo + hi)) < 5 * (hi - lo) / math.sqrt(12 * 2000)


def test_label_input_forms_agree():
    lab = sim.draw_labels(4, rng=2)
    arr = np.column_stack([lab[k] for k in LABELS])
    a = noiseless(lab, NARROW)
    b = noiseless(arr, NARROW)
    c = noiseless(xr.Dataset({k: ("star", v) for k, v in lab.items()}), NARROW)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_netcdf_round_trip(tmp_path, apogee_small):
    path = tmp_path / "mock.nc"
    apogee_small.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf") as back:
        np.testing.assert_array_equal(back["ivar"].values, apogee_small["ivar"].values)
        assert back.attrs["instrument"] == "APOGEE"


# --------------------------------------------------------------------------------------
# physics
# --------------------------------------------------------------------------------------


def species_flux(kind, labels):
    lines = sim.default_line_list(sim.APOGEE)
    return noiseless(labels, NARROW if kind != "hydrogen" else sim.APOGEE, line_list=lines.select(lines.kind == kind))


@pytest.mark.parametrize("kind", ["fe1", "alpha"])
def test_metal_lines_deepen_with_abundance(kind):
    lo = reference_labels(FE_H=-0.3)
    hi = reference_labels(FE_H=0.2)
    f_lo, f_hi = species_flux(kind, lo), species_flux(kind, hi)
    # every pixel is at least as deep, strong lines clearly deeper
    assert np.all(f_hi <= f_lo + 1e-12)
    assert np.max(f_lo - f_hi) > 0.03
    a_lo, a_hi = species_flux(kind, reference_labels(ALPHA_FE=0.0)), species_flux(kind, reference_labels(ALPHA_FE=0.3))
    if kind == "alpha":
        assert np.all(a_hi <= a_lo + 1e-12) and np.max(a_lo - a_hi) > 0.03
    else:  # iron-peak lines do not know about [alpha/Fe]
        np.testing.assert_allclose(a_hi, a_lo, atol=1e-12)


def test_alpha_enhancement_acts_on_alpha_lines_in_full_spectrum():
    lines = sim.default_line_list(sim.APOGEE)
    base = noiseless(reference_labels(), NARROW)
    enhanced = noiseless(reference_labels(ALPHA_FE=0.3), NARROW)
    wl = NARROW.wavelength_grid()
    mg = [w for w, s in zip(lines.wavelength, lines.species, strict=True) if s == "Mg I" and 15700 < w < 15790]
    assert mg
    at_mg = [int(np.argmin(np.abs(wl - w))) for w in mg]
    assert np.all(enhanced[0, at_mg] < base[0, at_mg] - 0.005)


def test_ionised_molecular_and_hydrogen_lines_respond_to_teff_logg():
    def ew(kind, **changes):
        return np.sum(1.0 - species_flux(kind, reference_labels(**changes)))

    assert ew("fe2", LOGG=1.5) > 1.2 * ew("fe2", LOGG=3.2)  # gravity sensitive
    assert ew("molecule", TEFF=4000.0, LOGG=1.5) > 2.0 * ew("molecule", TEFF=4800.0, LOGG=2.6)
    assert ew("hydrogen", TEFF=5200.0) > 2.0 * ew("hydrogen", TEFF=4500.0)
    assert ew("fe1", TEFF=4200.0) > ew("fe1", TEFF=5000.0)  # Boltzmann / Saha: stronger when cool


def test_flux_is_not_quadratic_in_labels():
    labels = sim.draw_labels(300, rng=21)
    flux = noiseless(labels, sim.APOGEE)
    x = np.column_stack([labels[k] for k in LABELS])
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    design = [np.ones(len(x))] + [x[:, i] for i in range(4)]
    design += [x[:, i] * x[:, j] for i in range(4) for j in range(i, 4)]
    design = np.column_stack(design)
    coef, *_ = np.linalg.lstsq(design, flux, rcond=None)
    rms = np.sqrt(np.mean((flux - design @ coef) ** 2, axis=0))
    strong = (1.0 - flux.mean(axis=0)) > 0.1
    assert strong.sum() > 100
    assert np.median(rms[strong]) > 3e-3
    assert np.mean(rms[strong] > 1e-3) > 0.9


def test_radial_velocity_shifts_lines():
    lab = reference_labels(1)
    rest = noiseless(lab, NARROW)
    v = C_KMS * math.expm1(3 * NARROW.log_step)  # exactly 3 pixels to the red
    shifted = sim.simulate_spectra(lab, NARROW, snr=100.0, rng=0, rv=v, bad_pixel_fraction=0.0, return_noiseless=True)
    assert shifted["wavelength"].attrs["frame"] == "observed"
    assert shifted["rv"].values[0] == pytest.approx(v)
    np.testing.assert_allclose(shifted["flux_true"].values[0, 3:], rest[0, :-3], atol=1e-8)


def test_unnormalised_lamost_like_spectra():
    lab = sim.draw_labels(4, rng=8)
    ds = sim.simulate_spectra(lab, sim.LAMOST, snr=50.0, rng=3, normalised=False, rv="random", return_noiseless=True)
    assert ds.attrs["normalised"] == 0 and ds["wavelength"].attrs["frame"] == "observed"
    assert np.all(np.abs(ds["rv"].values) < 300)
    cont = ds["continuum_true"].values
    assert np.all(cont > 0)
    norm = ds["flux_true"].values / cont
    assert norm.max() <= 1.0 + 1e-9 and np.median(norm) > 0.85
    # the continuum is not flat (black body and calibration polynomial)
    assert np.all(cont.max(axis=1) / cont.min(axis=1) > 1.2)
    # noise sigma = continuum / snr
    good = ds["ivar"].values > 0
    sky = (ds["mask"].values & sim.MASK_BITS["SKYLINE"]) != 0
    plain = good & ~sky
    np.testing.assert_allclose(np.sqrt(1.0 / ds["ivar"].values[plain]), cont[plain] / 50.0, rtol=1e-12)
    # sky-line residuals: flagged, noisier, but not masked
    assert sky.any() and np.all(ds["ivar"].values[sky & good] < (50.0 / cont[sky & good]) ** 2)
    np.testing.assert_array_equal(ds["ivar"].values == 0, (ds["mask"].values & 3) != 0)


# --------------------------------------------------------------------------------------
# survey pipelines
# --------------------------------------------------------------------------------------


def test_lamost_pipeline_offsets_follow_formulas():
    n = 4000
    truth = sim.draw_labels(n, rng=12)
    rep = sim.pipeline_labels(truth, survey="lamost", rng=13)
    assert "ALPHA_FE" not in rep
    t, g, f = truth["TEFF"], truth["LOGG"], truth["FE_H"]
    expected = {
        "TEFF": sim.lamost_teff_offset(t, g, f),
        "LOGG": sim.lamost_logg_offset(t, g, f),
        "FE_H": sim.lamost_feh_offset(f, t, g),
    }
    for k, offset in expected.items():
        sigma = sim.PIPELINE_NOISE["lamost"][k]
        resid = rep[k] - truth[k] - offset
        assert abs(resid.mean()) < 5 * sigma / math.sqrt(n), k
        assert abs(resid.std() - sigma) < 5 * sigma / math.sqrt(2 * n), k
        # no label dependence left once the documented offset is removed
        for lab in (t, g, f):
            assert abs(np.corrcoef(resid, lab)[0, 1]) < 5 / math.sqrt(n), k
        np.testing.assert_array_equal(rep[f"e_{k}"], sigma)
    # the documented formulas themselves
    assert sim.lamost_teff_offset(4800.0) == pytest.approx(80.0)
    assert sim.lamost_teff_offset(5300.0) == pytest.approx(110.0)
    assert sim.lamost_logg_offset(4800.0, 2.5) == pytest.approx(0.20)
    assert sim.lamost_logg_offset(5000.0, 3.5) == pytest.approx(0.20 + 0.08 + 0.02)
    assert sim.lamost_feh_offset(-0.3) == pytest.approx(-0.08)
    assert sim.lamost_feh_offset(0.2) == pytest.approx(-0.13)


def test_apogee_pipeline_is_unbiased():
    n = 4000
    truth = sim.draw_labels(n, rng=14)
    rep = sim.pipeline_labels(truth, survey="APOGEE", rng=15)
    assert set(LABELS) <= set(rep)
    for k in LABELS:
        sigma = sim.PIPELINE_NOISE["apogee"][k]
        resid = rep[k] - truth[k]
        assert abs(resid.mean()) < 5 * sigma / math.sqrt(n), k
        assert abs(resid.std() - sigma) < 5 * sigma / math.sqrt(2 * n), k
    again = sim.pipeline_labels(truth, survey="apogee", rng=15)
    np.testing.assert_array_equal(again["TEFF"], rep["TEFF"])


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sim.draw_labels(-1), "n must be"),
        (lambda: sim.draw_labels(2.5), "integer"),
        (lambda: sim.draw_labels(True), "integer"),
        (lambda: sim.draw_labels(10, population="halo"), "unknown population"),
        (lambda: sim.draw_labels(10, rng="seed"), "rng"),
        (lambda: sim.simulate_survey(0), "n_stars"),
        (lambda: sim.simulate_survey(5, population="bulge"), "unknown population"),
        (lambda: sim.simulate_survey(5, instrument="SDSS"), "unknown instrument"),
        (lambda: sim.simulate_spectra(reference_labels(2), NARROW, snr=0.0), "snr"),
        (lambda: sim.simulate_spectra(reference_labels(2), NARROW, snr=-5.0), "snr"),
        (lambda: sim.simulate_spectra(reference_labels(2), NARROW, snr=(0.0, 10.0)), "snr"),
        (lambda: sim.simulate_spectra(reference_labels(2), NARROW, snr=[10.0, np.nan]), "star 1"),
        (lambda: sim.simulate_spectra(reference_labels(2), NARROW, bad_pixel_fraction=1.5), "bad_pixel_fraction"),
        (lambda: sim.simulate_spectra(reference_labels(2), NARROW, rv=[0.0, 5000.0]), "star 1"),
        (lambda: sim.simulate_spectra(reference_labels(2), NARROW, ids=["a"]), "ids"),
        (lambda: sim.simulate_spectra(reference_labels(2), NARROW, ids=["a", "a"]), "duplicated"),
        (lambda: sim.pipeline_labels(reference_labels(2), survey="gaia"), "unknown survey"),
        (lambda: sim.Instrument("X", arms=((5000.0, 4000.0),), resolving_power=1000.0), "arm 0"),
        (lambda: sim.Instrument("X", arms=((4000.0, 5000.0),), resolving_power=-1.0), "resolving_power"),
        (lambda: sim.make_line_list((10.0, -1.0)), "range"),
    ],
)
def test_bad_input_raises_invalid_input(call, match):
    with pytest.raises(InvalidInputError, match=match):
        call()


def test_bad_labels_raise_label_error():
    lab = reference_labels(3)
    lab["LOGG"][1] = np.nan
    with pytest.raises(LabelError, match=r"LOGG is not finite for star 1"):
        sim.simulate_spectra(lab, NARROW)
    lab = reference_labels(3, TEFF=12000.0)
    with pytest.raises(LabelError, match=r"TEFF = 12000 for star 0 is outside"):
        sim.simulate_spectra(lab, NARROW)
    with pytest.raises(LabelError, match="lack ALPHA_FE"):
        sim.simulate_spectra({k: v for k, v in reference_labels(2).items() if k != "ALPHA_FE"}, NARROW)
    with pytest.raises(LabelError, match=r"shape \(N, 4\)"):
        sim.simulate_spectra(np.zeros((3, 3)), NARROW)
    lab = reference_labels(3)
    lab["FE_H"][2] = np.inf
    with pytest.raises(LabelError, match="FE_H is not finite for star 2"):
        sim.pipeline_labels(lab, survey="lamost")
    # errors are ValueErrors too, for callers that catch the builtin
    with pytest.raises(ValueError):
        sim.draw_labels(-3)
