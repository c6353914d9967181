"""Compile every numba kernel of the package once, so that later processes start warm.

``python -m bayescannon._warmup`` (run by ``make setup`` after the install) trains and
applies a tiny model through the public API: training, the test step, calibration and
the calibrated test step (also on read-only arrays, as ``np.load(..., mmap_mode="r")``
gives), a latent-label fit, resampling (with and without a Doppler shift and a mask) and
continuum normalisation (single and double precision), the label posterior's NUTS
kernel (:mod:`bayescannon.bayes.labelkernel`), the homogenisation's tree walker
(:mod:`bayescannon.homogenise.trees`), Monte Carlo block and combination
(:mod:`bayescannon.homogenise.kernels`). Each kernel is thereby compiled
for the argument types real data give it and stored in numba's on-disk cache
(``__pycache__`` beside the sources, or ``NUMBA_CACHE_DIR``): the first ``fit`` and
``infer`` of a later process load machine code instead of spending ~20 s each compiling
it. On a warm cache the warm-up only loads, in a few seconds.

The cache is keyed on the kernel sources and the numba version: after an upgrade or an
edit of a kernel, run the warm-up again (or pay the compile once, announced by one log
line, at first use).
"""

from __future__ import annotations

import logging
import sys
import time

import numpy as np
from numba.core.dispatcher import Dispatcher

from bayescannon import preprocess
from bayescannon.bayes import LabelPosterior, calibrate
from bayescannon.homogenise.propagate import propagate
from bayescannon.homogenise.splitnormal import combine_split_normal
from bayescannon.homogenise.trees import TreeArrays, median_secants, predict_trees
from bayescannon.model import CannonModel
from bayescannon.spectra import make_spectra

__all__ = ["kernel_stats", "main", "warm_up"]

_LABELS = ["TEFF", "LOGG", "FE_H"]


def kernel_stats():
    """Cache use of every compiled kernel of the loaded bayescannon modules.

    Returns
    -------
    dict
        ``{"module.function": (n_signatures, cache_hits, cache_misses)}``; kernels called
        only from other kernels (and inlined ones) keep 0 signatures when their caller is
        loaded from the cache.
    """
    out = {}
    for name, mod in sorted(sys.modules.items()):
        if not name.startswith("bayescannon") or mod is None:
            continue
        for attr, obj in sorted(vars(mod).items()):
            if isinstance(obj, Dispatcher) and getattr(obj.py_func, "__module__", None) == name:
                hits, misses = obj.stats.cache_hits, obj.stats.cache_misses
                out[f"{name}.{attr}"] = (len(obj.signatures), sum(hits.values()), sum(misses.values()))
    return out


def _survey(rng, n, p, theta, wavelength, snr):
    """Spectra of a known quadratic model in three labels (scaled to about ±1)."""
    x = rng.uniform(-1.0, 1.0, size=(n, 3))
    design = np.column_stack([np.ones(n), x, x[:, [0, 0, 0, 1, 1, 2]] * x[:, [0, 1, 2, 1, 2, 2]]])
    ivar = np.full((n, p), snr**2)
    flux = design @ theta.T + rng.normal(size=(n, p)) / snr
    labels = np.array([4800.0, 2.5, -0.2]) + x * np.array([600.0, 1.0, 0.5])
    return make_spectra(wavelength, flux, ivar, **dict(zip(_LABELS, labels.T, strict=True))), labels


