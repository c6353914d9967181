"""The format registry, atomic writers and read_many's resampling (bayescannon.io)."""

from __future__ import annotations

import gzip
import os
import stat

import numpy as np
import pytest
from astropy.io import fits

from bayescannon import io as bio
from bayescannon import preprocess as pp
from bayescannon.errors import GridMismatchError, InvalidInputError, SurveyFormatError
from bayescannon.io import generic, registry
from bayescannon.pipeline.atomic import current_umask, write_atomic
from bayescannon.spectra import make_spectra

# --------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------


def test_every_format_is_registered_once_with_a_reader():
    names = [f.name for f in registry.FORMATS]
    assert sorted(names) == sorted({"nc", "npz", "bayescannon", "apstar", "aspcapstar", "lamost", "galah"})
    for fmt in registry.FORMATS:
        assert fmt.read_record is not None or fmt.open_dataset is not None, fmt.name
        assert registry.get_format(fmt.name) is fmt
    with pytest.raises(InvalidInputError, match="unknown format 'fits'.*'lamost'"):
        registry.get_format("fits")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("c.nc", "nc"),
        ("c.h5", "nc"),
        ("C.NPZ", "npz"),
        ("apStar-r5-2M00000002+7417074.fits", "apstar"),
        ("asStar-r5-2M00000002+7417074.fits.gz", "apstar"),
        ("aspcapStar-r5-v603-2M00000002+7417074.fits", "aspcapstar"),
        ("spec-55859-F5902_sp01-001.fits.gz", "lamost"),
        ("med-58000-HIP1234_sp01-001.fits", "lamost"),
        ("1704180037012052.fits", "galah"),
    ],
)
def test_formats_guessed_from_the_name_alone(tmp_path, name, expected):
    assert bio.detect_format(tmp_path / name) == expected  # the file does not even exist
    owners = [f.name for f in registry.FORMATS if f.guess_can_open(str(tmp_path / name))]
    assert owners == [expected]


def test_formats_guessed_from_the_content(tmp_path):
    wl = bio.lamost_wavelength(npix=40)
    lam = bio.write_lamost(tmp_path / "a.fits", wl, np.ones(40), np.ones(40), header={"OBSID": 3})
    ap = bio.write_apstar(tmp_path / "b.fits", np.ones(30), np.ones(30), header={"OBJID": "2M1"})
    ds = make_spectra(np.linspace(4000, 4100, 5), np.ones((2, 5)), np.ones((2, 5)), ids=["x", "y"])
    bc = bio.write_spectra(ds, tmp_path / "c.fits")
    assert [bio.detect_format(p) for p in (lam, ap, bc)] == ["lamost", "apstar", "bayescannon"]
    other = tmp_path / "d.fits"
    fits.PrimaryHDU(np.ones(3)).writeto(other)
    with pytest.raises(SurveyFormatError, match="d.fits.*cannot tell"):
        bio.detect_format(other)
    with pytest.raises(SurveyFormatError, match="e.fits.*does not exist"):
        bio.detect_format(tmp_path / "e.fits")
    with pytest.raises(SurveyFormatError, match="f.txt.*unknown file type"):
        bio.detect_format(tmp_path / "f.txt")
    assert bio.read_spectra(ap)["star"].values[0] == "2M1"
    assert bio.read_spectra(bc)["star"].values.tolist() == ["x", "y"]


def test_read_many_refuses_containers_and_unknown_formats(tmp_path):
    ds = make_spectra(np.linspace(4000, 4100, 5), np.ones((2, 5)), np.ones((2, 5)))
    path = bio.write_spectra(ds, tmp_path / "c.npz")
    with pytest.raises(InvalidInputError, match="'npz' is not a survey format"):
        bio.read_many([path])
    with pytest.raises(InvalidInputError, match="unknown format 'xyz'"):
        bio.read_spectra(path, format="xyz")
    with pytest.raises(InvalidInputError, match="no files"):
        bio.read_many([])


def test_generic_module_still_exports_what_other_code_imports():
    from bayescannon.io import container, records

    assert generic.read_spectra is registry.read_spectra and generic.read_many is registry.read_many
    assert generic.detect_format is registry.detect_format
    assert generic._read_npz is container._read_npz and generic._read_bc_fits is container._read_bc_fits
    assert generic._restore is container._restore and generic.write_spectra is bio.write_spectra
    assert generic.SKIPPED_COLUMNS == records.SKIPPED_COLUMNS == ("path", "error", "reason")
    from bayescannon.io.apogee import bits_to_int, mask_bits_attr

    assert bits_to_int(["CRPIX", 0], bio.APOGEE_PIXMASK_BITS) == 3
    assert mask_bits_attr({1: "B", 0: "A"}) == "0:A,1:B"


# --------------------------------------------------------------------------------------
# atomic writers: mode, no overwrite, no debris
# --------------------------------------------------------------------------------------


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value):
        os.umask(value)

    yield set_umask
    os.umask(old)


