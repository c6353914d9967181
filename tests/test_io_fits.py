"""The FITS reading of bayescannon.io gives what astropy.io.fits gives.

Headers card by card (the fast header parser against ``astropy.io.fits.Header`` on the
same bytes), image data of every kind of HDU, and the values that come out of every
public reader when a file holds long CONTINUE strings, HIERARCH keywords, blank cards
and COMMENT/HISTORY cards.
"""

from __future__ import annotations

import gzip
import itertools
import shutil

import numpy as np
import pytest
from astropy.io import fits

from bayescannon import io as bio
from bayescannon.io.fits import (
    ENGINES,
    FastHeader,
    _Fallback,
    _fast_fits_images,
    parse_header,
    read_fits_images,
)

LONG = "J" + "".join(f"{i:03d}-" for i in range(40)) + "end"  # 164 characters: CONTINUE cards
LONG_ID = "2M" + "0123456789" * 9  # 92 characters


def card(text: str) -> bytes:
    assert len(text) <= 80, text
    return text.ljust(80).encode("ascii")


def header_bytes(cards: list[str]) -> bytes:
    raw = b"".join(card(c) for c in cards) + card("END")
    return raw + b" " * (-len(raw) % 2880)


PLAIN_CARDS = [
    "SIMPLE  =                    T / conforms",
    "BITPIX  =                  -32",
    "NAXIS   =                    0",
    "STR     = 'LAMOST  '           / a string padded to 8",
    "SPACES  = '  lead and trail  ' / leading blanks are kept",
    "QUOTE   = 'it''s'              / a doubled quote",
    "EMPTY   = ''                   / empty string",
    "SLASH   = 'a/b'                / a slash inside the string",
    "AMP     = 'ends with &'        / an ampersand without CONTINUE",
    "DATE-OBS= '2014-01-01T12:00:00.0' / colons that are not a record-valued card",
    "RVKC    = 'AXIS.1: 1'          / a record-valued keyword card",
    "INT     =                   42",
    "NEGINT  =                  -17 / negative",
    "PLUSINT =                +0012 / sign and leading zeros",
    "BIGINT  = 123456789012345678901234567890",
    "FLOAT   =                 1.5",
    "EXPF    =            -1.25E-03",
    "EXPD    =             1.25D+03 / Fortran exponent",
    "LOWEXP  =               2.5e-2",
    "DOTONLY =                  .25",
    "TRAIL   =                  10.",
    "NOCOMM  =                 3.0/no blank before the comment",
    "TRUE    =                    T",
    "FALSE   =                    F",
    "UNDEF   =                      / no value",
    "CPLX    = (1.0, -2.5)          / complex",
    "NUMSTR  = '1.5'                / a number in quotes stays a string",
    "DUP     =                    1 / first",
    "DUP     =                    2 / second: astropy returns the first",
    "LONGSTR = 'abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmn&'",
    "CONTINUE  'second part&'",
    "CONTINUE  'third part' / comment of the long string",
    "STRNOAMP= 'no ampersand'",
    "CONTINUE  'orphan continue'",
    "COMMENT a comment card",
    "COMMENT   another, with = sign",
    "HISTORY step one",
    "HISTORY step two",
    "COMMENT = 'looks like a value'",
    "HISTORY =                    3",
    "",
    "        a blank-keyword card with text",
    "",
    "FOLLOW  =                    7",
]


def compare_headers(fast, ref: fits.Header, extra_keys=()) -> None:
    keys = list(ref.keys()) + [k.lower() for k in ref] + list(extra_keys)
    keys += ["ABSENT", "NOSUCH", "HIERARCH NOSUCH", "A VERY LONG NAME", "", "END", "CONTINUE", "COMMENT", "HISTORY"]
    for key in keys:
        assert (key in fast) == (key in ref), key
        expected = ref.get(key, "<absent>")
        got = fast.get(key, "<absent>")
        if isinstance(expected, fits.header._HeaderCommentaryCards):
            assert list(got) == list(expected), key
        else:
            assert type(got) is type(expected) and got == expected, (key, got, expected)
            if key in ref:
                assert fast[key] == ref[key]
            else:
                with pytest.raises(KeyError):
                    fast[key]
    assert list(fast.keys()) == list(ref.keys())
    assert len(fast) == len(ref)


