"""Spectra and catalogue stores (zarr v3): round trips, refusals, damage, resume, finalise."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import xarray as xr
from astropy.table import Table
from conftest import OFFSET, SCALE

from bayescannon import preprocess as pp
from bayescannon.cli import main
from bayescannon.errors import GridMismatchError, InvalidInputError, SurveyFormatError
from bayescannon.io import write_spectra
from bayescannon.io.zarrstore import SpectraStore
from bayescannon.pipeline.chunks import dataset_digest
from bayescannon.spectra import make_spectra
from bayescannon.survey.batch import chunk_sources, infer_chunk_files, infer_store
from bayescannon.survey.catalogue import build_catalogue
from bayescannon.survey.stores import CatalogueStore, spectra_store_from_chunks, spectra_store_from_files

WL = np.linspace(15100, 15300, 200)


def _spectra(trained, n=23, seed=3, prefix="s"):
    tr, _ = trained
    rng = np.random.default_rng(seed)
    y = OFFSET + SCALE * rng.uniform(-0.4, 0.4, size=(n, 3))
    flux, ivar = tr.spectra(y, np.median(y, 0), SCALE)
    ivar[0, :5] = 0.0  # masked pixels survive the store
    return make_spectra(
        WL,
        flux,
        ivar,
        ids=[f"{prefix}{i:04d}" for i in range(n)],
        mask=(rng.random(flux.shape) < 0.05).astype(np.uint32),
        snr=rng.uniform(20, 80, n),
        filename=np.array([f"file_{i}.fits" for i in range(n)]),
        attrs={"survey": "mock", "normalised": True},
    )


def _as_float32(ds):
    out = ds.copy(deep=True)
    for k in ("flux", "ivar"):
        out[k] = out[k].astype(np.float32).astype(np.float64)
    return out


def _count_infer(monkeypatch, model) -> list:
    """Count the calls of ``CannonModel.infer`` (a list that grows by one per call)."""
    calls, real = [], type(model).infer
    monkeypatch.setattr(type(model), "infer", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    return calls


def _store(tmp_path, ds, spc=5, name="s.zarr"):
    store = SpectraStore.create(tmp_path / name, ds["wavelength"].values, stars_per_chunk=spc, provenance={"x": 1})
    store.append(ds)
    return SpectraStore.open(tmp_path / name)


def test_round_trip_is_bit_for_bit_in_float32(tmp_path, trained):
    ds = _spectra(trained)
    store = SpectraStore.create(tmp_path / "s.zarr", WL, stars_per_chunk=5, provenance={"sources": ["a.fits"]})
    assert store.append(ds.isel(star=slice(0, 7))) == (0, 7)
    assert store.append(ds.isel(star=slice(7, 23))) == (7, 23)  # append across a partial chunk
    back = SpectraStore.open(tmp_path / "s.zarr")
    assert back.n_stars == 23 and back.n_pixels == 200
    assert back.chunk_bounds() == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    xr.testing.assert_identical(back.read(), _as_float32(ds))  # values, ids, mask, columns, attrs
    xr.testing.assert_identical(back.read(6, 12), _as_float32(ds).isel(star=slice(6, 12)))
    assert back.read()["flux"].dtype == np.float64  # the container that infer accepts
    assert back.provenance["sources"] == ["a.fits"] and back.provenance["package_version"]
    # digest of a slice = dataset_digest of the same container, whatever holds it
    assert back.digest(5, 10) == dataset_digest(_as_float32(ds).isel(star=slice(5, 10)))
    assert back.digest(5, 10) != back.digest(10, 15)
    with pytest.raises(InvalidInputError, match="outside"):
        back.read(20, 24)


def test_append_refuses_another_grid_and_duplicate_ids(tmp_path, trained):
    ds = _spectra(trained)
    store = SpectraStore.create(tmp_path / "s.zarr", WL, stars_per_chunk=5)
    store.append(ds.isel(star=slice(0, 10)))
    shifted = ds.isel(star=slice(10, 12)).assign_coords(wavelength=("pixel", WL + np.r_[np.zeros(199), 0.01]))
    with pytest.raises(GridMismatchError, match="pixel 199"):
        store.append(shifted)
    with pytest.raises(InvalidInputError, match="already in the store: s0003, s0009"):
        store.append(ds.isel(star=[12, 3, 9]))
    with pytest.raises(InvalidInputError, match="variables"):
        store.append(ds.isel(star=slice(10, 12)).drop_vars("snr"))
    assert SpectraStore.open(tmp_path / "s.zarr").n_stars == 10  # refused appends left nothing
    with pytest.raises(InvalidInputError, match="read-only"):
        SpectraStore.open(tmp_path / "s.zarr").append(ds.isel(star=slice(10, 12)))
    with pytest.raises(
        InvalidInputError, match="cannot be stored"
    ):  # float32 cannot hold it: refused, not rounded to 0
        bad = ds.isel(star=slice(10, 12)).copy(deep=True)
        bad["ivar"][0, 7] = 1e-50
        store.append(bad)


def test_truncated_or_corrupted_store_is_detected(tmp_path, trained):
    ds = _spectra(trained)
    _store(tmp_path, ds)
    # a missing chunk reads as NaN ivar: named, never silently other spectra
    for name in ("a", "b", "c", "d"):
        shutil.copytree(tmp_path / "s.zarr", tmp_path / f"{name}.zarr")
    (tmp_path / "a.zarr" / "ivar" / "c" / "2" / "0").unlink()
    with pytest.raises(SurveyFormatError, match=r"a\.zarr: array 'ivar'.*star 10"):
        SpectraStore.open(tmp_path / "a.zarr").read()
    SpectraStore.open(tmp_path / "a.zarr").read(0, 10)  # the intact chunks still read
    # a corrupted chunk fails its checksum
    chunk = tmp_path / "b.zarr" / "flux" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with pytest.raises(SurveyFormatError, match=r"b\.zarr: array 'flux': corrupted"):
        SpectraStore.open(tmp_path / "b.zarr").read(5, 10)
    # a missing array, an array shorter than the committed stars
    shutil.rmtree(tmp_path / "c.zarr" / "ivar")
    with pytest.raises(SurveyFormatError, match=r"c\.zarr: array 'ivar': missing"):
        SpectraStore.open(tmp_path / "c.zarr")
    import zarr

    zarr.open_array(tmp_path / "d.zarr" / "star", mode="r+").resize((20,))
    with pytest.raises(SurveyFormatError, match=r"array 'star': shape \(20,\)"):
        SpectraStore.open(tmp_path / "d.zarr")
    # a non-finite wavelength
    _store(tmp_path, ds, name="e.zarr")
    zarr.open_array(tmp_path / "e.zarr" / "wavelength", mode="r+")[3] = np.nan
    with pytest.raises(SurveyFormatError, match=r"array 'wavelength': non-finite value at pixel 3"):
        SpectraStore.open(tmp_path / "e.zarr")
    with pytest.raises(SurveyFormatError, match="not a spectra store"):
        SpectraStore.open(tmp_path)


def test_an_interrupted_append_is_invisible(tmp_path, trained, monkeypatch):
    import zarr

    ds = _spectra(trained)
    store = SpectraStore.create(tmp_path / "s.zarr", WL, stars_per_chunk=5)
    store.append(ds.isel(star=slice(0, 7)))
    real = zarr.Array.__setitem__
    calls = []

    def dies_on_ids(self, sel, value):
        calls.append(self.path)
        if self.path == "star":  # flux and ivar of the new stars are written, then the process dies
            raise KeyboardInterrupt
        return real(self, sel, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", dies_on_ids)
    with pytest.raises(KeyboardInterrupt):
        store.append(ds.isel(star=slice(7, 16)))
    monkeypatch.undo()
    assert calls[:3] == ["flux", "ivar", "star"]
    back = SpectraStore.open(tmp_path / "s.zarr")
    assert back.n_stars == 7  # readers trust the committed count only
    xr.testing.assert_identical(back.read(), _as_float32(ds).isel(star=slice(0, 7)))
    # the next append overwrites the uncommitted rows
    SpectraStore.open(tmp_path / "s.zarr", mode="r+").append(ds.isel(star=slice(7, 23)))
    xr.testing.assert_identical(SpectraStore.open(tmp_path / "s.zarr").read(), _as_float32(ds))


def test_conversion_from_chunk_folder_and_from_files(tmp_path, trained):
    ds = _spectra(trained)
    chunks = tmp_path / "chunks"
    pp.process_in_chunks(ds, [pp.add_snr], 6, chunks)
    direct = pp.read_chunks(chunks)
    store = spectra_store_from_chunks(chunks, tmp_path / "c.zarr", stars_per_chunk=4)
    xr.testing.assert_identical(store.read(), _as_float32(direct))
    assert store.provenance["sources"] == [str(chunks.resolve())]
    files = tmp_path / "files"
    for i, (a, b) in enumerate([(0, 3), (3, 4), (4, 15), (15, 23)]):
        write_spectra(ds.isel(star=slice(a, b)), files / f"part{i}.fits", format="bayescannon")
    from_files = spectra_store_from_files(files, tmp_path / "f.zarr", stars_per_chunk=4)
    xr.testing.assert_identical(from_files.read(), _as_float32(ds))
    odd = ds.isel(star=slice(0, 2)).assign_coords(star=["x1", "x2"], wavelength=("pixel", WL * 1.0001))
    write_spectra(odd, files / "part9.fits", format="bayescannon")
    with pytest.raises(GridMismatchError, match="part9.fits is on another wavelength grid"):
        spectra_store_from_files(files, tmp_path / "g.zarr")
    assert not (tmp_path / "g.zarr").exists()  # atomic: no half store
    (files / "part9.fits").unlink()
    # the CLI does either by input type; the output is refused when it exists
    assert main(["to-zarr", str(chunks), "-o", str(tmp_path / "cli.zarr"), "--stars-per-chunk", "4"]) == 0
    xr.testing.assert_identical(SpectraStore.open(tmp_path / "cli.zarr").read(), _as_float32(direct))
    assert main(["to-zarr", str(files), "-o", str(tmp_path / "cli.zarr"), "--overwrite"]) == 0
    xr.testing.assert_identical(SpectraStore.open(tmp_path / "cli.zarr").read(), _as_float32(ds))
    assert main(["to-zarr", str(files), "-o", str(tmp_path / "cli.zarr")]) != 0


def test_store_infer_equals_in_memory_and_resumes(tmp_path, trained, monkeypatch):
    _, model = trained
    ds = _spectra(trained)
    store = _store(tmp_path, ds, spc=8)
    memory = model.infer(store.read())
    plain = infer_store(model, store)
    np.testing.assert_array_equal(plain["labels"].values, memory["labels"].values)  # identical, not close
    np.testing.assert_array_equal(plain["star"].values, ds["star"].values)
    assert [s.name for s in chunk_sources(store)] == [
        "stars_000000000_000000008",
        "stars_000000008_000000016",
        "stars_000000016_000000023",
    ]
    assert len(chunk_sources(store, chunk_size=10)) == 3
    for work in (tmp_path / "work", tmp_path / "results.zarr"):  # .nc result files, or a catalogue store
        first = infer_store(model, tmp_path / "s.zarr", work, chunk_size=10)
        np.testing.assert_array_equal(first["labels"].values, memory["labels"].values)
        calls = _count_infer(monkeypatch, model)
        again = infer_store(model, tmp_path / "s.zarr", work, chunk_size=10)
        assert calls == []  # every chunk reused
        xr.testing.assert_identical(again, first)
        monkeypatch.undo()
    # a damaged chunk of the catalogue store is recomputed, the others reused
    shutil.rmtree(tmp_path / "results.zarr" / "chunks" / "stars_000000010_000000020" / "labels")
    calls = _count_infer(monkeypatch, model)
    again = infer_store(model, tmp_path / "s.zarr", tmp_path / "results.zarr", chunk_size=10)
    assert len(calls) == 1
    np.testing.assert_array_equal(again["labels"].values, memory["labels"].values)


def test_preprocess_to_zarr_then_infer_equals_the_chunk_folder(tmp_path, capsys):
    from bayescannon import CannonModel
    from bayescannon import io as bio

    rng = np.random.default_rng(8)
    wl = bio.lamost_wavelength(npix=600)
    files = tmp_path / "files"
    files.mkdir()
    teff = rng.uniform(4500, 6000, 8)
    for i in range(8):
        depth = 0.3 * (teff[i] - 4000) / 2000
        flux = 100 * (1 - depth * np.exp(-0.5 * ((wl - 3900) / 3) ** 2)) + rng.normal(0, 0.5, wl.size)
        bio.write_lamost(
            files / f"spec-{i:03d}.fits", wl, flux, np.full(wl.size, 4.0), header={"OBSID": i, "Z": 1e-5 * i}
        )
    common = ["--grid", "3760", "4150", "--chunk-size", "3", "--L", "30", "--no-progress"]
    assert main(["preprocess", str(files), "-o", str(tmp_path / "s.zarr"), *common]) == 0
    assert (tmp_path / "s.zarr.chunks" / "skipped.ecsv").is_file()  # the resumable chunk folder, as -o DIR writes it
    assert len(pp.chunk_files(tmp_path / "s.zarr.chunks")) == 3
    store = SpectraStore.open(tmp_path / "s.zarr")
    assert store.chunk_bounds() == [(0, 3), (3, 6), (6, 8)]
    assert store.provenance["command"] == "bayescannon preprocess" and store.provenance["n_files"] == 8
    assert store.provenance["options"]["--L"] == 30.0 and "--L" in store.provenance["preprocessing"]
    combined = pp.read_chunks(tmp_path / "s.zarr.chunks")
    xr.testing.assert_identical(store.read(), _as_float32(combined))
    model = CannonModel(["TEFF"], order=1).fit(combined, labels=teff[:, None])
    model.save(tmp_path / "m.nc")
    memory = model.infer(store.read())
    cat = tmp_path / "cat.fits"
    argv = ["infer", str(tmp_path / "m.nc"), str(tmp_path / "s.zarr"), "-o", str(cat), "--no-progress"]
    assert main([*argv, "--work-dir", str(tmp_path / "res.zarr")]) == 0
    t = Table.read(cat)
    np.testing.assert_array_equal(np.asarray(t["ID"]).astype(str), combined["star"].values.astype(str))
    np.testing.assert_array_equal(t["TEFF"], memory["labels"].values[:, 0])  # labels identical
    np.testing.assert_allclose(t["SNR"], combined["snr"].values, rtol=1e-12)  # the store's snr column
    assert CatalogueStore(tmp_path / "res.zarr").names() == [
        "stars_000000000_000000003",
        "stars_000000003_000000006",
        "stars_000000006_000000008",
    ]
    # and the same as inferring the float64 chunk folder, to float32 rounding of the spectra
    ref = infer_chunk_files(model, tmp_path / "s.zarr.chunks")
    np.testing.assert_allclose(t["TEFF"], ref["labels"].values[:, 0], rtol=1e-5)


def test_catalogue_store_finalise_and_refusals(tmp_path, trained):
    _, model = trained
    ds = _spectra(trained)
    store = _store(tmp_path, ds, spc=10)
    cat = CatalogueStore(tmp_path / "cat.zarr")
    infer_store(model, store, tmp_path / "cat.zarr")
    memory = model.infer(store.read())
    ref = build_catalogue(model, memory, spectra=store.read_columns())
    for suffix in (".fits", ".parquet"):
        out = tmp_path / f"catalogue{suffix}"
        table = cat.finalise(out, model, spectra=store.read_columns(), expected_ids=store.ids())
        assert table.colnames == ref.colnames
        for c in ref.colnames:
            np.testing.assert_array_equal(np.asarray(table[c]), np.asarray(ref[c]), err_msg=c)
        back = Table.read(out)
        np.testing.assert_array_equal(np.asarray(back["TEFF"]), np.asarray(ref["TEFF"]))
        np.testing.assert_array_equal(np.asarray(back["ID"]).astype(str), ds["star"].values)
    # a star expected but not inferred
    with pytest.raises(InvalidInputError, match=r"1 expected star\(s\) missing \(e.g. extra\)"):
        cat.finalise(None, model, expected_ids=[*store.ids(), "extra"])
    # a chunk written twice under two names: stars there twice
    cat.write("copy", {"k": 1}, cat.read("stars_000000010_000000020"))
    cat.set_order([*cat.order, "copy"])
    with pytest.raises(InvalidInputError, match=r"10 star\(s\) in more than one chunk.*s0010"):
        cat.finalise(None, model)
    # a missing chunk
    cat.set_order(cat.order[:-1])
    shutil.rmtree(tmp_path / "cat.zarr" / "chunks" / "stars_000000000_000000010")
    with pytest.raises(InvalidInputError, match=r"1 of 3 chunk\(s\) missing: stars_000000000_000000010"):
        cat.finalise(None, model)
    assert not (tmp_path / "never.fits").exists()
