"""Benchmark of the Survey of Surveys homogenisation on the six-survey mock (issue 13 targets).

    python benchmarks/bench_homogenise.py --n-stars 30000           # accuracy: bias tables, coverage
    python benchmarks/bench_homogenise.py --large                   # 6 surveys x 100,000 stars, 200 draws
    python benchmarks/bench_homogenise.py --large --profile prof.txt  # + cProfile of the homogenisation

Prints, per label:

* the bias of each survey's calibrated value (``CAL``) and of the unified value of the stars a
  survey contributes to (``UNI``) against the truth, overall and in five quantile bins of the
  TRUE label, each with its own allowance: 10 % of the median |injected offset| of the stars in
  that bin, or 0.1 of the survey's median noise there, whichever is larger (the issue's
  target), the sampling error of the median (``se``) and PASS/FAIL;
* the same tables in bins of the OBSERVED label (the survey's catalogue value for ``CAL``, the
  unified value for ``UNI``). The target is read on the TRUE-label bins: the calibrated
  values are deconvolved (:mod:`bayescannon.homogenise.deconvolve`), i.e. built to be
  unbiased at a fixed true label, like a measurement. Any noisy measurement binned on its
  own (or a correlated) noisy value shows regression dilution at the population edges,
  ``E[value - truth | value bin] ~ sigma^2 × d ln p / d value``, whatever the calibration:
  the observed-label bins are printed for users who select on observed labels, not as the
  test of the calibration;
* the coverage of the unified 68 %/95 % intervals against the truth;
* the pair scatter after calibration (1.4826 MAD of the differences on stars that trained
  neither survey's model) against 1.1 x the expected one: the 1.4826 MAD that the per-star
  quadrature sums of the two surveys' calibrated errors predict
  (:func:`bayescannon.homogenise.validation.implied_robust_scatter`; the median of those sums,
  the first definition, is printed beside it);
* the wall time of ``fit_transform`` and the peak RSS of the process (ru_maxrss).

A bin whose allowance is under 3 standard errors of its median is marked "not testable at
this n": its PASS/FAIL is mostly noise (at 30,000 stars, most LAMOST_MRS bins); the summary
counts the failures among the testable rows too. ``--large`` makes every bin testable.

Measured 30 Nov 2026 (shared 2-core machine; docs/guides/homogenise.md has the details):

* default (30,000 stars): true-label bins 202/216 PASS (testable 171/175), worst |bias| /
  allowance 2.26 / 1.49 / 2.37 (TEFF / LOGG / FE_H); with ``--model-seed 1`` 201/216
  (testable 164/168), 1.17 / 1.75 / 1.68; unified coverage 68 % 0.670 / 0.672 / 0.679, 95 %
  0.942 / 0.944 / 0.947; fit_transform 35 s CPU (58 s before the deconvolution term was
  taken out before the fit and the trees got a linear base: 175/216, 1.87 / 2.60 / 3.19);
* ``--large``: 205/216 PASS (all rows testable), worst 1.55 / 1.45 / 1.01 (before: 203/216,
  1.24 / 1.70 / 1.87); coverage 68 % 0.675 / 0.679 / 0.682, 95 % 0.944 / 0.949 / 0.949;
  fit_transform 150 s CPU, 158 s wall (``--n-jobs 1``, machine not idle), peak RSS 1,761 MiB.

Model-seed spread (30 Nov 2026, second pass; no code change): ``--model-seed 2`` gives 186/216
(testable 158/173), worst 1.60 / 2.23 / 2.59, coverage 68 % 0.669 / 0.671 / 0.677, 95 %
0.938 / 0.944 / 0.945, fit_transform 36.9 s CPU (numba kernels cached; the first run after a
change compiles them: 54.7 s CPU for seed 0).
LAMOST's lowest TEFF bin is +18.9 K (se 2.8) with seed 0 and -11.7 K (se 3.0) with seed 2:
mostly the offset model's own variance. Two changes tried and not adopted (the noise level
in the linear base; a first-order correction of the offset's own regression to the mean)
are described with their figures in docs/guides/homogenise.md.

Third pass (30 Nov 2026): split-normal errors (LAMOST, GAIA_RVS) get the posterior-median
deconvolution term and their own noise median added by the propagation
(docs/guides/homogenise.md, 3b). Default run, before -> after, model seeds 0 / 1 / 2:
202 -> 205, 201 -> 204, 186 -> 191 of 216 (testable 170/174 -> 173/175, 164/168 -> 169/173,
158/173 -> 163/172); LAMOST LOGG over all its stars +0.015 -> +0.006 (seed 0), +0.022 ->
+0.009 (seed 2), within the allowance in every bin with each seed; unified coverage 68 %
0.669-0.681, 95 % 0.939-0.947; fit_transform 34-40 s CPU. Left: LAMOST [Fe/H] lowest bin
(-0.010 / -0.009 / -0.018, allowance 0.008), LAMOST_MRS [Fe/H] all stars (-0.007, 0.0065),
LAMOST TEFF at the low edge with seed 2 (-20.7 K; its level moves ~14 K between seeds).
--large: 205 -> 204/216, worst 1.07 / 1.62 / 1.55, LAMOST LOGG within the allowance in every
bin; failing: LAMOST TEFF top bin (+11.6 K, allowance 10.9) and LAMOST_MRS LOGG (-0.013 over
all its stars: chained on LAMOST's calibrated values, whose noise is skewed; open, see the
guide); fit_transform 386.6 s CPU on a machine at load 4-7 (not comparable with the idle
figures above).

Fourth pass (30 Nov 2026): a survey chained on a parent with split-normal errors (LAMOST_MRS
on LAMOST) learnt the median of the parent's skewed error plus its own posterior scatter
(-0.006 LOGG, -0.004 [Fe/H] on the mock; proven by refitting LAMOST_MRS against the truth,
the truth plus LAMOST's noise and LAMOST's calibrated values: docs/guides/homogenise.md);
that median is now taken out of its offsets before the fit (``deconvolve.sum_median_shift``).
Default run, before -> after: model seed 0 205 -> 206/216 (testable 173/175 -> 174/175),
seed 1 204 -> 210/216 (169/173 -> 170/173); LAMOST_MRS all stars LOGG -0.0090 -> -0.0045,
[Fe/H] -0.0070 -> -0.0044 (seed 0) and -0.0085 -> -0.0045 (seed 1), now within 0.0065;
coverage 68 % 0.670-0.681, 95 % 0.940-0.947; fit_transform 38.5-39.0 s CPU.
--large, before -> after (back to back): 204 -> 210/216, worst 1.07 / 1.62 / 1.55 -> 1.63 /
1.19 / 0.90; LAMOST_MRS LOGG all stars -0.0135 -> -0.0073 (the 3.91-4.30 bin still -0.015,
allowance 0.013), [Fe/H] edge bins -0.0100 / -0.0065 -> -0.0058 / -0.0035 (pass); LAMOST_MRS
TEFF top bin +7.2 -> +13.1 K (allowance 8.6): it now inherits LAMOST's own +11.6 K there;
coverage 68 % 0.675 / 0.680 / 0.681, 95 % 0.943 / 0.949 / 0.948; pair scatter 32/33
(LAMOST-LAMOST_MRS [Fe/H] 0.1092 against 0.1082); fit_transform 886 s CPU at load ~4 (the
before run: 1,141 s; not comparable with idle figures), the new term ~2 s of it.

Fifth pass (30 Nov 2026), diagnosis only: LAMOST's TEFF top bin (--large +11.6 K, allowance
10.9) is the correction learnt there (median learnt - ideal +11.6 K): the deconvolution's
error at the 6500 K edge, which leaks into the calibrated values (+4.5 K; LAMOST's on-scale
population moves with its 1200/SNR K offset, which one population for all S/N misreads), the
trees' smoothing (+4.1 K), the offset's own regression to the mean (+1.6 K); 15 % of the bin
lies below the common stars' S/N (+33 K there, +10.3 K within). The deconvolution given the
features (S/N, magnitude as noise-free columns) was tried and not adopted: default run 206 ->
205/216, LAMOST TEFF top bin +6.2 -> +8.1 K, GAIA_RVS TEFF bin 4 -0.2 -> -17.9 K. Figures in
docs/guides/homogenise.md. So was the first-order correction of the offset's regression to the
mean with its sign derived (-g' D / lam, own label): seed 0 206 -> 207 (LAMOST TEFF top bin
+6.2 -> +2.6 K, lowest bin +9.1 -> +14.7 K), seed 1 210 -> 204.

Sixth pass (30 Nov 2026), tried and not adopted: a deconvolution whose population moves with
the star's noise level (component means linear in it, per component or one shared slope;
EM in closed form, no extra CPU). It mends the one-label toy (edge moved by 1200/SNR K: top
fifth -6.9 -> -1.4 / -1.9 K over six seeds) but not the mock: default run 206 -> 208 / 206
(model seed 0), 210 -> 204 / 205 (seed 1); LAMOST TEFF top bin +6.2 -> +8.7 / +8.4 K, +1.8 ->
+2.5 / +1.3 K. Per star on a 200,000-star mock, LAMOST's TEFF deconvolution error in the
95-99 % bin of the value stays at +17 K (+19 K with TEFF alone; RAVE, with no S/N term in its
TEFF offset, +14 K): not the S/N movement. Figures in docs/guides/homogenise.md.

Seventh pass (30 Nov 2026): the two LAMOST_MRS misses of --large. (B) Pair scatter
LAMOST-LAMOST_MRS [Fe/H] 0.1092 against 1.1 x 0.0984: the metric. Both surveys' calibrated
half-widths match their errors against the truth on the pair's 1,779 held-out stars (MAD of
(cal - truth) / half-width 0.999 and 1.007) and the two errors are uncorrelated (r -0.02),
but the 1.4826 MAD of heteroscedastic differences is not the median of the per-star
quadrature errors: exactly normal differences of the stated widths give 1.074 x that median
for this pair. The expected scatter is now the MAD those widths predict
(validation.implied_robust_scatter; the median is printed beside it): 32/33 -> 33/33 pairs,
this one 1.110 -> 1.033 x expected; bias rows and coverage unchanged (validation only);
fit_transform 311.7 s CPU, 269.6 s wall at a load of ~3 (another benchmark running), peak RSS
1,763 MiB. Default run, pairs over 1.1 x expected before -> after: 3 -> 2 (model seed 0) and
3 -> 2 (seed 1), LAMOST-LAMOST_MRS LOGG now within; the pairs left over have 47-71 stars
(se of a robust scatter >= 14 %) and were over before; rows 206/216 and 210/216 as before.
(A) LAMOST_MRS LOGG 3.91-4.30 (-0.0153, allowance 0.0129), decomposed by refitting its model
against the truth / truth + LAMOST's noise / LAMOST's calibrated values: its own D and trees
-0.006 (of which -0.003 its own noise draw over the bin, and a -0.004 level the trees learn
from the noise of the common stars: med(u - v - D) -0.0036 there, se 0.0012, -0.0007 on the
others; the bench's se does not count this variance of the calibration), LAMOST's noise after the
median-of-sum shift -0.0005 (-0.006 without it), LAMOST's own model error on the dwarfs
inherited through the chain -0.006 (LAMOST's noise-free calibration error there -0.005 to
-0.007, inside its own allowance 0.018), the split's variance -0.003. No general fix in
LAMOST_MRS's model; nothing adopted. Figures in docs/guides/homogenise.md.

Eighth pass (30 Nov 2026), tried and not adopted: D as the posterior MEDIAN shift at a hard
edge, the mixture's D plus, per label, the median-minus-mean of a one-label grid NPMLE
posterior (stars binned in value x 10 noise groups: all stars, ~0.1 s CPU per label; table
smoothed over 0.25 noise), applied only where the other labels do not inform the label
(mixture posterior mean vs its one-label marginal's < 0.1 noise). It is right on a uniform
toy (median of x - E[x|v] with the EXACT mean +11-12 K in the 95-99 % bin of v; corrected
-2.2...+3.1 K) and halves LAMOST's per-star edge error there (+17.6 / +26.3 -> +8.6 / +12.0 K)
but deepens the 99-100 % bins (-24 -> -38 K), where the mixture's own mean is off. Default run,
before -> after: 206 -> 205/216 (model seed 0; LAMOST TEFF top bin +6.2 -> +3.8 K, lowest bin
+9.1 -> +11.8 K, now failing), 210 -> 208/216 (seed 1; top bin +1.8 -> -2.9 K; LAMOST and
LAMOST_MRS [Fe/H] rows just over); coverage and pair counts unchanged. --large not run.
Figures in docs/guides/homogenise.md.

Ninth pass (30 Nov 2026), first not adopted, then adopted (below): where the guard says the other labels do not
inform a label, D REPLACED by the binned NPMLE's own posterior median shift med[x|v] - v -
med(error) (its likelihood the star's split normal; weight 1 - r/0.3, r the guard's statistic
in noise units: a smooth blend), so that the far tail takes the NPMLE's shrinkage too. Per
star (200,000-star mock, mixture seeds 0 / 1) the outer bins mend almost everywhere: LAMOST
TEFF 95-99 % +17.6 / +26.3 -> +6.3 / +5.2 K, 99-100 % -24.2 / -21.5 -> +2.4 / +11.7 K, RAVE
TEFF 99-100 % -88 / -73 -> -8 / -19 K, [Fe/H] 99-100 % of every survey from -14...-58 to
within +-24 x10^-3. Default run, before -> after: 206 -> 207/216 (seed 0; testable 174/175 ->
173/175; LAMOST TEFF top bin +6.2 -> +2.9 K, but lowest bin +9.1 -> +12.9 K, failing),
210 -> 207/216 (seed 1; testable 170/173 -> 168/172; LAMOST TEFF 5176-5648 K -9.9 -> -12.3 K
now failing); coverage within targets, pairs over 1.1 x expected 2 -> 0 and 2 -> 3;
fit_transform 38.8 s CPU (seed 1, against 33.4). Rows fewer at seed 1: --large not run. The
patch: /tmp/s13e/ninth-pass.patch at the time; figures in docs/guides/homogenise.md.
ADOPTED after --large (every row testable; idle, --n-jobs 2): mock seed 0 210 -> 214/216
(LAMOST TEFF top bin +11.64 -> +6.63 K; new: RAVE TEFF 5189-5651 K +13.49 (11.3), LAMOST_MRS
[Fe/H] top bin -0.0065 (0.0064)), worst 1.63 / 1.19 / 0.90 -> 1.19 / 0.74 / 1.01, pairs 33/33;
--seed 1 214 -> 213/216 (LAMOST TEFF 4466-4885 K +9.89 -> +12.27 K (10.9)), pairs 32 -> 33/33;
fit_transform 101.6 s wall, 167.4 s CPU, peak RSS 1,766 MiB (before 100.4 s, 166.0 s).

Timings on a shared machine are noisy: rerun on an idle one before comparing.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import pstats
import resource
import time

import numpy as np

from bayescannon.homogenise import Homogeniser, robust_scatter
from bayescannon.simulate.mockcatalogues import make_mock_catalogues, mock_offset

LABELS = ["TEFF", "LOGG", "FE_H"]
N_BINS = 5


def _filled(col):
    return np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)


def bias_rows(value, truth_lab, offset_lab, noise_lab, n_bins: int = N_BINS, binvar=None) -> list[dict]:
    """Overall and per-quantile-bin bias rows with their own allowance; bins of the true
    label, or of ``binvar`` (an observed label) when given."""
    ok = np.isfinite(value) & np.isfinite(truth_lab)
    if binvar is not None:
        ok &= np.isfinite(binvar)
    v, t, off, noise = value[ok], truth_lab[ok], offset_lab[ok], noise_lab[ok]
    b_on = t if binvar is None else binvar[ok]
    if len(v) < 2 * n_bins:
        return []
    edges = np.quantile(b_on, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, b_on, side="right") - 1, 0, n_bins - 1)
    rows = []
    for b in [-1, *range(n_bins)]:  # -1: all stars
        sel = np.ones(len(v), bool) if b < 0 else which == b
        d = v[sel] - t[sel]
        allow = max(0.1 * float(np.median(np.abs(off[sel]))), 0.1 * float(np.nanmedian(noise[sel])))
        bias = float(np.median(d))
        se = 1.2533 * robust_scatter(d) / np.sqrt(sel.sum())
        rows.append(
            {
                "bin": "all" if b < 0 else f"[{edges[b]:.4g},{edges[b + 1]:.4g}]",
                "n": int(sel.sum()),
                "bias": bias,
                "se": se,
                "allow": allow,
                "pass": abs(bias) <= allow,
                # a bin whose allowance is under 3 standard errors of its median cannot tell
                # a calibration inside the target from one outside it: its verdict is noise
                "testable": allow >= 3.0 * se,
            }
        )
    return rows


def bias_table(mock, u, h, labels=LABELS, by="truth"):
    """Print the per-survey and per-bin bias tables; return (n_fail, n_rows, worst ratio per
    label, n_fail and n_rows among the testable rows: allowance >= 3 se).

    ``by="truth"``: bins of the true label (the target's reading: the calibrated values are
    deconvolved, i.e. unbiased at a fixed true label); ``by="observed"``: bins of the
    survey's own catalogue label (``CAL`` rows) and of the unified value (``UNI`` rows), the
    selection a user makes, which also carries the regression dilution of any noisy
    measurement binned on itself (see the module docstring)."""
    pos = {i: k for k, i in enumerate(mock.truth["ID"])}
    idx = np.array([pos[i] for i in u["ID"]])
    truth = {lab: np.asarray(mock.truth[lab], dtype=float)[idx] for lab in [*labels, "MAG"]}
    n_fail = n_rows = t_fail = t_rows = 0
    worst = {}
    for j, lab in enumerate(labels):
        what_bins = "TRUE" if by == "truth" else "OBSERVED (catalogue for CAL, unified for UNI)"
        print(f"\n{lab}: bias in bins of the {what_bins} {lab} (allowance per bin: max(0.1 |offset|, 0.1 noise))")
        print(f"  {'survey':11s} {'what':4s} {'bin':>22s} {'n':>7s} {'bias':>9s} {'se':>8s} {'allow':>8s}  verdict")
        worst[lab] = 0.0
        surveys_col = np.asarray(u[f"SURVEYS_{lab}"]).astype(str)
        for s, cat in mock.catalogues.items():
            if f"{s}_{lab}_CAL" not in u.colnames:
                continue
            # the survey's own inputs on the unified rows
            row_of = {i: k for k, i in enumerate(u["ID"])}
            r = np.array([row_of[i] for i in cat["ID"]])
            snr = np.full(len(u), np.nan)
            snr[r] = np.asarray(cat["SNR"], dtype=float)
            noise = np.full(len(u), np.nan)
            if f"E_{lab}" in cat.colnames:
                noise[r] = np.asarray(cat[f"E_{lab}"], dtype=float)
            else:
                noise[r] = 0.5 * (_filled(cat[f"{lab}_P84"]) - _filled(cat[f"{lab}_P16"]))
            has = np.isfinite(snr)
            off = np.full(len(u), np.nan)
            off[has] = mock_offset(
                s, truth["TEFF"][has], truth["LOGG"][has], truth["FE_H"][has], snr[has], truth["MAG"][has]
            )[:, j]
            cal = _filled(u[f"{s}_{lab}_CAL"])
            contributes = np.char.find(np.char.add(np.char.add(",", surveys_col), ","), f",{s},") >= 0
            uni = np.where(contributes, _filled(u[lab]), np.nan)
            own = np.full(len(u), np.nan)
            own[r] = _filled(cat[lab])
            for what, val in (("CAL", cal), ("UNI", uni)):
                binvar = None if by == "truth" else (own if what == "CAL" else uni)
                for row in bias_rows(val, truth[lab], off, noise, binvar=binvar):
                    n_rows += 1
                    n_fail += not row["pass"]
                    t_rows += row["testable"]
                    t_fail += row["testable"] and not row["pass"]
                    worst[lab] = max(worst[lab], abs(row["bias"]) / row["allow"])
                    print(
                        f"  {s:11s} {what:4s} {row['bin']:>22s} {row['n']:7d} {row['bias']:9.4g} {row['se']:8.3g}"
                        f" {row['allow']:8.3g}  {'PASS' if row['pass'] else 'FAIL'}"
                        + ("" if row["testable"] else "  (allow < 3 se: not testable at this n)")
                    )
        print(
            f"  {lab}: worst |bias| / allowance {worst[lab]:.2f}; path of each survey: "
            + ", ".join(f"{s}: {'>'.join(p)}" for s, p in h.paths_[lab].items())
        )
    return n_fail, n_rows, worst, t_fail, t_rows


def coverage(mock, u, labels=LABELS):
    pos = {i: k for k, i in enumerate(mock.truth["ID"])}
    idx = np.array([pos[i] for i in u["ID"]])
    out = {}
    for lab in labels:
        t = np.asarray(mock.truth[lab], dtype=float)[idx]
        v = _filled(u[lab])
        ok = np.isfinite(v)
        c = []
        for lo, hi in (("_LO", "_HI"), ("_LO95", "_HI95")):
            a, b = _filled(u[f"{lab}{lo}"])[ok], _filled(u[f"{lab}{hi}"])[ok]
            c.append(float(np.mean((t[ok] >= a) & (t[ok] <= b))))
        multi = ok & (np.asarray(u[f"N_{lab}"]) >= 2)
        a, b = _filled(u[f"{lab}_LO"])[multi], _filled(u[f"{lab}_HI"])[multi]
        c.append(float(np.mean((t[multi] >= a) & (t[multi] <= b))))
        out[lab] = c
        print(f"{lab}: unified coverage 68% {c[0]:.3f} (stars with N>=2: {c[2]:.3f}), 95% {c[1]:.3f}")
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--n-stars", type=int, default=30000)
    p.add_argument("--n-draws", type=int, default=200)
    p.add_argument("--n-estimators", type=int, default=200)
    p.add_argument("--n-jobs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--model-seed",
        type=int,
        help="random_state of the homogeniser (default: --seed); another value "
        "with the same mock shows how much of a bin's bias is the offset models' own variance",
    )
    p.add_argument("--large", action="store_true", help="6 surveys x 100,000 stars (timing and memory)")
    p.add_argument("--per-survey", type=int, default=100000, help="rows per survey with --large")
    p.add_argument("--profile", help="write a cProfile summary of the homogenisation to this file")
    p.add_argument("--no-deconvolve", action="store_true", help="the model of the observed labels as it is")
    p.add_argument("--no-tables", action="store_true", help="skip the bias tables")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(relativeCreated)8.0f ms %(name)s: %(message)s")
    if args.large:  # progress (one line per offset model) with the time since the start
        logging.getLogger("bayescannon.homogenise").setLevel(logging.INFO)
    if args.large:
        # the smallest survey (LAMOST_MRS) sees ~14 % of the population: draw enough, then
        # keep args.per_survey random rows of every survey (overlaps thin out proportionally)
        mock = make_mock_catalogues(max(args.n_stars, 8 * args.per_survey), seed=args.seed)
        rng = np.random.default_rng(args.seed)
        for s, t in mock.catalogues.items():
            if len(t) > args.per_survey:
                mock.catalogues[s] = t[np.sort(rng.choice(len(t), args.per_survey, replace=False))]
    else:
        mock = make_mock_catalogues(args.n_stars, seed=args.seed)
    print("stars per survey:", {s: len(t) for s, t in mock.catalogues.items()})
    h = Homogeniser(
        LABELS,
        mock.config["reference"],
        features=["SNR", "MAG"],
        min_overlap=200,
        n_estimators=args.n_estimators,
        n_draws=args.n_draws,
        n_jobs=args.n_jobs,
        deconvolve=not args.no_deconvolve,
        random_state=args.seed if args.model_seed is None else args.model_seed,
    )
    prof = cProfile.Profile(time.process_time) if args.profile else None  # CPU time: robust on a shared machine
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    u = h.fit_transform(mock.catalogues)
    if prof:
        prof.disable()
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    peak = usage.ru_maxrss / 1024
    print(
        f"end to end (fit_transform): {wall:.1f} s wall, {cpu:.1f} s CPU (user + sys, all threads), peak RSS "
        f"{peak:.0f} MiB, {len(u)} unified stars (on a shared machine the wall time is noisy; CPU time / cores "
        f"used is the better guide)"
    )
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45)
        with open(args.profile, "w") as fh:
            fh.write(s.getvalue())
    coverage(mock, u)
    if not args.no_tables:
        summary = []
        for by in ("truth", "observed"):
            n_fail, n_rows, worst, t_fail, t_rows = bias_table(mock, u, h, by=by)
            summary.append(
                f"bias rows in bins of the {by} label: {n_rows - n_fail}/{n_rows} PASS "
                f"(testable rows, allowance >= 3 se: {t_rows - t_fail}/{t_rows} PASS); worst |bias|/allowance "
                + ", ".join(f"{k} {v:.2f}" for k, v in worst.items())
            )
        print("\n" + "\n".join(summary))
    n_pairs = n_ok = 0
    for lab in LABELS:
        for r in [r for r in h.validation_["pairs"] if r["LABEL"] == lab]:
            n_pairs += 1
            n_ok += r["SCATTER_CAL"] <= 1.1 * r["EXPECTED_CAL"]
            print(
                f"  pair {lab:5s} {r['PAIR']:20s} n={r['N']:6d} bias {r['BIAS_RAW']:8.4g} -> {r['BIAS_CAL']:8.4g}; "
                f"scatter {r['SCATTER_RAW']:.4g} -> {r['SCATTER_CAL']:.4g} (1.1 x expected {1.1 * r['EXPECTED_CAL']:.4g}; "
                f"1.1 x median quadrature error {1.1 * r['MEDIAN_ERROR_CAL']:.4g})"
            )
    print(f"pair scatter after calibration <= 1.1 x expected: {n_ok}/{n_pairs} pairs")
    for lab, ms in h.models_.items():
        for s, m in ms.items():
            print(
                f"model {lab} {s}: trees {m.best_iteration_ + 1} pinball train {m.pinball_['train']:.4g} test "
                f"{m.pinball_['test']:.4g}; conformal coverage 68% {m.coverage_[0.68]:.3f} 95% "
                f"{m.coverage_[0.95]:.3f} (n_test {m.n_train_['test']})"
            )


if __name__ == "__main__":
    main()
