"""Files of the two-survey mock: APOGEE ids and LAMOST designations from sky positions,
APOGEE ``apStar``/``aspcapStar`` and LAMOST spectrum files in the real layouts, and the
deliberately corrupted LAMOST files (:data:`CORRUPTIONS`) the pipeline must survive.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np

from bayescannon.errors import InvalidInputError
from bayescannon.io import write_apstar, write_aspcapstar, write_lamost

logger = logging.getLogger(__name__)

__all__ = ["CORRUPTIONS", "apogee_id", "lamost_designation"]

#: Kinds of corrupted LAMOST files the mock can write, with what the pipeline should say.
CORRUPTIONS: dict[str, str] = {
    "not_fits": "a text file named like a LAMOST spectrum",
    "truncated": "a LAMOST FITS file cut short",
    "missing_z": "primary header without the Z (redshift) keyword",
    "bad_redshift": "Z = -9999 (the pipeline found no redshift)",
    "bad_wavelength": "wavelength row not increasing",
    "no_overlap": "wavelength grid (near infrared) that does not overlap the optical grid",
    "all_masked": "every pixel has ivar = 0",
    "missing_radec": "primary header without RA and DEC",
    "duplicate_obsid": "a second file claiming an OBSID that another file already has",
}


# --------------------------------------------------------------------------------------
# identifiers and positions
# --------------------------------------------------------------------------------------


def _sexagesimal(ra, dec):
    ra = np.mod(np.asarray(ra, dtype=float), 360.0)
    dec = np.asarray(dec, dtype=float)
    h = ra / 15.0
    hh = np.floor(h)
    mm = np.floor((h - hh) * 60.0)
    ss = ((h - hh) * 60.0 - mm) * 60.0
    sign = np.where(dec < 0, "-", "+")
    d = np.abs(dec)
    dd = np.floor(d)
    dm = np.floor((d - dd) * 60.0)
    ds = ((d - dd) * 60.0 - dm) * 60.0
    return hh, mm, ss, sign, dd, dm, ds


def apogee_id(ra, dec) -> np.ndarray:
    """2MASS-style APOGEE identifiers ``2MHHMMSSss+DDMMSSs`` from positions (degrees).

    Parameters
    ----------
    ra, dec : array_like
        Right ascension and declination in degrees.

    Returns
    -------
    ndarray of str
    """
    hh, mm, ss, sign, dd, dm, ds = _sexagesimal(ra, dec)
    # truncate (not round) as 2MASS designations do, so 59.999 s never becomes 60
    return np.asarray(
        [
            f"2M{int(a):02d}{int(b):02d}{int(np.floor(c * 100)):04d}{s}{int(d):02d}{int(e):02d}{int(np.floor(f * 10)):03d}"
            for a, b, c, s, d, e, f in zip(hh, mm, ss, sign, dd, dm, ds, strict=True)
        ]
    )


def lamost_designation(ra, dec) -> np.ndarray:
    """LAMOST-style designations ``JHHMMSS.ss+DDMMSS.s`` from positions (degrees)."""
    hh, mm, ss, sign, dd, dm, ds = _sexagesimal(ra, dec)
    return np.asarray(
        [
            f"J{int(a):02d}{int(b):02d}{np.floor(c * 100) / 100:05.2f}{s}{int(d):02d}{int(e):02d}{np.floor(f * 10) / 10:04.1f}"
            for a, b, c, s, d, e, f in zip(hh, mm, ss, sign, dd, dm, ds, strict=True)
        ]
    )


def _sky_positions(rng, n):
    """Uniform positions on the sky north of dec = -10 deg (LAMOST's sky)."""
    ra = rng.uniform(0.0, 360.0, n)
    sin_lo, sin_hi = np.sin(np.radians(-10.0)), np.sin(np.radians(70.0))
    dec = np.degrees(np.arcsin(rng.uniform(sin_lo, sin_hi, n)))
    return ra, dec


def _jitter(rng, ra, dec, sigma_arcsec):
    """Positions moved by Gaussian astrometric errors of ``sigma_arcsec`` per axis."""
    d_dec = rng.normal(0.0, sigma_arcsec, ra.size) / 3600.0
    d_ra = rng.normal(0.0, sigma_arcsec, ra.size) / 3600.0 / np.cos(np.radians(dec))
    return np.mod(ra + d_ra, 360.0), dec + d_dec


def _offset_position(ra, dec, sep_arcsec, angle):
    """A position ``sep_arcsec`` from (ra, dec) at position angle ``angle`` (radians)."""
    d_dec = sep_arcsec * np.cos(angle) / 3600.0
    d_ra = sep_arcsec * np.sin(angle) / 3600.0 / np.cos(np.radians(dec))
    return np.mod(ra + d_ra, 360.0), dec + d_dec


# --------------------------------------------------------------------------------------
# writers of the two surveys
# --------------------------------------------------------------------------------------


def _lamost_masks(mask):
    """Simulator mask bits -> LAMOST and/or masks (BADCCD = bit 0, BRIGHTSKY = bit 3)."""
    mask = np.asarray(mask, dtype=np.uint32)
    andmask = np.zeros(mask.shape, np.int32)
    andmask[(mask & 1) != 0] |= 1 << 0  # BADPIX -> BADCCD
    andmask[(mask & 2) != 0] |= 1 << 3  # masked window -> BRIGHTSKY
    ormask = andmask.copy()
    ormask[(mask & 4) != 0] |= 1 << 3  # sky-line residual -> BRIGHTSKY in some exposure
    return andmask, ormask


def _lamost_filename(k: int, obsid: int) -> str:
    mjd = 55_800 + (obsid % 2000)
    plan = f"F{5900 + (k // 250):04d}"
    return f"spec-{mjd}-{plan}_sp{(k // 16) % 16 + 1:02d}-{k % 250 + 1:03d}.fits"


def _write_lamost_files(lamost_dir, ds, obsid, ra, dec, desig, z, z_err, layout, progressbar):
    """One LAMOST file per star of ``ds`` (observed frame, un-normalised)."""
    wl = np.asarray(ds["wavelength"].values)
    flux = np.asarray(ds["flux"].values)
    ivar = np.asarray(ds["ivar"].values)
    andmask, ormask = _lamost_masks(ds["mask"].values)
    flux = np.where(np.isfinite(flux) & (ivar > 0), flux, np.where(np.isfinite(flux), flux, 0.0))
    snr = np.asarray(ds["snr"].values)
    paths = []
    it = range(flux.shape[0])
    if progressbar:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="writing LAMOST files", unit="file")
    for k in it:
        lay = layout if layout != "mixed" else ("dr5" if k % 2 == 0 else "dr8")
        header = {
            "OBSID": int(obsid[k]),
            "DESIG": str(desig[k]),
            "RA": float(ra[k]),
            "DEC": float(dec[k]),
            "Z": float(z[k]),
            "Z_ERR": float(z_err[k]),
            "SNRU": float(0.3 * snr[k]),
            "SNRG": float(snr[k]),
            "SNRR": float(1.3 * snr[k]),
            "SNRI": float(1.4 * snr[k]),
            "SNRZ": float(1.1 * snr[k]),
            "CLASS": "STAR",
        }
        path = Path(lamost_dir) / _lamost_filename(k, int(obsid[k]))
        write_lamost(path, wl, flux[k], ivar[k], andmask[k], ormask[k], header=header, layout=lay, overwrite=True)
        paths.append(path)
    return paths


