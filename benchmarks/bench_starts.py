"""Benchmark of the test step's start strategy: does the default multi-start reach the best χ²
that Levenberg–Marquardt from every stored start candidate reaches, and at what speed?

Data sets (test stars with S/N log-uniform in 10–300):

* ``emulator``: The Payne's APOGEE emulator (``../shared/data/apogee_payne_emulator.npz``),
  2,000 training stars × 7,214 pixels, 4 labels (VMACRO fixed); skipped when absent.
* ``sim-giants``, ``sim-dwarfs``: :func:`bayescannon.simulate.simulate_survey` (APOGEE).
* stress sets: ``giants-on-mixed`` (a giants model applied to a mixed population: the dwarfs
  lie far outside the training range and end on a search bound) and ``mirror`` (a known
  model in which one label acts mostly through its square, so every star has a wrong
  mirror-image local minimum).

For each set: the default (``n_starts`` best of the candidates by χ², then the second-round
restart), the candidate ranking alone (``restart=False``) and the reference, LM from every
candidate (``n_starts`` = all, ``restart=False``). A star is a miss when its χ² exceeds the
reference by more than 1e-6 relative and 1e-3 absolute. Prints miss rates per set and per
S/N bin, stars/s of each strategy (best of ``--repeat`` runs) and the label differences of
missed stars. Runs on the code it imports, older versions included (without ``restart``
the default is the ranking alone).

Run: ``python benchmarks/bench_starts.py [--quick] [--seeds 0 1 2]``.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import time

import numpy as np

LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]
SNR_BINS = [10.0, 20.0, 40.0, 80.0, 150.0, 300.0]


def misses(chi2, chi2_ref):
    """Stars whose χ² exceeds the reference by more than 1e-6 relative and 1e-3 absolute."""
    return chi2 - chi2_ref > np.maximum(1e-6 * np.abs(chi2_ref), 1e-3)


def emulator_sets(n_train, n_test):
    from bayescannon.simulate.emulator import load_emulator

    try:
        emu = load_emulator()
    except FileNotFoundError as exc:
        print(f"emulator: skipped ({exc})")
        return None
    rng = np.random.default_rng(0)
    train = emu.survey(emu.draw_labels(n_train, rng, vmacro=6.0), snr=(50.0, 250.0), rng=rng)
    test = emu.survey(emu.draw_labels(n_test, rng, vmacro=6.0), snr=(10.0, 300.0), rng=rng)
    return train, test


def simulator_sets(train_population, test_population, n_train, n_test, seed):
    from bayescannon.simulate import simulate_survey

    train = simulate_survey(n_train, population=train_population, snr=(50.0, 250.0), rng=seed)
    test = simulate_survey(n_test, population=test_population, snr=(10.0, 300.0), rng=seed + 1)
    return train, test


def mirror_sets(n_train, n_test, seed=3, n_pixels=300):
    """Spectra of a known quadratic model where the first label acts mostly through its
    square (small linear term, no cross terms): a wrong local minimum near −x₀."""
    from bayescannon.core.vectorizer import PolynomialVectorizer
    from bayescannon.spectra import make_spectra

    names = ["A", "B", "C"]
    vec = PolynomialVectorizer(names, 2)
    rng = np.random.default_rng(seed)
    theta = rng.normal(scale=0.04, size=(n_pixels, vec.n_terms))
    theta[:, 0] = 1.0 - np.abs(rng.normal(scale=0.05, size=n_pixels))
    theta[:, vec.term_names.index("A")] = rng.normal(scale=0.01, size=n_pixels)
    theta[:, vec.term_names.index("A^2")] = rng.normal(scale=0.25, size=n_pixels)
    theta[:, [t for t, name in enumerate(vec.term_names) if "A*" in name]] = 0.0
    wavelength = np.linspace(15100.0, 15400.0, n_pixels)

    def draw(n, snr):
        x = rng.uniform(-0.5, 0.5, size=(n, 3))
        s = np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]), n))
        flux = vec(x) @ theta.T + rng.normal(size=(n, n_pixels)) / s[:, None]
        ivar = np.repeat((s**2)[:, None], n_pixels, axis=1)
        return make_spectra(wavelength, flux, ivar, snr=s, **{name: x[:, k] for k, name in enumerate(names)})

    return draw(n_train, (100.0, 200.0)), draw(n_test, (10.0, 300.0)), names


def best_time(fn, repeat):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def run_set(name, train, test, labels, seed, repeat):
    from bayescannon import CannonModel

    has_restart = "restart" in inspect.signature(CannonModel.infer).parameters
    flux, ivar = test["flux"].values, test["ivar"].values
    t0 = time.perf_counter()
    model = CannonModel(labels, random_state=seed).fit(train)
    t_fit = time.perf_counter() - t0
    model.infer(flux[:20], ivar[:20])  # compiled kernels loaded
    n_cand = model.start_candidates_.shape[0]
    only = {"restart": False} if has_restart else {}
    t_def, r_def = best_time(lambda: model.infer(flux, ivar), repeat)
    t_rank, r_rank = best_time(lambda: model.infer(flux, ivar, **only), repeat) if has_restart else (t_def, r_def)
    t_all, r_all = best_time(lambda: model.infer(flux, ivar, n_starts=n_cand, **only), 1)
    ref = r_all["chi2"].values
    miss_def = misses(r_def["chi2"].values, ref)
    miss_rank = misses(r_rank["chi2"].values, ref)
    better = misses(ref, r_def["chi2"].values)  # the default below the reference
    n = len(ref)
    print(
        f"\n== {name} (seed {seed}): {n} test stars x {flux.shape[1]} pixels, {len(labels)} labels; "
        f"training {train.sizes['star']} stars in {t_fit:.1f} s; {n_cand} candidates"
    )
    print(
        f"   miss rate  default {100 * miss_def.mean():.2f}% ({miss_def.sum()})   "
        f"ranking alone {100 * miss_rank.mean():.2f}% ({miss_rank.sum()})   "
        f"default below the all-candidates χ²: {better.sum()} stars"
    )
    print(
        f"   stars/s    default {n / t_def:,.0f}   ranking alone {n / t_rank:,.0f}   all {n_cand} candidates "
        f"{n / t_all:,.0f}"
    )
    snr = test["snr"].values
    print("   S/N bin        stars   miss default   miss ranking alone")
    for lo, hi in itertools.pairwise(SNR_BINS):
        sel = (snr >= lo) & (snr < hi) if hi < SNR_BINS[-1] else (snr >= lo) & (snr <= hi)
        k = int(sel.sum())
        if k:
            print(
                f"   {lo:5.0f}-{hi:<5.0f} {k:10d}   {100 * miss_def[sel].mean():10.2f}%   "
                f"{100 * miss_rank[sel].mean():10.2f}%"
            )
    for what, mi, res in (("default", miss_def, r_def), ("ranking alone", miss_rank, r_rank)):
        if mi.any():
            d = np.abs(res["labels"].values[mi] - r_all["labels"].values[mi])
            dchi = (res["chi2"].values - ref)[mi]
            print(
                f"   missed by {what}: |Δlabel| max "
                + ", ".join(f"{lab} {v:.3g}" for lab, v in zip(labels, d.max(0)))
                + "; median "
                + ", ".join(f"{lab} {v:.3g}" for lab, v in zip(labels, np.median(d, 0)))
                + f"; Δχ² median {np.median(dchi):.3g}, max {dchi.max():.3g}"
            )
    return {
        "n": n,
        "miss_def": int(miss_def.sum()),
        "miss_rank": int(miss_rank.sum()),
        "rate_def": n / t_def,
        "rate_rank": n / t_rank,
        "rate_all": n / t_all,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sets (a smoke run)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="random_state values (candidate draws)")
    p.add_argument("--repeat", type=int, default=3, help="timing repeats (best of)")
    p.add_argument("--sets", nargs="+", default=["emulator", "sim-giants", "sim-dwarfs", "giants-on-mixed", "mirror"])
    args = p.parse_args()
    n_emu_train, n_emu_test = (500, 500) if args.quick else (2000, 2000)
    n_sim = 300 if args.quick else 1000
    print(f"bench_starts: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    makers = {
        "emulator": lambda: emulator_sets(n_emu_train, n_emu_test),
        "sim-giants": lambda: simulator_sets("giants", "giants", n_sim, n_sim, 10),
        "sim-dwarfs": lambda: simulator_sets("dwarfs", "dwarfs", n_sim, n_sim, 20),
        "giants-on-mixed": lambda: simulator_sets("giants", "mixed", n_sim, n_sim, 30),
        "mirror": lambda: mirror_sets(600, 3 * n_sim),
    }
    summary = {}
    for name in args.sets:
        data = makers[name]()
        if data is None:
            continue
        train, test, labels = data if len(data) == 3 else (*data, LABELS)
        for seed in args.seeds:
            summary[(name, seed)] = run_set(name, train, test, labels, seed, args.repeat)
    print("\nsummary                     stars   miss default   miss ranking alone   stars/s default / ranking / all")
    for (name, seed), s in summary.items():
        print(
            f"{name:18s} seed {seed:<3d} {s['n']:6d}   {100 * s['miss_def'] / s['n']:10.2f}%   "
            f"{100 * s['miss_rank'] / s['n']:16.2f}%   {s['rate_def']:8,.0f} / {s['rate_rank']:,.0f} / "
            f"{s['rate_all']:,.0f}"
        )


if __name__ == "__main__":
    main()
