"""Mock label catalogues of six surveys with known truth, for the homogenisation.

``make_mock_catalogues`` draws true labels (TEFF, LOGG, FE_H) and magnitudes for a
population, lets six surveys (APOGEE, GALAH, LAMOST, RAVE, GAIA_RVS, LAMOST_MRS) observe
overlapping, skewed subsets of it (along a "footprint" coordinate and in magnitude), and
gives each survey

* a known offset from the truth that is non-linear in Teff and [Fe/H] and depends on S/N
  and magnitude (APOGEE, the anchor of the reference scale, has none);
* S/N from the magnitude, and S/N-dependent noise;
* one of the three error forms: symmetric ``E_<L>`` (APOGEE, RAVE, LAMOST_MRS),
  symmetric with covariances ``COV_TEFF_LOGG`` (GALAH), asymmetric ``<L>_P16``/``<L>_P84``
  (LAMOST, GAIA_RVS). Values are drawn so that the stated error distribution is right:
  ``truth + offset = value + eta`` with ``eta`` from the split normal (mode 0) of the
  stated scales.

LAMOST_MRS observes only a part of the footprint that neither reference survey covers: it
is linked to the reference scale only through LAMOST.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from bayescannon.errors import InvalidInputError
from bayescannon.homogenise.splitnormal import split_normal_sample
from bayescannon.pipeline.atomic import atomic_path, write_atomic
from bayescannon.survey.catalogue import write_table

__all__ = ["MOCK_SURVEYS", "MockCatalogues", "make_mock_catalogues", "mock_offset", "write_mock_catalogues"]

LABELS = ("TEFF", "LOGG", "FE_H")

#: Survey → (footprint range, faint limit, probability to observe a star in range, noise
#: at S/N 100 per label, S/N zero point, error form, lower/upper asymmetry).
MOCK_SURVEYS = {
    "APOGEE": ((0.0, 0.5), 14.5, 0.8, (50.0, 0.06, 0.03), 150.0, "sym", (1.0, 1.0)),
    "GALAH": ((0.25, 0.7), 14.0, 0.8, (70.0, 0.10, 0.05), 80.0, "cov", (1.0, 1.0)),
    "LAMOST": ((0.3, 1.0), 16.0, 0.7, (90.0, 0.15, 0.07), 60.0, "asym", (0.7, 1.4)),
    "RAVE": ((0.0, 0.6), 12.5, 0.7, (110.0, 0.20, 0.10), 40.0, "sym", (1.0, 1.0)),
    "GAIA_RVS": ((0.1, 0.7), 13.0, 0.7, (120.0, 0.20, 0.12), 40.0, "asym", (1.3, 0.8)),
    "LAMOST_MRS": ((0.8, 1.0), 15.0, 0.8, (80.0, 0.12, 0.06), 60.0, "sym", (1.0, 1.0)),
}


def mock_offset(survey: str, teff, logg, feh, snr, mag) -> np.ndarray:
    """The injected offset (survey − truth) of every label, shape (n, 3)."""
    t = (np.asarray(teff) - 5200.0) / 1000.0
    f = np.asarray(feh)
    sn = 30.0 / np.asarray(snr)
    m = (np.asarray(mag) - 12.0) / 3.0
    z = np.zeros_like(t)
    if survey == "APOGEE":
        cols = (z, z, z)
    elif survey == "GALAH":
        cols = (30.0 + 40.0 * np.tanh(2.0 * t), 0.05 + 0.03 * t, -0.03 + 0.04 * f)
    elif survey == "LAMOST":
        cols = (-60.0 + 80.0 * t**2 + 40.0 * sn, 0.1 * np.sin(2.0 * f) + 0.05, 0.08 * np.tanh(2.0 * (f + 0.5)) - 0.05)
    elif survey == "RAVE":
        cols = (100.0 * f + 50.0 * t, -0.15 + 0.1 * t + 0.1 * sn, 0.1 + 0.05 * f**2 + 0.03 * m)
    elif survey == "GAIA_RVS":
        cols = (-80.0 + 60.0 * np.tanh(3.0 * f), 0.2 * np.exp(-t) - 0.1, -0.1 + 0.06 * t + 0.05 * sn)
    elif survey == "LAMOST_MRS":
        cols = (40.0 - 50.0 * t + 20.0 * m, -0.08 + 0.05 * f, 0.04 - 0.05 * t)
    else:
        raise InvalidInputError(f"no mock offset for survey {survey!r}; known: {list(MOCK_SURVEYS)}")
    return np.column_stack(cols)


@dataclass
class MockCatalogues:
    """The catalogues (name → Table), the truth (ID, TEFF, LOGG, FE_H, MAG), each
    survey's true on-scale value ``truth + offset`` is known through :func:`mock_offset`,
    and a configuration mapping for :func:`bayescannon.homogenise.config_from_dict`."""

    catalogues: dict
    truth: Table
    config: dict


def make_mock_catalogues(
    n_stars: int = 20000,
    *,
    surveys=tuple(MOCK_SURVEYS),
    seed: int = 0,
    min_overlap: int = 200,
    corruptions: bool = False,
) -> MockCatalogues:
    """Draw the mock (see the module docstring).

    Parameters
    ----------
    n_stars : int
        Stars in the population (each survey sees a subset).
    surveys : sequence of str
        Which of :data:`MOCK_SURVEYS` to make (APOGEE is always needed: the reference).
    seed : int
    min_overlap : int
        Written into the configuration.
    corruptions : bool
        Add bad input: a duplicated id, NaN labels and P16 > value rows in LAMOST.
    """
    unknown = [s for s in surveys if s not in MOCK_SURVEYS]
    if unknown or "APOGEE" not in surveys:
        raise InvalidInputError(f"surveys must include APOGEE and be among {list(MOCK_SURVEYS)}; got {list(surveys)}")
    rng = np.random.default_rng(seed)
    giant = rng.random(n_stars) < 0.6
    teff = np.where(giant, rng.uniform(4000, 5400, n_stars), rng.uniform(4800, 6500, n_stars))
    logg = np.where(
        giant, 1.0 + 2.5 * (teff - 4000) / 1400 + rng.normal(0, 0.2, n_stars), rng.normal(4.3, 0.15, n_stars)
    )
    feh = np.clip(rng.normal(-0.25, 0.35, n_stars), -2.0, 0.5)
    mag = rng.uniform(8.0, 16.0, n_stars)
    foot = rng.random(n_stars)
    ids = np.array([f"star{i:07d}" for i in range(n_stars)])
    truth = Table({"ID": ids, "TEFF": teff, "LOGG": logg, "FE_H": feh, "MAG": mag})
    cats = {}
    for s in surveys:
        (f0, f1), faint, p, noise, sn0, form, (a1, a2) = MOCK_SURVEYS[s]
        sel = (foot >= f0) & (foot < f1) & (mag < faint) & (rng.random(n_stars) < p)
        idx = np.flatnonzero(sel)
        n = len(idx)
        snr = sn0 * 10 ** (-0.2 * (mag[idx] - 12.0)) * rng.lognormal(0, 0.2, n)
        snr = np.clip(snr, 10.0, 1000.0)
        true3 = np.column_stack([teff[idx], logg[idx], feh[idx]])
        on_scale = true3 + mock_offset(s, teff[idx], logg[idx], feh[idx], snr, mag[idx])
        sigma = np.asarray(noise)[None, :] * (1.0 + 30.0 / snr[:, None]) / 1.3
        t = Table({"ID": ids[idx]})
        if form == "cov":
            rho = 0.5
            c = np.zeros((n, 3, 3))
            c[:, range(3), range(3)] = sigma**2
            c[:, 0, 1] = c[:, 1, 0] = rho * sigma[:, 0] * sigma[:, 1]
            eta = np.einsum("nij,nj->ni", np.linalg.cholesky(c), rng.standard_normal((n, 3)))
            value = on_scale - eta
            for j, lab in enumerate(LABELS):
                t[lab], t[f"E_{lab}"] = value[:, j], sigma[:, j]
            t["COV_TEFF_LOGG"] = c[:, 0, 1]
        else:
            s1, s2 = a1 * sigma, a2 * sigma
            eta = split_normal_sample(rng, np.zeros((n, 3)), s1, s2, 1)[..., 0]
            value = on_scale - eta
            for j, lab in enumerate(LABELS):
                t[lab] = value[:, j]
                if form == "asym":
                    t[f"{lab}_P16"], t[f"{lab}_P84"] = value[:, j] - s1[:, j], value[:, j] + s2[:, j]
                else:
                    t[f"E_{lab}"] = sigma[:, j]
        t["SNR"] = snr
        t["MAG"] = mag[idx] + rng.normal(0, 0.02, n)
        if corruptions and s == "LAMOST" and n > 30:
            t["TEFF"][:5] = np.nan
            t["FE_H_P16"][5:8] = t["FE_H"][5:8] + 0.1  # P16 above the value
            t.add_row(t[10])  # a duplicated id
        cats[s] = t
    config = {
        "labels": list(LABELS),
        "id": "ID",
        "features": ["SNR", "MAG"],
        "min_overlap": int(min_overlap),
        "reference": {"TEFF": ["APOGEE"], "LOGG": ["APOGEE", "GALAH"], "FE_H": ["APOGEE", "GALAH"]},
        "surveys": {s: {"path": f"{s.lower()}.fits"} for s in surveys},
    }
    if "GALAH" not in surveys:
        config["reference"] = {lab: ["APOGEE"] for lab in LABELS}
    return MockCatalogues(cats, truth, config)


def _toml(config: dict) -> str:
    def val(v):
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return str(v)

    lines = [f"{k} = {val(v)}" for k, v in config.items() if not isinstance(v, dict)]
    lines += ["", "[reference]"] + [f"{k} = {val(v)}" for k, v in config["reference"].items()]
    for s, sc in config["surveys"].items():
        lines += ["", f"[surveys.{s}]"] + [f"{k} = {val(v)}" for k, v in sc.items()]
    return "\n".join(lines) + "\n"


def write_mock_catalogues(outdir, mock: MockCatalogues | None = None, *, overwrite: bool = False, **kwargs) -> Path:
    """Write the mock's catalogues (FITS), ``truth.fits`` and ``CONFIG.toml`` into
    ``outdir`` (atomically, as one folder). Returns the config path."""
    mock = mock or make_mock_catalogues(**kwargs)
    outdir = Path(outdir)
    with atomic_path(outdir, overwrite=overwrite, directory=True) as tmp:
        for s, t in mock.catalogues.items():
            write_table(t, tmp / mock.config["surveys"][s]["path"])
        write_table(mock.truth, tmp / "truth.fits")
        write_atomic(tmp / "CONFIG.toml", lambda p: Path(p).write_text(_toml(mock.config)))
    return outdir / "CONFIG.toml"
