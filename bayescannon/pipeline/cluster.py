"""Where chunked runs execute: in this process (the default) or on a Dask cluster, behind one
interface.

An *executor* maps a function over chunk tasks and hands each result back to the caller as
it arrives (:meth:`InProcessExecutor.map_chunks`, :meth:`DaskExecutor.map_chunks`); the
caller records it in its :class:`~bayescannon.pipeline.chunks.ChunkStore` (atomically, with
the same keys as a single-machine run), so a run cut short on a cluster resumes from its
finished chunks on one machine and the other way round.

``--dask`` specifications (:func:`parse_dask_spec`):

``local:N``
    A :class:`distributed.LocalCluster` of ``N`` worker processes with one thread each.
``tcp://HOST:PORT``
    An existing Dask scheduler (started with ``dask scheduler`` / ``dask worker``, or by a
    batch job).
``path/to/cluster.yaml``
    A dask-jobqueue cluster (SLURM, PBS, ...) described in YAML::

        cluster: slurm          # slurm, pbs, sge, lsf, oar, htcondor, moab
        scale: 20               # workers to ask for (or {jobs: 10})
        options:                # keyword arguments of dask_jobqueue.SLURMCluster
          cores: 1
          processes: 1
          memory: 4GB
          walltime: "04:00:00"

Faults: Dask's scheduler re-runs the tasks of a worker that dies on the other workers;
a task that kills workers repeatedly (:class:`distributed.KilledWorker`) is resubmitted
up to ``retries`` times under a new key, then the run stops naming the chunk. A task that
raises stops the run at once (a bug or a bad chunk does not go away on a retry), after the
chunks already finished were handed back. Every start, finish, loss and failure of a chunk
is a JSON line in the run log (:class:`RunLog`).

Dask is an optional extra (``pip install 'bayescannon[dask]'``): it is imported inside the
functions that need it, and its absence is a :class:`~bayescannon.errors.MissingDependencyError`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import logging
import os
import re
import resource
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bayescannon.errors import DaskSpecError, MissingDependencyError
from bayescannon.pipeline.atomic import file_mode
from bayescannon.pipeline.pool import limit_threads, run_tasks

logger = logging.getLogger(__name__)

__all__ = [
    "JOBQUEUE_CLUSTERS",
    "RUN_LOG",
    "DaskExecutor",
    "DaskSpec",
    "Executor",
    "InProcessExecutor",
    "RunLog",
    "open_executor",
    "parse_dask_spec",
    "read_run_log",
]

#: dask-jobqueue cluster classes by the name used in a YAML ``cluster:`` entry.
JOBQUEUE_CLUSTERS = {
    "slurm": "SLURMCluster",
    "pbs": "PBSCluster",
    "sge": "SGECluster",
    "lsf": "LSFCluster",
    "oar": "OARCluster",
    "htcondor": "HTCondorCluster",
    "moab": "MoabCluster",
}
#: Name of the run log (JSON lines, :class:`RunLog`) in a work or output folder.
RUN_LOG = "runlog.jsonl"
_ADDRESS = re.compile(r"^(tcp|tls)://([^\s:/]+|\[[0-9a-fA-F:]+\]):(\d{1,5})$")
_EXTRA = "pip install 'bayescannon[dask]'"


def _need(module: str):
    """Import an optional Dask module or raise :class:`MissingDependencyError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(f"--dask needs {module.split('.')[0]} (not installed): {_EXTRA}") from exc


@dataclass(frozen=True)
class DaskSpec:
    """A parsed ``--dask`` specification.

    Attributes
    ----------
    kind : {"local", "address", "jobqueue"}
    n_workers : int or None
        Workers of a local cluster.
    address : str or None
        Scheduler address.
    cluster : str or None
        dask-jobqueue cluster name (``slurm``, ``pbs``, ...).
    scale : dict
        Keyword arguments of ``cluster.scale`` (``{"n": 20}`` or ``{"jobs": 10}``).
    options : dict
        Keyword arguments of the dask-jobqueue cluster class.
    text : str
        The specification as given.
    """

    kind: str
    n_workers: int | None = None
    address: str | None = None
    cluster: str | None = None
    scale: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    text: str = ""


def parse_dask_spec(spec: str) -> DaskSpec:
    """Parse a ``--dask`` value: ``local:N``, ``tcp://HOST:PORT`` or a dask-jobqueue YAML file.

    Raises
    ------
    DaskSpecError
        Anything else, a worker count that is not a positive integer, a port out of range,
        or a YAML file that is unreadable or lacks ``cluster``/``scale`` (the message names
        the specification and what was expected).
    MissingDependencyError
        A YAML file given without PyYAML installed.
    """
    text = str(spec).strip()
    if text.lower().startswith("local:"):
        count = text.split(":", 1)[1]
        if not count.isdigit() or int(count) < 1:
            raise DaskSpecError(f"--dask {spec!r}: expected local:N with N a positive number of workers")
        return DaskSpec("local", n_workers=int(count), text=text)
    if "://" in text:
        m = _ADDRESS.match(text)
        if m is None or not 0 < int(m.group(3)) < 65536:
            raise DaskSpecError(f"--dask {spec!r}: expected a scheduler address tcp://HOST:PORT (port 1-65535)")
        return DaskSpec("address", address=text, text=text)
    path = Path(text)
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        raise DaskSpecError(
            f"--dask {spec!r}: expected local:N, tcp://HOST:PORT or an existing dask-jobqueue YAML file (.yaml)"
        )
    yaml = _need("yaml")
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DaskSpecError(f"--dask {path}: cannot read the YAML file ({exc})") from exc
    if not isinstance(data, dict):
        raise DaskSpecError(f"--dask {path}: expected a mapping with 'cluster', 'scale' and 'options'")
    name = str(data.get("cluster", "")).lower()
    if name not in JOBQUEUE_CLUSTERS:
        raise DaskSpecError(f"--dask {path}: 'cluster' must be one of {sorted(JOBQUEUE_CLUSTERS)}; got {name!r}")
    scale = data.get("scale")
    if isinstance(scale, int) and not isinstance(scale, bool) and scale >= 1:
        scale = {"n": scale}
    elif not (
        isinstance(scale, dict)
        and len(scale) == 1
        and set(scale) <= {"n", "jobs", "cores", "memory"}
        and all(v not in (None, 0, "") for v in scale.values())
    ):
        raise DaskSpecError(f"--dask {path}: 'scale' must be a positive worker count or {{jobs: N}}; got {scale!r}")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise DaskSpecError(f"--dask {path}: 'options' must be a mapping of {JOBQUEUE_CLUSTERS[name]} arguments")
    return DaskSpec("jobqueue", cluster=name, scale=dict(scale), options=dict(options), text=text)


class RunLog:
    """Per-chunk events of a run as JSON lines (``runlog.jsonl`` in the work folder).

    Each event is one line appended with a single ``write`` on a file opened with
    ``O_APPEND`` (permissions from the umask, as :mod:`bayescannon.pipeline.atomic` gives):
    lines of concurrent or killed writers never interleave, a killed run leaves at most
    a torn last line, which :func:`read_run_log` skips. (A log is appended to, not
    replaced: rewriting it atomically per event would cost time quadratic in the chunks.)
    """

    def __init__(self, path):
        self.path = Path(path)
        self.run = uuid.uuid4().hex[:12]

    def write(self, event: str, **fields) -> None:
        """Append one event (``time``, ``run`` and ``event`` added to ``fields``)."""
        line = json.dumps({"time": round(time.time(), 3), "run": self.run, "event": event, **fields}, default=str)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def read_run_log(path) -> list[dict]:
    """The events of a run log, in order (a torn last line of a killed run is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            logger.warning("%s: skipping a torn line of the run log", path)
    return events


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _call(fn: Callable, index: int, task, threads: int | None, broadcast: dict):
    """Run one task where it is scheduled; returns (index, result, timing)."""
    if threads is not None:  # a Dask worker: cap numba/BLAS threads of this worker thread
        limit_threads(threads)
    t0 = time.time()
    result = fn(task, **broadcast)
    return index, result, {"start": t0, "seconds": time.time() - t0, "pid": os.getpid(), "host": socket.gethostname(),
                           "peak_rss_mb": round(_peak_rss_mb(), 1)}  # fmt: skip


class Executor:
    """The interface of every executor: :meth:`map_chunks`."""

    #: True when tasks run outside this process (their results are pickled back).
    distributed = False

    def map_chunks(
        self,
        fn: Callable,
        tasks: Sequence,
        *,
        broadcast: dict | None = None,
        on_result: Callable | None = None,
        names: Sequence[str] | None = None,
        run_log: RunLog | None = None,
        progressbar: bool = False,
        desc: str = "chunks",
        keep: bool = True,
    ) -> list:
        """``fn(task, **broadcast)`` for every task; results handed back as they finish.

        Parameters
        ----------
        fn : callable
            A module-level (picklable) function of one task and the ``broadcast`` keywords.
        tasks : sequence
            Picklable tasks (small: large shared inputs go in ``broadcast``).
        broadcast : dict, optional
            Objects every task needs (a model, the spectra of a cross-validation): sent
            once to every worker, not once per task.
        on_result : callable, optional
            ``on_result(index, result)`` in this process as each task finishes (in task
            order in-process, in completion order on Dask): e.g. an atomic chunk write.
        names : sequence of str, optional
            Chunk names for the run log and error messages (default: task indices).
        run_log : RunLog, optional
            Receives a ``done`` event (seconds, worker, peak RSS) per chunk, ``lost`` and
            ``failed`` events.
        progressbar : bool
        desc : str
            Progress bar label.
        keep : bool
            Return the results (in task order); False returns None for each (the caller
            keeps what it needs in ``on_result``, memory stays flat).

        Returns
        -------
        list
        """
        raise NotImplementedError


def _progress(total: int, progressbar: bool, desc: str):
    if not progressbar:
        return None
    from tqdm.auto import tqdm  # lazy: optional progress bar

    return tqdm(total=total, desc=desc, unit="chunk")


class InProcessExecutor(Executor):
    """Tasks in this process (``n_jobs=1``: the engine's own numba threads do the parallel
    work, as before) or in a local process pool (:func:`bayescannon.pipeline.pool.run_tasks`).

    Parameters
    ----------
    n_jobs : int
        Worker processes; 1 (default) runs the tasks here, one after the other.
    """

    def __init__(self, n_jobs: int = 1):
        self.n_jobs = n_jobs

    def map_chunks(
        self,
        fn,
        tasks,
        *,
        broadcast=None,
        on_result=None,
        names=None,
        run_log=None,
        progressbar=False,
        desc="chunks",
        keep=True,
    ) -> list:
        tasks = list(tasks)
        names = [str(i) for i in range(len(tasks))] if names is None else list(names)
        out: list = [None] * len(tasks)
        bar = _progress(len(tasks), progressbar, desc)

        def handle(item) -> None:
            index, result, timing = item
            if run_log is not None:
                run_log.write("done", chunk=names[index], **timing)
            if on_result is not None:
                on_result(index, result)
            if keep:
                out[index] = result
            if bar is not None:
                bar.update(1)

        call = functools.partial(_unpack_call, fn, dict(broadcast or {}))
        try:
            run_tasks(call, list(enumerate(tasks)), self.n_jobs, on_result=handle)
        except Exception as exc:
            if run_log is not None:
                run_log.write("failed", error=f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if bar is not None:
                bar.close()
        return out


def _unpack_call(fn, broadcast, item):
    index, task = item
    return _call(fn, index, task, None, broadcast)


class DaskExecutor(Executor):
    """Tasks on a Dask cluster through a :class:`distributed.Client`.

    Parameters
    ----------
    client : distributed.Client
    retries : int
        Resubmissions of a chunk whose workers kept dying (:class:`distributed.KilledWorker`);
        the scheduler already re-runs the tasks of a lost worker on its own.
    threads : int
        numba/BLAS threads of each task (1: a worker thread is one core).
    close : list, optional
        Objects closed by :meth:`close` (the client and cluster this executor started).
    """

    distributed = True

    def __init__(self, client, *, retries: int = 2, threads: int = 1, close: Sequence = ()):
        self.client = client
        self.retries = int(retries)
        self.threads = int(threads)
        self._close = list(close)

    @classmethod
    def from_spec(cls, spec, **kwargs) -> DaskExecutor:
        """Start (``local:N``, YAML) or join (``tcp://``) the cluster of a ``--dask`` spec."""
        spec = spec if isinstance(spec, DaskSpec) else parse_dask_spec(spec)
        distributed = _need("distributed")
        if spec.kind == "local":
            cluster = distributed.LocalCluster(
                n_workers=spec.n_workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )
            client = distributed.Client(cluster)
            owned = [client, cluster]
        elif spec.kind == "address":
            client = distributed.Client(spec.address)
            owned = [client]
        else:
            jobqueue = _need("dask_jobqueue")
            cluster = getattr(jobqueue, JOBQUEUE_CLUSTERS[spec.cluster])(**spec.options)
            cluster.scale(**spec.scale)
            client = distributed.Client(cluster)
            owned = [client, cluster]
        logger.info("Dask cluster %s; dashboard: %s", spec.text, client.dashboard_link)
        return cls(client, close=owned, **kwargs)

    def close(self) -> None:
        """Close the client and cluster this executor started (not a cluster it joined)."""
        for obj in self._close:
            with contextlib.suppress(Exception):  # closing is best effort: the run's results are on disk
                obj.close()
        self._close = []

    def map_chunks(
        self,
        fn,
        tasks,
        *,
        broadcast=None,
        on_result=None,
        names=None,
        run_log=None,
        progressbar=False,
        desc="chunks",
        keep=True,
    ) -> list:
        distributed = _need("distributed")
        tasks = list(tasks)
        names = [str(i) for i in range(len(tasks))] if names is None else list(names)
        out: list = [None] * len(tasks)
        if not tasks:
            return out
        client = self.client
        # one future per object (a list: scatter would split a dict or sequence into several)
        shared = {k: client.scatter([v], broadcast=True, hash=False)[0] for k, v in (broadcast or {}).items()}
        token = uuid.uuid4().hex[:8]

        def submit(i: int, attempt: int):
            key = f"bayescannon-{names[i]}-{token}-{attempt}"
            return client.submit(_call, fn, i, tasks[i], self.threads, shared, key=key, pure=False)

        attempts = dict.fromkeys(range(len(tasks)), 0)
        futures = {submit(i, 0): i for i in range(len(tasks))}
        pending = distributed.as_completed(list(futures))
        bar = _progress(len(tasks), progressbar, desc)
        logger.info("%d chunk task(s) submitted; dashboard: %s", len(tasks), client.dashboard_link)
        try:
            for fut in pending:
                i = futures.pop(fut)
                try:
                    index, result, timing = fut.result()
                except distributed.KilledWorker as exc:
                    attempts[i] += 1
                    if run_log is not None:
                        run_log.write("lost", chunk=names[i], attempt=attempts[i], error=str(exc))
                    if attempts[i] > self.retries:
                        raise
                    logger.warning("chunk %s: its workers died (%s); resubmitting (%d)", names[i], exc, attempts[i])
                    new = submit(i, attempts[i])
                    futures[new] = i
                    pending.add(new)
                    continue
                except Exception as exc:
                    if run_log is not None:
                        run_log.write("failed", chunk=names[i], error=f"{type(exc).__name__}: {exc}")
                    logger.error("chunk %s failed on a worker: %s: %s", names[i], type(exc).__name__, exc)
                    raise
                if run_log is not None:
                    run_log.write("done", chunk=names[index], **timing)
                if on_result is not None:
                    on_result(index, result)
                if keep:
                    out[index] = result
                del result
                if bar is not None:
                    bar.update(1)
        finally:
            for fut in futures:
                fut.cancel()
            for fut in shared.values():
                fut.release()
            if bar is not None:
                bar.close()
        return out


@contextlib.contextmanager
def open_executor(dask: str | None = None, *, n_jobs: int = 1) -> Iterator[Executor]:
    """The executor of a run (a context manager): :class:`DaskExecutor` for a ``--dask`` spec,
    else :class:`InProcessExecutor` with ``n_jobs`` processes. A cluster started here is
    closed on leaving."""
    if not dask:
        yield InProcessExecutor(n_jobs)
        return
    executor = DaskExecutor.from_spec(dask)
    try:
        yield executor
    finally:
        executor.close()
