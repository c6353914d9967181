"""Two-instrument mock survey: the same stars seen by an APOGEE-like and a LAMOST-like survey.

:func:`make_mock_survey` draws one population of stars (true ``TEFF``, ``LOGG``,
``FE_H``, ``ALPHA_M``) and a sky position for each, then

* observes a subset with the **APOGEE-like** instrument (:data:`bayescannon.simulate.APOGEE`:
  H band, R = 22,500, high S/N, rest frame) and writes one ``apStar`` and/or one
  ``aspcapStar`` file per star in the real layouts (:func:`bayescannon.io.write_apstar`,
  :func:`bayescannon.io.write_aspcapstar`), plus an ``allStar``-like label catalogue
  whose labels scatter about the truth (:func:`bayescannon.simulate.pipeline_labels`,
  ``survey="apogee"``);
* observes another, overlapping subset with the **LAMOST-like** instrument
  (:data:`bayescannon.simulate.LAMOST`: 3900-8900 A, R = 1,800, lower S/N,
  un-normalised flux with a flux-calibration slope, random radial velocities, sky-line
  residuals) and writes one LAMOST DR2-DR7 (or DR8+) file per star with the redshift
  in the ``Z`` keyword (:func:`bayescannon.io.write_lamost`), plus a LAMOST-like
  pipeline catalogue whose labels carry label-dependent systematic offsets
  (:func:`bayescannon.simulate.lamost_teff_offset` ...) and no [alpha/M].

Sky positions differ between the catalogues by small astrometric errors, so the two
surveys are cross-matched by position (as real LAMOST and APOGEE are); APOGEE ids are
2MASS-style (``2MHHMMSSss+DDMMSSs``) and LAMOST ids are ``OBSID`` numbers.

What makes the mock a test of the pipeline rather than a demonstration:

* **bad reference labels**: a fraction of the APOGEE labels of stars in both surveys
  are catastrophically wrong (a few hundred K in Teff, ~1 dex in logg or ~0.6 dex in
  [Fe/H]) without any flag - what the Ho+2017 section 3 clean-up has to find - and
  another fraction is wrong *and* flagged ``STAR_BAD`` in ``ASPCAPFLAG`` (what the
  quality cuts remove);
* **ambiguous cross-matches**: an APOGEE neighbour 0.5 arcsec from one star, and a
  duplicated APOGEE row (same ``APOGEE_ID``) for another;
* **corrupted LAMOST files** (:data:`CORRUPTIONS`): not FITS at all, truncated,
  missing ``Z``, ``Z = -9999``, wavelengths not increasing, a grid that does not
  overlap the optical, every pixel masked, missing ``RA``/``DEC`` keywords, and a
  second file claiming an ``OBSID`` that is already taken.

Every one of these is recorded in the truth table (``truth.fits``), which also holds
the true labels and the LAMOST pipeline's systematic offset of every star; the
pipeline never reads it (only the optional evaluation of
:func:`bayescannon.survey.transfer.evaluate` does).

Files written in ``outdir``::

    apogee/apStar-r5-<APOGEE_ID>.fits           one per APOGEE star (if requested)
    apogee/aspcapStar-r5-<APOGEE_ID>.fits       one per APOGEE star (if requested)
    lamost/spec-<MJD>-<PLAN>_sp<SP>-<FIBER>.fits one per LAMOST spectrum
    apogee_allstar.fits                         APOGEE label catalogue
    lamost_catalogue.fits                       LAMOST pipeline catalogue
    truth.fits                                  truth (not read by the pipeline)
    transfer.toml                               example configuration (write_config=True)

Examples
--------
>>> from bayescannon.simulate.mocksurvey import make_mock_survey
>>> mock = make_mock_survey("mock", n_both=300, n_lamost_only=100, seed=1)  # doctest: +SKIP
>>> mock.truth["TEFF", "LAMOST_OFFSET_TEFF"][:3]                              # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import MaskedColumn, Table

from bayescannon.core.grid import C_KMS
from bayescannon.errors import InvalidInputError, OutputExistsError
from bayescannon.pipeline.atomic import atomic_path
from bayescannon.simulate.instruments import APOGEE, LAMOST
from bayescannon.simulate.mockfiles import (
    CORRUPTIONS,
    _corrupt,
    _jitter,
    _offset_position,
    _sky_positions,
    _write_apogee_files,
    _write_lamost_files,
    apogee_id,
    lamost_designation,
)
from bayescannon.simulate.populations import (
    PIPELINE_NOISE,
    draw_labels,
    lamost_feh_offset,
    lamost_logg_offset,
    lamost_teff_offset,
    pipeline_labels,
)
from bayescannon.simulate.synthesis import simulate_spectra
from bayescannon.survey.catalogue import write_table

logger = logging.getLogger(__name__)

__all__ = [
    "CORRUPTIONS",
    "LABELS",
    "MockSurvey",
    "apogee_id",
    "example_config",
    "lamost_designation",
    "make_mock_survey",
]

#: Labels of the mock, in the order of the (N, 4) arrays (``ALPHA_M``: [alpha/M]).
LABELS: tuple[str, ...] = ("TEFF", "LOGG", "FE_H", "ALPHA_M")


_DEFAULT_CORRUPTIONS = tuple(CORRUPTIONS)


@dataclass
class MockSurvey:
    """Paths and truth of a mock written by :func:`make_mock_survey`.

    Attributes
    ----------
    outdir : pathlib.Path
    apogee_catalogue, lamost_catalogue, truth_path : pathlib.Path
        The APOGEE ``allStar``-like catalogue, the LAMOST pipeline catalogue and the
        truth table.
    lamost_files, apogee_files : list of pathlib.Path
        Every spectrum file written (corrupted ones included).
    truth : astropy.table.Table
        One row per star (see :func:`make_mock_survey`).
    corrupted : astropy.table.Table
        ``FILENAME``, ``OBSID``, ``KIND``, ``DESCRIPTION`` of every corrupted LAMOST file.
    config_path : pathlib.Path or None
        The example configuration, when written.
    """

    outdir: Path
    apogee_catalogue: Path
    lamost_catalogue: Path
    truth_path: Path
    lamost_files: list = field(default_factory=list)
    apogee_files: list = field(default_factory=list)
    truth: Table | None = None
    corrupted: Table | None = None
    config_path: Path | None = None


# --------------------------------------------------------------------------------------
# the mock
# --------------------------------------------------------------------------------------


def _check_counts(**counts):
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise InvalidInputError(f"{name} must be a non-negative integer; got {value!r}")


def _snr_range(value, name):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} must be a (lo, hi) pair; got {value!r}") from None
    if not (0 < lo <= hi and np.isfinite(hi)):
        raise InvalidInputError(f"{name} must satisfy 0 < lo <= hi; got {value!r}")
    return lo, hi


def make_mock_survey(
    outdir,
    n_both: int = 500,
    n_lamost_only: int = 150,
    n_apogee_only: int = 50,
    *,
    population: str = "giants",
    lamost_snr=(25.0, 250.0),
    apogee_snr=(80.0, 400.0),
    outlier_fraction: float = 0.03,
    flagged_fraction: float = 0.02,
    n_close_pairs: int = 1,
    n_duplicate_ids: int = 1,
    corruptions=_DEFAULT_CORRUPTIONS,
    apogee_spectra=("apstar", "aspcapstar"),
    lamost_layout: str = "dr5",
    position_error_arcsec: float = 0.1,
    rv_sd_kms: float = 40.0,
    redshift_error_kms: float = 1.0,
    write_config: bool = True,
    seed: int = 0,
    overwrite: bool = False,
    progressbar: bool = False,
) -> MockSurvey:
    """Write a two-survey mock (APOGEE-like and LAMOST-like) of the same stars.

    Parameters
    ----------
    outdir : str or path-like
        Folder to write (created; must be empty or absent unless ``overwrite``).
    n_both, n_lamost_only, n_apogee_only : int
        Stars observed by both surveys, by LAMOST only and by APOGEE only.
    population : {"giants", "dwarfs", "mixed"}
        Label distribution (:func:`bayescannon.simulate.draw_labels`).
    lamost_snr, apogee_snr : (float, float)
        Per-pixel S/N ranges (drawn log-uniformly).
    outlier_fraction : float
        Fraction of the stars in both surveys whose APOGEE labels are catastrophically
        wrong without a flag (truth column ``APOGEE_OUTLIER``).
    flagged_fraction : float
        Fraction of the stars in both surveys whose APOGEE labels are wrong and flagged
        ``STAR_BAD`` (bit 23 of ``ASPCAPFLAG``; truth column ``APOGEE_FLAGGED``).
    n_close_pairs : int
        Stars given an APOGEE neighbour 0.5 arcsec away (an extra APOGEE-only row).
    n_duplicate_ids : int
        Stars whose APOGEE row appears twice (same ``APOGEE_ID``).
    corruptions : sequence of str
        Kinds of corrupted LAMOST files to write, one star each (:data:`CORRUPTIONS`);
        ``()`` for none.
    apogee_spectra : sequence of {"apstar", "aspcapstar"}
        APOGEE file types to write (``()``: only the catalogue, much faster).
    lamost_layout : {"dr5", "dr8", "mixed"}
        LAMOST file layout (``"mixed"`` alternates).
    position_error_arcsec : float
        Astrometric error (per axis) of each catalogue's positions.
    rv_sd_kms : float
        Standard deviation of the stars' radial velocities.
    redshift_error_kms : float
        Error of the LAMOST ``Z`` (as a velocity).
    write_config : bool
        Also write ``transfer.toml`` (:func:`example_config`).
    seed : int
        Seed of everything random.
    overwrite : bool
        Write into a non-empty ``outdir``.
    progressbar : bool

    Returns
    -------
    MockSurvey
        Its ``truth`` table (also ``truth.fits``) has one row per star: ``APOGEE_ID``
        (``""`` if not in APOGEE), ``OBSID`` (-1 if not in LAMOST), true ``RA``/``DEC``,
        ``IN_APOGEE``, ``IN_LAMOST``, the true ``TEFF``, ``LOGG``, ``FE_H``, ``ALPHA_M``,
        ``LAMOST_OFFSET_TEFF``/``_LOGG``/``_FE_H`` (systematic LAMOST offsets, no noise),
        ``LAMOST_RV``, ``LAMOST_SNR``, ``APOGEE_SNR``, and the planted problems:
        ``APOGEE_OUTLIER``, ``APOGEE_FLAGGED``, ``BAD_LABEL`` (the label made wrong),
        ``CLOSE_PAIR``, ``DUPLICATE_APOGEE_ID``, ``CORRUPTION`` (kind, ``""`` if none).

    Raises
    ------
    InvalidInputError
        For bad counts, fractions, S/N ranges, corruption kinds or a non-empty
        ``outdir`` without ``overwrite``.
    """
    t0 = time.perf_counter()
    _check_counts(
        n_both=n_both,
        n_lamost_only=n_lamost_only,
        n_apogee_only=n_apogee_only,
        n_close_pairs=n_close_pairs,
        n_duplicate_ids=n_duplicate_ids,
    )
    if n_both + n_lamost_only < 1:
        raise InvalidInputError("the mock needs at least one LAMOST star (n_both + n_lamost_only >= 1)")
    for name, frac in (("outlier_fraction", outlier_fraction), ("flagged_fraction", flagged_fraction)):
        if not 0.0 <= float(frac) < 0.5:
            raise InvalidInputError(f"{name} must be in [0, 0.5); got {frac}")
    lamost_snr = _snr_range(lamost_snr, "lamost_snr")
    apogee_snr = _snr_range(apogee_snr, "apogee_snr")
    corruptions = tuple(corruptions or ())
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise InvalidInputError(f"unknown corruption(s) {unknown}; known: {', '.join(CORRUPTIONS)}")
    n_victims = len(corruptions) + ("duplicate_obsid" in corruptions)
    if len(set(corruptions)) != len(corruptions):
        raise InvalidInputError(f"corruptions must not repeat a kind; got {list(corruptions)}")
    kinds = tuple(str(k).lower() for k in (apogee_spectra or ()))
    bad_kinds = [k for k in kinds if k not in ("apstar", "aspcapstar")]
    if bad_kinds:
        raise InvalidInputError(f"apogee_spectra must name 'apstar' and/or 'aspcapstar'; got {bad_kinds}")
    if lamost_layout not in ("dr5", "dr8", "mixed"):
        raise InvalidInputError(f"lamost_layout must be 'dr5', 'dr8' or 'mixed'; got {lamost_layout!r}")
    n_special = n_close_pairs + n_duplicate_ids
    n_out = int(round(outlier_fraction * n_both))
    n_flag = int(round(flagged_fraction * n_both))
    if n_special + n_out + n_flag > n_both:
        raise InvalidInputError(
            f"n_both={n_both} is too small for {n_out} outliers, {n_flag} flagged stars and "
            f"{n_special} ambiguous cross-matches"
        )
    if n_victims > n_both + n_lamost_only - n_special - n_out - n_flag:
        raise InvalidInputError(
            f"{len(corruptions)} corruption(s) need {n_victims} LAMOST stars without another role; the mock "
            f"has {n_both + n_lamost_only - n_special - n_out - n_flag}"
        )
    outdir = Path(outdir)
    if outdir.exists() and any(outdir.iterdir()) and not overwrite:
        raise OutputExistsError(f"{outdir} exists and is not empty; pass overwrite=True (--overwrite)")
    apogee_dir, lamost_dir = outdir / "apogee", outdir / "lamost"
    for d in (apogee_dir, lamost_dir):
        if d.exists() and overwrite:
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)

    root = np.random.default_rng(seed)
    (g_lab, g_pos, g_role, g_lsp, g_asp, g_lpipe, g_apipe, g_bad, g_rv, g_cor) = root.spawn(10)
    n = n_both + n_lamost_only + n_apogee_only
    truth = draw_labels(n, rng=g_lab, population=population)
    truth["ALPHA_M"] = truth.pop("ALPHA_FE")  # the simulator's [alpha/Fe] is the mock's [alpha/M]
    in_apogee = np.zeros(n, bool)
    in_lamost = np.zeros(n, bool)
    in_lamost[: n_both + n_lamost_only] = True
    in_apogee[:n_both] = True
    in_apogee[n_both + n_lamost_only :] = True
    ra, dec = _sky_positions(g_pos, n)
    ra_a, dec_a = _jitter(g_pos, ra, dec, position_error_arcsec)
    ra_l, dec_l = _jitter(g_pos, ra, dec, position_error_arcsec)
    ids_a = apogee_id(ra, dec)
    obsid = 100_000_000 + np.sort(g_pos.choice(900_000_000, size=n, replace=False))
    desig = lamost_designation(ra, dec)

    # roles among the stars in both surveys: outliers, flagged, ambiguous cross-matches
    both = np.arange(n_both)
    picks = g_role.permutation(both)
    outlier_idx = np.sort(picks[:n_out])
    flagged_idx = np.sort(picks[n_out : n_out + n_flag])
    pair_idx = np.sort(picks[n_out + n_flag : n_out + n_flag + n_close_pairs])
    dup_idx = np.sort(picks[n_out + n_flag + n_close_pairs : n_out + n_flag + n_special])

    # ---- APOGEE: spectra (optional), pipeline labels, catalogue
    ia = np.flatnonzero(in_apogee)
    truth_arr = {k: truth[k] for k in LABELS}
    sim_truth = {"TEFF": truth["TEFF"], "LOGG": truth["LOGG"], "FE_H": truth["FE_H"], "ALPHA_FE": truth["ALPHA_M"]}
    apipe = pipeline_labels({k: v[ia] for k, v in sim_truth.items()}, survey="apogee", rng=g_apipe)
    a_lab = {"TEFF": apipe["TEFF"], "LOGG": apipe["LOGG"], "FE_H": apipe["FE_H"], "ALPHA_M": apipe["ALPHA_FE"]}
    a_err = {"TEFF": apipe["e_TEFF"], "LOGG": apipe["e_LOGG"], "FE_H": apipe["e_FE_H"], "ALPHA_M": apipe["e_ALPHA_FE"]}
    pos_in_a = {int(s): j for j, s in enumerate(ia)}
    aspcapflag = np.zeros(ia.size, np.int64)
    bad_shift = {  # catastrophic errors: (label, magnitude range)
        "TEFF": (350.0, 800.0),
        "LOGG": (0.7, 1.5),
        "FE_H": (0.45, 0.8),
    }
    bad_label = np.full(n, "", dtype=object)
    for s in np.concatenate([outlier_idx, flagged_idx]):
        j = pos_in_a[int(s)]
        label = ("TEFF", "LOGG", "FE_H")[int(g_bad.integers(3))]
        lo, hi = bad_shift[label]
        a_lab[label][j] += g_bad.choice([-1.0, 1.0]) * g_bad.uniform(lo, hi)
        bad_label[s] = label
    for s in flagged_idx:
        aspcapflag[pos_in_a[int(s)]] |= 1 << 23  # STAR_BAD
    a_snr = np.exp(g_apipe.uniform(np.log(apogee_snr[0]), np.log(apogee_snr[1]), ia.size))
    apogee_rows = {
        "APOGEE_ID": ids_a[ia],
        "RA": ra_a[ia],
        "DEC": dec_a[ia],
        "SNR": a_snr,
        "ASPCAPFLAG": aspcapflag,
        "STARFLAG": np.zeros(ia.size, np.int64),
    }
    for k in LABELS:
        apogee_rows[k] = a_lab[k]
        apogee_rows[f"{k}_ERR"] = a_err[k]
    apogee_table = Table(apogee_rows)
    extra_rows = []
    g_extra = np.random.default_rng(g_pos.integers(2**32))
    for s in pair_idx:  # an APOGEE-only neighbour 0.5 arcsec away
        r2, d2 = _offset_position(ra_a[s], dec_a[s], 0.5, g_extra.uniform(0, 2 * np.pi))
        lab = draw_labels(1, rng=g_extra, population=population)
        row = {
            "APOGEE_ID": str(apogee_id([r2], [d2])[0]),
            "RA": float(r2),
            "DEC": float(d2),
            "SNR": float(a_snr.mean()),
            "ASPCAPFLAG": 0,
            "STARFLAG": 0,
        }
        for k in LABELS:
            row[k] = float(lab["ALPHA_FE" if k == "ALPHA_M" else k][0])
            row[f"{k}_ERR"] = float(PIPELINE_NOISE["apogee"]["ALPHA_FE" if k == "ALPHA_M" else k])
        extra_rows.append(row)
    for s in dup_idx:  # the same APOGEE_ID twice (e.g. observed from two telescopes)
        j = pos_in_a[int(s)]
        row = {c: apogee_table[c][j] for c in apogee_table.colnames}
        for k in LABELS:
            row[k] = float(row[k]) + float(
                g_extra.normal(0.0, PIPELINE_NOISE["apogee"]["ALPHA_FE" if k == "ALPHA_M" else k])
            )
        extra_rows.append(row)
    for row in extra_rows:
        apogee_table.add_row(row)
    for k in LABELS:
        apogee_table[k].unit = "K" if k == "TEFF" else None
        apogee_table[f"{k}_ERR"].unit = "K" if k == "TEFF" else None
    apogee_table["RA"].unit = "deg"
    apogee_table["DEC"].unit = "deg"
    apogee_table["ASPCAPFLAG"].description = "APOGEE_ASPCAPFLAG bits (bit 23 STAR_BAD)"
    apogee_table.meta["EXTNAME"] = "ALLSTAR"
    apogee_table.meta["COMMENT"] = ["bayescannon mock APOGEE allStar catalogue (labels ~ truth)"]

    apogee_files: list[Path] = []
    if kinds and ia.size:
        logger.info("simulating %d APOGEE spectra", ia.size)
        sim_lab = {k: v[ia] for k, v in sim_truth.items()}
        ds_a = simulate_spectra(
            sim_lab,
            APOGEE,
            snr=a_snr,
            rng=g_asp,
            normalised=False,
            ids=ids_a[ia],
            return_noiseless=True,
            progressbar=progressbar,
        )
        apogee_files = _write_apogee_files(apogee_dir, ds_a, ids_a[ia], ra_a[ia], dec_a[ia], kinds, progressbar)
        del ds_a

    # ---- LAMOST: spectra, pipeline labels, catalogue
    il = np.flatnonzero(in_lamost)
    l_snr = np.exp(g_lsp.uniform(np.log(lamost_snr[0]), np.log(lamost_snr[1]), il.size))
    rv = g_rv.normal(0.0, rv_sd_kms, il.size)
    logger.info("simulating %d LAMOST spectra", il.size)
    sim_lab = {k: v[il] for k, v in sim_truth.items()}
    ds_l = simulate_spectra(
        sim_lab,
        LAMOST,
        snr=l_snr,
        rng=g_lsp,
        normalised=False,
        rv=rv,
        ids=obsid[il].astype(str),
        progressbar=progressbar,
    )
    beta = rv / C_KMS
    z_true = np.sqrt((1.0 + beta) / (1.0 - beta)) - 1.0
    z_meas = z_true + g_rv.normal(0.0, redshift_error_kms, il.size) / C_KMS
    z_err = np.full(il.size, redshift_error_kms / C_KMS)
    lamost_files = _write_lamost_files(
        lamost_dir, ds_l, obsid[il], ra_l[il], dec_l[il], desig[il], z_meas, z_err, lamost_layout, progressbar
    )
    del ds_l
    lpipe = pipeline_labels({k: v[il] for k, v in sim_truth.items() if k != "ALPHA_FE"}, survey="lamost", rng=g_lpipe)
    lamost_table = Table()
    lamost_table["obsid"] = obsid[il].astype(np.int64)
    lamost_table["designation"] = desig[il]
    lamost_table["ra"] = ra_l[il]
    lamost_table["dec"] = dec_l[il]
    for col, key, unit in (("teff", "TEFF", "K"), ("logg", "LOGG", None), ("feh", "FE_H", None)):
        lamost_table[col] = MaskedColumn(lpipe[key], unit=unit)
        lamost_table[f"{col}_err"] = MaskedColumn(lpipe[f"e_{key}"], unit=unit)
    lamost_table["snrg"] = l_snr
    lamost_table["z"] = z_meas
    lamost_table["filename"] = [p.name for p in lamost_files]
    lamost_table["ra"].unit = "deg"
    lamost_table["dec"].unit = "deg"
    lamost_table.meta["EXTNAME"] = "LRS_STELLAR"
    lamost_table.meta["COMMENT"] = ["bayescannon mock LAMOST catalogue (label-dependent offsets, no [alpha/M])"]

    # ---- corrupted files
    corrupted_rows = []
    corruption = np.full(n, "", dtype=object)
    if corruptions:
        # alternate between stars in both surveys and LAMOST-only stars, avoiding special roles
        special = set(np.concatenate([outlier_idx, flagged_idx, pair_idx, dup_idx]).tolist())
        pool_both = [s for s in g_cor.permutation(n_both).tolist() if s not in special]
        pool_lonly = g_cor.permutation(np.arange(n_both, n_both + n_lamost_only)).tolist()
        pos_in_l = {int(s): j for j, s in enumerate(il)}
        for i, kind in enumerate(corruptions):
            pools = (pool_both, pool_lonly) if i % 2 == 0 else (pool_lonly, pool_both)

            def pop(pools=pools):
                return pools[0].pop() if pools[0] else pools[1].pop()

            s = pop()
            j = pos_in_l[int(s)]
            if kind == "duplicate_obsid":
                # a copy of star s's file that claims the OBSID of another star (the victim)
                if not (pools[0] or pools[1]):
                    raise InvalidInputError("duplicate_obsid needs two LAMOST stars without other roles")
                victim = pop()
                taken = int(obsid[victim])
                name = _corrupt(kind, lamost_files[j], lamost_dir, taken)
                lamost_files.append(lamost_dir / name)
                corruption[victim] = kind
                corrupted_rows.append((name, taken, kind, CORRUPTIONS[kind]))
            else:
                name = _corrupt(kind, lamost_files[j], lamost_dir)
                corruption[s] = kind
                corrupted_rows.append((name, int(obsid[s]), kind, CORRUPTIONS[kind]))
    corrupted = Table(
        rows=corrupted_rows or None,
        names=("FILENAME", "OBSID", "KIND", "DESCRIPTION"),
        dtype=(str, np.int64, str, str),
    )

    # ---- truth
    t = Table()
    t["APOGEE_ID"] = np.where(in_apogee, ids_a, "")
    t["OBSID"] = np.where(in_lamost, obsid, -1).astype(np.int64)
    t["RA"] = ra
    t["DEC"] = dec
    t["IN_APOGEE"] = in_apogee
    t["IN_LAMOST"] = in_lamost
    for k in LABELS:
        t[k] = truth_arr[k]
    t["TEFF"].unit = "K"
    t["LAMOST_OFFSET_TEFF"] = lamost_teff_offset(truth["TEFF"], truth["LOGG"], truth["FE_H"])
    t["LAMOST_OFFSET_LOGG"] = lamost_logg_offset(truth["TEFF"], truth["LOGG"], truth["FE_H"])
    t["LAMOST_OFFSET_FE_H"] = lamost_feh_offset(truth["FE_H"], truth["TEFF"], truth["LOGG"])
    t["LAMOST_OFFSET_TEFF"].unit = "K"
    snr_l = np.full(n, np.nan)
    snr_l[il] = l_snr
    snr_a = np.full(n, np.nan)
    snr_a[ia] = a_snr
    rv_all = np.full(n, np.nan)
    rv_all[il] = rv
    t["LAMOST_RV"] = rv_all
    t["LAMOST_RV"].unit = "km/s"
    t["LAMOST_SNR"] = snr_l
    t["APOGEE_SNR"] = snr_a
    role = np.zeros(n, bool)
    role[outlier_idx] = True
    t["APOGEE_OUTLIER"] = role
    role = np.zeros(n, bool)
    role[flagged_idx] = True
    t["APOGEE_FLAGGED"] = role
    t["BAD_LABEL"] = np.asarray(bad_label, dtype=str)
    role = np.zeros(n, bool)
    role[pair_idx] = True
    t["CLOSE_PAIR"] = role
    role = np.zeros(n, bool)
    role[dup_idx] = True
    t["DUPLICATE_APOGEE_ID"] = role
    t["CORRUPTION"] = np.asarray(corruption, dtype=str)
    t.meta["EXTNAME"] = "TRUTH"
    t.meta["COMMENT"] = ["bayescannon mock: true labels; LAMOST_OFFSET_X = systematic LAMOST offset (no noise)"]

    paths = {
        "apogee": outdir / "apogee_allstar.fits",
        "lamost": outdir / "lamost_catalogue.fits",
        "truth": outdir / "truth.fits",
        "corrupted": outdir / "corrupted_files.fits",
    }
    write_table(apogee_table, paths["apogee"], overwrite=overwrite)
    write_table(lamost_table, paths["lamost"], overwrite=overwrite)
    write_table(t, paths["truth"], overwrite=overwrite)
    write_table(corrupted, paths["corrupted"], overwrite=overwrite)
    mock = MockSurvey(
        outdir=outdir,
        apogee_catalogue=paths["apogee"],
        lamost_catalogue=paths["lamost"],
        truth_path=paths["truth"],
        lamost_files=lamost_files,
        apogee_files=apogee_files,
        truth=t,
        corrupted=corrupted,
    )
    if write_config:
        cfg = outdir / "transfer.toml"
        with atomic_path(cfg, overwrite=overwrite) as tmp:
            tmp.write_text(example_config())
        mock.config_path = cfg
    logger.info(
        "mock survey in %s: %d stars (%d both, %d LAMOST only, %d APOGEE only), %d LAMOST files "
        "(%d corrupted), %d APOGEE files in %.1f s",
        outdir,
        n,
        n_both,
        n_lamost_only,
        n_apogee_only,
        len(lamost_files),
        len(corrupted),
        len(apogee_files),
        time.perf_counter() - t0,
    )
    return mock


def example_config(
    output: str = "transfer_output",
    *,
    n_folds: int = 5,
    cleanup_folds: int = 5,
    truth: str | None = "truth.fits",
) -> str:
    """TOML configuration of ``bayescannon transfer`` for a mock written by :func:`make_mock_survey`.

    Paths are relative to the configuration file (the mock's folder). The same text,
    with comments, is ``examples/transfer.toml``.

    Parameters
    ----------
    output : str
        Output folder of the pipeline.
    n_folds : int
        Folds of the cross-validation step.
    cleanup_folds : int
        Folds of the cross-validated clean-up of the reference set.
    truth : str or None
        Truth table for the ``evaluate`` step (None: no evaluation section).

    Returns
    -------
    str
    """
    text = f'''# bayescannon transfer: APOGEE labels onto LAMOST spectra (Ho et al. 2017)
# Paths are relative to this file.

label_names = ["TEFF", "LOGG", "FE_H", "ALPHA_M"]
output = "{output}"
seed = 0

[reference]                      # survey X: whose label scale we want
name = "APOGEE"                  # prefix of its columns in the catalogue
catalogue = "apogee_allstar.fits"
id_column = "APOGEE_ID"
ra_column = "RA"
dec_column = "DEC"
labels = {{ TEFF = "TEFF", LOGG = "LOGG", FE_H = "FE_H", ALPHA_M = "ALPHA_M" }}
errors = {{ TEFF = "TEFF_ERR", LOGG = "LOGG_ERR", FE_H = "FE_H_ERR", ALPHA_M = "ALPHA_M_ERR" }}

[target]                         # survey Y: whose spectra get the labels
name = "LAMOST"
spectra = ["lamost/spec-*.fits"]
format = "lamost"
catalogue = "lamost_catalogue.fits"   # the survey's own pipeline labels (for comparison)
catalogue_id_column = "obsid"
labels = {{ TEFF = "teff", LOGG = "logg", FE_H = "feh" }}

[preprocess]
wavelength_range = [3950.0, 8850.0]  # rest frame, Angstrom
log10_step = 1.0e-4                   # LAMOST's own pixel size
normalise_L = 50.0                    # Ho+2017 Gaussian width (Angstrom)
reject_bits = ["BADCCD", "BRIGHTSKY"] # LAMOST and-mask bits -> ivar = 0
# observed-frame windows masked for every star: sky lines and telluric bands
mask_windows_observed = [[5570.0, 5586.0], [5882.0, 5904.0], [6294.0, 6310.0],
                         [6358.0, 6372.0], [6864.0, 6935.0], [7592.0, 7700.0]]
min_good_fraction = 0.5

[crossmatch]
method = "sky"                   # or "id" (with target_id_column / reference id_column)
tolerance_arcsec = 1.0
ambiguous = "reject"             # several reference rows within the tolerance

[cuts]                           # bayescannon.survey.reference.QualityCuts on the matched table
min_snr = 40.0
snr_column = "snr_g"
require_finite = ["TEFF", "LOGG", "FE_H", "ALPHA_M"]
[cuts.ranges]
TEFF = [3800.0, 5400.0]
LOGG = [0.5, 3.8]
[cuts.bitmasks]
ASPCAPFLAG = ["STAR_BAD"]

[cleanup]                        # Ho+2017 section 3
n_sigma = 4.0
max_iter = 5
mode = "cv"                      # "cv" (k-fold labels) or "train" (labels of the training set)
n_folds = {cleanup_folds}
scatter = "robust"               # "robust" (1.4826 MAD) or "rms"

[train]
order = 2
regularization = 0.0
holdout_fraction = 0.0           # reference stars kept out of training for validation

[validate]
n_folds = {n_folds}
n_jobs = 1

[infer]
n_starts = 4
'''
    if truth:
        text += f'''
[evaluate]                       # only for mocks: compare with the true labels
truth = "{truth}"
id_column = "OBSID"
labels = {{ TEFF = "TEFF", LOGG = "LOGG", FE_H = "FE_H", ALPHA_M = "ALPHA_M" }}
offsets = {{ TEFF = "LAMOST_OFFSET_TEFF", LOGG = "LAMOST_OFFSET_LOGG", FE_H = "LAMOST_OFFSET_FE_H" }}
'''
    return text