def _write_apogee_files(apogee_dir, ds, ids, ra, dec, kinds, progressbar):
    """apStar and/or aspcapStar files for every star of ``ds`` (rest frame)."""
    wl = np.asarray(ds["wavelength"].values)
    crval1 = float(np.log10(wl[0]))
    cdelt1 = float(np.log10(wl[-1] / wl[0]) / (wl.size - 1))
    flux = np.asarray(ds["flux"].values)
    ivar = np.asarray(ds["ivar"].values)
    cont = np.asarray(ds["continuum_true"].values)
    model = np.asarray(ds["flux_true"].values) / cont
    mask = np.asarray(ds["mask"].values, dtype=np.uint32)
    good = ivar > 0
    error = np.where(good, 1.0 / np.sqrt(np.where(good, ivar, 1.0)), 1.0e10)
    flux = np.where(good & np.isfinite(flux), flux, 0.0)
    pixmask = np.where((mask & 1) != 0, 1, 0).astype(np.int16)  # BADPIX
    snr = np.asarray(ds["snr"].values)
    paths = []
    it = range(flux.shape[0])
    if progressbar:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="writing APOGEE files", unit="star")
    for k in it:
        header = {
            "OBJID": str(ids[k]),
            "SNR": float(snr[k]),
            "RA": float(ra[k]),
            "DEC": float(dec[k]),
            "VHELIO": 0.0,
            "NVISITS": 1,
        }
        if "apstar" in kinds:
            p = Path(apogee_dir) / f"apStar-r5-{ids[k]}.fits"
            write_apstar(p, flux[k], error[k], pixmask[k], header=header, crval1=crval1, cdelt1=cdelt1, overwrite=True)
            paths.append(p)
        if "aspcapstar" in kinds:
            p = Path(apogee_dir) / f"aspcapStar-r5-{ids[k]}.fits"
            write_aspcapstar(
                p,
                flux[k] / cont[k],
                error[k] / cont[k],
                model[k],
                header=header,
                crval1=crval1,
                cdelt1=cdelt1,
                overwrite=True,
            )
            paths.append(p)
    return paths


