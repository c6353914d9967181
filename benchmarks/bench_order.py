"""Speed of the engine at polynomial order 3 against order 2 (issue 12: within 2×).

Trains a model of each order on the same spectra and runs the test step on the same
held-out spectra; prints the times, the ratio order 3 / order 2 and the label rms of both
against the truth. Data: the APOGEE emulator (``../shared/data/apogee_payne_emulator.npz``,
as in ``bench_core.py``: 2,000 training × 7,214 pixels × 4 labels, 1,000 test stars) when
present, else the built-in quadratic simulator (same sizes, 1,000 pixels). Timings are
steady state: kernels are loaded and each step is the best of ``--repeat`` runs.

With ``--compare-engines`` the test step of each order is also timed with the sufficient-
statistics engine of before issue 12 (``A = Σ w θθᵀ``, :func:`bayescannon.core.labelfit.fit_labels`)
on the same model and spectra, in the same process: the ratio old / new and the largest
label difference in units of the formal error. ``--regularization`` sets the L1 strength Λ
of training.

Run: ``python benchmarks/bench_order.py [--quick] [--orders 2 3] [--compare-engines] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]


def make_data(n_train, n_test, seed=0):
    """(train, test, source) spectra containers with label columns named like LABELS."""
    from bayescannon.simulate.emulator import find_emulator

    if find_emulator() is not None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_core import make_data as emulator_data

        _, train, test = emulator_data(n_train, n_test, seed)
        return train, test, "APOGEE emulator"
    from bayescannon.simulate.quadratic import mock_quadratic_survey

    ds = mock_quadratic_survey(n_train + n_test, 1000, LABELS, snr=(30.0, 250.0), rng=seed)
    return ds.isel(star=slice(0, n_train)), ds.isel(star=slice(n_train, None)), "quadratic simulator"


def pair_engine(m, flux, ivar, n_starts):
    """The test step as before issue 12 (A = Σ w θθᵀ per star, then labelfit.fit_labels):
    scaled labels and covariances, ``θθᵀ`` products formed on every call as ``infer`` did."""
    from bayescannon.core import scaling
    from bayescannon.core.labelfit import chi2_at, fit_labels, test_statistics
    from bayescannon.flags import PixelFlag

    vec = m.vectorizer
    iu, ju = np.triu_indices(vec.n_terms)
    pairs = m.theta_[:, iu] * m.theta_[:, ju]
    cand = m.start_candidates_
    smin = scaling.scale(m.label_min_, m.label_offset_, m.label_scale_)
    smax = scaling.scale(m.label_max_, m.label_offset_, m.label_scale_)
    width = smax - smin
    bounds = np.column_stack([smin - m.bounds_margin * width, smax + m.bounds_margin * width])
    ok = ~(m.pixel_flags_ & (PixelFlag.FEW_STARS | PixelFlag.SINGULAR)).astype(bool)
    n, p = flux.shape
    w, wf = np.empty((n, p)), np.empty((n, p))
    c, _, _ = m._test_weights(flux, ivar, ok, np.arange(n).astype(str), 0, None, w, wf, np.zeros(p))
    A, b = test_statistics(w, wf, m.theta_, pairs)
    starts = cand[np.argsort(chi2_at(A, b, c, vec(cand)), axis=1)[:, :n_starts]]
    fit = fit_labels(A, b, c, vec, starts, bounds=bounds, restart=True)
    return fit.labels, fit.covariance


def time_order(order, train, test, n_starts, repeat, compare=False, regularization=0.0):
    """Best-of-``repeat`` training and test-step times (s) and the test labels."""
    from bayescannon import CannonModel
    from bayescannon.core import scaling

    t_train, t_test, t_pair = [], [], []
    flux = np.ascontiguousarray(test["flux"].values)
    ivar = np.ascontiguousarray(test["ivar"].values)
    for _ in range(repeat):
        m = CannonModel(LABELS, order, n_starts=n_starts, random_state=0, regularization=regularization)
        t0 = time.perf_counter()
        m.fit(train)
        t_train.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        r = m.infer(test)
        t_test.append(time.perf_counter() - t0)
        if compare:
            t0 = time.perf_counter()
            x_pair, cov_pair = pair_engine(m, flux, ivar, n_starts)
            t_pair.append(time.perf_counter() - t0)
    out = dict(t_train=min(t_train), t_test=min(t_test), labels=r["labels"].values, n_terms=m.theta_.shape[1])
    if compare:
        x = scaling.scale(r["labels"].values, m.label_offset_, m.label_scale_)
        err = np.sqrt(np.einsum("nkk->nk", cov_pair))
        out.update(t_pair=min(t_pair), max_pull_diff=float(np.nanmax(np.abs(x - x_pair) / err)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-starts", type=int, default=4)
    ap.add_argument("--orders", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--repeat", type=int, default=2, help="runs per step; the best is reported")
    ap.add_argument("--quick", action="store_true", help="500 training, 300 test stars, one run")
    ap.add_argument("--compare-engines", action="store_true", help="also time the pre-issue-12 test step")
    ap.add_argument("--regularization", type=float, default=0.0, help="L1 strength Λ of training")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test, args.repeat = 500, 300, 1
    train, test, source = make_data(args.n_train, args.n_test)
    truth = np.column_stack([test[n].values for n in LABELS])
    # load the compiled kernels of every order first (numba disk cache)
    for order in args.orders:
        time_order(order, train.isel(star=slice(0, 200)), test.isel(star=slice(0, 20)), args.n_starts, 1, True)
    opts = dict(compare=args.compare_engines, regularization=args.regularization)
    res = {o: time_order(o, train, test, args.n_starts, args.repeat, **opts) for o in args.orders}
    base = args.orders[0]
    p = train.sizes["pixel"]
    print(f"\n== {source}: {args.n_train} training stars x {p} pixels x 4 labels, {args.n_test} test stars ==")
    print(f"{'order':>5} {'terms':>5} {'train s':>8} {'test s':>8} {'train ×':>8} {'test ×':>7}  label rms")
    figures = dict(source=source, n_train=args.n_train, n_test=args.n_test, pixels=p, orders={})
    for o, r in res.items():
        rms = np.sqrt(np.nanmean((r["labels"] - truth) ** 2, axis=0))
        rt, rs = r["t_train"] / res[base]["t_train"], r["t_test"] / res[base]["t_test"]
        print(
            f"{o:>5} {r['n_terms']:>5} {r['t_train']:>8.2f} {r['t_test']:>8.2f} {rt:>8.2f} {rs:>7.2f}  "
            + " ".join(f"{n}={v:.4g}" for n, v in zip(LABELS, rms, strict=True))
        )
        figures["orders"][o] = dict(
            n_terms=r["n_terms"],
            t_train=r["t_train"],
            t_test=r["t_test"],
            train_ratio=rt,
            test_ratio=rs,
            rms=dict(zip(LABELS, rms.tolist(), strict=True)),
        )
        if "t_pair" in r:
            print(
                f"      pre-issue-12 test step {r['t_pair']:.2f} s: old/new = {r['t_pair'] / r['t_test']:.2f}; "
                f"largest label difference {r['max_pull_diff']:.2g} formal errors"
            )
            figures["orders"][o].update(t_test_pair_engine=r["t_pair"], max_label_diff_in_errors=r["max_pull_diff"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