def warm_up(seed: int = 0):
    """Run every compiled kernel once on tiny data (compiling it when it is not cached).

    Parameters
    ----------
    seed : int
        Seed of the tiny mock survey.

    Returns
    -------
    dict
        :func:`kernel_stats` afterwards.
    """
    rng = np.random.default_rng(seed)
    p = 64
    wavelength = np.linspace(15200.0, 15260.0, p)
    theta = np.column_stack([np.full(p, 0.9), 0.02 * rng.normal(size=(p, 9))])
    train, ytrain = _survey(rng, 60, p, theta, wavelength, 100.0)
    held, yheld = _survey(rng, 80, p, theta, wavelength, 60.0)
    # training, test step, calibration and the calibrated test step, as the CLI runs them
    model = CannonModel(_LABELS, order=2, random_state=seed).fit(train)
    model.infer(held)
    # (80 stars are too few for the conditional width models: their warnings say so; not news here)
    conditional_log = logging.getLogger("bayescannon.core.conditional")
    level = conditional_log.level
    conditional_log.setLevel(logging.ERROR)
    try:
        calibrate(model, held["flux"].values, held["ivar"].values, yheld)
    finally:
        conditional_log.setLevel(level)
    model.infer(held["flux"].values, held["ivar"].values, uncertainty="calibrated")
    # read-only spectra (e.g. from np.load(..., mmap_mode="r")) are another argument type
    flux_ro, ivar_ro = train["flux"].values.copy(), train["ivar"].values.copy()
    flux_ro.flags.writeable = ivar_ro.flags.writeable = False
    CannonModel(_LABELS, order=2, random_state=seed).fit(flux_ro, ivar_ro, ytrain).infer(flux_ro, ivar_ro)
    # L1-regularised training (the compiled lasso step) and an order-3 test step (polynomial-chi2 engine)
    CannonModel(_LABELS, order=3, regularization=10.0, random_state=seed).fit(train).infer(held)
    # latent labels (errors-in-variables training)
    CannonModel(_LABELS, order=2, random_state=seed).fit(train, label_errors=np.full((60, 3), [30.0, 0.05, 0.02]))
    # the NUTS label posterior's kernel (bayes.labelkernel), as `bayescannon sample` runs it
    LabelPosterior(model).compile()
    # preprocessing: resampling with and without a Doppler shift and a mask, normalisation
    masked = make_spectra(
        wavelength, train["flux"].values, train["ivar"].values, mask=np.zeros((60, p), dtype=np.uint32)
    )
    preprocess.resample(train, wavelength[2:-2] + 0.1)
    preprocess.shift_and_resample(masked, wavelength[4:-4], rv=rng.normal(0.0, 20.0, size=60))
    for precision in ("single", "double"):
        preprocess.normalise_ho2017(train, L=5.0, precision=precision, return_continuum=precision == "double")
    _warm_trees(rng)
    _warm_homogenise(rng)
    return kernel_stats()


def _warm_trees(rng):
    """The homogenisation offset models' tree walker (:mod:`bayescannon.homogenise.trees`)."""
    import xgboost as xgb  # heavy import (~0.5 s): only the warm-up and the homogenisation need it

    x = rng.normal(size=(200, 3))
    reg = xgb.XGBRegressor(
        objective="reg:quantileerror", quantile_alpha=np.array([0.16, 0.5, 0.84]), n_estimators=5, max_depth=3, n_jobs=1
    )
    trees = TreeArrays.from_booster(reg.fit(x, x[:, 0] + 0.1 * rng.normal(size=200)).get_booster())
    predict_trees(trees, x)
    median_secants(trees, x, np.full((200, 2, 2), [-0.1, 0.1]), 1)


def _warm_homogenise(rng):
    """The homogenisation's Monte Carlo block and combination (:mod:`bayescannon.homogenise.kernels`)."""
    n = 50
    mu = rng.normal(size=(n, 3))
    s1 = np.full((n, 3), 0.2)
    s2 = s1 * np.array([1.0, 1.5, 1.0])  # one split-normal label
    for cov in (None, np.broadcast_to(np.diag([0.04, 0.04, 0.04]), (n, 3, 3))):
        v, lo, hi = propagate(None, None, 0, mu, s1, s2, cov, 0.1, rng, n_draws=20)
    combine_split_normal(
        np.column_stack([v, mu[:, 0]]), np.column_stack([lo, s1[:, 0]]), np.column_stack([hi, s2[:, 0]])
    )


def main() -> int:
    """Command-line entry point: warm the kernel cache and say what was done.

    Returns
    -------
    int
        The exit status (0).
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    t0 = time.perf_counter()
    stats = warm_up()
    dt = time.perf_counter() - t0
    compiled = sum(v[2] for v in stats.values())
    loaded = sum(v[1] for v in stats.values())
    print(f"bayescannon: numerical kernels ready in {dt:.1f} s ({compiled} compiled, {loaded} loaded from the cache)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