def test_fast_header_matches_astropy_card_by_card():
    buf = header_bytes(PLAIN_CARDS)
    fast = parse_header(buf)
    assert isinstance(fast, FastHeader)  # the fast parser is what is under test here
    ref = fits.Header.fromstring(buf)
    compare_headers(fast, ref)
    # the values the old hand-written parser got wrong
    assert fast["LONGSTR"] == "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijklmnsecond partthird part"
    assert fast["DUP"] == 1 and fast["RVKC"] == "AXIS.1: 1" and fast["RVKC.AXIS.1"] == 1.0
    assert list(fast["COMMENT"]) == ["a comment card", "  another, with = sign", "= 'looks like a value'"]
    assert list(fast["HISTORY"]) == ["step one", "step two", "=                    3"]
    assert fast["UNDEF"] is None and fast["CPLX"] == complex(1.0, -2.5)


def test_fast_header_matches_astropy_on_random_headers():
    rng = np.random.default_rng(11)
    chars = "abcdefghijklmnopqrstuvwxyz ABC'&/=:.0123456789-"
    for _ in range(20):
        h = fits.Header()
        for i in range(60):
            kind = rng.integers(0, 7)
            key = f"K{i:03d}" + "".join(rng.choice(list("ABCXYZ_-09"), size=rng.integers(0, 4)))
            if kind == 0:
                value = "".join(rng.choice(list(chars), size=rng.integers(0, 90)))
            elif kind == 1:
                value = int(rng.integers(-(2**62), 2**62)) // int(10 ** rng.integers(0, 18))
            elif kind == 2:
                value = float(rng.normal() * 10.0 ** rng.integers(-300, 300))
            elif kind == 3:
                value = bool(rng.integers(0, 2))
            elif kind == 4:
                value = float(rng.integers(-5, 5))  # 3.0, -0.0 ...
            elif kind == 5:
                h.add_comment("".join(rng.choice(list(chars), size=rng.integers(0, 120))))
                continue
            else:
                h.add_blank("".join(rng.choice(list(chars), size=rng.integers(0, 20))))
                continue
            long_string = isinstance(value, str) and len(value) > 40
            comment = "" if long_string else "".join(rng.choice(list(chars), size=rng.integers(0, 25)))
            h[key] = (value, comment)
        buf = h.tostring().encode("ascii")
        fast = parse_header(buf)
        assert isinstance(fast, FastHeader)
        compare_headers(fast, fits.Header.fromstring(buf))


VALUE_TOKENS = [
    "1",
    "-3",
    "+4",
    "007",
    "1.",
    ".5",
    "-.5",
    "1E5",
    "1e5",
    "1D5",
    "1d-5",
    "1.5E+300",
    "1E400",
    "-0",
    "T",
    "F",
    "t",
    "TRUE",
    "'abc'",
    "''",
    "'a''b'",
    "'x'''",
    "'  '",
    "'a&'",
    "(1,2)",
    "( 1.0 , -2 )",
    "1 2",
    "1_000",
    "nan",
    "inf",
    "1.5.5",
    "--1",
    "'unterminated",
    "'q' x",
    "1E",
    "E5",
    ".",
    "+",
    "'a'/c",
    "5/c",
    "T/c",
    "'a' / c '",
    "/only",
    "",
    "'it''s'/x'",
    "'a'' / b'",
]


# astropy warns about the invalid cards among these when it parses them: that is its answer too
@pytest.mark.filterwarnings("ignore::astropy.io.fits.verify.VerifyWarning")
@pytest.mark.parametrize("token", VALUE_TOKENS)
def test_fast_header_value_fields_match_astropy(token):
    """Valid and invalid value fields: the same value, or the same exception, as astropy."""

    def value(header):
        try:
            v = header["KEY"]
        except Exception as exc:
            return "raises", type(exc).__name__
        return type(v).__name__, v

    for pre, post in itertools.product(["", "   ", " " * 20], ["", " ", " / comment", "/c", "  / a 'quoted' one"]):
        buf = header_bytes(["SIMPLE  =                    T", "KEY     = " + (pre + token + post)[:70]])
        fast = parse_header(buf)
        assert isinstance(fast, FastHeader)
        assert value(fast) == value(fits.Header.fromstring(buf)), (pre, token, post)


