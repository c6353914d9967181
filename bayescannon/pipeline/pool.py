"""One worker pool for every parallel run: spawned processes, each limited to its share of
BLAS/OpenMP and numba threads, so that ``n_jobs`` workers never oversubscribe the cores.

:func:`run_tasks` maps a picklable function over tasks in order, in this process when
``n_jobs`` is 1 and in a spawned :class:`~concurrent.futures.ProcessPoolExecutor`
otherwise. :class:`SharedArrays` writes large arrays once to ``.npy`` files that
workers map read-only instead of receiving a pickled copy per task.

Workers end with their parent: each runs a daemon thread that checks every
:data:`PARENT_POLL_S` seconds whether its parent process is still the one that started it
(:func:`os.getppid`), and exits at once when not, so a ``kill -9`` of the parent never
leaves workers blocked on a pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Self

import numba
import numpy as np

__all__ = [
    "PARENT_POLL_S",
    "THREAD_VARS",
    "SharedArrays",
    "blas_threads",
    "init_worker",
    "limit_threads",
    "load_shared",
    "resolve_n_jobs",
    "run_tasks",
    "watch_parent",
]

#: Seconds between two checks of a worker that its parent is alive.
PARENT_POLL_S = 0.25

logger = logging.getLogger(__name__)

#: Environment variables that cap the threads of BLAS / OpenMP libraries at their start.
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def blas_threads(n_threads: int = 1, user_api: str | None = "blas"):
    """A context that caps this process's BLAS threads at ``n_threads`` (a no-op without
    threadpoolctl, which comes with scikit-learn).

    Many small linear-algebra calls (ridge solves of the calibration, the deconvolution's
    per-star matrices, the normalisation's blocks) gain nothing from BLAS threads and slow
    down badly when the cores are shared: the calibration fit took 2.4 s wall / 3.8 s CPU
    with OpenBLAS's default threads and 1.6 s / 1.6 s with one on 2 idle cores, and about
    30x longer than that with threads while another process kept both cores busy.
    ``user_api=None`` caps OpenMP pools as well.
    """
    try:
        from threadpoolctl import threadpool_limits  # lazy: optional third-party import
    except ImportError:  # pragma: no cover - threadpoolctl absent
        return contextlib.nullcontext()
    return threadpool_limits(limits=max(1, int(n_threads)), user_api=user_api)


def limit_threads(n_threads: int = 1, quiet: bool = False) -> None:
    """Cap BLAS/OpenMP (threadpoolctl, when installed) and numba threads in this process.

    Used as the initialiser of every worker process; ``quiet`` also raises the package's
    log level to WARNING in the worker.
    """
    n_threads = max(1, int(n_threads))
    try:  # optional dependency; the environment variables set at spawn do the same job
        from threadpoolctl import threadpool_limits

        threadpool_limits(n_threads)
    except ImportError:  # pragma: no cover - threadpoolctl absent
        pass
    numba.set_num_threads(max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS)))
    if quiet:
        logging.getLogger("bayescannon").setLevel(logging.WARNING)


def watch_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """Exit this process (``os._exit``) as soon as its parent is no longer ``parent_pid``.

    A daemon thread compares :func:`os.getppid` with ``parent_pid`` every ``poll_s``
    seconds: when the parent dies the process is re-parented (to init or a subreaper) and
    the check fails. Nothing is cleaned up on that exit: the parent's run is lost anyway,
    and its temporary files are removed by the next run (:mod:`bayescannon.pipeline.atomic`).
    """

    def _watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(70)
            time.sleep(poll_s)

    thread = threading.Thread(target=_watch, name="bayescannon-parent-watch", daemon=True)
    thread.start()
    return thread


def init_worker(parent_pid: int, n_threads: int = 1, quiet: bool = False) -> None:
    """Initialiser of every worker: :func:`watch_parent`, then :func:`limit_threads`."""
    watch_parent(parent_pid)
    limit_threads(n_threads, quiet)


def resolve_n_jobs(n_jobs, n_tasks: int) -> tuple[int, int]:
    """Workers to start for ``n_tasks`` tasks and the number of cores.

    ``None`` or 0 means one per core, a negative value ``cores + 1 + n_jobs`` (joblib's
    convention: -1 = all cores); never more workers than tasks, never fewer than one.
    """
    cores = os.cpu_count() or 1
    if n_jobs is None or n_jobs == 0:
        n_jobs = cores
    elif n_jobs < 0:
        n_jobs = max(1, cores + 1 + int(n_jobs))
    return max(1, min(int(n_jobs), max(1, n_tasks))), cores


@contextlib.contextmanager
def _thread_env(threads: int) -> Iterator[None]:
    """Set :data:`THREAD_VARS` while workers are spawned (they read them at start)."""
    saved = {v: os.environ.get(v) for v in THREAD_VARS}
    os.environ.update({v: str(threads) for v in THREAD_VARS})
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


def run_tasks(
    fn: Callable,
    tasks: Iterable,
    n_jobs=1,
    *,
    threads_per_worker: int | None = 1,
    quiet_workers: bool = False,
    on_result: Callable | None = None,
) -> list:
    """``[fn(task) for task in tasks]``, in order, in this process or in worker processes.

    Parameters
    ----------
    fn : callable
        A module-level (picklable) function of one task.
    tasks : iterable
        Picklable tasks.
    n_jobs : int or None
        Worker processes (see :func:`resolve_n_jobs`); 1 runs in this process.
    threads_per_worker : int or None
        BLAS and numba threads of each worker (default 1); None shares the cores evenly
        (``cores // workers``).
    quiet_workers : bool
        Workers log only warnings and errors.
    on_result : callable, optional
        Called with each result as it arrives, in task order (e.g. a progress bar update
        or a manifest record).

    Returns
    -------
    list
        The results in task order. Workers are spawned: a script that calls this with
        ``n_jobs > 1`` must do so under ``if __name__ == "__main__":``.
    """
    tasks = list(tasks)
    n_workers, cores = resolve_n_jobs(n_jobs, len(tasks))
    results = []
    if n_workers == 1 or len(tasks) <= 1:
        for task in tasks:
            res = fn(task)
            if on_result is not None:
                on_result(res)
            results.append(res)
        return results
    threads = max(1, cores // n_workers) if threads_per_worker is None else int(threads_per_worker)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=n_workers,
        mp_context=ctx,
        initializer=init_worker,
        initargs=(os.getpid(), threads, quiet_workers),
    ) as pool:
        with _thread_env(threads):  # the workers start (and read the variables) at submit
            futures = [pool.submit(fn, task) for task in tasks]
        for fut in futures:
            res = fut.result()
            if on_result is not None:
                on_result(res)
            results.append(res)
    return results


class SharedArrays:
    """Write arrays once to ``.npy`` files in a private temporary folder (a context manager).

    ``paths`` maps each name to its file (None for a None array); workers open them with
    :func:`load_shared`. The folder is removed by :meth:`close` or on leaving the ``with``.
    """

    def __init__(self, **arrays):
        self.dir = tempfile.mkdtemp(prefix="bayescannon-")
        self.paths: dict[str, str | None] = {}
        try:
            for name, arr in arrays.items():
                if arr is None:
                    self.paths[name] = None
                    continue
                path = os.path.join(self.dir, f"{name}.npy")
                np.save(path, np.ascontiguousarray(arr))
                self.paths[name] = path
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the folder."""
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_shared(arr):
    """An array given directly, or the path of a ``.npy`` file mapped read-only."""
    if isinstance(arr, str):
        return np.load(arr, mmap_mode="r")
    return arr
