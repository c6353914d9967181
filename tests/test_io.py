"""Tests of the survey readers/writers and container formats (bayescannon.io)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from bayescannon import io as bio
from bayescannon import preprocess as pp
from bayescannon.errors import GridMismatchError, InvalidInputError, SurveyFormatError
from bayescannon.io.fits import read_fits_images
from bayescannon.spectra import make_spectra

ENGINES = ["fast", "astropy"]


def lamost_star(p=400, seed=0, z=0.0):
    rng = np.random.default_rng(seed)
    wl = bio.lamost_wavelength(npix=p)
    flux = 100 + rng.normal(0, 1, p)
    ivar = rng.uniform(0.5, 2.0, p)
    ivar[5] = 0.0
    return wl, flux, ivar


# --------------------------------------------------------------------------------------
# LAMOST
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("layout", ["dr5", "dr8"])
def test_lamost_round_trip_exact(tmp_path, engine, layout):
    wl, flux, ivar = lamost_star()
    andmask = np.zeros(wl.size, int)
    andmask[7] = 2**3
    header = {"Z": 0.00123, "Z_ERR": 1e-5, "OBSID": 424242, "SNRG": 55.5, "DESIG": "J000000.00+000000.0"}
    path = bio.write_lamost(
        tmp_path / "spec-1.fits", wl, flux, ivar, andmask=andmask, header=header, layout=layout, dtype=np.float64
    )
    ds = bio.read_lamost(path, engine=engine)
    np.testing.assert_array_equal(ds["flux"].values[0], flux)
    np.testing.assert_array_equal(ds["ivar"].values[0], ivar)
    np.testing.assert_array_equal(ds["wavelength"].values, wl)
    assert ds["mask"].values[0, 7] == 8 and ds["mask"].dtype == np.uint32
    assert ds["star"].values[0] == "424242"
    assert ds["redshift"].values[0] == pytest.approx(0.00123)
    assert ds["snr_g"].values[0] == pytest.approx(55.5)
    assert ds["desig"].values[0] == "J000000.00+000000.0"
    assert ds["wavelength"].attrs == {"units": "Angstrom", "medium": "vacuum", "frame": "observed"}
    assert ds.attrs["survey"] == "LAMOST"


def test_lamost_float32_layout_and_keywords(tmp_path):
    wl, flux, ivar = lamost_star()
    path = bio.write_lamost(tmp_path / "spec-2.fits", wl, flux, ivar, header={"VACUUM": False, "Z": -9999})
    with fits.open(path) as hdul:
        assert hdul[0].data.shape == (5, wl.size)
        assert hdul[0].header["BITPIX"] == -32
    ds = bio.read_lamost(path, id_from="filename")
    np.testing.assert_array_equal(ds["flux"].values[0], flux.astype(np.float32).astype(np.float64))
    assert ds["wavelength"].attrs["medium"] == "air"
    assert np.isnan(ds["redshift"].values[0])  # -9999 means "not measured"
    assert ds["star"].values[0] == "spec-2.fits"


def test_lamost_reject_bits(tmp_path):
    wl, flux, ivar = lamost_star()
    ormask = np.zeros(wl.size, int)
    ormask[[10, 11]] = [1, 2**5]
    path = bio.write_lamost(tmp_path / "spec-3.fits", wl, flux, ivar, ormask=ormask)
    ds = bio.read_lamost(path, mask="ormask", reject_bits=["NODATA"])
    assert ds["ivar"].values[0, 11] == 0 and ds["ivar"].values[0, 10] > 0


def test_lamost_redshift_feeds_rest_frame(tmp_path):
    """The Z keyword read from the header drives to_rest_frame."""
    z = 4.0e-4
    wl = bio.lamost_wavelength(npix=2000)
    line_rest = 4500.0
    flux = 1.0 - 0.6 * np.exp(-0.5 * ((wl - line_rest * (1 + z)) / 3.0) ** 2)
    path = bio.write_lamost(
        tmp_path / "spec-z.fits", wl, flux, np.full(wl.size, 1e4), header={"Z": z}, dtype=np.float64
    )
    ds = bio.read_lamost(path)
    rest = pp.to_rest_frame(ds)
    f = rest["flux"].values[0]
    w = rest["wavelength"].values
    sel = np.abs(w - line_rest) < 15
    centroid = np.sum(w[sel] * (1 - f[sel])) / np.sum(1 - f[sel])
    assert centroid == pytest.approx(line_rest, abs=0.05)
    assert rest["wavelength"].attrs["frame"] == "rest"


@pytest.mark.parametrize("engine", ENGINES)
def test_lamost_bad_inputs_name_the_file(tmp_path, engine):
    wl, flux, ivar = lamost_star()
    no_z = bio.write_lamost(tmp_path / "spec-noz.fits", wl, flux, ivar, header={"Z": None})
    with pytest.raises(SurveyFormatError, match="spec-noz.fits.*Z"):
        bio.read_lamost(no_z, engine=engine)
    four = tmp_path / "spec-4rows.fits"
    fits.PrimaryHDU(np.ones((4, 50), np.float32)).writeto(four)
    with pytest.raises(SurveyFormatError, match="spec-4rows.fits.*shape"):
        bio.read_lamost(four, engine=engine)
    backwards = bio.write_lamost(tmp_path / "spec-back.fits", wl[::-1], flux, ivar)
    with pytest.raises(SurveyFormatError, match="spec-back.fits.*increasing"):
        bio.read_lamost(backwards, engine=engine)
    junk = tmp_path / "spec-junk.fits"
    junk.write_bytes(b"this is not a FITS file" * 10)
    with pytest.raises(SurveyFormatError, match="spec-junk.fits"):
        bio.read_lamost(junk, engine=engine)
    with pytest.raises(SurveyFormatError, match="missing.fits.*does not exist"):
        bio.read_lamost(tmp_path / "missing.fits", engine=engine)


def test_lamost_truncated_file(tmp_path):
    wl, flux, ivar = lamost_star()
    path = bio.write_lamost(tmp_path / "spec-t.fits", wl, flux, ivar)
    raw = path.read_bytes()
    path.write_bytes(raw[: 2880 + 100])
    with pytest.raises(SurveyFormatError, match="spec-t.fits"):
        bio.read_lamost(path)


# --------------------------------------------------------------------------------------
# APOGEE
# --------------------------------------------------------------------------------------


def apstar_arrays(p=300, rows=4, seed=1):
    rng = np.random.default_rng(seed)
    flux = 500 + rng.normal(0, 5, (rows, p))
    err = rng.uniform(1, 3, (rows, p))
    mask = np.zeros((rows, p), int)
    return flux, err, mask


@pytest.mark.parametrize("engine", ENGINES)
def test_apstar_round_trip_and_masks(tmp_path, engine):
    flux, err, mask = apstar_arrays()
    err[0, 3] = 0.0
    err[0, 4] = np.inf
    err[0, 5] = 1e10
    mask[0, 6] = 2**1  # CRPIX: rejected by default
    mask[0, 7] = 2**9  # PERSIST_HIGH: kept by default
    header = {"OBJID": "2M00000002+7417074", "SNR": 123.0, "VHELIO": -12.5, "RA": 0.0083, "DEC": 74.285}
    path = bio.write_apstar(
        tmp_path / "apStar-r5-2M00000002+7417074.fits", flux, err, mask, header=header, dtype=np.float64
    )
    ds = bio.read_apstar(path, engine=engine)
    assert ds["star"].values[0] == "2M00000002+7417074"
    np.testing.assert_array_equal(ds["wavelength"].values, bio.apogee_wavelength(npix=flux.shape[1]))
    np.testing.assert_array_equal(ds["flux"].values[0, 8:], flux[0, 8:])
    np.testing.assert_array_equal(ds["ivar"].values[0, 8:], 1.0 / err[0, 8:] ** 2)
    assert list(ds["ivar"].values[0, 3:8] == 0) == [True, True, True, True, False]
    assert ds["mask"].values[0, 6] == 2 and ds["mask"].values[0, 7] == 512
    assert ds["snr"].values[0] == 123.0 and ds["rv"].values[0] == -12.5
    assert ds["nvisits"].values[0] == 2
    assert ds["wavelength"].attrs["frame"] == "rest" and ds["wavelength"].attrs["medium"] == "vacuum"
    visit = bio.read_apstar(path, row=3, reject_bits=None, engine=engine)
    np.testing.assert_array_equal(visit["flux"].values[0], flux[3])
    none = bio.read_apstar(path, reject_bits=None, engine=engine)
    assert none["ivar"].values[0, 6] > 0
    names = bio.read_apstar(path, reject_bits=["PERSIST_HIGH"], engine=engine)
    assert names["ivar"].values[0, 7] == 0 and names["ivar"].values[0, 6] > 0


def test_apstar_one_visit_file_and_id_from_filename(tmp_path):
    flux, err, _ = apstar_arrays(rows=1)
    path = bio.write_apstar(tmp_path / "apStar-r5-2M11111111-2222222.fits", flux[0], err[0], header={"OBJID": None})
    with fits.open(path) as hdul:
        assert hdul[1].data.ndim == 1 and len(hdul) == 10
    ds = bio.read_apstar(path)
    assert ds["star"].values[0] == "2M11111111-2222222"
    with pytest.raises(SurveyFormatError, match="row=2"):
        bio.read_apstar(path, row=2)


@pytest.mark.parametrize("engine", ENGINES)
def test_apstar_bad_inputs(tmp_path, engine):
    flux, err, mask = apstar_arrays(rows=1)
    good = bio.write_apstar(tmp_path / "apStar-good.fits", flux, err, mask)
    with fits.open(good) as hdul:
        hdus = [h.copy() for h in hdul]
    del hdus[1].header["CRVAL1"]
    fits.HDUList(hdus).writeto(tmp_path / "apStar-nocrval.fits")
    with pytest.raises(SurveyFormatError, match="apStar-nocrval.fits.*CRVAL1"):
        bio.read_apstar(tmp_path / "apStar-nocrval.fits", engine=engine)
    with fits.open(good) as hdul:
        fits.HDUList([h.copy() for h in hdul[:3]]).writeto(tmp_path / "apStar-3hdu.fits")
    with pytest.raises(SurveyFormatError, match="apStar-3hdu.fits.*4 HDUs"):
        bio.read_apstar(tmp_path / "apStar-3hdu.fits", engine=engine)
    with fits.open(good) as hdul:
        hdus = [h.copy() for h in hdul]
    hdus[1].header["CUNIT1"] = "furlongs"
    fits.HDUList(hdus).writeto(tmp_path / "apStar-unit.fits")
    with pytest.raises(SurveyFormatError, match="apStar-unit.fits.*furlongs"):
        bio.read_apstar(tmp_path / "apStar-unit.fits", engine=engine)
    with fits.open(good) as hdul:
        hdus = [h.copy() for h in hdul]
    hdus[2].data = hdus[2].data[:, :-1]
    fits.HDUList(hdus).writeto(tmp_path / "apStar-shape.fits")
    with pytest.raises(SurveyFormatError, match="apStar-shape.fits.*shapes"):
        bio.read_apstar(tmp_path / "apStar-shape.fits", engine=engine)


def test_aspcapstar_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    flux = 1 + rng.normal(0, 0.01, 250)
    err = np.full(250, 0.01)
    err[:10] = 0.0  # a chip gap
    model = np.ones(250) * 0.99
    path = bio.write_aspcapstar(
        tmp_path / "aspcapStar-r5-v603-2M00000002+7417074.fits",
        flux,
        err,
        model,
        header={"OBJID": "2M00000002+7417074"},
        dtype=np.float64,
    )
    ds, m = bio.read_aspcapstar(path, return_model=True)
    assert ds.attrs["normalised"] is True
    np.testing.assert_array_equal(ds["flux"].values[0], flux)
    assert np.all(ds["ivar"].values[0, :10] == 0)
    np.testing.assert_array_equal(ds["ivar"].values[0, 10:], 1 / err[10:] ** 2)
    np.testing.assert_array_equal(m[0], model)


def test_apstar_many_skips_bad_files(tmp_path, caplog):
    paths = []
    for i in range(3):
        flux, err, _ = apstar_arrays(rows=1, seed=i)
        header = {"OBJID": f"2M0000000{i}+0000000"}
        paths.append(bio.write_apstar(tmp_path / f"apStar-{i}.fits", flux, err, header=header))
    bad = tmp_path / "apStar-bad.fits"
    bad.write_bytes(b"garbage")
    paths.insert(1, bad)
    with pytest.raises(SurveyFormatError, match="apStar-bad.fits"):
        bio.read_apstar_many(paths)
    with caplog.at_level(logging.WARNING):
        ds, skipped = bio.read_apstar_many(paths, on_error="skip", return_skipped=True)
    assert ds.sizes["star"] == 3
    assert list(skipped["path"]) == [str(bad)]
    assert skipped["error"][0] == "SurveyFormatError"
    assert "skipped 1" in caplog.text


# --------------------------------------------------------------------------------------
# GALAH
# --------------------------------------------------------------------------------------


def galah_arms(seed=0, p=120):
    rng = np.random.default_rng(seed)
    starts = {1: 4715.0, 2: 5650.0, 3: 6480.0, 4: 7590.0}
    arms = {}
    for ccd, start in starts.items():
        counts = 2000 + rng.normal(0, 20, p)
        arms[ccd] = {
            "flux": counts,
            "relative_error": np.full(p, 0.02),
            "normalised_flux": counts / 2000.0,
            "crval1": start,
            "cdelt1": 0.046,
        }
    return arms


@pytest.mark.parametrize("engine", ENGINES)
def test_galah_four_arms_combined(tmp_path, engine):
    arms = galah_arms()
    # write in a scrambled order: the reader sorts arms by wavelength
    scrambled = {k: arms[k] for k in (3, 1, 4, 2)}
    bio.write_galah(tmp_path, 170418003701205, scrambled, header={"RA": 10.5, "DEC": -40.0}, dtype=np.float64)
    ds = bio.read_galah(170418003701205, tmp_path, engine=engine)
    assert ds.sizes["pixel"] == 4 * 120
    wl = ds["wavelength"].values
    assert np.all(np.diff(wl) > 0)
    expected_wl = np.concatenate([a["crval1"] + a["cdelt1"] * np.arange(120.0) for _, a in sorted(arms.items())])
    np.testing.assert_array_equal(wl, expected_wl)
    norm = np.concatenate([a["normalised_flux"] for _, a in sorted(arms.items())])
    np.testing.assert_array_equal(ds["flux"].values[0], norm)
    np.testing.assert_allclose(ds["ivar"].values[0], 1 / (0.02 * norm) ** 2, rtol=1e-12)
    assert ds.attrs["normalised"] is True and ds["wavelength"].attrs["medium"] == "air"
    assert ds["ra"].values[0] == 10.5 and ds["star"].values[0] == "170418003701205"
    raw = bio.read_galah(tmp_path / "1704180037012052.fits", normalised=False, engine=engine)
    counts = np.concatenate([a["flux"] for _, a in sorted(arms.items())])
    np.testing.assert_array_equal(raw["flux"].values[0], counts)
    assert raw.attrs["normalised"] is False


def test_galah_bad_inputs(tmp_path):
    arms = galah_arms()
    bio.write_galah(tmp_path, 1, {k: arms[k] for k in (1, 2, 3)})
    with pytest.raises(SurveyFormatError, match="14.fits.*ccd 4"):
        bio.read_galah(1, tmp_path)
    ds = bio.read_galah(1, tmp_path, missing_arms="skip")
    assert ds.sizes["pixel"] == 3 * 120 and ds["n_arms"].values[0] == 3
    overlap = dict(arms)
    overlap[2] = dict(arms[2], crval1=4716.0)
    bio.write_galah(tmp_path, 2, overlap)
    with pytest.raises(SurveyFormatError, match="overlap"):
        bio.read_galah(2, tmp_path)
    bio.write_galah(tmp_path, 4, arms)
    with fits.open(tmp_path / "43.fits") as hdul:
        hdus = [h.copy() for h in hdul]
    del hdus[4].header["CDELT1"]
    fits.HDUList(hdus).writeto(tmp_path / "43.fits", overwrite=True)
    with pytest.raises(SurveyFormatError, match="43.fits.*CDELT1"):
        bio.read_galah(4, tmp_path)
    bio.read_galah(4, tmp_path, normalised=False)  # HDU 0 still has its wavelength solution
    bio.write_galah(tmp_path, 3, arms)
    with fits.open(tmp_path / "31.fits") as hdul:
        fits.HDUList([h.copy() for h in hdul[:2]]).writeto(tmp_path / "31.fits", overwrite=True)
    with pytest.raises(SurveyFormatError, match="31.fits.*5 HDUs"):
        bio.read_galah(3, tmp_path)


def test_galah_many_needs_a_common_grid(tmp_path):
    for sid, shift in ((11, 0.0), (12, 0.01)):
        arms = galah_arms(seed=sid)
        for a in arms.values():
            a["crval1"] += shift
        bio.write_galah(tmp_path, sid, arms)
    with pytest.raises(GridMismatchError, match="resample_to"):
        bio.read_galah_many([11, 12], tmp_path)
    grid = np.concatenate([np.linspace(s + 0.1, s + 5.0, 50) for s in (4715.0, 5650.0, 6480.0, 7590.0)])
    ds = bio.read_galah_many([11, 12], tmp_path, resample_to=grid)
    assert ds.sizes["star"] == 2 and ds.sizes["pixel"] == grid.size
    assert np.all(ds["ivar"].values > 0)


# --------------------------------------------------------------------------------------
# container formats and generic reading
# --------------------------------------------------------------------------------------


def small_container(n=3, p=40, seed=0):
    rng = np.random.default_rng(seed)
    wl = np.linspace(4000.0, 4100.0, p)
    flux = rng.normal(1, 0.1, (n, p))
    ivar = rng.uniform(1, 2, (n, p))
    ivar[0, :3] = 0
    mask = rng.integers(0, 4, (n, p)).astype(np.uint32)
    ds = make_spectra(
        wl,
        flux,
        ivar,
        ids=[f"s{i}" for i in range(n)],
        mask=mask,
        attrs={"survey": "TEST", "normalised": False, "history": "made"},
        snr=rng.uniform(10, 20, n),
        name=np.array(["a", "bb", "ccc"][:n]),
        all_masked=np.array([False, True, False][:n]),
    )
    ds["wavelength"].attrs.update(medium="vacuum", frame="rest")
    return ds


@pytest.mark.parametrize("suffix", [".nc", ".npz", ".fits"])
def test_container_round_trip(tmp_path, suffix):
    ds = small_container()
    path = bio.write_spectra(ds, tmp_path / f"c{suffix}")
    back = bio.read_spectra(path)
    for var in ("flux", "ivar", "mask", "snr"):
        np.testing.assert_array_equal(back[var].values, ds[var].values)
    np.testing.assert_array_equal(back["wavelength"].values, ds["wavelength"].values)
    assert list(back["star"].values) == ["s0", "s1", "s2"]
    assert list(back["name"].values) == ["a", "bb", "ccc"]
    assert back["all_masked"].dtype == bool and list(back["all_masked"].values) == [False, True, False]
    assert back["mask"].dtype == np.uint32
    assert back.attrs["survey"] == "TEST" and back.attrs["normalised"] is False
    assert back["wavelength"].attrs["frame"] == "rest"
    with pytest.raises(InvalidInputError, match="exists"):
        bio.write_spectra(ds, path)
    bio.write_spectra(ds, path, overwrite=True)


def test_container_bad_inputs(tmp_path):
    ds = small_container()
    with pytest.raises(SurveyFormatError, match="x.txt.*unknown file type"):
        bio.read_spectra(tmp_path / "x.txt")
    np.savez(tmp_path / "bad.npz", flux=np.ones((2, 3)), ivar=np.ones((2, 3)))
    with pytest.raises(SurveyFormatError, match="bad.npz.*wavelength.*ids"):
        bio.read_spectra(tmp_path / "bad.npz")
    path = bio.write_spectra(ds, tmp_path / "c.fits")
    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul]
    hdus[-2].header["BUNIT"] = "parsec"
    fits.HDUList(hdus).writeto(tmp_path / "unit.fits")
    with pytest.raises(SurveyFormatError, match="unit.fits.*parsec"):
        bio.read_spectra(tmp_path / "unit.fits", format="bayescannon")
    hdus[-2].header["BUNIT"] = "nm"
    fits.HDUList(hdus).writeto(tmp_path / "nm.fits")
    back = bio.read_spectra(tmp_path / "nm.fits", format="bayescannon")
    np.testing.assert_allclose(back["wavelength"].values, 10 * ds["wavelength"].values)
    fits.HDUList([h for h in hdus if h.name != "IVAR"]).writeto(tmp_path / "noivar.fits")
    with pytest.raises(SurveyFormatError, match="noivar.fits.*IVAR"):
        bio.read_spectra(tmp_path / "noivar.fits", format="bayescannon")


def test_read_many_lamost_grids(tmp_path, caplog):
    paths = []
    for i, p in enumerate((400, 400, 380)):
        wl, flux, ivar = lamost_star(p=p, seed=i)
        paths.append(bio.write_lamost(tmp_path / f"spec-{i}.fits", wl, flux, ivar, header={"OBSID": i}))
    with pytest.raises(GridMismatchError, match="grid='common'"):
        bio.read_many(paths)
    ds = bio.read_many(paths, grid="common")
    assert ds.sizes["pixel"] == 380 and ds.sizes["star"] == 3
    # duplicated ids are skipped, not fatal
    wl, flux, ivar = lamost_star(p=400, seed=9)
    dup = bio.write_lamost(tmp_path / "spec-dup.fits", wl, flux, ivar, header={"OBSID": 0})
    with caplog.at_level(logging.WARNING):
        ds, skipped = bio.read_lamost_many(paths[:2] + [dup], on_error="skip", return_skipped=True)
    assert ds.sizes["star"] == 2 and "already read" in skipped["reason"][0]
    grid = np.linspace(3800, 3900, 30)
    ds = bio.read_lamost_many(paths, resample_to=grid)
    np.testing.assert_array_equal(ds["wavelength"].values, grid)


def test_detect_format_and_dispatch(tmp_path):
    wl, flux, ivar = lamost_star()
    p = bio.write_lamost(tmp_path / "obs.fits", wl, flux, ivar, header={"OBSID": 5})
    assert bio.detect_format(p) == "lamost"
    assert bio.read_spectra(p)["star"].values[0] == "5"
    a = bio.write_apstar(tmp_path / "x.fits", *apstar_arrays(rows=1)[:2], header={"OBJID": "2M1"})
    assert bio.detect_format(a) == "apstar"
    c = bio.write_spectra(small_container(), tmp_path / "c.fits")
    assert bio.detect_format(c) == "bayescannon"
    assert bio.detect_format(tmp_path / "1234567890123451.fits") == "galah"


def test_read_labels(tmp_path):
    t = Table({"APOGEE_ID": [" 2M1", "2M2", "2M3"], "TEFF": [4500.0, -9999.0, 5000.0], "LOGG": [2.5, 3.0, np.nan]})
    t.write(tmp_path / "labels.csv", format="ascii.csv")
    t.write(tmp_path / "labels.fits")
    for name in ("labels.csv", "labels.fits"):
        lab = bio.read_labels(tmp_path / name, id_column="APOGEE_ID")
        assert list(lab["APOGEE_ID"]) == ["2M1", "2M2", "2M3"]
        assert lab["TEFF"].mask[1] and not lab["TEFF"].mask[0]
        assert lab["LOGG"].mask[2]
    with pytest.raises(SurveyFormatError, match="labels.csv.*TMASS_ID"):
        bio.read_labels(tmp_path / "labels.csv", id_column="TMASS_ID")
    with pytest.raises(SurveyFormatError, match="nope.csv"):
        bio.read_labels(tmp_path / "nope.csv")
    # a spectra/posterior file given where a table belongs: the message says what a table is
    (tmp_path / "post.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(SurveyFormatError, match=r"post.nc.*FITS, ECSV, CSV or plain text, and \.nc is none"):
        bio.read_labels(tmp_path / "post.nc")


def test_read_labels_missing_values_never_become_numbers(tmp_path):
    # issue 11: empty cells, "n/a", float32 sentinels and FITS nulls are masked, not numbers
    (tmp_path / "l.csv").write_text("ID,TEFF,LOGG,NAME\n1,4500,n/a,a\n2,,3.0,b\n3,-999,2.0,n/a\n4,4800,99.99,d\n")
    lab = bio.read_labels(tmp_path / "l.csv", id_column="ID")
    assert lab["TEFF"].mask.tolist() == [False, True, True, False]
    assert lab["LOGG"].mask.tolist() == [True, False, False, True]
    assert lab["LOGG"].dtype.kind == "f" and lab["LOGG"][1] == 3.0  # "n/a" made the text column numeric
    assert list(lab["NAME"]) == ["a", "b", "n/a", "d"]  # a genuine text column stays text
    kept = bio.read_labels(tmp_path / "l.csv", id_column="ID", missing_values=())
    assert kept["TEFF"][2] == -999 and not kept["TEFF"].mask[2]
    t = Table({"ID": ["a", "b"], "LOGG": np.array([99.99, 2.5], dtype=np.float32)})
    t.write(tmp_path / "l.fits")
    lab = bio.read_labels(tmp_path / "l.fits", id_column="ID")
    assert lab["LOGG"].mask.tolist() == [True, False]  # float32(99.99) != 99.99 exactly


def test_read_many_skips_a_fifo_instead_of_hanging(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    flux, err, _ = apstar_arrays(rows=1)
    good = bio.write_apstar(tmp_path / "apStar-0.fits", flux, err, header={"OBJID": "2M00000000+0000000"})
    fifo = tmp_path / "apStar-1.fits"
    os.mkfifo(fifo)
    ds, skipped = bio.read_apstar_many([good, fifo], on_error="skip", return_skipped=True)
    assert ds.sizes["star"] == 1
    assert list(skipped["path"]) == [str(fifo)] and "FIFO" in skipped["reason"][0]
    with pytest.raises(SurveyFormatError, match="apStar-1.fits.*FIFO"):
        read_fits_images(fifo, 2)


def test_fast_reader_matches_astropy_on_unsigned_and_scaled(tmp_path):
    data = np.arange(12, dtype=np.uint16).reshape(3, 4) + 60000
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data)]).writeto(tmp_path / "u.fits")
    fast = read_fits_images(tmp_path / "u.fits", 2, "fast")
    slow = read_fits_images(tmp_path / "u.fits", 2, "astropy")
    np.testing.assert_array_equal(fast[1][1], slow[1][1])
    hdu = fits.PrimaryHDU(np.arange(6, dtype=np.int16).reshape(2, 3))
    hdu.header["BSCALE"] = 0.5
    hdu.writeto(tmp_path / "s.fits")
    fast = read_fits_images(tmp_path / "s.fits", 1, "auto")  # falls back to astropy
    np.testing.assert_array_equal(fast[0][1], np.arange(6).reshape(2, 3) * 0.5)
    with pytest.raises(InvalidInputError, match="engine"):
        read_fits_images(tmp_path / "s.fits", 1, "cfitsio")


def test_round_trip_of_xarray_container_keeps_every_value(tmp_path):
    ds = small_container()
    back = bio.read_spectra(bio.write_spectra(ds, tmp_path / "c.nc"))
    for name in ("flux", "ivar", "mask", "snr", "name", "all_masked"):
        np.testing.assert_array_equal(back[name].values, ds[name].values, err_msg=name)
        assert back[name].dtype == ds[name].dtype, name
    np.testing.assert_array_equal(back["wavelength"].values, ds["wavelength"].values)
    assert list(back["star"].values) == list(ds["star"].values)