def test_header_with_hierarch_cards_is_astropy():
    cards = [
        *PLAIN_CARDS[:10],
        "HIERARCH ESO DET CHIP NAME = 'chip1' / ESO style",
        "HIERARCH SNR = 55.5 / a short keyword written as HIERARCH",
        "lower   =                    5 / a lower-case keyword",
        *PLAIN_CARDS[10:],
    ]
    buf = header_bytes(cards)
    fast = parse_header(buf)
    ref = fits.Header.fromstring(buf)
    extra = ["HIERARCH ESO DET CHIP NAME", "ESO DET CHIP NAME", "eso det chip name", "HIERARCH SNR", "SNR", "LOWER"]
    compare_headers(fast, ref, extra)
    assert fast["ESO DET CHIP NAME"] == "chip1" and fast["SNR"] == 55.5 and fast["LOWER"] == 5


def test_lower_case_keywords_are_left_to_astropy():
    buf = header_bytes(["SIMPLE  =                    T", "lower   =                    5", "LOWER   =   6"])
    fast = parse_header(buf)
    ref = fits.Header.fromstring(buf)
    assert not isinstance(fast, FastHeader)
    assert fast["LOWER"] == ref["LOWER"] == 5


def test_fast_header_on_every_header_the_writers_make(tmp_path):
    wl = bio.lamost_wavelength(npix=50)
    paths = [
        bio.write_lamost(tmp_path / "spec-1.fits", wl, np.ones(50), np.ones(50), header={"DESIG": LONG}),
        bio.write_lamost(tmp_path / "spec-2.fits", wl, np.ones(50), np.ones(50), layout="dr8"),
        bio.write_apstar(tmp_path / "apStar-1.fits", np.ones((4, 30)), np.ones((4, 30)), header={"OBJID": LONG_ID}),
        bio.write_aspcapstar(tmp_path / "aspcapStar-1.fits", np.ones(30), np.ones(30)),
        bio.write_galah_arm(tmp_path / "1234567890123451.fits", np.ones(30), np.ones(30), crval1=4700.0, cdelt1=0.05),
    ]
    for path in paths:
        with fits.open(path) as hdul:
            refs = [h.header.copy() for h in hdul]
        for engine in ENGINES:
            got = read_fits_images(path, len(refs), engine)
            assert len(got) == len(refs)
            for (header, _), ref in zip(got, refs, strict=True):
                assert isinstance(header, FastHeader) == (engine != "astropy")
                compare_headers(header, ref)


# --------------------------------------------------------------------------------------
# image data: the fast path or its fallback give astropy's arrays
# --------------------------------------------------------------------------------------


def astropy_data(path, n):
    with fits.open(path) as hdul:
        return [None if h.data is None or not h.is_image else np.array(h.data) for h in hdul[:n]]


def check_same_data(path, n):
    expected = astropy_data(path, n)
    for engine in ENGINES:
        got = read_fits_images(path, n, engine)
        assert len(got) == len(expected)
        for (_, data), ref in zip(got, expected, strict=True):
            if ref is None:
                assert data is None
            else:
                assert data.dtype == ref.dtype, (engine, data.dtype, ref.dtype)
                np.testing.assert_array_equal(data, ref)