def every_writer(folder):
    """Write one file with each writer of bayescannon.io; return the paths."""
    wl = bio.lamost_wavelength(npix=30)
    ds = make_spectra(wl, np.ones((2, 30)), np.ones((2, 30)), ids=["a", "b"])
    arm = {"flux": np.ones(20), "relative_error": np.full(20, 0.1), "crval1": 4700.0, "cdelt1": 0.05}
    return [
        bio.write_spectra(ds, folder / "c.nc"),
        bio.write_spectra(ds, folder / "c.npz"),
        bio.write_spectra(ds, folder / "c.fits"),
        bio.write_apstar(folder / "apStar-1.fits", np.ones(30), np.ones(30)),
        bio.write_aspcapstar(folder / "aspcapStar-1.fits", np.ones(30), np.ones(30)),
        bio.write_lamost(folder / "spec-1.fits", wl, np.ones(30), np.ones(30)),
        bio.write_lamost(folder / "spec-2.fits", wl, np.ones(30), np.ones(30), layout="dr8"),
        bio.write_galah_arm(folder / "1234567890123451.fits", **arm),
        *bio.write_galah(folder / "galah", 2, {2: arm}),
    ]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_writers_honour_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask
    paths = every_writer(tmp_path)
    assert len(paths) == 9
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == mode, path
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]  # no temporary files left


def test_writers_never_overwrite_unless_asked(tmp_path):
    paths = every_writer(tmp_path)
    before = {p: p.read_bytes() for p in paths}
    wl = bio.lamost_wavelength(npix=30)
    with pytest.raises(InvalidInputError, match="spec-1.fits exists"):
        bio.write_lamost(tmp_path / "spec-1.fits", wl, np.zeros(30), np.ones(30))
    with pytest.raises(InvalidInputError, match="apStar-1.fits exists"):
        bio.write_apstar(tmp_path / "apStar-1.fits", np.zeros(30), np.ones(30))
    with pytest.raises(InvalidInputError, match="c.nc exists"):
        bio.write_spectra(make_spectra(wl, np.zeros((1, 30)), np.ones((1, 30))), tmp_path / "c.nc")
    assert all(p.read_bytes() == before[p] for p in paths)
    bio.write_lamost(tmp_path / "spec-1.fits", wl, np.zeros(30), np.ones(30), overwrite=True, dtype=np.float64)
    assert bio.read_lamost(tmp_path / "spec-1.fits")["flux"].values[0].tolist() == [0.0] * 30
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_write_atomic_leaves_nothing_when_the_writer_fails_or_a_file_appears(tmp_path):
    target = tmp_path / "sub" / "out.bin"

    def fails(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, fails)
    assert not target.exists() and list(target.parent.iterdir()) == []

    def someone_else_writes_first(tmp):
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")

    with pytest.raises(InvalidInputError, match="out.bin exists"):
        write_atomic(target, someone_else_writes_first)
    assert target.read_bytes() == b"theirs" and list(target.parent.iterdir()) == [target]
    write_atomic(target, lambda tmp: tmp.write_bytes(b"mine"), overwrite=True)
    assert target.read_bytes() == b"mine"


def test_compressed_fits_written_by_suffix(tmp_path):
    wl = bio.lamost_wavelength(npix=30)
    flux = np.linspace(1, 2, 30)
    path = bio.write_lamost(tmp_path / "spec-9.fits.gz", wl, flux, np.ones(30), dtype=np.float64)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    with gzip.open(path) as fh:
        assert fh.read(9) == b"SIMPLE  ="
    for engine in ("auto", "astropy"):
        np.testing.assert_array_equal(bio.read_lamost(path, engine=engine)["flux"].values[0], flux)


# --------------------------------------------------------------------------------------
# read_many(resample_to=...) is preprocess.resample of the stacked spectra
# --------------------------------------------------------------------------------------


def test_resample_to_equals_resampling_after_reading(tmp_path):
    rng = np.random.default_rng(5)
    wl = bio.lamost_wavelength(npix=300)
    paths = []
    for i in range(4):
        ormask = rng.integers(0, 3, wl.size) * (rng.random(wl.size) < 0.05)
        ivar = rng.uniform(0.5, 2.0, wl.size)
        ivar[rng.integers(0, wl.size, 5)] = 0.0
        paths.append(
            bio.write_lamost(
                tmp_path / f"spec-{i}.fits",
                wl,
                1 + rng.normal(0, 0.1, wl.size),
                ivar,
                ormask=ormask,
                header={"OBSID": i},
                dtype=np.float64,
            )
        )
    grid = np.linspace(wl[3] + 0.37, wl[-5], 211)
    direct = bio.read_lamost_many(paths, mask="ormask", resample_to=grid)
    after = pp.resample(bio.read_lamost_many(paths, mask="ormask"), grid)
    for var in ("flux", "ivar", "mask"):
        np.testing.assert_array_equal(direct[var].values, after[var].values)
    np.testing.assert_array_equal(direct["wavelength"].values, grid)
    assert "resampled onto a 211-pixel grid" in direct.attrs["history"]
    with pytest.raises(InvalidInputError, match="strictly increasing"):
        bio.read_lamost_many(paths, resample_to=grid[::-1])
    with pytest.raises(GridMismatchError, match="spec-0.fits.*does not overlap"):
        bio.read_lamost_many(paths, resample_to=np.linspace(100.0, 200.0, 10))
