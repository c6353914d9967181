"""Scale-out benchmark: ``infer`` in this process vs on Dask (:mod:`bayescannon.pipeline.cluster`).

(a) Throughput (default): a model trained on 2,000 emulator spectra (the data generator of
    ``bench_core.py``: The Payne's APOGEE emulator, 7,214 px, 4 labels) infers >= 20,000
    emulator test stars, written once as chunk files that every setting reads
    (:class:`bayescannon.survey.batch.ChunkSource` reading a file): in this process (the engine's numba
    threads use every core), on Dask with 1 worker x 1 thread, and on Dask with 2 workers
    x 1 thread. Prints stars/s and the ratios (targets: 2 workers / 1 worker >= 1.7;
    Dask 2 x 1 / in-process >= 0.9).
(b) ``--million``: ``--n-stars`` (default 10^6) LAMOST-size spectra (3,900 px) generated ON
    the workers chunk by chunk from a trained quadratic model + noise (nothing large is
    stored or sent), inferred there, each chunk's result written atomically by the client
    (the one chunk protocol), one FITS catalogue at the end. Prints the wall time, the
    peak RSS of every worker (psutil, sampled every second) and its first- vs last-quarter
    peak (flat memory).
(c) Both print the per-star cost and a cost model for 2x10^8 spectra on N workers.

Run: ``python benchmarks/bench_scale.py [--n-test 20000] [--workers 2]`` and
``python benchmarks/bench_scale.py --million [--n-stars 100000] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

LABELS4 = ["TEFF", "LOGG", "FE_H", "ALPHA_FE"]
GAIA_XP = 2e8


def _cost_model(per_star_s: float, label: str, efficiency: float = 0.95) -> None:
    """2x10^8 spectra on N single-core workers at ``per_star_s`` core-seconds per star."""
    print(f"\ncost model ({label}): {per_star_s * 1e3:.3f} core-ms per star; {efficiency:.0%} parallel efficiency")
    print(f"{'workers':>8} {'hours for 2e8':>14} {'core-hours':>11}")
    for n in (1, 2, 16, 64, 256, 1024):
        hours = GAIA_XP * per_star_s / (n * (efficiency if n > 1 else 1.0)) / 3600
        print(f"{n:>8} {hours:>14.2f} {GAIA_XP * per_star_s / 3600:>11.0f}")


def _local_client(n_workers: int):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0", silence_logs=40
    )
    client = Client(cluster)
    client.wait_for_workers(n_workers)
    client.run(__import__, "bayescannon.survey.batch")  # imports and numba kernels loaded before timing
    return cluster, client


# ----------------------------------------------------------------------------- (a)
def throughput(n_test: int, n_train: int, chunk: int, max_workers: int) -> None:
    from bench_core import make_data  # the data generator of the core benchmark

    from bayescannon import CannonModel
    from bayescannon.io import read_spectra, write_spectra
    from bayescannon.pipeline.cluster import DaskExecutor
    from bayescannon.survey.batch import ChunkSource, infer_sources

    t0 = time.perf_counter()
    emu, train, _ = make_data(n_train, 1, seed=0)
    model = CannonModel(LABELS4, 2, random_state=0).fit(train)
    tmp = Path(tempfile.mkdtemp(prefix="bench_scale_"))
    rng = np.random.default_rng(1)
    sources = []
    for i, a in enumerate(range(0, n_test, chunk)):  # test chunks written once, read by every setting
        m = min(chunk, n_test - a)
        part = emu.survey(emu.draw_labels(m, rng, vmacro=6.0), snr=(30.0, 250.0), rng=rng)
        part = part.assign_coords(star=[f"t{a + j:07d}" for j in range(m)])
        path = tmp / f"chunk_{i:05d}.nc"
        write_spectra(part, path, format="nc", overwrite=True)
        sources.append(ChunkSource(f"r{i:05d}", partial(read_spectra, path)))
    print(f"data: {n_train} train, {n_test} test stars x {train.sizes['pixel']} px in {len(sources)} chunk files "
          f"({time.perf_counter() - t0:.0f} s to make)")  # fmt: skip
    infer_sources(model, sources[:1])  # warm the kernels of this process

    rates = {}
    t0 = time.perf_counter()
    infer_sources(model, sources)
    rates["in-process (numba threads = all cores)"] = n_test / (time.perf_counter() - t0)
    for n_workers in sorted({1, max_workers}):
        cluster, client = _local_client(n_workers)
        try:
            ex = DaskExecutor(client)
            infer_sources(model, sources[:n_workers], executor=ex)  # warm each worker
            t0 = time.perf_counter()
            infer_sources(model, sources, executor=ex)
            rates[f"Dask {n_workers} worker(s) x 1 thread"] = n_test / (time.perf_counter() - t0)
        finally:
            client.close()
            cluster.close()
    print(f"\n{'setting':<42} {'stars/s':>9}")
    for k, v in rates.items():
        print(f"{k:<42} {v:>9.0f}")
    names = list(rates)
    inproc, one, many = rates[names[0]], rates[names[1]], rates[names[-1]]
    print(f"\nDask {max_workers} workers / 1 worker: {many / one:.2f}x (target >= 1.7x)")
    print(f"Dask {max_workers} workers / in-process: {many / inproc:.0%} (target >= 90%)")
    _cost_model(max_workers / many, f"Dask, {train.sizes['pixel']} px APOGEE emulator")


# ----------------------------------------------------------------------------- (b)
@dataclass(frozen=True)
class SimulatedChunk:
    """A chunk source that makes its spectra where it is loaded: labels and noise from
    ``seed``, flux from the quadratic model ``theta`` (a shared reference: sent once per
    worker by pickling the small model parameters with each task would be 0.5 MB; here
    the truth is rebuilt from its own seed)."""

    name: str
    start: int
    n: int
    seed: int
    truth_seed: int
    n_pixels: int

    def load(self):
        from bayescannon.spectra import make_spectra

        theta, s2, offset, scale, vec = _truth(self.truth_seed, self.n_pixels)
        rng = np.random.default_rng(self.seed)
        x = rng.uniform(-0.5, 0.5, size=(self.n, len(offset)))
        snr = rng.uniform(20.0, 200.0, size=self.n)
        sigma = np.sqrt(1.0 / snr[:, None] ** 2 + s2[None, :])
        flux = (vec(x) @ theta.T + rng.normal(size=(self.n, self.n_pixels)) * sigma).astype(np.float32)
        ivar = np.repeat((snr**2)[:, None], self.n_pixels, axis=1).astype(np.float32)
        wl = 10 ** np.linspace(np.log10(3900.0), np.log10(9000.0), self.n_pixels)
        ids = [f"L{self.start + j:09d}" for j in range(self.n)]
        return make_spectra(wl, flux, ivar, ids=ids)


def _truth(seed: int, n_pixels: int):
    from bayescannon.core.vectorizer import PolynomialVectorizer

    rng = np.random.default_rng(seed)
    vec = PolynomialVectorizer(LABELS4, 2)
    theta = rng.normal(scale=0.05, size=(n_pixels, vec.n_terms))
    theta[:, 0] = 1.0 - np.abs(rng.normal(scale=0.1, size=n_pixels))
    s2 = np.exp(rng.uniform(np.log(1e-6), np.log(1e-4), size=n_pixels))
    offset, scale = np.array([5000.0, 3.0, -0.3, 0.1]), np.array([1500.0, 3.0, 1.5, 0.4])
    return theta, s2, offset, scale, vec


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def million(n_stars: int, chunk: int, n_workers: int, n_pixels: int, workdir: str | None) -> None:
    from bayescannon import CannonModel
    from bayescannon.pipeline.cluster import RUN_LOG, DaskExecutor, read_run_log
    from bayescannon.survey.batch import infer_sources
    from bayescannon.survey.catalogue import build_catalogue, write_table

    t_all = time.perf_counter()
    truth_seed = 42
    train = SimulatedChunk("train", 0, 2000, 7, truth_seed, n_pixels).load()
    theta, s2, offset, scale, vec = _truth(truth_seed, n_pixels)
    x = np.random.default_rng(7).uniform(-0.5, 0.5, size=(2000, 4))  # the labels load() drew (same seed)
    model = CannonModel(LABELS4, 2, random_state=0).fit(train, labels=offset + scale * x)
    print(f"trained a quadratic model on 2000 x {n_pixels} px in {time.perf_counter() - t_all:.0f} s")
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_million_"))
    sources = [
        SimulatedChunk(f"cat_{i:06d}.nc", a, min(chunk, n_stars - a), 1000 + i, truth_seed, n_pixels)
        for i, a in enumerate(range(0, n_stars, chunk))
    ]
    cluster, client = _local_client(n_workers)
    samples: dict[str, list] = {}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                for addr, mb in client.run(_rss_mb).items():
                    samples.setdefault(addr, []).append((time.perf_counter(), mb))
            except Exception:  # a sample lost while workers are busy or restarting: skip it
                pass
            stop.wait(1.0)

    thread = threading.Thread(target=sample, daemon=True)
    try:
        t0 = time.perf_counter()
        thread.start()
        result = infer_sources(model, sources, work, executor=DaskExecutor(client), progressbar=True)
        t_infer = time.perf_counter() - t0
        stop.set()
        thread.join()
        cat = build_catalogue(model, result, uncertainty="formal")
        write_table(cat, work / "catalogue.fits", overwrite=True)
        wall = time.perf_counter() - t0
    finally:
        stop.set()
        client.close()
        cluster.close()
    done = [e for e in read_run_log(work / RUN_LOG) if e["event"] == "done"]
    task_s = sum(e["seconds"] for e in done)
    print(f"\n{n_stars} spectra x {n_pixels} px in {len(sources)} chunks on {n_workers} worker(s) x 1 thread")
    print(f"generate + infer + write chunk results: {t_infer:.1f} s; with the FITS catalogue: {wall:.1f} s "
          f"({n_stars / wall:.0f} stars/s); catalogue rows: {len(cat)}")  # fmt: skip
    print(f"task time (generation + inference on the workers): {task_s / n_stars * 1e3:.3f} core-ms per star")
    for addr, rows in samples.items():
        mb = np.array([r[1] for r in rows])
        q = max(1, mb.size // 4)
        print(f"worker {addr}: peak RSS {mb.max():.0f} MiB; first quarter {mb[:q].max():.0f}, "
              f"last quarter {mb[-q:].max():.0f} MiB ({mb.size} samples)")  # fmt: skip
    peaks = [e["peak_rss_mb"] for e in done]
    if peaks:
        print(f"ru_maxrss at task end (run log): max {max(peaks):.0f} MiB")
    print(f"client peak RSS: {_rss_mb():.0f} MiB now; work folder {work}")
    _cost_model(n_workers * wall / n_stars, f"end to end, {n_pixels} px incl. generation")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--million", action="store_true", help="(b): generate + infer on the workers")
    p.add_argument("--n-stars", type=int, default=1_000_000, help="(b) spectra (default 10^6)")
    p.add_argument("--n-pixels", type=int, default=3900, help="(b) pixels (default 3900, LAMOST)")
    p.add_argument("--n-test", type=int, default=20_000, help="(a) test stars (default 20,000)")
    p.add_argument("--n-train", type=int, default=2000)
    p.add_argument("--chunk", type=int, default=None, help="stars per chunk (default 1000 (a), 5000 (b))")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--workdir", default=None, help="(b) folder of the catalogue chunks (default: a temporary one)")
    args = p.parse_args()
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} (a loaded machine makes the figures noisy)")
    if args.million:
        million(args.n_stars, args.chunk or 5000, args.workers, args.n_pixels, args.workdir)
    else:
        throughput(args.n_test, args.n_train, args.chunk or 1000, args.workers)


if __name__ == "__main__":
    main()
