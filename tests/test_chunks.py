"""bayescannon.pipeline.chunks: the one resumable chunk protocol."""

import logging

import numpy as np

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
    (tmp_path / f"{TMP_PREFIX}c2.bin.xyz").write_bytes(b"half")
    again = ChunkStore(tmp_path)  # a new run: manifest read back, stale temporary removed
    assert not list(tmp_path.glob(f"{TMP_PREFIX}*"))
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
    # an unreadable manifest: nothing is reused
    (tmp_path / MANIFEST).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        assert not ChunkStore(tmp_path).is_valid("c0.bin", key)
