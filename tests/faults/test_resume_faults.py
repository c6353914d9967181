"""Fault injection for resumable runs: kill -9, concurrent runs, corrupted chunk files.

Every randomised case counts three numbers: tried, detected (a recomputed chunk, a typed
error or a rerun identical to an uninterrupted run) and silently wrong (a corrupted chunk
accepted, a rerun that differs, a run broken by another). The tests assert silently wrong
== 0 and put the counts in their assertion messages.

Measured (Nov 2026, 2 cores shared with other jobs, load average ~9): with ``-m slow``,
kill -9 of ``infer --work-dir`` at a random time in [0, t_full]: 12 seeds tried, 12 reruns
bit-identical, 0 silently wrong; kill -9 of ``preprocess`` (a folder with a non-FITS file,
a grid off by rounding, a grid off the target, a repeated id): 12 tried, 12 identical, 0
silently wrong; two concurrent ``preprocess`` runs on one folder: both exit 0, folder
identical; byte flips of a chunk file: 60 tried, 60 detected, 0 silently wrong;
truncations: 60 tried, 60 detected, 0 silently wrong. The default run has 10 kill seeds
per command (each seed is two forked CLI runs of 1.5-2 s on idle cores); ``-m slow`` 30.

The CLI runs are forked from one pre-imported helper process (``_zygote.py``) so that each
costs a fraction of a second instead of an import of the package.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bayescannon import io as bio
from bayescannon.pipeline.chunks import ChunkStore, chunk_key
from bayescannon.pipeline.cluster import RUN_LOG
from bayescannon.spectra import make_spectra

ZYGOTE = Path(__file__).with_name("_zygote.py")
#: kill -9 seeds per command: 10 in the default run (each seed is two forked CLI runs of
#: 1.5-2 s on idle cores), 30 with ``-m slow``.
N_KILL_SEEDS = {"default": 10, "slow": 30}
N_CORRUPTIONS = 60


class Zygote:
    """Client of ``_zygote.py``: forks CLI runs, optionally SIGKILLs them after a delay."""

    def __init__(self):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
        self.proc = subprocess.Popen(
            [sys.executable, str(ZYGOTE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def run(self, *runs, kill_after=None) -> dict:
        req = {"runs": [{"argv": [str(a) for a in argv], "cwd": str(cwd)} for argv, cwd in runs]}
        req["kill_after"] = kill_after
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the helper process died")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def zygote():
    z = Zygote()
    yield z
    z.close()


def _catalogue_bytes(path: Path) -> tuple:
    with fits.open(path) as hdul:
        hdu = hdul[1]
        cards = [(k, v) for k, v in hdu.header.items() if not k.startswith("DATE")]
        return hdu.data.tobytes(), hdu.columns.names, cards


def _folder_bytes(folder: Path) -> dict:
    """Every output of a preprocess folder except the manifest, its lock and the run log (timings), byte for byte."""
    skip = ("chunks.", RUN_LOG)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.startswith(skip)}


def _kill_then_resume(zygote, argv_of, cwd, outputs, t_full, seed) -> tuple[bool, dict]:
    """Run ``argv_of(seed)``, SIGKILL it after a random delay in [0, t_full], rerun it; return
    (identical, last answer)."""
    rng = np.random.default_rng(seed)
    argv = argv_of(seed)
    first = zygote.run((argv, cwd), kill_after=float(rng.uniform(0.0, t_full)))
    again = zygote.run((argv, cwd))
    return again["rc"] == [0] and outputs(seed), {"first": first, "again": again}


# --------------------------------------------------------------------------------------
# kill -9 of infer --work-dir
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n_seeds", [N_KILL_SEEDS["default"], pytest.param(N_KILL_SEEDS["slow"], marks=pytest.mark.slow)]
)
def test_kill9_infer_work_dir_resumes_bit_identical(trained, zygote, tmp_path, n_seeds):
    tr, model = trained
    y = tr.labels(24)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    spectra = bio.write_spectra(make_spectra(model.wavelength_, flux, ivar), tmp_path / "s.nc")
    mfile = model.save(tmp_path / "m.nc")

    def argv(tag):
        work, cat = tmp_path / f"w{tag}", tmp_path / f"c{tag}.fits"
        if cat.exists():
            cat.unlink()  # the rerun writes it again (the kill may or may not have left one)
        return ["infer", mfile, spectra, "-o", cat, "--work-dir", work, "--chunk-size", "3", "--no-progress"]

    ref = zygote.run((argv("ref"), tmp_path))
    assert ref["rc"] == [0]
    expected = _catalogue_bytes(tmp_path / "cref.fits")
    t_full = ref["wall"]
    tried = identical = wrong = 0
    for seed in range(n_seeds):
        tag = f"{seed}"
        rng = np.random.default_rng(seed)
        args = argv(tag)
        zygote.run((args, tmp_path), kill_after=float(rng.uniform(0.0, t_full)))
        (tmp_path / f"c{tag}.fits").unlink(missing_ok=True)  # keep the work dir, redo the catalogue
        again = zygote.run((args, tmp_path))
        tried += 1
        same = again["rc"] == [0] and _catalogue_bytes(tmp_path / f"c{tag}.fits") == expected
        identical += same
        wrong += not same
        assert not list((tmp_path / f"w{tag}").glob(".tmp_*")), "a temporary file outlived the rerun"
    msg = f"infer kill -9: tried {tried}, bit-identical {identical}, silently wrong {wrong} (t_full {t_full:.2f} s)"
    assert wrong == 0 and tried == n_seeds, msg


# --------------------------------------------------------------------------------------
# kill -9 of preprocess, and two concurrent preprocess runs on one folder
# --------------------------------------------------------------------------------------


def _survey_folder(folder: Path, n: int = 12) -> Path:
    """LAMOST files with the faults of a real folder: one not FITS, one whose grid differs
    from the others by rounding, one on a grid that does not overlap the target, and one
    whose OBSID repeats another file's in a later chunk."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    wl = bio.lamost_wavelength(npix=600)
    for i in range(n):
        path = folder / f"spec-{i:03d}.fits"
        if i == 4:
            path.write_bytes(b"not fits")
            continue
        w = wl * (1 + 3e-9) if i == 6 else wl * 2.6 if i == 8 else wl
        flux = 100 * (1 + 0.1 * np.sin(w / 300)) + rng.normal(0, 1, w.size)
        obsid = 1 if i == 10 else i
        bio.write_lamost(path, w, flux, np.ones(w.size), header={"OBSID": obsid, "Z": rng.normal(0, 1e-4)})
    return folder