def test_image_data_of_every_kind_matches_astropy(tmp_path):
    rng = np.random.default_rng(0)
    table = fits.BinTableHDU.from_columns([fits.Column(name="A", format="3E", array=np.ones((4, 3)))])
    hdus = [
        fits.PrimaryHDU(rng.normal(size=(3, 5)).astype(np.float32)),
        fits.ImageHDU(rng.normal(size=7)),  # float64
        fits.ImageHDU(np.arange(12, dtype=np.uint16).reshape(3, 4) + 60000),  # BZERO = 32768
        fits.ImageHDU(np.arange(6, dtype=np.uint32) + 2**31),  # BZERO = 2**31
        fits.ImageHDU(np.arange(6, dtype=np.int16) - 3),
        fits.ImageHDU(np.arange(6, dtype=np.int64)),
        fits.ImageHDU(np.arange(6, dtype=np.uint8)),
        table,  # skipped over: the following image must still be found
        fits.ImageHDU(np.arange(4, dtype=np.float32)),
        fits.ImageHDU(),  # no data
    ]
    blank = fits.ImageHDU(np.array([1, -32768, 3], dtype=np.int16))
    blank.header["BLANK"] = -32768
    hdus.append(blank)
    fits.HDUList(hdus).writeto(tmp_path / "kinds.fits")
    check_same_data(tmp_path / "kinds.fits", len(hdus))
    # gzipped: decompressed by the fast path
    with open(tmp_path / "kinds.fits", "rb") as src, gzip.open(tmp_path / "kinds.fits.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    check_same_data(tmp_path / "kinds.fits.gz", len(hdus))
    for name in ("kinds.fits", "kinds.fits.gz"):  # the fast path read them (no fallback)
        assert len(_fast_fits_images(tmp_path / name, len(hdus) - 1)) == len(hdus) - 1
        with pytest.raises(_Fallback):  # the BLANK image
            _fast_fits_images(tmp_path / name, len(hdus))


def test_files_that_need_astropy_give_astropy_data(tmp_path):
    scaled = fits.PrimaryHDU(np.arange(6, dtype=np.int16).reshape(2, 3))
    scaled.header["BSCALE"] = 0.5
    scaled.header["BZERO"] = 10.0
    scaled.writeto(tmp_path / "scaled.fits")
    check_same_data(tmp_path / "scaled.fits", 1)
    with pytest.raises(_Fallback):
        _fast_fits_images(tmp_path / "scaled.fits", 1)
    signed = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.arange(-3, 3, dtype=np.int8))])
    signed.writeto(tmp_path / "int8.fits")  # BZERO = -128
    check_same_data(tmp_path / "int8.fits", 2)
    comp = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.arange(64, dtype=np.float32).reshape(8, 8))])
    comp.writeto(tmp_path / "tiled.fits")  # a BINTABLE holding a compressed image
    check_same_data(tmp_path / "tiled.fits", 2)
    for name in ("int8.fits", "tiled.fits"):
        with pytest.raises(_Fallback):
            _fast_fits_images(tmp_path / name, 2)
    got = read_fits_images(tmp_path / "tiled.fits", 2, "auto")
    np.testing.assert_array_equal(got[1][1], np.arange(64, dtype=np.float32).reshape(8, 8))


# --------------------------------------------------------------------------------------
# every public reader on files with CONTINUE, HIERARCH, blank and COMMENT/HISTORY cards
# --------------------------------------------------------------------------------------


def add_awkward_cards(path, hdu: int = 0, hierarch: bool = True, **values) -> None:
    """Rewrite ``path`` with blank, COMMENT and HISTORY cards in HDU ``hdu`` and ``values``
    (long strings become CONTINUE cards). With ``hierarch``, also an ESO HIERARCH card,
    and keys "HIERARCH X" are written as HIERARCH cards; without, as ordinary "X" cards
    (the header then stays plain: the fast header parser reads it)."""
    with fits.open(path) as hdul:
        hdus = [h.copy() for h in hdul]
    h = hdus[hdu].header
    h.add_blank("")
    h.add_comment("a COMMENT card: SNR = 1 is not a value")
    h.add_history("a HISTORY card")
    h.add_blank("blank-keyword text")
    if hierarch:
        h["HIERARCH ESO DET CHIP NAME"] = "chip1"
    h["NOTE"] = "x" * 100  # a continued string the readers do not use
    for key, value in values.items():
        if not hierarch:
            key = key.removeprefix("HIERARCH ")
        if key in h and not key.startswith("HIERARCH"):
            del h[key]
        h[key] = value
    fits.HDUList(hdus).writeto(path, overwrite=True)
    if hdu == 0:
        fast = read_fits_images(path, 1, "auto")[0][0]
        assert isinstance(fast, FastHeader) != hierarch  # both header parsers are exercised


@pytest.fixture(params=[False, True], ids=["plain", "hierarch"])
def hierarch(request):
    return request.param


@pytest.fixture
def lamost_file(tmp_path, hierarch):
    wl = bio.lamost_wavelength(npix=60)
    path = bio.write_lamost(
        tmp_path / "spec-awk.fits",
        wl,
        np.full(60, 2.0),
        np.full(60, 4.0),
        header={"OBSID": 77, "SNRG": None, "Z": None},
    )
    add_awkward_cards(
        path, hierarch=hierarch, DESIG=LONG, CLASS="STAR " + "y" * 80, **{"HIERARCH SNRG": 42.5, "HIERARCH Z": 1.5e-4}
    )
    return path


