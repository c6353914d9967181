"""Benchmark: 8-fold cross-validation of 10,000 stars × 3,900 pixels × 5 labels.

Target (issue 5): ≤ 5 minutes on 2 cores. The spectra come from a known quadratic
Cannon model (bayescannon.simulate.mock_quadratic_survey) with labels TEFF, LOGG,
FE_H, ALPHA_FE, VMACRO; timing covers the folds only (8 trainings on 8,750 stars and 8
test steps on 1,250 stars), not the simulation.

Usage::

    python benchmarks/bench_validate.py [--n-stars 10000] [--n-pixels 3900]
        [--n-folds 8] [--n-jobs 2] [--serial]

``--serial`` also times ``n_jobs=1`` (one process using both cores for its BLAS/numba
threads) for comparison.
"""

from __future__ import annotations

import argparse
import os
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-stars", type=int, default=10_000)
    p.add_argument("--n-pixels", type=int, default=3_900)
    p.add_argument("--n-folds", type=int, default=8)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--serial", action="store_true", help="also time n_jobs=1")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    import numpy as np

    from bayescannon import CannonModel
    from bayescannon.simulate import mock_quadratic_survey
    from bayescannon.validate import cross_validate

    labels = ["TEFF", "LOGG", "FE_H", "ALPHA_FE", "VMACRO"]
    t0 = time.perf_counter()
    ds = mock_quadratic_survey(args.n_stars, args.n_pixels, labels, snr=(20.0, 250.0), rng=args.seed)
    t1 = time.perf_counter()
    print(
        f"simulated {args.n_stars} stars x {args.n_pixels} pixels x {len(labels)} labels in {t1 - t0:.1f} s "
        f"({os.cpu_count()} cores visible)"
    )
    runs = [args.n_jobs] + ([1] if args.serial and args.n_jobs != 1 else [])
    for n_jobs in runs:
        t0 = time.perf_counter()
        cv = cross_validate(CannonModel(labels), ds, n_folds=args.n_folds, random_state=0, n_jobs=n_jobs)
        dt = time.perf_counter() - t0
        z = cv.differences / cv.predictions["errors"].values
        print(f"{args.n_folds}-fold CV, n_jobs={n_jobs}: {dt:.1f} s ({dt / 60:.2f} min; target <= 5 min)")
        for row, zz in zip(cv.summary, np.nanstd(z, axis=0)):
            print(
                f"  {row['LABEL']:>9}: bias {row['BIAS']:+.3g}  rms {row['RMS']:.3g}  "
                f"(p84-p16)/2 {row['HALF_P16_84']:.3g}  std(dl/err) {zz:.3f}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
