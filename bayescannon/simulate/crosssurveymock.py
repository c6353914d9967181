"""A two-instrument mock for ``bayescannon cross-survey``: two surveys that observe
partly the same stars, each with its own spectra (a known quadratic model per
instrument), its own pipeline labels (survey B offset from the truth), repeat visits,
survey flags, Gaia-like identifiers and astrometry, cluster members with membership
probabilities, a cross-match and a ready ``CONFIG.toml``.

The truth is written beside (``truth.fits``: one row per spectrum) so that the
catalogues can be checked: survey A's pipeline labels are the truth plus noise, survey
B's the truth plus :data:`OFFSET_B` plus noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.table import Table, vstack

from bayescannon.io import write_spectra
from bayescannon.pipeline.atomic import atomic_path, write_atomic
from bayescannon.simulate.quadratic import mock_quadratic_survey
from bayescannon.survey.catalogue import write_table

__all__ = ["LABELS", "OFFSET_B", "PIPELINE_NOISE", "write_mock_cross_survey"]

#: Labels of the mock (log g spans giants and dwarfs).
LABELS = ("TEFF", "LOGG", "FE_H")
_LO, _HI = np.array([4000.0, 1.0, -1.2]), np.array([6000.0, 4.6, 0.4])
#: Survey B's pipeline minus the truth.
OFFSET_B = np.array([80.0, 0.15, -0.08])
#: Pipeline label noise (1 sigma) of each survey.
PIPELINE_NOISE = {"A": np.array([30.0, 0.05, 0.03]), "B": np.array([60.0, 0.08, 0.05])}
_CLUSTERS = {"CL_POOR": -1.0, "CL_RICH": 0.1}


def _survey(key, truth, rows, n_repeat, n_pixels, wavelength, snr, rng):
    """Spectra (primary visits, then two repeats of the first ``n_repeat`` stars) and groups."""
    star = np.array([f"{key}{i:05d}" for i in rows])
    rep = np.repeat(np.arange(n_repeat), 2)
    spec_rows = np.r_[np.arange(rows.size), rep]
    ids = np.r_[star, [f"{star[i]}_v{1 + k % 2}" for k, i in enumerate(rep)]]
    s = np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]), spec_rows.size))
    ds = mock_quadratic_survey(
        spec_rows.size,
        n_pixels,
        list(LABELS),
        labels=truth[rows][spec_rows],
        snr=s,
        ids=ids,
        rng=rng,
        wavelength=wavelength,
    )
    ds["STAR"] = ("star", star[spec_rows])
    return ds, star, spec_rows


def write_mock_cross_survey(
    outdir,
    *,
    n_common: int = 400,
    n_only: int = 150,
    n_repeat: int = 60,
    n_pixels: int = 60,
    folds: int = 12,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the mock into ``outdir`` (atomically, as one folder); returns the config path.

    Parameters
    ----------
    outdir : path-like
    n_common : int
        Stars observed by both surveys (the training sets).
    n_only : int
        Stars observed by one survey only, per survey (same population).
    n_repeat : int
        Stars of each survey with two extra visits (repeat calibration).
    n_pixels : int
        Pixels of survey A (survey B has three quarters as many).
    folds : int
        Folds of the cross-validation in the config.
    seed : int
    overwrite : bool

    Returns
    -------
    pathlib.Path
    """
    rng = np.random.default_rng(seed)
    n_all = n_common + 2 * n_only
    truth = _LO + (_HI - _LO) * rng.uniform(size=(n_all, len(LABELS)))
    cluster = np.full(n_all, "", dtype="U8")
    for k, (name, feh) in enumerate(_CLUSTERS.items()):
        members = np.arange(k, n_all, 25)[:30]
        cluster[members] = name
        truth[members, 2] = feh + rng.normal(0, 0.02, members.size)
    rows = {"A": np.r_[np.arange(n_common), n_common + np.arange(n_only)]}
    rows["B"] = np.r_[np.arange(n_common), n_common + n_only + np.arange(n_only)]
    grids = {"A": np.linspace(15200, 16900, n_pixels), "B": np.linspace(4700, 7900, max(3 * n_pixels // 4, 20))}
    snrs = {"A": (40.0, 250.0), "B": (30.0, 180.0)}
    gaia = 4_000_000_000_000_000 + np.arange(n_all, dtype=np.int64) * 7919
    outdir = Path(outdir)
    with atomic_path(outdir, overwrite=overwrite, directory=True) as tmp:
        truth_parts = []
        for key, name in (("A", "APOGEE"), ("B", "GALAH")):
            r = rows[key]
            ds, star, spec_rows = _survey(key, truth, r, n_repeat, grids[key].size, grids[key], snrs[key], rng)
            write_spectra(ds, tmp / f"{name.lower()}.nc")
            offset = OFFSET_B if key == "B" else np.zeros(len(LABELS))
            noise = PIPELINE_NOISE[key]
            lab = Table({"ID": np.asarray(ds["star"].values).astype(str), "STAR": star[spec_rows]})
            obs = truth[r][spec_rows] + offset + rng.normal(size=(spec_rows.size, len(LABELS))) * noise
            for k, n in enumerate(LABELS):
                lab[n] = obs[:, k]
                lab[f"e_{n}"] = np.full(spec_rows.size, noise[k])
            lab["GAIA_DR3_SOURCE_ID"] = gaia[r][spec_rows]
            plx = 1.0 / rng.uniform(0.3, 5.0, r.size)
            lab["PARALLAX"] = plx[spec_rows]
            lab["PARALLAX"].unit = "mas"
            lab["DIST"] = 1.0 / plx[spec_rows]
            lab["DIST"].unit = "kpc"
            flag = np.zeros(spec_rows.size, np.int64)
            flag[rng.choice(spec_rows.size, max(spec_rows.size // 50, 1), replace=False)] = 4
            lab["FLAG"] = flag
            write_table(lab, tmp / f"{name.lower()}_labels.fits")
            tt = Table({"ID": lab["ID"], "SURVEY": [name] * len(lab), "STAR": lab["STAR"]})
            for k, n in enumerate(LABELS):
                tt[f"TRUE_{n}"] = truth[r][spec_rows, k]
            tt["CLUSTER"] = cluster[r][spec_rows]
            truth_parts.append(tt)
        write_table(vstack(truth_parts), tmp / "truth.fits")
        xm = Table({"ID_A": [f"A{i:05d}" for i in range(n_common)], "ID_B": [f"B{i:05d}" for i in range(n_common)]})
        write_table(xm, tmp / "crossmatch.fits")
        m_rows = np.flatnonzero(cluster != "")
        m_ids, m_cl, m_p = [], [], []
        for i in m_rows:
            key = "A" if i < n_common + n_only else "B"
            m_ids.append(f"{key}{i:05d}")
            m_cl.append(cluster[i])
            m_p.append(rng.uniform(0.6, 1.0))
        # interlopers: field stars listed as members with a low membership probability
        field = rng.choice(np.flatnonzero((cluster == "") & (np.arange(n_all) < n_common)), 8, replace=False)
        for i in field:
            m_ids.append(f"A{i:05d}")
            m_cl.append("CL_POOR")
            m_p.append(rng.uniform(0.0, 0.2))
        write_table(Table({"ID": m_ids, "CLUSTER": m_cl, "MEMBERSHIP_PROB": m_p}), tmp / "members.fits")
        lit = Table({"CLUSTER": list(_CLUSTERS), "FE_H": list(_CLUSTERS.values())})
        write_table(lit, tmp / "literature.ecsv")
        write_atomic(tmp / "CONFIG.toml", lambda p: Path(p).write_text(_config(folds, seed)))
    return outdir / "CONFIG.toml"


def _config(folds: int, seed: int) -> str:
    return f"""# bayescannon cross-survey configuration of the two-instrument mock
labels = {list(LABELS)!r}
giant_logg = 3.5    # giants: log g < 3.5, dwarfs: log g >= 3.5

[surveys.A]
name = "APOGEE"
spectra = "apogee.nc"
labels = "apogee_labels.fits"
label_code = "AA"
repeat_group = "STAR"
flags_column = "FLAG"

[surveys.B]
name = "GALAH"
spectra = "galah.nc"
labels = "galah_labels.fits"
label_code = "GS"
repeat_group = "STAR"
flags_column = "FLAG"

[crossmatch]
path = "crossmatch.fits"
columns = ["ID_A", "ID_B"]

[runs.default]
folds = {int(folds)}
model = {{ order = 2, random_state = {int(seed)} }}
distance_threshold = "calibrated"
repeats = "nandakumar2022"

[runs.GCGS]
cuts = {{ SNR = [35.0, nan] }}

[clusters]
membership = "members.fits"
cluster_column = "CLUSTER"
probability_column = "MEMBERSHIP_PROB"
min_probability = 0.5
literature = "literature.ecsv"
"""