# --------------------------------------------------------------------------------------
# corruption of LAMOST files
# --------------------------------------------------------------------------------------


def _corrupt(kind: str, path: Path, lamost_dir: Path, obsid_taken: int = -1) -> str:
    """Damage one LAMOST file in place (or, for ``duplicate_obsid``, add a copy of it that
    claims ``obsid_taken``); return the name of the damaged or added file."""
    from astropy.io import fits

    if kind == "not_fits":
        path.write_text("SIMPLE = this is not a FITS file; it only has the name of one\n")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])
    elif kind in ("missing_z", "bad_redshift", "missing_radec"):
        with fits.open(path, mode="update") as hdul:
            h = hdul[0].header
            if kind == "missing_z":
                del h["Z"]
            elif kind == "bad_redshift":
                h["Z"] = -9999.0
            else:
                del h["RA"]
                del h["DEC"]
    elif kind in ("bad_wavelength", "no_overlap", "all_masked"):
        with fits.open(path, mode="update") as hdul:
            if hdul[0].data is not None:  # DR5 layout: rows flux, ivar, wavelength, ...
                data = hdul[0].data.copy()
                if kind == "bad_wavelength":
                    data[2] = data[2][::-1]
                elif kind == "no_overlap":
                    data[2] = data[2] * 2.6  # ~10,000-23,000 A
                else:
                    data[1] = 0.0
                hdul[0].data = data
            else:  # DR8 layout: one-row table in HDU1
                t = hdul[1].data
                if kind == "bad_wavelength":
                    t["WAVELENGTH"][0] = t["WAVELENGTH"][0][::-1]
                elif kind == "no_overlap":
                    t["WAVELENGTH"][0] = t["WAVELENGTH"][0] * 2.6
                else:
                    t["IVAR"][0] = 0.0
    elif kind == "duplicate_obsid":
        new = lamost_dir / (path.stem + "-reduced-again.fits")
        shutil.copyfile(path, new)
        with fits.open(new, mode="update") as hdul:
            hdul[0].header["OBSID"] = int(obsid_taken)
        return new.name
    else:  # pragma: no cover - guarded by the caller
        raise InvalidInputError(f"unknown corruption {kind!r}; known: {', '.join(CORRUPTIONS)}")
    return path.name
