"""Cold start: the kernel cache warm-up and the notice logged when a kernel has to compile.

Each check runs fresh Python processes (numba's dispatchers are per process); with a
temporary ``NUMBA_CACHE_DIR`` where the cache must start empty.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Kernels called only from other kernels (compiled into their callers' machine code).
CALLEES = {
    "_poly_value",
    "_poly_chi2",
    "_poly_derivatives",
    "_newton_solve",
    "_damping_scale",
    "_support_solve",
    "cholesky_solve",
    "_fixed_residual_maximum",
    "_design",
    "_chi2_and_grad",
    "_chi2_only",
    "_damped_solve",
    "_newton_matrix",
    "_adjusted_ivar",
    "_kappa_sums",
    "_kappa_ratio",
    "_softplus",
    # the label posterior's kernels, called only from its C callbacks (bayes.labelkernel)
    "logp_grad",
    "labels_from_z",
    "_unpack",
    # the homogenisation tree walker's inlined steps (homogenise.trees)
    "_leaf",
    "_path_mask",
    # the homogenisation's Monte Carlo and combination steps (homogenise.kernels)
    "_walk_up",
    "_percentiles",
    "_select",
}
#: Kernels with two specialisations by design: float32 and float64 smoothing; writable
#: and read-only spectra.
TWO_SPECIALISATIONS = {"_ho_prepare", "_ho_finish", "prepare_training", "test_weights"}


def _run(code, cache_dir=None, timeout=600):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _notices(stderr):
    return [line for line in stderr.splitlines() if "compiling the" in line]


NOTICE_SCRIPT = """
import json, logging
import numpy as np
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
from bayescannon.core import _kernels
from bayescannon._warmup import kernel_stats
ivar_t = np.full((5, 4), 1e4); flux_t = np.ones((5, 4)); s2 = np.zeros(5)
w, wf = np.empty((5, 4)), np.empty((5, 4))
for _ in range(2):
    _kernels.weights(ivar_t, flux_t, s2, np.arange(5), w, wf)
    _kernels.log_likelihood_terms(ivar_t, flux_t, flux_t, s2)
st = kernel_stats()
print(json.dumps([st["bayescannon.core._kernels.weights"], st["bayescannon.core._kernels.log_likelihood_terms"]]))
"""


def test_compile_notice_once_then_cache_hit(tmp_path):
    """A cache miss logs exactly one line per step; the next process loads from the cache
    and logs nothing."""
    first = _run(NOTICE_SCRIPT, tmp_path)
    notices = _notices(first.stderr)
    assert len(notices) == 1, first.stderr
    assert notices[0].startswith("bayescannon.core._kernels: compiling the training kernels")
    assert json.loads(first.stdout.splitlines()[-1]) == [[1, 0, 1], [1, 0, 1]]
    second = _run(NOTICE_SCRIPT, tmp_path)
    assert _notices(second.stderr) == []
    assert json.loads(second.stdout.splitlines()[-1]) == [[1, 1, 0], [1, 1, 0]]


def test_warm_up_touches_every_kernel_once():
    """The warm-up calls every compiled kernel of the package, each with the argument types
    of real calls: one specialisation each (two where listed above)."""
    proc = _run("import json; from bayescannon._warmup import warm_up; print(json.dumps(warm_up()))")
    stats = json.loads(proc.stdout.splitlines()[-1])
    modules = {name.rsplit(".", 1)[0] for name in stats}
    assert {"bayescannon.core._kernels", "bayescannon.core.grid", "bayescannon.preprocess.normalise"} <= modules
    for name, (n_sig, _, _) in stats.items():
        func = name.rsplit(".", 1)[1]
        if func in CALLEES:
            assert n_sig <= 1, name
        else:
            assert n_sig == (2 if func in TWO_SPECIALISATIONS else 1), (name, n_sig)


def test_fit_and_infer_import_no_heavy_libraries():
    """``import bayescannon``, training and the test step import neither the Bayesian and
    plotting stack nor scipy's optimize/stats (~1 s of a first call between them)."""
    code = """
import sys
import numpy as np
import bayescannon
rng = np.random.default_rng(1)
y = rng.normal(size=(40, 3)); f = 1 + 0.01 * rng.normal(size=(40, 30)); iv = np.full_like(f, 1e4)
bayescannon.CannonModel(["A", "B", "C"]).fit(f, iv, y).infer(f[:5], iv[:5])
heavy = ["pymc", "pytensor", "arviz", "matplotlib", "astropy", "scipy.optimize", "scipy.stats", "tqdm"]
print(",".join(m for m in heavy if m in sys.modules))
"""
    assert _run(code).stdout.splitlines()[-1] == ""


@pytest.mark.slow
def test_warm_up_then_demo_compiles_nothing(tmp_path):
    """After ``python -m bayescannon._warmup`` on an empty cache, a demo run (simulate,
    train, infer, calibrate, calibrated infer) loads every kernel and compiles none."""
    cache = tmp_path / "numba"
    cold = _run("from bayescannon._warmup import main; main()", cache)
    assert _notices(cold.stderr), cold.stderr
    demo = f"""
import json
from bayescannon.cli import main
from bayescannon._warmup import kernel_stats
assert main(["demo", "--n-train", "300", "--n-test", "100", "--outdir", {str(tmp_path / "demo")!r}]) == 0
print(json.dumps(kernel_stats()))
"""
    warm = _run(demo, cache)
    assert _notices(warm.stderr) == [], warm.stderr
    stats = json.loads(warm.stdout.splitlines()[-1])
    assert sum(v[2] for v in stats.values()) == 0, stats
    assert sum(v[1] for v in stats.values()) >= 9, stats


def test_compile_notice_lets_foreign_functions_compile():
    """The compile listener sees every numba compile of the process; functions of other
    packages (PyTensor's numba backend makes them with ``__module__ = None``) compile."""
    import numba

    import bayescannon.core._kernels  # noqa: F401  (registers the listener)

    def plus_one(x):
        return x + 1

    plus_one.__module__ = None
    assert numba.njit(plus_one)(1) == 2
