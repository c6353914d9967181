"""Benchmark of the core engine against thecannon (Ho+2017, PyPI 0.7.3) on emulator data.

Both codes run in this process on the same spectra: 2,000 training stars × 7,214 pixels ×
4 labels and 1,000 held-out test stars, simulated with The Payne's APOGEE emulator
(``../shared/data/apogee_payne_emulator.npz``). Prints the timings, their ratios, the
label scatter of both against the truth, the profile likelihood of the fitted s², and the
working memory of the test step for two sample sizes.

Timings are steady state (kernels loaded); the first call is reported too: a fresh process
(as every CLI command is) times ``import bayescannon`` and the first and second training
and test step on the same spectra, with the numba kernel cache warm (``make setup`` warms
it), or with ``--cold`` also with an empty cache (compilation included). The first-call
excess (first minus second call, in seconds) is what every CLI command pays on top of the
steady state; the fresh process is run ``--first-call-repeats`` times (median shown, with
the range: on a shared machine single runs vary by more than the excess).

What the first call pays (Nov 2026, cProfile and CPU time of fresh processes): the first
numba kernel of a process initialises numba's CPU target (its lowering registries, which
import ``scipy.linalg`` through ``numba.np.arraymath``: together ~0.35-0.4 s idle) and
each kernel is loaded from the disk cache (~10-20 ms each; training uses 7, the test
step 2); the first ``infer`` also used to import ``dask.array`` (~0.5 s idle, with
scipy.fft and scipy.sparse) through xarray's duck-array probe, which the result builders of
:mod:`bayescannon.results` now avoid. The numba target initialisation is numba's own,
per process, and is not moved into ``import bayescannon``.

Run: ``make bench`` (or ``python benchmarks/bench_core.py [--quick] [--cold]``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings

import numpy as np

LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]


def make_data(n_train, n_test, seed=0):
    from bayescannon.simulate.emulator import load_emulator

    emu = load_emulator()
    rng = np.random.default_rng(seed)
    ltr = emu.draw_labels(n_train, rng, vmacro=6.0)
    lte = emu.draw_labels(n_test, rng, vmacro=6.0)
    train = emu.survey(ltr, snr=(50.0, 250.0), rng=rng)
    test = emu.survey(lte, snr=(30.0, 250.0), rng=rng)
    return emu, train, test


def run_thecannon(train, test):
    from TheCannon import dataset, model

    wl = train["wavelength"].values
    ytr = np.column_stack([train[n].values for n in LABELS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dataset.Dataset(
            wl,
            train["star"].values,
            train["flux"].values.copy(),
            train["ivar"].values.copy(),
            ytr,
            test["star"].values,
            test["flux"].values.copy(),
            test["ivar"].values.copy(),
        )
        ds.set_label_names(LABELS)
        md = model.CannonModel(2, useErrors=False)
        t0 = time.perf_counter()
        md.fit(ds)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        errs, chisq = md.infer_labels(ds)
        t_test = time.perf_counter() - t0
    return dict(
        t_train=t_train,
        t_test=t_test,
        labels=np.asarray(ds.test_label_vals),
        errors=np.asarray(errs) * md.scales,
        s2=np.asarray(md.scatters) ** 2,
    )


def run_ours(train, test, n_starts):
    from bayescannon import CannonModel

    m = CannonModel(LABELS, 2, n_starts=n_starts, random_state=0)
    t0 = time.perf_counter()
    m.fit(train)
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = m.infer(test)
    t_test = time.perf_counter() - t0
    return dict(
        t_train=t_train,
        t_test=t_test,
        labels=r["labels"].values,
        errors=r["errors"].values,
        flags=r["flags"].values,
        model=m,
    )


def warm_up():
    """Load the compiled kernels once (numba disk cache), as any long run would."""
    from bayescannon import CannonModel

    rng = np.random.default_rng(1)
    y = rng.normal(size=(40, 4))
    f = 1 + 0.01 * rng.normal(size=(40, 30))
    m = CannonModel(LABELS).fit(f, np.full_like(f, 1e4), y)
    m.infer(f[:5], np.full_like(f[:5], 1e4))


FIRST_CALL = """
import json, sys, time
t0 = time.perf_counter()
import bayescannon
t_import = time.perf_counter() - t0
import numpy as np
d, n_starts = sys.argv[1], int(sys.argv[2])
f, i, y = (np.load(f"{d}/{k}.npy") for k in ("train_flux", "train_ivar", "train_labels"))
tf, ti = np.load(f"{d}/test_flux.npy"), np.load(f"{d}/test_ivar.npy")
out = dict(t_import=t_import, t_train=[], t_test=[])
for _ in range(2):
    t0 = time.perf_counter()
    m = bayescannon.CannonModel(["TEFF", "LOGG", "FE_H", "ALPHA_FE"], 2, n_starts=n_starts, random_state=0).fit(f, i, y)
    out["t_train"].append(time.perf_counter() - t0)
