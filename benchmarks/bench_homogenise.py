"""Benchmark of the Survey of Surveys homogenisation on the six-survey mock (issue 13 targets).

    python benchmarks/bench_homogenise.py --n-stars 300000 --n-draws 200   # ~100k stars per survey

Prints, per label: bias of the unified labels against the truth (overall, per survey of
origin and in label bins, against 10 % of the injected offset or 0.1 of the noise), the
coverage of the unified 68 %/95 % intervals, the pair scatter after calibration against
1.1 × the quadrature sum of the errors, the wall time and the peak memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import logging
import resource
import time

import numpy as np

from bayescannon.homogenise import Homogeniser
from bayescannon.simulate.mockcatalogues import make_mock_catalogues, mock_offset

LABELS = ["TEFF", "LOGG", "FE_H"]


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n-stars", type=int, default=60000)
    p.add_argument("--n-draws", type=int, default=200)
    p.add_argument("--n-estimators", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-deconvolve", action="store_true", help="the model of the observed labels as it is")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    mock = make_mock_catalogues(args.n_stars, seed=args.seed)
    sizes = {s: len(t) for s, t in mock.catalogues.items()}
    print("stars per survey:", sizes)
    t0 = time.perf_counter()
    h = Homogeniser(
        LABELS,
        mock.config["reference"],
        features=["SNR", "MAG"],
        min_overlap=200,
        n_estimators=args.n_estimators,
        n_draws=args.n_draws,
        deconvolve=not args.no_deconvolve,
        random_state=args.seed,
    )
    u = h.fit_transform(mock.catalogues)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"end to end: {wall:.1f} s, peak RSS {peak:.0f} MiB, {len(u)} unified stars")
    pos = {i: k for k, i in enumerate(mock.truth["ID"])}
    idx = np.array([pos[i] for i in u["ID"]])
    truth = {lab: np.asarray(mock.truth[lab])[idx] for lab in LABELS}
    for j, lab in enumerate(LABELS):
        v = np.ma.filled(u[lab], np.nan)
        ok = np.isfinite(v)
        c68 = np.mean((truth[lab][ok] >= u[f"{lab}_LO"][ok]) & (truth[lab][ok] <= u[f"{lab}_HI"][ok]))
        c95 = np.mean((truth[lab][ok] >= u[f"{lab}_LO95"][ok]) & (truth[lab][ok] <= u[f"{lab}_HI95"][ok]))
        print(f"\n{lab}: unified bias {np.median(v[ok] - truth[lab][ok]):.4g}; coverage 68% {c68:.3f}, 95% {c95:.3f}")
        for s in mock.catalogues:
            c = np.ma.filled(u[f"{s}_{lab}_CAL"], np.nan)
            m = np.isfinite(c)
            t = {k: truth[k][m] for k in LABELS}
            snr = np.interp(0, [0], [30.0])
            off = np.median(np.abs(mock_offset(s, t["TEFF"], t["LOGG"], t["FE_H"], snr, 12.0)[:, j]))
            noise = np.median(np.ma.filled(u[f"{s}_{lab}_CAL_P84"] - u[f"{s}_{lab}_CAL_P16"], np.nan)[m]) / 2
            target = max(0.1 * off, 0.1 * noise)
            bias = np.median(c[m] - truth[lab][m])
            edges = np.quantile(truth[lab][m], np.linspace(0, 1, 6))
            which = np.clip(np.searchsorted(edges, truth[lab][m], side="right") - 1, 0, 4)
            bins = [np.median(c[m][which == b] - truth[lab][m][which == b]) for b in range(5)]
            cov = np.mean((truth[lab][m] >= u[f"{s}_{lab}_CAL_P16"][m]) & (truth[lab][m] <= u[f"{s}_{lab}_CAL_P84"][m]))
            print(
                f"  {s:11s} n={m.sum():6d} bias {bias:8.4g} (target {target:.3g}) worst bin {max(bins, key=abs):8.4g}"
                f" coverage68 {cov:.3f} path {'>'.join(h.paths_[lab][s])}"
            )
        for r in [r for r in h.validation_["pairs"] if r["LABEL"] == lab]:
            print(
                f"  pair {r['PAIR']:20s} n={r['N']:6d} bias {r['BIAS_RAW']:8.4g} -> {r['BIAS_CAL']:8.4g}; scatter "
                f"{r['SCATTER_RAW']:.4g} -> {r['SCATTER_CAL']:.4g} (1.1 x expected {1.1 * r['EXPECTED_CAL']:.4g})"
            )
    for lab, ms in h.models_.items():
        for s, m in ms.items():
            print(
                f"model {lab} {s}: pinball train {m.pinball_['train']:.4g} test {m.pinball_['test']:.4g}; "
                f"conformal coverage 68% {m.coverage_[0.68]:.3f} 95% {m.coverage_[0.95]:.3f} (n_test {m.n_train_['test']})"
            )


if __name__ == "__main__":
    main()
