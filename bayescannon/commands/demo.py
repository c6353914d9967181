"""``bayescannon demo``: simulate → train → infer → summary table and one-to-one plot."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from bayescannon.bayes import calibrate
from bayescannon.commands._outputs import Output
from bayescannon.commands._summary import add_json_argument, print_summary, say
from bayescannon.core.conditional import binned_coverage
from bayescannon.flags import StarFlag
from bayescannon.model import CannonModel
from bayescannon.pipeline.atomic import write_atomic
from bayescannon.plots import one_to_one
from bayescannon.simulate.synthesis import simulate_survey
from bayescannon.survey.catalogue import build_catalogue, write_table

NAME = "demo"
HELP = "run the whole pipeline on a built-in mock survey"
LABELS = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]
#: What the demo writes into ``--outdir``.
PRODUCTS = ("model.nc", "catalogue.fits", "one_to_one.png")
#: Marks a folder as the demo's own: its products are then replaced without ``--overwrite``.
MARKER = ".bayescannon-demo"


def add_arguments(p):
    p.add_argument("--outdir", default="demo_output", help="folder for the model, catalogue and plot")
    p.add_argument("--n-train", type=int, default=1500, help="training stars")
    p.add_argument("--n-test", type=int, default=1000, help="test stars")
    p.add_argument(
        "--n-calib",
        type=int,
        default=None,
        help="held-out calibration stars (default: as many as training stars)",
    )
    p.add_argument("--instrument", default="apogee", help="simulated instrument: apogee, lamost or galah")
    p.add_argument("--seed", type=int, default=1)
    add_json_argument(p)


def outputs(args):
    """The demo's products. A folder the demo made before (it holds :data:`MARKER`) is the
    demo's own and is refreshed by design (``make demo`` runs twice); in any other folder an
    existing product needs ``--overwrite``."""
    out = Path(args.outdir)
    if (out / MARKER).is_file():
        return [Output(out, "outdir", kind="workspace")]
    return [Output(out / name, "outdir") for name in PRODUCTS]


def run(args) -> int:

    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    # checked before the run (outputs): from here on the folder is the demo's own
    write_atomic(out / MARKER, lambda tmp: tmp.write_text("written by `bayescannon demo`\n"), overwrite=True)
    t0 = time.perf_counter()
    # the training (= calibration) stars span the test stars' S/N range: calibrated intervals
    # hold for stars like the calibration stars (docs/guides/calibration.md, "Exchangeability")
    train = simulate_survey(args.n_train, instrument=args.instrument, snr=(30.0, 250.0), rng=args.seed)
    test = simulate_survey(args.n_test, instrument=args.instrument, snr=(30.0, 250.0), rng=args.seed + 1000)
    t1 = time.perf_counter()
    say(
        args,
        f"simulated {args.n_train} training + {args.n_test} test {args.instrument} spectra "
        f"({train.sizes['pixel']} pixels) in {t1 - t0:.1f} s",
    )
    model = CannonModel(LABELS, order=2, random_state=args.seed).fit(train, progressbar=True)
    t2 = time.perf_counter()
    say(
        args,
        f"trained on {model.n_training_stars_} stars in {t2 - t1:.1f} s "
        f"({int((model.pixel_flags_ != 0).sum())} pixels flagged)",
    )
    result = model.infer(test, progressbar=True)
    t3 = time.perf_counter()
    say(args, f"inferred labels of {args.n_test} stars in {t3 - t2:.2f} s ({args.n_test / (t3 - t2):.0f} stars/s)")
    # honest uncertainties: calibrate the error model on held-out stars with known labels
    # (split conformal; docs/guides/calibration.md). Not by K-fold CV on the training set:
    # the fold models see 4/5 of the stars and this model's Teff residuals shrink with the
    # training-set size, so CV-calibrated Teff intervals over-cover (0.75 at 68 %)
    n_calib = args.n_train if args.n_calib is None else args.n_calib
    calset = simulate_survey(n_calib, instrument=args.instrument, snr=(30.0, 250.0), rng=args.seed + 2000)
    ycal = np.column_stack([calset[n].values for n in LABELS])
    calibrate(model, calset["flux"].values, calset["ivar"].values, ycal, n_folds=0)
    calibrated = model.infer(test, uncertainty="calibrated")
    t4 = time.perf_counter()
    say(args, f"simulated {n_calib} held-out stars and calibrated the uncertainties on them in {t4 - t3:.1f} s")
    model.save(out / "model.nc", overwrite=True)
    table = build_catalogue(model, calibrated, spectra=test, config={"command": "demo", "seed": args.seed})
    for name in LABELS:
        table[f"TRUE_{name}"] = test[name].values
        table[f"TRUE_{name}"].description = f"true {name} of the simulated star"
    write_table(table, out / "catalogue.fits", overwrite=True)
    truth = np.column_stack([test[n].values for n in LABELS])
    inferred = result["labels"].values
    err = result["errors"].values
    good = result["flags"].values & (StarFlag.NO_PIXELS | StarFlag.NOT_CONVERGED) == 0
    cal_err = calibrated["errors"].values
    hw68 = calibrated["half_width_68"].values
    hw95 = calibrated["half_width_95"].values
    say(
        args,
        "",
        f"{'label':>9} {'bias':>10} {'scatter':>10} {'formal err':>11} {'68% cover':>10}"
        f" {'calib. err':>11} {'68% cover':>10} {'95% cover':>10}",
    )
    stats = {}
    for k, name in enumerate(LABELS):
        d = inferred[good, k] - truth[good, k]
        cover = np.mean(np.abs(d) < err[good, k])
        dc = calibrated["labels"].values[good, k] - truth[good, k]
        c68 = np.mean(np.abs(dc) <= hw68[good, k])
        c95 = np.mean(np.abs(dc) <= hw95[good, k])
        stats[name] = {
            "bias": np.mean(d),
            "scatter": np.std(d),
            "formal_error": np.median(err[good, k]),
            "formal_coverage_68": cover,
            "calibrated_error": np.median(cal_err[good, k]),
            "calibrated_coverage_68": c68,
            "calibrated_coverage_95": c95,
        }
        say(
            args,
            f"{name:>9} {np.mean(d):>10.4g} {np.std(d):>10.4g} {np.median(err[good, k]):>11.4g} {cover:>10.2f}"
            f" {np.median(cal_err[good, k]):>11.4g} {c68:>10.2f} {c95:>10.2f}",
        )
    binned = _binned_range(calibrated, truth, test["snr"].values, good)
    n_bin = int(good.sum()) // 5
    say(args, f"\ncalibrated 68% coverage, lowest-highest over the 5 quintiles (~{n_bin} stars per bin):")
    say(args, f"{'by':>9} " + " ".join(f"{n:>11}" for n in LABELS))
    for by, ranges in binned.items():
        say(args, f"{by:>9} " + " ".join(f"{lo:>6.2f}-{hi:.2f}" for lo, hi in ranges.values()))
    say(args, f"\n{int((~good).sum())} of {len(good)} stars flagged as not converged / no pixels")
    fig = one_to_one(
        truth,
        inferred,
        LABELS,
        color=test["snr"].values,
        color_label="S/N",
    )
    fig.savefig(out / "one_to_one.png", dpi=110, bbox_inches="tight")
    summary = {
        "outdir": str(out),
        "products": [str(out / name) for name in PRODUCTS],
        "instrument": args.instrument,
        "n_train": args.n_train,
        "n_test": args.n_test,
        "n_calib": n_calib,
        "n_flagged": int((~good).sum()),
        "seconds": {"simulate": t1 - t0, "train": t2 - t1, "infer": t3 - t2, "calibrate": t4 - t3},
        "labels": stats,
        "calibrated_coverage_68_range_by_quintile": binned,
    }
    print_summary(args, summary, f"wrote {out / 'model.nc'}, {out / 'catalogue.fits'} and {out / 'one_to_one.png'}")
    return 0


def _binned_range(calibrated, truth, snr, good) -> dict:
    """Calibrated 68 % coverage per quintile of S/N and of each true label: the range
    (lowest, highest) over the five bins for each label's interval (the target is 0.68 in
    every bin), as ``{by: {label: (lo, hi)}}``."""
    inside = np.abs(calibrated["labels"].values - truth) <= calibrated["half_width_68"].values
    out = {}
    for by, values in [("S/N", snr)] + [(n, truth[:, k]) for k, n in enumerate(LABELS)]:
        cov = binned_coverage(inside[good][:, None, :], values[good])[0][:, 0, :]  # (bin, label)
        out[by] = {n: (lo, hi) for n, lo, hi in zip(LABELS, cov.min(axis=0), cov.max(axis=0))}
    return out