for _ in range(2):
    t0 = time.perf_counter()
    m.infer(tf, ti)
    out["t_test"].append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def first_call(train, test, n_starts, workdir, cache_dir=None):
    """``import bayescannon``, then the first and second training and test step, in a fresh
    process (s); ``cache_dir``: numba cache folder for it (an empty one: cold start)."""
    import os

    for name, arr in [
        ("train_flux", train["flux"].values),
        ("train_ivar", train["ivar"].values),
        ("train_labels", np.column_stack([train[n].values for n in LABELS])),
        ("test_flux", test["flux"].values),
        ("test_ivar", test["ivar"].values),
    ]:
        path = os.path.join(workdir, f"{name}.npy")
        if not os.path.exists(path):
            np.save(path, arr)
    env = dict(os.environ)
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = cache_dir
    out = subprocess.run(
        [sys.executable, "-c", FIRST_CALL, workdir, str(n_starts)], capture_output=True, text=True, check=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_call_summary(runs, n_test):
    """Median (and range) over fresh-process runs of :func:`first_call`: import time, first
    and second training and test step, and the first-call excess (first − second, s)."""

    def stat(values):
        v = np.asarray(values, dtype=float)
        return dict(median=float(np.median(v)), min=float(v.min()), max=float(v.max()))

    out = dict(n_runs=len(runs), t_import=stat([r["t_import"] for r in runs]))
    for step in ("train", "test"):
        first = [r[f"t_{step}"][0] for r in runs]
        second = [r[f"t_{step}"][1] for r in runs]
        out[step] = dict(
            first=stat(first),
            second=stat(second),
            excess=stat(np.subtract(first, second)),
        )
    out["test"]["rate_first"] = n_test / out["test"]["first"]["median"]
    out["test"]["rate_second"] = n_test / out["test"]["second"]["median"]
    return out


def print_first_call(kind, fc):
    """The first-call lines of the report for one kernel-cache state."""

    def rng(s):
        return f"{s['median']:.2f} s [{s['min']:.2f}, {s['max']:.2f}]"

    tr, te = fc["train"], fc["test"]
    print(
        f"first call : fresh process, {kind} kernel cache, median of {fc['n_runs']} [range]: "
        f"import bayescannon {rng(fc['t_import'])}"
    )
    print(f"  training  : first {rng(tr['first'])}, steady state {rng(tr['second'])}")
    print(
        f"  test step : first {te['rate_first']:.0f} stars/s ({rng(te['first'])}), "
        f"steady state {te['rate_second']:.0f} stars/s ({rng(te['second'])})"
    )
    print(f"  first-call excess (first − steady state): training {rng(tr['excess'])}, test step {rng(te['excess'])}")


def memory_probe(model, test, n_stars, chunk, workdir):
    """Working memory of the test step: peak resident memory (sampled every 2 ms) minus the
    resident memory with the model and the input arrays loaded, in a child process (MiB)."""
    import os

    reps = int(np.ceil(n_stars / test.sizes["star"]))
    flux = np.tile(np.nan_to_num(test["flux"].values), (reps, 1))[:n_stars]
    ivar = np.tile(test["ivar"].values, (reps, 1))[:n_stars]
    mpath = os.path.join(workdir, "model.nc")
    model.save(mpath, overwrite=True)  # one probe per size, same scratch folder
    np.save(os.path.join(workdir, "flux.npy"), flux)
    np.save(os.path.join(workdir, "ivar.npy"), ivar)
    code = f"""
import numpy as np, threading, time
from bayescannon import CannonModel
def rss():
    with open('/proc/self/statm') as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20
m = CannonModel.load({mpath!r})
flux = np.load({os.path.join(workdir, "flux.npy")!r}); ivar = np.load({os.path.join(workdir, "ivar.npy")!r})
m.infer(flux[:10], ivar[:10])   # load compiled kernels first
base = rss(); peak = [base]; stop = []
def watch():
    while not stop:
        peak[0] = max(peak[0], rss()); time.sleep(0.002)
th = threading.Thread(target=watch); th.start()
m.infer(flux, ivar, chunk_size={chunk})
stop.append(1); th.join()
print(peak[0] - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def profile_lnp(model, train, s2):
    """Profile log-likelihood per usable pixel (flagged pixels excluded)."""
    from bayescannon.core import scaling
    from bayescannon.core.train import profile_log_likelihood

    ok = model.pixel_flags_ == 0
    y = np.column_stack([train[n].values for n in LABELS])
    x = scaling.scale(y, model.label_offset_, model.label_scale_)
    ivar = train["ivar"].values[:, ok]
    flux = np.where(ivar > 0, train["flux"].values[:, ok], 0.0)
    return profile_log_likelihood(flux, ivar, model.vectorizer(x), s2[ok])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--n-starts", type=int, default=4)
    ap.add_argument("--quick", action="store_true", help="500 training, 300 test stars; no memory probe")
    ap.add_argument("--cold", action="store_true", help="also time the first call with an empty kernel cache")
    ap.add_argument(
        "--first-call-repeats", type=int, default=3, help="fresh processes timed for the first call (median shown)"
    )
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_test = 500, 300
    from bayescannon.simulate.emulator import find_emulator

    if find_emulator() is None:
        print("SKIP: ../shared/data/apogee_payne_emulator.npz not found")
        return 0
    emu, train, test = make_data(args.n_train, args.n_test)
    truth = np.column_stack([test[n].values for n in LABELS])
    import tempfile

    first = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.cold:
            cold = [first_call(train, test, args.n_starts, tmp, cache_dir=f"{tmp}/numba_cache")]
            first["cold"] = first_call_summary(cold, args.n_test)
        runs = [first_call(train, test, args.n_starts, tmp) for _ in range(max(1, args.first_call_repeats))]
        first["warm"] = first_call_summary(runs, args.n_test)
    warm_up()
    ours = run_ours(train, test, args.n_starts)
    ref = run_thecannon(train, test)
    m = ours["model"]
    p = train.sizes["pixel"]
    print(
        f"\n== bayescannon vs thecannon 0.7.3: {args.n_train} training stars x {p} pixels x 4 labels, "
        f"{args.n_test} test stars =="
    )
    print(
        f"training   : bayescannon {ours['t_train']:7.2f} s   thecannon {ref['t_train']:7.2f} s   "
        f"speed-up {ref['t_train'] / ours['t_train']:6.1f}x"
    )
    ours_rate = args.n_test / ours["t_test"]
    ref_rate = args.n_test / ref["t_test"]
    print(
        f"test step  : bayescannon {ours_rate:7.0f} stars/s ({args.n_starts} starts)   thecannon {ref_rate:7.0f} "
        f"stars/s (1 start)   speed-up {ours_rate / ref_rate:6.1f}x"
    )
    for kind, fc in first.items():
        print_first_call(kind, fc)
    # s² optimality: profile likelihood at our s² vs at thecannon's, and at neighbours of ours
    lp_ours = profile_lnp(m, train, m.s2_)
    lp_ref = profile_lnp(m, train, ref["s2"])
    gain = lp_ours - lp_ref
    worse = np.zeros_like(gain)
    for f in (1 - 1e-3, 1 + 1e-3):
        worse = np.maximum(worse, profile_lnp(m, train, m.s2_ * f + (f > 1) * 1e-12) - lp_ours)
    print(
        f"s²         : profile lnL(ours) − lnL(thecannon's s²): median {np.median(gain):.3g}, "
        f"min {gain.min():.3g} (≥ 0 means ours is at least as likely); "
        f"max gain at s²(1±1e-3): {worse.max():.2e}"
    )
    print(
        f"\n{'label':>9} {'scatter ours':>13} {'scatter thecannon':>18} {'bias ours':>10} {'bias thecannon':>15}"
        f" {'1σ cov ours':>12} {'1σ cov thecannon':>17}"
    )
    res = {}
    for k, name in enumerate(LABELS):
        do = ours["labels"][:, k] - truth[:, k]
        dr = ref["labels"][:, k] - truth[:, k]
        okr = np.isfinite(dr) & (np.abs(ref["labels"][:, k]) < 9000)
        co = np.mean(np.abs(do) < ours["errors"][:, k])
        cr = np.mean(np.abs(dr[okr]) < ref["errors"][okr, k])
        res[name] = dict(
            scatter_ours=float(np.std(do)),
            scatter_ref=float(np.std(dr[okr])),
            bias_ours=float(np.mean(do)),
            bias_ref=float(np.mean(dr[okr])),
        )
        print(
            f"{name:>9} {np.std(do):>13.4g} {np.std(dr[okr]):>18.4g} {np.mean(do):>10.3g} {np.mean(dr[okr]):>15.3g}"
            f" {co:>12.2f} {cr:>17.2f}"
        )
    mem = {}
    if not args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            for n in (1000, 4000):
                mem[n] = memory_probe(m, test, n, 500, tmp)
        print(
            "\ntest-step working memory (peak RSS above model + inputs, chunk 500): "
            + ", ".join(f"{n} stars: {v:.0f} MiB" for n, v in mem.items())
        )
    figures = dict(
        n_train=args.n_train,
        n_test=args.n_test,
        pixels=p,
        t_train_ours=ours["t_train"],
        t_train_ref=ref["t_train"],
        train_speedup=ref["t_train"] / ours["t_train"],
        test_rate_ours=ours_rate,
        test_rate_ref=ref_rate,
        labels=res,
        memory_mib=mem,
        first_call=first,
        s2_gain_min=float(gain.min()),
        s2_neighbour_gain_max=float(worse.max()),
    )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(figures, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
