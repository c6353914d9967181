"""Throughput of the LAMOST-size preprocessing pipeline (spectra per second).

Generates ``--n`` synthetic LAMOST-like spectra in memory (3,909 log-linear pixels,
3,700-9,100 A; a random smooth continuum times absorption lines, Doppler-shifted by a
per-star redshift, noise at S/N 20-150, a few masked pixels) and writes ``--n-files``
of them as real LAMOST DR5-layout FITS files (about 100 header cards each) to time
reading. Then it times:

* ``to_rest_frame`` (per-star shift + linear resampling onto a common rest-frame grid,
  3,535 pixels 3,900-8,800 A) and ``normalise_ho2017`` (L = 50 A) on the in-memory
  spectra, chunk by chunk;
* reading the FITS files (:func:`bayescannon.io.read_lamost_many`, one process), with
  ``engine="astropy"`` and with the default fast path for plain files;
* read + shift + resample + normalise of the files on ``--n-jobs`` worker processes
  (the spectra/s figure of the speed target; nothing is written);
* :func:`bayescannon.preprocess.process_in_chunks` end to end in one process and on
  ``--n-jobs`` spawned worker processes (start-up included), which also write the chunk
  files atomically.

Every line also gives the CPU time per spectrum (all threads of the timing process),
which is less sensitive than wall time to other work on a shared machine. The files
are read back from the page cache (warm), as in any repeated run.

Run::

    python benchmarks/bench_preprocess.py               # 20,000 spectra
    python benchmarks/bench_preprocess.py --n 4000      # quicker

Timings depend on the machine and on what else runs on it; the first call of each
compiled kernel (numba) is excluded by a warm-up.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bayescannon import io as bio
from bayescannon import preprocess as pp
from bayescannon.core import grid as core_grid
from bayescannon.preprocess import normalise as pp_normalise
from bayescannon.spectra import make_spectra


def line_templates(rng, wl, n_templates=6, n_lines=400, width=2.5):
    """Optical-depth templates: each a sum of Gaussian absorption lines (width ~R 1800)."""
    centres = np.sort(rng.uniform(wl[0] - 50, wl[-1] + 50, n_lines))
    depth = rng.exponential(0.15, (n_templates, n_lines))
    templates = np.zeros((n_templates, wl.size))
    for k in range(0, n_lines, 50):
        prof = np.exp(-0.5 * ((wl[None, :] - centres[k : k + 50, None]) / width) ** 2)
        templates += depth[:, k : k + 50] @ prof
    return templates


def synthetic_chunk(rng, n, wl, templates):
    """``n`` LAMOST-like observed-frame spectra: continuum x lines, shifted, noisy."""
    x = (wl - wl.mean()) / (wl.max() - wl.min()) * 2
    coef = rng.normal(0, 0.15, (n, 4))
    coef[:, 0] = 1.0
    cont = np.polynomial.chebyshev.chebval(x, coef.T) * rng.uniform(50, 500, (n, 1))
    cont *= (wl / 5000.0) ** rng.uniform(-2, 1, (n, 1))
    lines = np.exp(-rng.uniform(0.2, 1.5, (n, templates.shape[0])) @ templates)
    rest = make_spectra(wl, cont * lines, np.ones((n, wl.size)))
    z = rng.normal(0, 1e-4, n)  # ~30 km/s
    # observed = rest spectrum seen at lambda / (1 + z): a shift by 1 / (1 + z) - 1
    flux_true = pp.shift_and_resample(rest, wl, redshift=1 / (1 + z) - 1)["flux"].values
    flux_true = np.where(flux_true > 0, flux_true, cont * lines)  # the few edge pixels
    snr = rng.uniform(20, 150, (n, 1))
    sigma = flux_true / snr
    flux = flux_true + rng.normal(0, 1, flux_true.shape) * sigma
    ivar = 1 / sigma**2
    ivar[rng.random(ivar.shape) < 0.002] = 0.0
    return flux, ivar, z


def _worker_init():
    """Worker process: one numba and one BLAS thread, compiled kernels loaded."""
    pp._limit_threads()
    wl = np.linspace(4000.0, 4100.0, 50)
    ds = make_spectra(wl, np.ones((2, 50)), np.ones((2, 50)), redshift=[0.0, 1e-4])
    pp.normalise_ho2017(pp.to_rest_frame(ds), L=20.0)


def _worker_pipeline(job):
    """Read a chunk of LAMOST files, shift to the rest frame, resample, normalise."""
    paths, rest_grid = job
    ds = bio.read_lamost_many(paths)
    ds = pp.to_rest_frame(ds, new_wavelength=rest_grid)
    ds = pp.normalise_ho2017(ds, L=50.0)
    return ds.sizes["star"]


def pipeline_in_processes(paths, rest_grid, chunk, jobs):
    """Wall seconds for read + shift + resample + normalise of ``paths`` on ``jobs``
    worker processes (started and warmed up before the clock starts; nothing written)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    work = [(paths[i : i + chunk], rest_grid) for i in range(0, len(paths), chunk)]
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init) as pool:
        list(pool.map(_worker_pipeline, [(paths[:4], rest_grid)] * (2 * jobs)))  # warm up
        t0 = time.perf_counter()
        done = sum(pool.map(_worker_pipeline, work))
        wall = time.perf_counter() - t0
    assert done == len(paths)
    return wall


