"""Benchmark of the Bayesian layer on APOGEE-emulator spectra (prints coverage and timings).

    python benchmarks/bench_bayes.py [--quick]

Needs ../shared/data/apogee_payne_emulator.npz. Measures: calibrated coverage of 68 %/95 %
intervals per label on held-out stars (S/N 30–250); one star's NUTS posterior (4 labels,
7,214 pixels, 4 chains × 1,000 draws) after one compile; 100 stars; latent-label MAP vs
plain MAP training time (5,000 stars × 3,000 pixels); cost of calibrated vs formal errors.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bayescannon.bayes import calibrate

EMULATOR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "apogee_payne_emulator.npz"
LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]
LO = np.array([4300.0, 4.05, -0.7, -0.2])
HI = np.array([6900.0, 4.9, 0.3, 0.4])


def emulate(n, rng, pixels=None, snr=(30.0, 250.0)):
    d = np.load(EMULATOR)
    px = np.arange(d["w0"].shape[0]) if pixels is None else pixels
    lab = rng.uniform(LO, HI, (n, 4))
    s = (np.column_stack([lab, np.full(n, 10.0)]) - d["x_min"]) / (d["x_max"] - d["x_min"]) - 0.5
    flux0 = np.empty((n, px.size))
    for a in range(0, n, 500):
        h = 1.0 / (1.0 + np.exp(-(np.einsum("pjk,nk->npj", d["w0"][px], s[a : a + 500]) + d["b0"][px])))
        flux0[a : a + 500] = np.einsum("pj,npj->np", d["w1"][px], h) + d["b1"][px]
    sn = np.exp(rng.uniform(np.log(snr[0]), np.log(snr[1]), n))
    flux = flux0 + rng.standard_normal(flux0.shape) / sn[:, None]
    ivar = np.broadcast_to((sn**2)[:, None], flux.shape).copy()
    ivar[:, d["bad_pixel_mask"][px]] = 0.0
    return flux, ivar, lab, sn


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    ap.add_argument(
        "--sections",
        default="coverage,nuts,latent",
        help="comma-separated subset of coverage,nuts,latent,conditional,draws (nuts needs coverage's model)",
    )
    ap.add_argument("--orders", default="2,3", help="conditional: polynomial orders to measure")
    ap.add_argument("--n-test", type=int, default=5000, help="conditional: held-out stars (>= 1,000 per quintile)")
    ap.add_argument("--pixel-step", type=int, default=1, help="conditional: use every n-th emulator pixel")
    ap.add_argument("--sources", default="emulator,simulator", help="conditional: emulator and/or simulator")
    ap.add_argument("--n-folds", type=int, default=5, help="conditional: cross-validation folds of the calibration")
    ap.add_argument(
        "--n-calib", type=int, default=2000, help="conditional: stars of the held-out calibration set (CLI default)"
    )
    ap.add_argument(
        "--modes",
        default="cv,cv-fs,holdout",
        help="conditional: calibrations to measure (cv: K-fold CV; cv-fs: + fold-size correction; holdout: held-out set)",
    )
    ap.add_argument(
        "--selection",
        default=None,
        help="conditional: rule of the calibration's own CV choice of the bias and width models "
        "(best, one-se, one-se-classic; default the library's)",
    )
    ap.add_argument(
        "--n-draws", type=int, default=8, help="draws: independent held-out calibration sets per source and order"
    )
    ap.add_argument(
        "--level-estimators",
        default="conformal",
        help="draws: comma-separated overall-level estimators to compare on the same draws "
        "(conformal, student-t, parametric)",
    )
    args = ap.parse_args(argv)
    sections = set(args.sections.split(","))
    if not EMULATOR.exists() and not sections <= {"conditional", "draws"}:
        print(f"skipped: {EMULATOR} not found")
        return 0
    if sections & {"coverage", "nuts"}:
        coverage_and_nuts(args, "nuts" in sections)
    if "latent" in sections:
        latent_labels(args)
    if "conditional" in sections:
        conditional_coverage(args)
    if "draws" in sections:
        calibration_draws(args)
    return 0


def coverage_and_nuts(args, nuts):
    from bayescannon import CannonModel
    from bayescannon.bayes import coverage_report

    n_train, n_test = (800, 800) if args.quick else (2000, 2000)
    n_rep = 1 if args.quick else 3
    pooled = []
    for rep_i in range(n_rep):  # independent training/calibration/test sets: coverage is a random variable
        rng = np.random.default_rng(rep_i)
        ftr, itr, ltr, _ = emulate(n_train, rng)
        fte, ite, lte, _ = emulate(n_test, rng)
        model = CannonModel(LABELS, random_state=0)
        t = time.perf_counter()
        model.fit(ftr, itr, ltr)
        t_fit = time.perf_counter() - t
        t = time.perf_counter()
        calibrate(model, ftr, itr, ltr, n_folds=5)
        t_cal = time.perf_counter() - t
        rep = coverage_report(model, fte, ite, lte)
        pooled.append(rep["coverage"].sel(kind="calibrated").values * float(rep["n_stars"]))
        print(
            f"[set {rep_i}] trained on {n_train} stars x 7214 px in {t_fit:.1f} s; 5-fold CV calibration {t_cal:.1f} s"
        )
        print(f"coverage on {int(rep['n_stars'])} held-out stars (S/N 30-250):")
        for kind in rep["kind"].values:
            for lv in rep["level"].values:
                vals = "  ".join(
                    f"{n}={float(rep['coverage'].sel(kind=kind, level=lv, label_name=n)):.3f}" for n in LABELS
                )
                print(f"  {kind:>10} {int(lv * 100)}%: {vals}")
    if n_rep > 1:
        tot = np.sum(pooled, axis=0) / (n_rep * float(rep["n_stars"]))
        for j, lv in enumerate(rep["level"].values):
            vals = "  ".join(f"{n}={tot[j, k]:.3f}" for k, n in enumerate(LABELS))
            print(f"  pooled over {n_rep} sets, calibrated {int(lv * 100)}%: {vals}")
    # calibrated vs formal errors: cost of the test step
    reps = 3
    t = time.perf_counter()
    for _ in range(reps):
        model.infer(fte, ite)
    t_formal = (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for _ in range(reps):
        model.infer(fte, ite, uncertainty="calibrated")
    t_calib = (time.perf_counter() - t) / reps
    print(
        f"test step {n_test} stars: formal {t_formal:.3f} s, calibrated {t_calib:.3f} s "
        f"(+{100 * (t_calib / t_formal - 1):.1f}%)"
    )
    if not nuts:
        return
    # NUTS: one star after one compile, then 100 stars
    from bayescannon.bayes import LabelPosterior

    post = LabelPosterior(model)
    t = time.perf_counter()
    post.compile()
    t_comp = time.perf_counter() - t
    t = time.perf_counter()
    tree = post.sample(fte[:1], ite[:1], draws=1000, tune=1000, chains=4)
    t_one = time.perf_counter() - t
    d = tree["diagnostics"].to_dataset()
    print(
        f"NUTS compile {t_comp:.1f} s; one star (4 chains x 1000 draws): {t_one:.2f} s, "
        f"max R-hat {float(d['max_r_hat'].max()):.4f}"
    )
    n_many = 20 if args.quick else 100
    t = time.perf_counter()
    tree = post.sample(fte[:n_many], ite[:n_many], draws=1000, tune=1000, chains=4)
    t_many = time.perf_counter() - t
    d = tree["diagnostics"].to_dataset()
    print(
        f"{n_many} stars: {t_many:.1f} s; converged {int(d['converged'].sum())}/{n_many}; "
        f"max R-hat {float(d['max_r_hat'].max()):.4f}; median sd/Laplace {np.median(d['sd_ratio'].values):.3f}"
    )
    truth = lte[:n_many]
    # the calibrated intervals are centred on the bias-corrected posterior mean
    inside = np.abs(d["calibrated_mean"].values - truth) <= d["half_width_68"].values
    inside95 = np.abs(d["calibrated_mean"].values - truth) <= d["half_width_95"].values
    print(
        f"  calibrated posterior intervals cover 68%: {np.round(inside.mean(0), 3)}, 95%: {np.round(inside95.mean(0), 3)}"
    )


def latent_labels(args):
    from bayescannon import CannonModel
    from bayescannon.core.vectorizer import PolynomialVectorizer

    rng = np.random.default_rng(100)
    # latent-label MAP vs plain MAP: quadratic truth (the model is adequate) and emulator
    # spectra (misspecified), label errors 3 % (and 10 %) of the range; held-out stars
    # measure what the trained model is for: labels of new spectra
    n_eiv, p_eiv = (1500, 1000) if args.quick else (5000, 3000)
    vec = PolynomialVectorizer(LABELS, 2)
    theta = rng.normal(scale=0.05, size=(p_eiv, vec.n_terms))
    theta[:, 0] = 1.0

    def quadratic(n_):
        xq = rng.uniform(-0.5, 0.5, (n_, 4))
        snq = np.exp(rng.uniform(np.log(50.0), np.log(250.0), n_))
        fq = vec(xq) @ theta.T + rng.standard_normal((n_, p_eiv)) / snq[:, None]
        return fq, np.broadcast_to((snq**2)[:, None], fq.shape).copy(), xq

    fq, ivq, xq = quadratic(n_eiv)
    fq_t, ivq_t, xq_t = quadratic(1000)
    pixels = np.linspace(0, 7213, p_eiv).astype(int)
    f, iv, lab, _ = emulate(n_eiv, rng, pixels, snr=(50.0, 250.0))
    f_t, iv_t, lab_t, _ = emulate(1000, rng, pixels, snr=(50.0, 250.0))
    cases = {}
    for frac in (0.03, 0.10):
        errq = np.full((n_eiv, 4), frac)
        err = np.abs(HI - LO) * frac * np.ones((n_eiv, 1))
        cases[f"quadratic truth, label errors {frac:.0%}"] = (
            fq,
            ivq,
            xq + errq * rng.standard_normal(xq.shape),
            errq,
            xq,
            fq_t,
            ivq_t,
            xq_t,
        )
        cases[f"emulator, label errors {frac:.0%}"] = (
            f,
            iv,
            lab + err * rng.standard_normal(lab.shape),
            err,
            lab,
            f_t,
            iv_t,
            lab_t,
        )
    CannonModel(LABELS).fit(fq[:300], ivq[:300], xq[:300], label_errors=np.full((300, 4), 0.03))  # compile
    for name, (ff, ii, oo, ee, tt, f2, i2, t2) in cases.items():
        t = time.perf_counter()
        plain = CannonModel(LABELS).fit(ff, ii, oo)
        t_plain = time.perf_counter() - t
        truth_model = CannonModel(LABELS).fit(ff, ii, tt)

        def held_out(m, f2=f2, i2=i2, t2=t2):
            return np.sqrt(np.mean((m.infer(f2, i2)["labels"].values - t2) ** 2, axis=0))

        print(
            f"training {n_eiv} x {p_eiv} ({name}): plain MAP {t_plain:.2f} s; held-out rms "
            f"{np.array2string(held_out(plain), precision=4)} (trained on the true labels: "
            f"{np.array2string(held_out(truth_model), precision=4)})"
        )
        runs = [("calibrated", None)]
        if "3%" in name:
            runs.append(("formal", None))
        if "emulator" in name:
            runs.append(("calibrated", 4))
        for mode, trend in runs:
            t = time.perf_counter()
            m = CannonModel(LABELS).fit(ff, ii, oo, label_errors=ee, spectral_information=mode, trend_order=trend)
            t_eiv = time.perf_counter() - t
            latent = m.latent_labels_ * m.label_scale_ + m.label_offset_
            what = mode if trend is None else f"{mode}, trend_order={trend}"
            print(
                f"  latent-label MAP ({what}) {t_eiv:.2f} s ({t_eiv / t_plain:.2f}x plain), "
                f"{int(m.latent_iterations_)} iterations, "
                f"converged={bool(m.latent_converged_)}; median |label - truth|/error: "
                f"observed {np.array2string(np.median(np.abs(oo - tt) / ee, axis=0), precision=2)}, "
                f"latent {np.array2string(np.median(np.abs(latent - tt) / ee, axis=0), precision=2)}; "
                f"held-out rms {np.array2string(held_out(m), precision=4)}"
            )


def _simulated(n, seed, snr=(20.0, 300.0)):
    from bayescannon.simulate import simulate_survey

    ds = simulate_survey(n, snr=snr, rng=seed, population="giants")
    lab = np.column_stack([ds[name].values for name in LABELS])
    return ds["flux"].values, ds["ivar"].values, lab, ds["snr"].values


def conditional_coverage(args):
    """Issue 12 targets: 68 % coverage in every quintile of every label and of S/N (0.68 ± 0.05),
    overall 0.68 ± 0.03 and 95 % 0.95 ± 0.02; label rms not worse than before the bias
    correction. Emulator (S/N 30-250) and built-in simulator (S/N 20-300), 2,000 training
    stars, orders 2 and 3, three calibrations with the default settings otherwise: 5-fold CV
    of the training set, the same plus the fold-size correction (a second, 2-fold CV), and
    the CLI default, a held-out calibration set (``n_folds=0``) of 2,000 more stars of the
    same source; the version-2 calibration (no bias, no Mondrian factors) on the CV residuals
    alongside for comparison.

    Prints, per case and calibration, every 68 % cell (S/N and each label's quintiles x the
    label whose interval is counted) with PASS/FAIL against 0.68 +- 0.05 and the count
    outside, then a summary of the cells in band.

    Measured 2026-11-30 (2 shared CPU cores, load 3-5; 2,000 training / 5,000 held-out
    stars, >= 1,000 per bin; calibration version 6; cells in band of 100, range; overall 68 %
    and 95 % over the 4 labels; rms of the calibrated estimates):

    ========= ===== =========== ============== =========== =========== ============================
    source    order calibration cells          overall 68  overall 95  rms (Teff K, logg, FeH, aFe)
    ========= ===== =========== ============== =========== =========== ============================
    emulator  2     5-fold CV   89 0.645-0.768 0.682-0.711 0.954-0.955 37.1 0.028 0.018 0.016
    emulator  2     CV + fold   94 0.629-0.758 0.677-0.690 0.939-0.953 37.1 0.028 0.018 0.016
    emulator  2     held-out    95 0.613-0.741 0.672-0.701 0.953-0.958 37.2 0.027 0.018 0.016
    emulator  3     5-fold CV   87 0.648-0.757 0.697-0.715 0.951-0.963 21.0 0.017 0.013 0.011
    emulator  3     CV + fold   88 0.595-0.745 0.643-0.706 0.924-0.960 21.0 0.017 0.013 0.011
    emulator  3     held-out    96 0.617-0.744 0.676-0.704 0.946-0.949 20.9 0.017 0.013 0.011
    simulator 2     5-fold CV   96 0.618-0.753 0.665-0.690 0.947-0.956 20.9 0.051 0.012 0.012
    simulator 2     CV + fold   88 0.595-0.751 0.651-0.687 0.942-0.955 20.9 0.051 0.012 0.012
    simulator 2     held-out    98 0.629-0.765 0.677-0.696 0.947-0.955 21.1 0.051 0.012 0.012
    simulator 3     5-fold CV   94 0.611-0.730 0.660-0.680 0.956-0.964 16.6 0.040 0.0096 0.011
    simulator 3     CV + fold   81 0.594-0.712 0.648-0.657 0.949-0.956 16.6 0.040 0.0096 0.011
    simulator 3     held-out    99 0.647-0.739 0.675-0.692 0.941-0.959 15.8 0.039 0.0093 0.011
    ========= ===== =========== ============== =========== =========== ============================

    Version 7 (smooth width model with label x noise-fraction terms where the calibration's
    own CV selects them), held-out set, ``--modes holdout --n-calib 2000`` / ``8000``: cells in
    band 96 / 96 / 98 / 99 and 98 / 99 / 100 / 100 (emulator 2, 3, simulator 2, 3); v6 with 8,000
    calibration stars: 100 / 98 / 100 / 100 (emulator order 3: [Fe/H] 0.617 in the top S/N
    quintile and 0.610 in Teff q4, a S/N x Teff interaction of the width; v7: 0.631, 0.628).
    Overall 68 % within +-0.03, 95 % within +-0.02 and rms unchanged in every v7 case; see
    docs/guides/calibration.md ("Why the emulator order-3 [Fe/H] cells missed").

    ``--selection one-se`` (the bias and width models' CV takes the simplest candidate within
    one standard error of the best) was measured offline on cached predictions of these
    models, 2,000 and 8,000 held-out calibration stars: cells in band 779 -> 780 of 800, mean
    cell sd 0.0212 -> 0.0214, overall targets met either way; not adopted (the default stays
    ``best``; docs/guides/calibration.md, "One-standard-error rule").

    (Version 5 = the 5-fold CV rows; version 4: 89/90/94/90.) The held-out set (the CLI
    default) is best everywhere: its misses are the sampling noise of 2,000 calibration stars
    and 1,000-star test bins (with 8,000 held-out calibration stars: 100/100 at both emulator
    orders). The fold-size correction helps emulator order 2 only and over-corrects the
    simulator (its ``1/m`` law fails there): it stays opt-in (docs/guides/calibration.md,
    "Measured")."""
    from bayescannon import CannonModel
    from bayescannon.bayes import coverage_report
    from bayescannon.bayes.calibration import calibrate_from_predictions, fit_calibration

    sources = args.sources.split(",")
    n_train = 800 if args.quick else 2000
    n_test = 2000 if args.quick else args.n_test
    summary = []
    for source in sources:
        if source == "emulator":
            if not EMULATOR.exists():
                print(f"emulator skipped: {EMULATOR} not found")
                continue
            rng = np.random.default_rng(12)
            px = np.arange(0, 7214, args.pixel_step)
            ftr, itr, ltr, _ = emulate(n_train, rng, px)
            fte, ite, lte, ste = emulate(n_test, rng, px)
            # the held-out calibration set: as many more stars of the same source
            fca, ica, lca, _ = emulate(args.n_calib, np.random.default_rng(112), px)
            what = f"emulator ({px.size} px, S/N 30-250)"
        else:
            ftr, itr, ltr, _ = _simulated(n_train, 1)
            fte, ite, lte, ste = _simulated(n_test, 2)
            fca, ica, lca, _ = _simulated(args.n_calib, 3)
            what = f"simulator ({ftr.shape[1]} px, S/N 20-300)"
        for order in [int(o) for o in args.orders.split(",")]:
            t = time.perf_counter()
            model = CannonModel(LABELS, order, random_state=0).fit(ftr, itr, ltr)
            t_fit = time.perf_counter() - t
            print(f"{what}, order {order}: fit {t_fit:.1f} s")
            # what calibrate(model, ftr, itr, ltr, n_folds=5[, fold_size_correction=True]) does, keeping the residuals
            wanted = args.modes.split(",")
            modes = []
            if "cv" in wanted or "cv-fs" in wanted:
                t = time.perf_counter()
                resid, fvar, eps, x = _cv_residuals(model, ftr, itr, ltr, n_folds=args.n_folds)
                t_cv = time.perf_counter() - t
            if "cv" in wanted:
                modes.append((f"{args.n_folds}-fold CV", None))
            if "cv-fs" in wanted:
                t = time.perf_counter()
                resid2, _, _, _ = _cv_residuals(model, ftr, itr, ltr, n_folds=2)
                t_cv2 = time.perf_counter() - t
                sizes = (n_train * (args.n_folds - 1) / args.n_folds, n_train / 2, n_train)
                fs = {"estimates": resid2 + ltr, "sizes": sizes}
                modes.append((f"{args.n_folds}-fold CV + fold-size correction", fs))
            if "holdout" in wanted:
                modes.append((f"held-out set of {args.n_calib} stars (CLI default)", "holdout"))
            for name, fs in modes:
                t = time.perf_counter()
                sel = {} if args.selection is None else {"selection": args.selection}
                if fs == "holdout":
                    calibrate(model, fca, ica, lca, n_folds=0, **sel)
                    cost = f"calibration {time.perf_counter() - t:.1f} s on {len(lca)} more stars"
                else:
                    cal = calibrate_from_predictions(
                        model, resid + ltr, fvar, ltr, eps=eps, source=f"cv-{args.n_folds}", fold_size=fs, **sel
                    )
                    t_extra = t_cv2 if fs is not None else 0.0
                    cost = f"calibration {t_cv + t_extra + time.perf_counter() - t:.1f} s"
                    if fs is not None:
                        cost += f" (2-fold CV {t_cv2:.1f} s of it)"
                        rec = cal["fold_size"]
                        cost += "; fold-size factor (median sd) " + " ".join(
                            f"{n}={f:.3f}{'' if g else '(n.s.)'}"
                            for n, f, g in zip(LABELS, rec["median_factor"], rec["significant"])
                        )
                cal = model.calibration_
                summary.append((what, order, name, *_report_case(model, fte, ite, lte, ste, name, cost, cal)))
            if "cv" not in wanted:
                continue
            # the version-2 calibration (widths only) on the same CV residuals, for comparison
            old, _ = fit_calibration(resid, fvar, eps, x, model.label_names, bias=False, mondrian=False, smooth=False)
            model.calibration_ = old | {"source": f"cv-{args.n_folds} (version-2 behaviour)"}
            orep = coverage_report(model, fte, ite, lte, snr=ste)
            ocb = orep["coverage_binned"].sel(kind="calibrated", level=0.68)
            print(
                f"  old calibration (no bias, no Mondrian): overall 68% "
                f"{np.round(orep['coverage'].sel(kind='calibrated', level=0.68).values, 3)}, per-bin range "
                f"{float(ocb.min()):.3f}-{float(ocb.max()):.3f}"
            )
    print("summary: cells of 68 % coverage within 0.68 +- 0.05 (of 100), per source, order and calibration")
    for what, order, name, n_in, lo, hi, ok in summary:
        print(f"  {what}, order {order}, {name}: {n_in}/100 in band, range {lo:.3f}-{hi:.3f}; all targets met: {ok}")


def calibration_draws(args):
    """Where the per-cell misses of issue 12 come from: the same model and test stars, and
    ``--n-draws`` independent held-out calibration sets of ``--n-calib`` stars (the CLI
    default, ``calibrate(..., n_folds=0)``). Per draw: 68 % cells in band (of 100); over the
    draws: rms deviation of the cells from 0.68, the mean between-draw sd of a cell (the
    calibration set's sampling noise), and the sd of the draw-averaged cells less that noise
    and the test bins' binomial noise (structure the calibration misses whatever the draw);
    the most persistent cells. Use ``--n-test 20000`` (4,000 stars per bin) so the test
    noise is small.

    Measured 2026-11-30 (``--n-test 20000 --n-draws 8``; 2,000 training stars, 8 draws of
    2,000 calibration stars; cells in band per draw, mean; rms deviation of the cells from
    0.68; between-draw sd; structure): simulator order 2: 98 97 99 98 91 93 97 94 (95.9),
    0.023, 0.016, 0.014; order 3: 100 99 97 98 97 90 99 99 (97.4), 0.022, 0.017, 0.009;
    emulator order 2: 95 95 99 99 97 97 98 96 (97.0), 0.022, 0.016, 0.012; order 3: 98 97 98 99
    97 97 99 98 (97.9), 0.021, 0.017, 0.008. Overall 68 % 0.659-0.718 and 95 % 0.933-0.960
    over all 32 calibrations. At 2,000 calibration stars the misses are mostly the
    calibration set's own noise; ablations and variants: docs/guides/calibration.md ("Where
    the misses come from").

    ``--level-estimators conformal,student-t,parametric`` calibrates each draw's predictions
    (computed once) with each overall-level estimator (``calibrate(..., level_estimator=...)``)
    and reports each; also the between-draw sd of a label's overall 68 % coverage and how
    often the guard fell back to the conformal quantile. Measured 2026-11-30 (same settings;
    mean cells in band conformal / student-t / parametric): simulator order 2 95.9 / 96.0 /
    96.0, order 3 97.4 / 98.2 / 98.2; emulator order 2 97.0 / 98.1 / 97.6, order 3 97.9 / 98.1
    / 98.1; mean overall 68 % 0.682-0.687 / 0.675-0.680 / 0.678-0.680, 95 % identical; level
    sd 0.0094-0.0110 / 0.0082-0.0103 / 0.0088-0.0104; the guard never fell back (0 of 256
    label fits). Below the adoption rule (+1 cell on both sources): conformal stays the
    default; table and stress checks in docs/guides/calibration.md."""
    from bayescannon import CannonModel
    from bayescannon.bayes.calibration import _usable, calibrate_from_predictions, holdout_predictions
    from bayescannon.core.conditional import binned_coverage, spectrum_snr
    from bayescannon.core.uncertainty import apply_calibration

    estimators = args.level_estimators.split(",")
    for source in args.sources.split(","):
        if source == "emulator":
            if not EMULATOR.exists():
                print(f"emulator skipped: {EMULATOR} not found")
                continue
            px = np.arange(0, 7214, args.pixel_step)
            rng = np.random.default_rng(12)
            ftr, itr, ltr, _ = emulate(2000, rng, px)
            fte, ite, lte, ste = emulate(args.n_test, rng, px)

            def draw(s, px=px):
                return emulate(args.n_calib, np.random.default_rng(112 + s), px)[:3]

        else:
            ftr, itr, ltr, _ = _simulated(2000, 1)
            fte, ite, lte, ste = _simulated(args.n_test, 2)

            def draw(s):
                return _simulated(args.n_calib, 3 + 17 * s)[:3]

        for order in [int(o) for o in args.orders.split(",")]:
            model = CannonModel(LABELS, order, random_state=0).fit(ftr, itr, ltr)
            formal = model.infer(fte, ite)  # once; each draw's calibration is applied to it
            ok = _usable(formal)
            cells = {e: [] for e in estimators}
            o68 = {e: [] for e in estimators}
            o95 = {e: [] for e in estimators}
            fallback = {e: 0 for e in estimators}
            for s in range(args.n_draws):
                fc, ic, lc = draw(s)
                est, fvar, eps = holdout_predictions(model, fc, ic)  # once per draw, shared by the estimators
                for e in estimators:
                    t = time.perf_counter()
                    cal = calibrate_from_predictions(
                        model, est, fvar, lc, eps=eps, snr=spectrum_snr(fc, ic), source="holdout", level_estimator=e
                    )
                    used = cal["level_scale"]["used"]
                    fallback[e] += sum(u == "conformal" for u in used) if e != "conformal" else 0
                    res = apply_calibration(model, formal, ite)
                    d = np.abs(res["labels"].values - lte)[ok]
                    inside = d <= res["half_width_68"].values[ok]
                    o68[e].append(inside.mean(axis=0))
                    o95[e].append((d <= res["half_width_95"].values[ok]).mean(axis=0))
                    by = [ste[ok]] + [lte[ok, q] for q in range(len(LABELS))]
                    cells[e].append(np.array([binned_coverage(inside[:, None, :], v)[0][:, 0, :] for v in by]))
                    n_in = int(np.sum(np.abs(cells[e][-1] - 0.68) <= 0.05))
                    dis = " ".join("-" if v is None else f"{v:+.2f}" for v in cal["level_scale"]["disagreement_sd"])
                    print(
                        f"  {source} order {order} draw {s} [{e}]: {n_in}/100 cells in band; overall 68 % "
                        + " ".join(f"{v:.3f}" for v in o68[e][-1])
                        + f"; used {used}; disagreement (sd) {dis} ({time.perf_counter() - t:.1f} s)"
                    )
            for e in estimators:
                _report_draws(source, order, e, args, ok, np.array(cells[e]), o68[e], o95[e], fallback[e])


def _report_draws(source, order, e, args, ok, c, o68, o95, n_fallback):
    """Summary of one case's draws for one level estimator (see :func:`calibration_draws`)."""
    mean = c.mean(axis=0)
    between = float(c.std(axis=0, ddof=1).mean()) if len(c) > 1 else float("nan")
    test_sd = np.sqrt(0.68 * 0.32 / (ok.sum() / 5))
    structure = np.sqrt(max(float(mean.var()) - between**2 / len(c) - test_sd**2, 0.0))
    n_in = [int(np.sum(np.abs(x - 0.68) <= 0.05)) for x in c]
    o68, o95 = np.array(o68), np.array(o95)
    print(
        f"{source} order {order} [{e}], {args.n_draws} draws of {args.n_calib} calibration stars, {int(ok.sum())} "
        f"test stars: cells in band {n_in} (mean {np.mean(n_in):.1f}); rms deviation "
        f"{np.sqrt(np.mean((c - 0.68) ** 2)):.4f}; between-draw sd {between:.4f}; structure {structure:.4f} "
        f"(test-bin noise {test_sd:.4f}); overall 68 % {o68.min():.3f}-{o68.max():.3f} (mean {o68.mean():.4f}, "
        f"between-draw sd per label {o68.std(axis=0, ddof=1).mean():.4f}), 95 % {o95.min():.3f}-{o95.max():.3f} "
        f"(mean {o95.mean():.4f}); guard fell back for {n_fallback} of {len(c) * len(LABELS)} label fits"
    )
    names = ["snr"] + LABELS
    for w in np.argsort(np.abs(mean - 0.68).ravel())[::-1][:5]:
        b, q, j = np.unravel_index(w, mean.shape)
        print(f"    persistent: {names[b]} quintile {q}, {LABELS[j]}: mean {mean[b, q, j]:.3f}")


def _report_case(model, fte, ite, lte, ste, name, cost, cal):
    """Coverage of one calibration on the test stars: overall, every quintile cell, rms.
    Returns the cells in band, the cells' range and whether every target is met."""
    from bayescannon.bayes import coverage_report

    rep = coverage_report(model, fte, ite, lte, snr=ste)
    c = rep["coverage"].sel(kind="calibrated")
    cb = rep["coverage_binned"].sel(kind="calibrated", level=0.68)
    lo, hi = float(cb.min()), float(cb.max())
    ok = (
        lo >= 0.63
        and hi <= 0.73
        and bool(np.all(np.abs(c.sel(level=0.68) - 0.68) <= 0.03))
        and bool(np.all(np.abs(c.sel(level=0.95) - 0.95) <= 0.02))
    )
    print(
        f"  [{name}] {cost}; {int(rep['n_stars'])} held-out test stars, >= {int(rep['bin_count'].min())} per bin; "
        f"bias degrees {cal['bias']['degree']}, width degrees {cal['width']['degree']}, "
        f"label x noise-fraction terms {cal['width'].get('interaction')}"
    )
    for lv in (0.68, 0.95):
        vals = "  ".join(f"{n}={float(c.sel(level=lv, label_name=n)):.3f}" for n in LABELS)
        print(f"  overall {int(lv * 100)}%: {vals}")
    n_in = int(np.sum(np.abs(cb.values - 0.68) <= 0.05))
    _print_target_table(rep, cb)
    print(
        "  rms corrected "
        + " ".join(f"{v:.4g}" for v in rep["rms"].values)
        + "; uncorrected "
        + " ".join(f"{v:.4g}" for v in rep["rms_uncorrected"].values)
    )
    print(f"  per-bin 68% range {lo:.3f}-{hi:.3f}; targets met: {ok}")
    return n_in, lo, hi, ok


def _print_target_table(rep, cb):
    """68 % coverage per quintile bin (rows: S/N and each label's quintiles, with their range
    and star count; columns: the label whose interval is counted), PASS within 0.68 ± 0.05."""
    print(f"  68% coverage per quintile (target 0.63-0.73; columns {' '.join(LABELS)}):")
    n_fail = 0
    for by in rep["by"].values:
        for b in range(cb.sizes["bin"]):
            vals = cb.sel(by=by, bin=b).values
            cells = []
            for v in vals:
                ok = abs(v - 0.68) <= 0.05
                n_fail += not ok
                cells.append(f"{v:.3f} {'PASS' if ok else 'FAIL'}")
            lo, hi = float(rep["bin_lo"].sel(by=by, bin=b)), float(rep["bin_hi"].sel(by=by, bin=b))
            n = int(rep["bin_count"].sel(by=by, bin=b))
            print(f"    {by:>8} q{b + 1} [{lo:9.4g}, {hi:9.4g}] n={n:5d}: " + "  ".join(cells))
    print(f"  cells outside 0.68 +- 0.05: {n_fail} of {cb.size}")


def _cv_residuals(model, flux, ivar, labels, n_folds=5):
    """5-fold CV residuals, formal variances, ε and scaled estimates (as calibrate draws them)."""
    from bayescannon.core import scaling
    from bayescannon.core.uncertainty import epsilon
    from bayescannon.flags import StarFlag

    n = len(labels)
    fold = np.random.default_rng(0).permutation(n) % n_folds
    est = np.full(labels.shape, np.nan)
    fvar = np.full(labels.shape, np.nan)
    eps = np.zeros(n)
    for f in range(n_folds):
        tr, te = fold != f, fold == f
        sub = model.clone().fit(flux[tr], ivar[tr], labels[tr])
        res = sub.infer(flux[te], ivar[te])
        bad = (
            res["flags"].values & int(StarFlag.NO_PIXELS | StarFlag.NOT_CONVERGED | StarFlag.SINGULAR_COVARIANCE)
        ) != 0
        est[te] = np.where(bad[:, None], np.nan, res["labels"].values)
        fvar[te] = np.einsum("nkk->nk", res["covariance"].values)
        eps[te] = epsilon(sub, scaling.scale(np.nan_to_num(est[te]), sub.label_offset_, sub.label_scale_), ivar[te])
    x = scaling.scale(est, model.label_offset_, model.label_scale_)
    return est - labels, fvar, eps, x


if __name__ == "__main__":
    sys.exit(main())
