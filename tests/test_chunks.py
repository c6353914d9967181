"""bayescannon.pipeline.chunks: the one resumable chunk protocol."""

import logging
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from bayescannon.errors import InvalidInputError
from bayescannon.pipeline.atomic import TMP_PREFIX
from bayescannon.pipeline.chunks import MANIFEST, ChunkStore, chunk_key, describe, digest_of


def _writer(payload: bytes):
    def write(tmp):
        tmp.write_bytes(payload)

    return write


def test_key_changes_with_every_value():
    base = chunk_key(input="d", options={"L": 30.0, "grid": np.arange(3.0)})
    assert base == chunk_key(input="d", options={"grid": np.arange(3.0), "L": 30.0})
    assert base != chunk_key(input="d", options={"L": 30.000001, "grid": np.arange(3.0)})
    assert base != chunk_key(input="d", options={"L": 30.0, "grid": np.arange(3.0) + 1e-12})
    assert base != chunk_key(input="e", options={"L": 30.0, "grid": np.arange(3.0)})
    assert digest_of(np.arange(3)) != digest_of(np.arange(3.0))
    assert describe(np.float64(2.5)) == describe(2.5)


def test_store_reuses_only_matching_intact_chunks(tmp_path, caplog):
    store = ChunkStore(tmp_path)
    key = chunk_key(input="a")
    store.set_order(["c0.bin", "c1.bin"])
    store.write("c0.bin", key, _writer(b"0123456789"))
    store.write("c1.bin", key, _writer(b"abcdefghij"), info={"n": 3})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname().replace("_", "-")
    (tmp_path / f"{TMP_PREFIX}{int(dead.stdout)}@{host}_c2.bin.xyz").write_bytes(b"half")  # owner dead
    old = tmp_path / f"{TMP_PREFIX}c3.bin.xyz"  # no owner in the name, two days old
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    live = tmp_path / f"{TMP_PREFIX}{os.getppid()}@{host}_c4.bin.xyz"  # owner alive: another run's file
    live.write_bytes(b"half")
    young = tmp_path / f"{TMP_PREFIX}c5.bin.xyz"  # no owner, young: kept
    young.write_bytes(b"half")
    again = ChunkStore(tmp_path)  # a new run: manifest read back, stale temporaries removed
    assert sorted(p.name for p in tmp_path.glob(f"{TMP_PREFIX}*")) == sorted([live.name, young.name])
    assert again.order == ["c0.bin", "c1.bin"] and again.info("c1.bin") == {"n": 3}
    assert again.is_valid("c0.bin", key) and again.is_valid("c1.bin", key)
    with caplog.at_level(logging.WARNING):
        assert not again.is_valid("c0.bin", chunk_key(input="b"))
        (tmp_path / "c1.bin").write_bytes(b"abcde")  # truncated
        assert not again.is_valid("c1.bin", key)
    assert "other inputs" in caplog.text and "truncated or corrupted" in caplog.text
    # a new layout drops the chunks of the old one
    again.set_order(["c0.bin"])
    assert not (tmp_path / "c1.bin").exists()
    # a resume with another option value is refused, naming the option
    again.check_options({"L": 50.0, "chunk_size": 2})
    with pytest.raises(InvalidInputError, match=r"L: \"50.0\" before, \"5.0\" now"):
        ChunkStore(tmp_path).check_options({"L": 5.0, "chunk_size": 2})
    ChunkStore(tmp_path).check_options({"chunk_size": 2, "L": 50.0})  # the same values resume
    # an unreadable manifest: nothing is reused
    (tmp_path / MANIFEST).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert not ChunkStore(tmp_path).is_valid("c0.bin", key)