def _preprocess_argv(inputs: Path, out: Path) -> list:
    return ["preprocess", inputs, "-o", out, "--grid", 3750, 4100, "--L", 30, "--chunk-size", 3, "--no-progress"]


@pytest.mark.parametrize(
    "n_seeds", [N_KILL_SEEDS["default"], pytest.param(N_KILL_SEEDS["slow"], marks=pytest.mark.slow)]
)
def test_kill9_preprocess_resumes_bit_identical(zygote, tmp_path, n_seeds):
    inputs = _survey_folder(tmp_path / "in")
    ref = zygote.run((_preprocess_argv(inputs, tmp_path / "ref"), tmp_path))
    assert ref["rc"] == [0]
    expected = _folder_bytes(tmp_path / "ref")
    skipped = (tmp_path / "ref" / "skipped.ecsv").read_text()
    # the folder's faults are reported, none is fatal: not FITS, no overlap, the duplicate id
    assert "spec-004.fits" in skipped and "spec-008.fits" in skipped and "GridMismatchError" in skipped
    assert "DuplicateIdError" in skipped and "spec-010.fits" in skipped
    ids = [str(s) for p in sorted((tmp_path / "ref").glob("chunk_*.nc")) for s in bio.read_spectra(p)["star"].values]
    assert len(ids) == len(set(ids)) == 9  # 12 files: one not FITS, one off-grid, one duplicate

    tried = identical = wrong = 0
    for seed in range(n_seeds):
        out = tmp_path / f"o{seed}"
        same, _ = _kill_then_resume(
            zygote,
            lambda s, out=out: _preprocess_argv(inputs, out),
            tmp_path,
            lambda s, out=out: _folder_bytes(out) == expected,
            ref["wall"],
            seed,
        )
        tried += 1
        identical += same
        wrong += not same
    msg = f"preprocess kill -9: tried {tried}, bit-identical {identical}, silently wrong {wrong}"
    assert wrong == 0 and tried == n_seeds, msg

    # two runs at once on one folder: neither breaks the other, the folder is the reference
    both = zygote.run(
        (_preprocess_argv(inputs, tmp_path / "two"), tmp_path), (_preprocess_argv(inputs, tmp_path / "two"), tmp_path)
    )
    assert both["rc"] == [0, 0], both
    assert _folder_bytes(tmp_path / "two") == expected