def timed(fn, *args, **kw):
    """Result, wall-clock seconds and CPU seconds (all threads of this process)."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    return out, time.perf_counter() - t0, time.process_time() - c0


def report(label, n, wall, cpu):
    print(f"{label:<46s} {n / wall:8.0f} spectra/s   ({1e3 * cpu / n:.3f} CPU-ms per spectrum)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=20000, help="spectra in memory")
    parser.add_argument("--chunk-size", type=int, default=1000)
    parser.add_argument("--n-files", type=int, default=2000, help="spectra written as FITS files")
    parser.add_argument("--n-jobs", type=int, default=os.cpu_count() or 1, help="parallel processes")
    parser.add_argument("--format", default="npz", choices=["nc", "npz", "bayescannon"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    wl = bio.lamost_wavelength()  # 3909 pixels
    rest_grid = 10 ** np.arange(np.log10(3900.0), np.log10(8800.0), 1e-4)
    templates = line_templates(rng, wl)
    print(f"cores: {os.cpu_count()}, numba kernels: {core_grid._USE_NUMBA and pp_normalise._USE_NUMBA}")
    print(f"{args.n} spectra x {wl.size} pixels -> rest grid {rest_grid.size} pixels, chunks of {args.chunk_size}")

    # ---- in-memory data ---------------------------------------------------------------
    t0 = time.perf_counter()
    chunks = []
    for start in range(0, args.n, args.chunk_size):
        n = min(args.chunk_size, args.n - start)
        flux, ivar, z = synthetic_chunk(rng, n, wl, templates)
        ds = make_spectra(wl, flux, ivar, ids=[f"s{start + i:06d}" for i in range(n)], redshift=z)
        ds["wavelength"].attrs.update(medium="vacuum", frame="observed")
        chunks.append(ds)
    print(f"generated in {time.perf_counter() - t0:.1f} s (not timed below)")

    # warm-up (numba compilation / disk-cache load, Gaussian kernel blocks)
    pp.normalise_ho2017(pp.to_rest_frame(chunks[0].isel(star=slice(0, 10)), new_wavelength=rest_grid))

    # ---- shift + resample + normalise, in memory --------------------------------------
    t = {"shift": [0.0, 0.0], "norm": [0.0, 0.0]}
    for ds in chunks:
        rest, dt, dc = timed(pp.to_rest_frame, ds, new_wavelength=rest_grid)
        t["shift"][0] += dt
        t["shift"][1] += dc
        _, dt, dc = timed(pp.normalise_ho2017, rest, L=50.0)
        t["norm"][0] += dt
        t["norm"][1] += dc
    n = args.n
    report("to_rest_frame (shift + resample)", n, *t["shift"])
    report("normalise_ho2017 (L = 50 A)", n, *t["norm"])
    mem_wall = t["shift"][0] + t["norm"][0]
    mem_cpu = t["shift"][1] + t["norm"][1]
    report("shift + resample + normalise (in memory)", n, mem_wall, mem_cpu)

    # ---- reading real-format FITS files ----------------------------------------------
    tmp = Path(tempfile.mkdtemp(prefix="bc_bench_"))
    try:
        flux, ivar, z = synthetic_chunk(rng, args.n_files, wl, templates)
        paths = []
        for i in range(args.n_files):
            paths.append(
                bio.write_lamost(
                    tmp / f"spec-{i:06d}.fits",
                    wl,
                    flux[i],
                    ivar[i],
                    header={"OBSID": i, "Z": float(z[i]), "SNRG": 50.0},
                )
            )
        bio.read_lamost_many(paths[:10])
        _, dt_astropy, dc_astropy = timed(bio.read_lamost_many, paths, engine="astropy")
        report("read LAMOST DR5 FITS (astropy.io.fits)", args.n_files, dt_astropy, dc_astropy)
        _, dt, dc = timed(bio.read_lamost_many, paths)
        report("read LAMOST DR5 FITS (one process)", args.n_files, dt, dc)
        per_star_wall = dt / args.n_files + mem_wall / n
        per_star_cpu = dc / args.n_files + mem_cpu / n
        report("read + shift + resample + normalise", 1, per_star_wall, per_star_cpu)
        cores = os.cpu_count() or 1
        print(
            f"{'  CPU-bound ceiling on ' + str(cores) + ' cores':<46s} "
            f"{cores / per_star_cpu:8.0f} spectra/s   (cores / CPU time per spectrum)"
        )
        jobs = max(1, args.n_jobs)
        chunk = max(1, min(args.chunk_size, args.n_files // (4 * jobs)))
        wall = pipeline_in_processes(paths, rest_grid, chunk, jobs)
        print(
            f"{'read+shift+resample+normalise, ' + str(jobs) + ' processes':<46s} "
            f"{args.n_files / wall:8.0f} spectra/s   (chunks of {chunk}, workers warm, no output)"
        )
        steps = [
            functools.partial(pp.to_rest_frame, new_wavelength=rest_grid),
            functools.partial(pp.normalise_ho2017, L=50.0),
        ]
        chunk = max(1, min(args.chunk_size, args.n_files // 4))
        _, dt, dc = timed(pp.process_in_chunks, paths, steps, chunk, tmp / "out", format=args.format)
        report(f"process_in_chunks (1 process, writes .{args.format})", args.n_files, dt, dc)
        if jobs > 1:
            # the product path end to end: spawned workers (start-up included), each reads,
            # processes and atomically writes whole chunks; memory = one chunk per worker
            chunk = max(1, min(args.chunk_size, args.n_files // (4 * jobs)))
            t0 = time.perf_counter()
            files = pp.process_in_chunks(paths, steps, chunk, tmp / f"out{jobs}", format=args.format, n_jobs=jobs)
            wall = time.perf_counter() - t0
            print(
                f"{'process_in_chunks (' + str(jobs) + ' processes, writes .' + args.format + ')':<46s} "
                f"{args.n_files / wall:8.0f} spectra/s   ({len(files)} chunks of {chunk}, worker start-up included)"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
