"""Bootstrap of the reference set (Ho+2017 §4.2): models trained on resamples of the
reference stars, each inferring the same test spectra; the spread of the labels they give
a star is the label uncertainty due to the finite reference set.

The models run through the worker machinery of :mod:`bayescannon.validate.parallel`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import xarray as xr
from astropy.table import Table

from bayescannon.errors import InsufficientDataError, InvalidInputError, ShapeMismatchError
from bayescannon.pipeline.cluster import Executor
from bayescannon.spectra import check_flux_ivar, default_ids, unpack_spectra
from bayescannon.validate.parallel import n_model_terms, prepare_data, run_tasks

logger = logging.getLogger(__name__)

__all__ = ["BootstrapResult", "bootstrap", "resample_draws"]


@dataclass
class BootstrapResult:
    """Result of :func:`bootstrap`.

    Attributes
    ----------
    labels : xarray.DataArray
        Labels of the test stars from every bootstrap model, dims (boot, star, label).
    label_names : list of str
    """

    labels: xr.DataArray
    label_names: list

    @property
    def std(self) -> np.ndarray:
        """Per star and label: standard deviation over the bootstrap models — the label
        uncertainty due to the finite reference set (Ho+2017 §4.2)."""
        v = self.labels.values
        n_ok = np.isfinite(v).sum(axis=0)
        mean = np.nansum(v, axis=0) / np.maximum(n_ok, 1)
        var = np.nansum((v - mean) ** 2, axis=0) / np.maximum(n_ok - 1, 1)
        return np.where(n_ok >= 2, np.sqrt(var), np.nan)

    @property
    def summary(self) -> Table:
        """Per label: median and 16/84th percentiles of the per-star bootstrap σ."""
        s = self.std
        t = Table()
        t["LABEL"] = list(self.label_names)
        t["N_MODELS"] = np.full(len(self.label_names), self.labels.sizes["boot"])
        for q, name in ((50, "MEDIAN_SIGMA"), (16, "P16_SIGMA"), (84, "P84_SIGMA")):
            t[name] = [np.nanpercentile(col, q) if np.isfinite(col).any() else np.nan for col in s.T]
        return t

    def to_table(self, id_column: str = "ID") -> Table:
        """Per star: the bootstrap mean and σ of every label."""
        t = Table()
        t[id_column] = np.asarray(self.labels["star"].values).astype(str)
        mean = np.nanmean(self.labels.values, axis=0) if np.isfinite(self.labels.values).any() else None
        for k, name in enumerate(self.label_names):
            if mean is not None:
                t[f"BOOT_{name}"] = np.ma.masked_invalid(mean[:, k])
            t[f"e_BOOT_{name}"] = np.ma.masked_invalid(self.std[:, k])
        return t


def resample_draws(rng, y, n_terms: int, n_models: int) -> list[np.ndarray]:
    """Bootstrap resamples of the rows of ``y`` (sorted indices, with replacement), one per
    model; a resample with fewer than ``n_terms + 1`` distinct stars or a constant label is
    redrawn (up to 100 times), so every model can be fitted.

    Parameters
    ----------
    rng : numpy.random.Generator
    y : ndarray (N, K)
        Training labels.
    n_terms : int
        Terms of the model (distinct stars needed: ``n_terms + 1``).
    n_models : int

    Returns
    -------
    list of ndarray
    """
    n = len(y)
    out = []
    for _ in range(n_models):
        draw = np.sort(rng.integers(0, n, size=n))
        for _ in range(100):
            uniq = np.unique(draw)
            if uniq.size >= n_terms + 1 and np.all(np.ptp(y[uniq], axis=0) > 0):
                break
            draw = np.sort(rng.integers(0, n, size=n))
        out.append(draw)
    return out


def bootstrap(
    model,
    flux,
    ivar=None,
    labels=None,
    *,
    test_flux=None,
    test_ivar=None,
    test_ids=None,
    n_boot: int = 20,
    random_state=0,
    ids=None,
    wavelength=None,
    n_jobs: int | None = None,
    chunk_size: int = 2000,
    progressbar: bool = False,
    executor: Executor | None = None,
) -> BootstrapResult:
    """Bootstrap of the reference set: ``n_boot`` models trained on resamples (with
    replacement) of the reference stars, each inferring the same test spectra.

    Parameters
    ----------
    model : CannonModel
        Settings (only its constructor arguments are used).
    flux, ivar, labels, ids, wavelength
        Reference set, as for :func:`cross_validate`.
    test_flux, test_ivar : ndarray (M, P) or xarray.Dataset, optional
        Spectra whose labels are inferred by every model (default: the reference
        spectra themselves).
    test_ids : array_like (M,), optional
    n_boot : int, default 20
        Number of models (Ho+2017 §4.2: 20).
    random_state : int or numpy.random.Generator
    n_jobs : int, optional
        As for :func:`cross_validate`.
    chunk_size : int
    progressbar : bool
    executor : Executor, optional
        A distributed executor (:class:`bayescannon.pipeline.cluster.DaskExecutor`): the
        models are fitted as its tasks (the results equal the in-process ones); default
        ``n_jobs`` local processes.

    Returns
    -------
    BootstrapResult
    """

    params, flux, ivar, y, ids, wavelength, _ = prepare_data(model, flux, ivar, labels, wavelength, ids)
    if int(n_boot) != n_boot or n_boot < 2:
        raise InvalidInputError(f"n_boot must be an integer >= 2; got {n_boot!r}")
    n = flux.shape[0]
    t = n_model_terms(params)
    if n < t + 1:
        raise InsufficientDataError(f"{n} reference stars are too few for {t} model terms (need {t + 1})")
    if test_flux is None:
        tf, ti, tids = None, None, ids
    else:
        tf, ti, tids, _, _ = unpack_spectra(test_flux, test_ivar, test_ids, None)
        tf, ti = check_flux_ivar(tf, ti, ids=tids)
        if tf.shape[1] != flux.shape[1]:
            raise ShapeMismatchError(f"test spectra have {tf.shape[1]} pixels; reference spectra {flux.shape[1]}")
        tids = default_ids(tf.shape[0]) if tids is None else np.asarray(tids).astype(str)
    rng = np.random.default_rng(random_state)
    tasks = []
    for b, draw in enumerate(resample_draws(rng, y, t, int(n_boot))):
        tasks.append(
            {
                "key": b,
                "params": params,
                "train": draw,
                "test": np.arange(n),
                "wavelength": wavelength,
                "chunk_size": chunk_size,
                "test_flux": None,
                "test_ivar": None,
            }
        )
    arrays = {"flux": flux, "ivar": ivar, "labels": y, "test_flux": tf, "test_ivar": ti}
    results = run_tasks(tasks, arrays, n_jobs, progressbar=progressbar, desc="bootstrap models", executor=executor)
    stack = np.stack([r["result"]["labels"].values for r in sorted(results, key=lambda r: r["key"])])
    names = list(params["label_names"])
    da = xr.DataArray(
        stack,
        dims=("boot", "star", "label_name"),
        coords={"boot": np.arange(int(n_boot)), "star": tids, "label_name": names},
        name="labels",
    )
    return BootstrapResult(da, names)
