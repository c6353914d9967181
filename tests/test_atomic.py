"""Atomic writes: complete or absent, umask-honouring, never over an existing file or an input."""

import os

import pytest

from bayescannon.errors import InvalidInputError, OutputExistsError
from bayescannon.pipeline.atomic import TMP_PREFIX, atomic_path, write_json


def test_file_appears_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("writer failed")
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TMP_PREFIX)]
    with atomic_path(target) as tmp:
        tmp.write_text("complete")
    assert target.read_text() == "complete"


def test_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("x")
        assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("x")
        assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_no_overwrite_and_never_an_input(tmp_path):
    target = write_json(tmp_path / "c.json", {"a": 1})
    with pytest.raises(InvalidInputError, match="exists"):
        write_json(target, {"a": 2}, overwrite=False)
    assert target.read_text().strip().endswith("}") and '"a": 1' in target.read_text()
    with pytest.raises(InvalidInputError, match="also an input"):
        with atomic_path(target, overwrite=True, inputs=[target]):
            pass


def test_directory_target(tmp_path):
    target = tmp_path / "store.zarr"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "part").write_text("1")
    assert (target / "part").read_text() == "1"


def test_replacing_a_folder_never_deletes_files_it_does_not_write(tmp_path, monkeypatch):
    target = tmp_path / "mock"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "a.fits").write_text("old")
    with atomic_path(target, overwrite=True, directory=True) as tmp:  # our own output: replaced
        (tmp / "a.fits").write_text("new")
    assert (target / "a.fits").read_text() == "new"
    (target / "precious.txt").write_text("keep")  # a user's file in the output folder
    with pytest.raises(OutputExistsError, match="precious.txt"):
        with atomic_path(target, overwrite=True, directory=True) as tmp:
            (tmp / "a.fits").write_text("newer")
    assert (target / "precious.txt").read_text() == "keep" and (target / "a.fits").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mock"]  # no temporary folder left
    monkeypatch.chdir(target)  # the working folder itself is never replaced
    (target / "precious.txt").unlink()
    with pytest.raises(OutputExistsError, match="working folder"):
        with atomic_path(".", overwrite=True, directory=True) as tmp:
            (tmp / "a.fits").write_text("newer")
    assert (target / "a.fits").read_text() == "new"


def test_a_zarr_store_is_replaced_as_a_whole(tmp_path):
    target = tmp_path / "s.zarr"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "zarr.json").write_text("{}")
        (tmp / "old_array").mkdir()
    with atomic_path(target, overwrite=True, directory=True) as tmp:
        (tmp / "zarr.json").write_text("{}")
    assert not (target / "old_array").exists()
