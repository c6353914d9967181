"""Dask execution (:mod:`bayescannon.pipeline.cluster`): the same results as in this process,
nothing lost when a worker or the client dies, typed errors for malformed ``--dask`` specs.

One LocalCluster (2 worker processes x 1 thread) is shared by the tests of this module; the
tests that start their own cluster in a subprocess are marked slow.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

from bayescannon.cli import main  # noqa: E402
from bayescannon.errors import DaskSpecError, MissingDependencyError  # noqa: E402
from bayescannon.homogenise.propagate import propagate  # noqa: E402
from bayescannon.pipeline.cluster import (  # noqa: E402
    RUN_LOG,
    DaskExecutor,
    InProcessExecutor,
    RunLog,
    parse_dask_spec,
    read_run_log,
)
from bayescannon.spectra import make_spectra  # noqa: E402
from bayescannon.survey.batch import infer_chunked  # noqa: E402
from bayescannon.validate import cross_validate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def client():
    # dashboard on a free port: with dashboard_address=None the scheduler's HTTP server still asks
    # for 8787 and warns (an error under filterwarnings) when another cluster on the host holds it
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=50
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        c.wait_for_workers(2)
        c.run(importlib.import_module, "bayescannon.survey.batch")  # warm the workers' imports once
        yield c


def _spectra(trained, n, seed=0):
    tr, model = trained
    rng_state = tr.rng.bit_generator.state
    tr.rng = np.random.default_rng(seed)
    try:
        y = tr.labels(n)
        flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    finally:
        tr.rng.bit_generator.state = rng_state
    return make_spectra(model.wavelength_, flux, ivar, ids=[f"s{i:05d}" for i in range(n)]), y


# ----------------------------------------------------------------------------- specs
def test_dask_specs_parse():
    assert parse_dask_spec("local:3").n_workers == 3
    assert parse_dask_spec("tcp://node12:8786").address == "tcp://node12:8786"


def test_jobqueue_yaml_spec(tmp_path):
    f = tmp_path / "slurm.yaml"
    f.write_text("cluster: slurm\nscale: 20\noptions:\n  cores: 1\n  memory: 4GB\n  walltime: '01:00:00'\n")
    spec = parse_dask_spec(str(f))
    assert (spec.kind, spec.cluster, spec.scale, spec.options["memory"]) == ("jobqueue", "slurm", {"n": 20}, "4GB")
    f.write_text("cluster: pbs\nscale: {jobs: 4}\n")
    assert parse_dask_spec(str(f)).scale == {"jobs": 4}


@pytest.mark.parametrize(
    "spec, words",
    [
        ("local:0", "positive"),
        ("local:two", "positive"),
        ("local:", "positive"),
        ("tcp://node12", "tcp://HOST:PORT"),
        ("tcp://node12:99999", "port"),
        ("udp://node12:8786", "tcp://HOST:PORT"),
        ("cluster.yaml", "YAML"),
        ("4", "local:N"),
    ],
)
def test_malformed_dask_spec_is_a_typed_error(spec, words):
    with pytest.raises(DaskSpecError, match=words) as info:
        parse_dask_spec(spec)
    assert repr(spec) in str(info.value)  # the message names the spec given
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "text, words",
    [("cluster: kubernetes\nscale: 2\n", "'cluster'"), ("cluster: slurm\nscale: 0\n", "'scale'"), ("- 1\n", "mapping")],
)
def test_malformed_jobqueue_yaml_is_a_typed_error(tmp_path, text, words):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(DaskSpecError, match=words):
        parse_dask_spec(str(f))


def test_missing_dask_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(MissingDependencyError, match=r"bayescannon\[dask\]"):
        DaskExecutor.from_spec("local:1")


def test_cli_malformed_dask_spec_fails_before_work(trained, tmp_path, capsys):
    _, model = trained
    ds, _ = _spectra(trained, 4)
    model.save(tmp_path / "m.nc")
    ds.to_netcdf(tmp_path / "s.nc", engine="h5netcdf")
    rc = main(
        ["infer", str(tmp_path / "m.nc"), str(tmp_path / "s.nc"), "-o", str(tmp_path / "c.fits")]
        + ["--dask", "local:x"]
    )
    assert rc == 1
    assert "local:N" in capsys.readouterr().err
    assert not (tmp_path / "c.fits").exists()


# ----------------------------------------------------------------------------- executor
def _slow_square(task, offset):
    time.sleep(0.15)
    return task * task + offset, os.getpid()


def test_executor_hands_results_back_in_process_and_on_dask(client, tmp_path):
    log = RunLog(tmp_path / RUN_LOG)
    got = []
    inproc = InProcessExecutor().map_chunks(_slow_square, range(4), broadcast={"offset": 1})
    dask = DaskExecutor(client).map_chunks(
        _slow_square, range(4), broadcast={"offset": 1}, on_result=lambda i, r: got.append(i), run_log=log
    )
    assert [r[0] for r in inproc] == [r[0] for r in dask] == [1, 2, 5, 10]
    assert sorted(got) == [0, 1, 2, 3]
    done = [e for e in read_run_log(tmp_path / RUN_LOG) if e["event"] == "done"]
    assert sorted(e["chunk"] for e in done) == ["0", "1", "2", "3"]
    assert all(e["seconds"] >= 0.15 and e["peak_rss_mb"] > 0 and e["pid"] != os.getpid() for e in done)


def test_a_killed_worker_loses_no_task(client, tmp_path):
    """SIGKILL one worker process while tasks run: every task's result comes back exactly once."""
    pids = client.run(os.getpid)
    killed = []

    def kill_one(i, result):
        if not killed:
            victim = sorted(pids.values())[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

    log = RunLog(tmp_path / RUN_LOG)
    n = 24
    seen = []
    out = DaskExecutor(client).map_chunks(
        _slow_square,
        range(n),
        broadcast={"offset": 0},
        on_result=lambda i, r: (seen.append(i), kill_one(i, r)),
        run_log=log,
    )
    assert killed
    assert sorted(seen) == list(range(n))  # each task handed back exactly once
    assert [r[0] for r in out] == [i * i for i in range(n)]
    done = [e["chunk"] for e in read_run_log(tmp_path / RUN_LOG) if e["event"] == "done"]
    assert sorted(done, key=int) == [str(i) for i in range(n)]
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker for the next tests


# ----------------------------------------------------------------------------- infer
def _in_process_one_blas_thread(*args, **kwargs):
    """The in-process run with BLAS on one thread, as each Dask worker thread has it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return infer_chunked(*args, **kwargs)


def test_infer_on_dask_equals_in_process(client, trained, tmp_path):
    """Bit for bit with the same BLAS threads; with the default (all cores) BLAS the labels move by
    rounding only (the order of BLAS sums: ~1e-9 relative, measured), far below their errors."""
    _, model = trained
    ds, _ = _spectra(trained, 60)
    here = _in_process_one_blas_thread(model, ds, tmp_path / "here", chunk_size=15, n_starts=8)
    there = infer_chunked(model, ds, tmp_path / "there", chunk_size=15, executor=DaskExecutor(client), n_starts=8)
    np.testing.assert_array_equal(there["labels"].values, here["labels"].values)
    np.testing.assert_array_equal(there["errors"].values, here["errors"].values)
    default = infer_chunked(model, ds, tmp_path / "default", chunk_size=15, n_starts=8)
    np.testing.assert_allclose(default["labels"].values, there["labels"].values, rtol=1e-7, atol=0)
    assert np.all(np.abs(default["labels"].values - there["labels"].values) < 1e-6 * there["errors"].values)
    np.testing.assert_array_equal(there["star"].values, ds["star"].values)
    # the same keys: the in-process folder is a finished Dask run and the other way round
    events = read_run_log(tmp_path / "there" / RUN_LOG)
    assert sum(e["event"] == "done" for e in events) == 4
    again = infer_chunked(model, ds, tmp_path / "here", chunk_size=15, executor=DaskExecutor(client), n_starts=8)
    events = read_run_log(tmp_path / "here" / RUN_LOG)
    last = [e for e in events if e["run"] == events[-1]["run"]]
    assert sum(e["event"] == "reused" for e in last) == 4 and last[-1]["computed"] == 0
    np.testing.assert_array_equal(again["labels"].values, here["labels"].values)


def test_cv_folds_on_dask_equal_in_process(client, trained):
    from bayescannon import CannonModel

    tr, model = trained
    ds, y = _spectra(trained, 90, seed=3)
    settings = CannonModel(model.label_names, 2, random_state=0)
    flux, ivar = ds["flux"].values, ds["ivar"].values
    here = cross_validate(settings, flux, ivar, y, n_folds=3, n_jobs=1)
    there = cross_validate(settings, flux, ivar, y, n_folds=3, executor=DaskExecutor(client))
    np.testing.assert_allclose(there.predictions["labels"].values, here.predictions["labels"].values, rtol=1e-12)
    assert np.isfinite(here.predictions["labels"].values).all()


def test_homogenise_monte_carlo_on_dask_equals_in_process(client):
    rng = np.random.default_rng(0)
    n, k = 2500, 3
    mu = rng.normal(size=(n, k))
    s1, s2 = rng.uniform(0.05, 0.2, (n, k)), rng.uniform(0.05, 0.3, (n, k))
    tau = rng.uniform(0.0, 0.1, n)
    shift = (rng.normal(scale=0.01, size=n), rng.normal(scale=0.1, size=(n, k)))
    kw = dict(n_draws=50, chunk_size=600, shift=shift)
    here = propagate(None, None, 1, mu, s1, s2, None, tau, np.random.default_rng(7), **kw)
    there = propagate(
        None, None, 1, mu, s1, s2, None, tau, np.random.default_rng(7), executor=DaskExecutor(client), **kw
    )
    for a, b in zip(here, there, strict=True):
        np.testing.assert_array_equal(a, b)
    # and it is a Monte Carlo: the median moves by the shift, within its noise
    sd = np.sqrt((s1[:, 1] ** 2 + s2[:, 1] ** 2) / 2 + tau**2)
    assert np.median(np.abs(here[0] - mu[:, 1] - shift[0]) / sd) < 0.5


# ----------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_infer_with_a_killed_worker_gives_every_star_once(client, trained, tmp_path):
    _, model = trained
    ds, _ = _spectra(trained, 3000, seed=5)
    pids = client.run(os.getpid)
    work = tmp_path / "w"

    import threading

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline:
            if any(e["event"] == "done" for e in read_run_log(work / RUN_LOG)):
                os.kill(sorted(pids.values())[1], signal.SIGKILL)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=killer)
    thread.start()
    out = infer_chunked(model, ds, work, chunk_size=50, executor=DaskExecutor(client), n_starts=8)
    thread.join()
    assert not any(p.is_alive() for p in [thread])
    np.testing.assert_array_equal(out["star"].values, ds["star"].values)  # every star exactly once, in order
    ref = _in_process_one_blas_thread(model, ds, tmp_path / "ref", chunk_size=50, n_starts=8)
    np.testing.assert_array_equal(out["labels"].values, ref["labels"].values)
    client.wait_for_workers(2, timeout=60)


def _finished(work: Path) -> list[str]:
    """Chunks recorded (written and checksummed) in a work folder's manifest, by chunk name
    (the run log's names: the result file's name without ``.nc``)."""
    try:
        manifest = json.loads((work / "chunks.json").read_text())
    except (OSError, ValueError):
        return []
    return sorted(name.removesuffix(".nc") for name, e in manifest["chunks"].items() if e.get("checksum"))


@pytest.mark.slow
def test_killed_client_run_resumes_from_finished_chunks(trained, tmp_path):
    """``bayescannon infer --dask local:2`` killed (client, scheduler and workers) after some
    chunks: the rerun reuses them (run log + unchanged mtimes) and the catalogue equals a clean run."""
    _, model = trained
    ds, _ = _spectra(trained, 6000, seed=9)
    model.save(tmp_path / "m.nc")
    ds.to_netcdf(tmp_path / "s.nc", engine="h5netcdf")
    work = tmp_path / "work"
    args = [sys.executable, "-m", "bayescannon", "infer", str(tmp_path / "m.nc"), str(tmp_path / "s.nc")]
    opts = ["--work-dir", str(work), "--chunk-size", "100", "--n-starts", "8", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        args + ["-o", str(tmp_path / "cut.fits"), "--dask", "local:2"] + opts, env=env, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            if len(_finished(work)) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed: give it more chunks"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(60)
    finished = _finished(work)
    assert 3 <= len(finished) < 60
    mtimes = {name: (work / f"{name}.nc").stat().st_mtime_ns for name in finished}
    rc = subprocess.run(args + ["-o", str(tmp_path / "resumed.fits"), "--dask", "local:2"] + opts, env=env).returncode
    assert rc == 0
    events = read_run_log(work / RUN_LOG)
    last = [e for e in events if e["run"] == events[-1]["run"]]
    reused = sorted(e["chunk"] for e in last if e["event"] == "reused")
    assert set(finished) <= set(reused)
    assert all((work / f"{name}.nc").stat().st_mtime_ns == t for name, t in mtimes.items())
    from astropy.table import Table
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # a clean run with the workers' BLAS threads (see test_infer_on_dask_equals_in_process)
        assert main(["infer", str(tmp_path / "m.nc"), str(tmp_path / "s.nc"), "-o", str(tmp_path / "clean.fits")]
                    + ["--chunk-size", "100", "--n-starts", "8", "--no-progress"]) == 0  # fmt: skip

    resumed, clean = Table.read(tmp_path / "resumed.fits"), Table.read(tmp_path / "clean.fits")
    assert len(resumed) == len(clean) == 6000
    for col in clean.colnames:
        np.testing.assert_array_equal(np.asarray(resumed[col]), np.asarray(clean[col]), err_msg=col)


def test_preprocess_on_dask_writes_the_same_chunks(client, tmp_path):
    """The workers read, preprocess and write the chunk files; the client records them: the
    same files (names, stars, values) and the same skipped list as in this process."""
    import functools

    from test_preprocess import lamost_files, loglin

    from bayescannon import io as bio
    from bayescannon import preprocess as pp

    paths = lamost_files(tmp_path, 7, bad=(2,))
    steps = [
        functools.partial(pp.to_rest_frame, new_wavelength=loglin(3750, 4100)),
        (pp.normalise_ho2017, {"L": 30.0}),
        pp.add_snr,
    ]
    here, skipped_here = pp.process_in_chunks(paths, steps, 3, tmp_path / "here", return_skipped=True)
    there, skipped_there = pp.process_in_chunks(
        paths, steps, 3, tmp_path / "there", return_skipped=True, executor=DaskExecutor(client)
    )
    assert [f.name for f in there] == [f.name for f in here] and len(here) == 3
    assert list(skipped_there["path"]) == list(skipped_here["path"]) == [str(paths[2])]
    for a, b in zip(here, there, strict=True):
        da, db = bio.read_spectra(a), bio.read_spectra(b)
        assert list(db["star"].values) == list(da["star"].values)
        np.testing.assert_array_equal(db["flux"].values, da["flux"].values)
        np.testing.assert_array_equal(db["ivar"].values, da["ivar"].values)


def test_bootstrap_on_dask_equals_in_process(client, trained):
    from bayescannon import CannonModel
    from bayescannon.validate import bootstrap

    _, model = trained
    ds, y = _spectra(trained, 60, seed=4)
    settings = CannonModel(model.label_names, 2, random_state=0)
    flux, ivar = ds["flux"].values, ds["ivar"].values
    kw = dict(test_flux=flux[:10], test_ivar=ivar[:10], n_boot=3, random_state=1)
    here = bootstrap(settings, flux, ivar, y, n_jobs=1, **kw)
    there = bootstrap(settings, flux, ivar, y, executor=DaskExecutor(client), **kw)
    assert np.isfinite(here.labels.values).all()
    np.testing.assert_allclose(there.labels.values, here.labels.values, rtol=1e-10)
    # three resamples give three different models: the spread is not zero
    assert (here.std > 0).all()