# --------------------------------------------------------------------------------------
# corrupted chunk files
# --------------------------------------------------------------------------------------


def test_flipped_and_truncated_chunks_are_all_detected(trained, tmp_path):
    tr, model = trained
    y = tr.labels(8)
    flux, ivar = tr.spectra(y, model.label_offset_, model.label_scale_)
    result = model.infer(make_spectra(model.wavelength_, flux, ivar))
    store = ChunkStore(tmp_path / "w")
    key = chunk_key(input="x", model=model.training_hash_)
    path = store.write("chunk.nc", key, lambda tmp: result.to_netcdf(tmp, engine="h5netcdf"))
    pristine = path.read_bytes()
    rng = np.random.default_rng(42)
    counts = {}
    for kind in ("flip", "truncate"):
        tried = detected = wrong = 0
        for _ in range(N_CORRUPTIONS):
            data = bytearray(pristine)
            if kind == "flip":
                at = int(rng.integers(len(data)))
                data[at] ^= int(rng.integers(1, 256))
            else:
                data = data[: int(rng.integers(len(data)))]
            path.write_bytes(bytes(data))
            tried += 1
            if ChunkStore(tmp_path / "w").is_valid("chunk.nc", key):
                wrong += 1  # accepted although its bytes differ
            else:
                detected += 1
        counts[kind] = (tried, detected, wrong)
    path.write_bytes(pristine)
    assert ChunkStore(tmp_path / "w").is_valid("chunk.nc", key)  # the check itself is not always-false
    msg = ", ".join(f"{k}: tried {t}, detected {d}, silently wrong {w}" for k, (t, d, w) in counts.items())
    assert all(w == 0 and d == N_CORRUPTIONS for _, d, w in counts.values()), msg


# --------------------------------------------------------------------------------------
# worker pools end with their parent
# --------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the workers")
def test_pool_workers_exit_when_the_parent_is_killed(tmp_path):
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from bayescannon.pipeline.pool import run_tasks\n"
        "def task(path):\n"
        "    Path(path).touch()\n"
        "    time.sleep(60.0)\n"
        "if __name__ == '__main__':\n"
        "    run_tasks(task, [sys.argv[1] + '0', sys.argv[1] + '1'], n_jobs=2)\n"
    )
    (tmp_path / "parent.py").write_text(script)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), *sys.path])}
    marker = str(tmp_path / "started")
    parent = subprocess.Popen([sys.executable, str(tmp_path / "parent.py"), marker], env=env)
    try:
        deadline = time.monotonic() + 60
        workers: list[int] = []
        while time.monotonic() < deadline:
            workers = [p for p in _children(parent.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
            if len(workers) == 2:
                break
            time.sleep(0.1)
        assert len(workers) == 2, f"the pool did not start its 2 workers: {workers}"
        while time.monotonic() < deadline and not all(Path(marker + i).exists() for i in "01"):
            time.sleep(0.05)  # both workers in their task (a worker still importing exits on its own too)
        assert all(Path(marker + i).exists() for i in "01"), "the workers did not start their tasks"
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.05)
        left = [p for p in workers if _alive(p)]
        assert not left, f"workers {left} outlived their parent by 5 s"
    finally:
        if parent.poll() is None:
            parent.kill()