@pytest.mark.parametrize("engine", ENGINES)
def test_lamost_readers_see_what_astropy_sees(lamost_file, engine):
    h = fits.getheader(lamost_file)
    assert h["DESIG"] == LONG and h["SNRG"] == 42.5 and h["Z"] == 1.5e-4  # the file is as intended
    readers = [
        lambda: bio.read_lamost(lamost_file, engine=engine),
        lambda: bio.read_lamost_many([lamost_file], engine=engine),
        lambda: bio.read_many([lamost_file], engine=engine),
        lambda: bio.read_spectra(lamost_file, engine=engine),
    ]
    for read in readers:
        ds = read()
        assert ds["desig"].values[0] == h["DESIG"] == LONG
        assert ds["lamost_class"].values[0] == h["CLASS"]
        assert ds["snr_g"].values[0] == h["SNRG"]
        assert ds["redshift"].values[0] == h["Z"]
        assert ds["star"].values[0] == "77"
    assert bio.read_lamost(lamost_file, id_from="desig", engine=engine)["star"].values[0] == LONG


@pytest.mark.parametrize("engine", ENGINES)
def test_apogee_readers_see_what_astropy_sees(tmp_path, engine, hierarch):
    ap = bio.write_apstar(
        tmp_path / "apStar-awk.fits", np.ones((4, 40)), np.ones((4, 40)), header={"SNR": None, "TELESCOP": None}
    )
    add_awkward_cards(ap, hierarch=hierarch, OBJID=LONG_ID, TELESCOP="apo25m " + "t" * 70, **{"HIERARCH SNR": 123.5})
    add_awkward_cards(ap, hdu=1, hierarch=hierarch)  # and in the header of the flux HDU
    asp = bio.write_aspcapstar(tmp_path / "aspcapStar-awk.fits", np.ones(40), np.ones(40), header={"SNR": None})
    add_awkward_cards(asp, hierarch=hierarch, OBJID=LONG_ID + "b", **{"HIERARCH SNR": 99.0})
    h_ap, h_asp = fits.getheader(ap), fits.getheader(asp)
    for ds in (
        bio.read_apstar(ap, engine=engine),
        bio.read_apstar_many([ap], engine=engine),
        bio.read_many([ap], engine=engine),
        bio.read_spectra(ap, engine=engine),
    ):
        assert ds["star"].values[0] == h_ap["OBJID"] == LONG_ID
        assert ds["telescope"].values[0] == h_ap["TELESCOP"]
        assert ds["snr"].values[0] == h_ap["SNR"] == 123.5
        np.testing.assert_array_equal(ds["wavelength"].values, bio.apogee_wavelength(npix=40))
    for ds in (
        bio.read_aspcapstar(asp, engine=engine),
        bio.read_aspcapstar_many([asp], engine=engine),
        bio.read_spectra(asp, engine=engine),
    ):
        assert ds["star"].values[0] == h_asp["OBJID"] == LONG_ID + "b"
        assert ds["snr"].values[0] == h_asp["SNR"] == 99.0


@pytest.mark.parametrize("engine", ENGINES)
def test_galah_readers_see_what_astropy_sees(tmp_path, engine, hierarch):
    arms = {
        ccd: {"flux": np.full(30, 100.0), "relative_error": np.full(30, 0.01), "crval1": start, "cdelt1": 0.05}
        for ccd, start in ((1, 4715.0), (2, 5650.0), (3, 6480.0), (4, 7590.0))
    }
    paths = bio.write_galah(tmp_path, 123456789012345, arms, header={"RA": None, "DEC": -40.0})
    for i, path in enumerate(paths):
        add_awkward_cards(path, hierarch=hierarch, **{"HIERARCH RA": 10.25})
        add_awkward_cards(path, hdu=4, hierarch=hierarch, CUNIT1="Angstrom " if i % 2 else "Angstroms")
    h = fits.getheader(paths[0])
    for ds in (
        bio.read_galah(123456789012345, tmp_path, engine=engine),
        bio.read_galah_many([123456789012345], tmp_path, engine=engine),
        bio.read_spectra(paths[2], engine=engine),
    ):
        assert ds["ra"].values[0] == h["RA"] == 10.25 and ds["dec"].values[0] == h["DEC"]
        assert ds.sizes["pixel"] == 120


def test_container_fits_with_continued_attributes(tmp_path):
    ds = bio.read_lamost(
        bio.write_lamost(tmp_path / "spec-c.fits", bio.lamost_wavelength(npix=20), np.ones(20), np.ones(20))
    )
    ds.attrs["history"] = "\n".join(f"step {i}: " + "z" * 30 for i in range(5))  # BCATTRS > 68 characters
    path = bio.write_spectra(ds, tmp_path / "c.fits")
    assert "CONTINUE" in fits.getheader(path).tostring()
    assert bio.detect_format(path) == "bayescannon"
    back = bio.read_spectra(path)
    assert back.attrs["history"] == ds.attrs["history"]
