"""Input faults of issue 11, each reproduced as a test: labels that are missing but looked
like numbers, duplicated ids, complex flux, absurd flux/ivar, a FIFO named ``.fits``,
``n_starts=0``. Every case must end in a typed :mod:`bayescannon.errors` exception that
names the star/pixel/file, never in a silently wrong number or an untyped error."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
import xarray as xr
from astropy.table import MaskedColumn, Table

from bayescannon.commands._common import join_labels
from bayescannon.errors import InvalidInputError, LabelError, SurveyFormatError
from bayescannon.io import read_labels, read_spectra
from bayescannon.model import CannonModel
from bayescannon.preprocess._container import flux_ivar
from bayescannon.spectra import as_label_array, check_flux_ivar, label_values, make_spectra

NAMES = ["TEFF", "LOGG"]
N, P = 30, 20


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    labels = np.column_stack([rng.uniform(4000, 5500, N), rng.uniform(1, 4, N)])
    x = (labels - labels.mean(0)) / labels.std(0)
    flux = 1 + 0.02 * x @ rng.normal(size=(2, P)) + 0.01 * rng.normal(size=(N, P))
    ivar = np.full((N, P), 1e4)
    ids = np.array([f"s{i:03d}" for i in range(N)])
    return labels, flux, ivar, ids


@pytest.fixture(scope="module")
def model(data):
    labels, flux, ivar, _ = data
    return CannonModel(NAMES, 1).fit(flux, ivar, labels)


def _write_csv(path, ids, labels, cells):
    """A label CSV; ``cells`` maps (row, column) to the text written there instead."""
    with open(path, "w") as fh:
        fh.write("ID,TEFF,LOGG\n")
        for i, name in enumerate(ids):
            row = [cells.get((i, k), repr(float(labels[i, k]))) for k in range(2)]
            fh.write(f"{name},{row[0]},{row[1]}\n")
    return path


# ----------------------------------------------------------------------------- labels
@pytest.mark.parametrize(("cell", "why"), [("", "empty"), ("n/a", "n/a"), ("-9999", "sentinel"), ("99.99", "99.99")])
def test_missing_label_cell_is_never_a_number(tmp_path, data, cell, why):
    # found: an empty cell became 0 K, "n/a" a raw ValueError, -9999 a label
    labels, flux, ivar, ids = data
    path = _write_csv(tmp_path / "labels.csv", ids, labels, {(7, 0): cell})
    table = read_labels(path, id_column="ID")
    assert np.ma.getmaskarray(table["TEFF"])[7], why  # missing, not a number
    assert np.ma.getmaskarray(table["TEFF"]).sum() == 1
    ds = make_spectra(np.linspace(5000, 5100, P), flux, ivar, ids=ids)
    with pytest.raises(LabelError, match=r"s007") as err:
        join_labels(ds, path, NAMES, "ID")
    assert "1 of 30 stars" in str(err.value)


def test_complete_label_csv_joins_exactly(tmp_path, data):
    labels, flux, ivar, ids = data
    path = _write_csv(tmp_path / "labels.csv", ids, labels, {})
    ds = make_spectra(np.linspace(5000, 5100, P), flux, ivar, ids=ids)
    np.testing.assert_array_equal(join_labels(ds, path, NAMES, "ID"), labels)


def test_masked_column_hidden_value_is_not_used(data):
    # found: an astropy MaskedColumn was read through its hidden values
    labels, flux, ivar, ids = data
    t = Table({"TEFF": MaskedColumn(labels[:, 0], mask=np.arange(N) == 4), "LOGG": labels[:, 1]})
    with pytest.raises(LabelError, match=r"TEFF of star 4 \(id s004\) is missing \(masked\)"):
        as_label_array(t, NAMES, N, ids=ids)
    with pytest.raises(LabelError, match="star 4"):
        CannonModel(NAMES, 1).fit(flux, ivar, t, ids=ids)


@pytest.mark.parametrize("sentinel", [-9999.0, -999.0, 99.99, np.float32(99.99)])
def test_sentinel_label_is_refused(data, sentinel):
    labels, *_ = data
    bad = labels.copy()
    bad[9, 1] = sentinel
    with pytest.raises(LabelError, match=r"LOGG of star 9 is missing \(a missing-value sentinel\)"):
        as_label_array(bad, NAMES)
    # configurable: with no sentinels the value is a number again
    np.testing.assert_array_equal(as_label_array(bad, NAMES, sentinels=())[9, 1], np.float64(sentinel))


def test_label_values_reports_every_missing_kind():
    t = Table(
        {
            "TEFF": MaskedColumn([4000.0, 4100.0, np.nan, -9999.0, 4500.0], mask=[0, 1, 0, 0, 0]),
            "LOGG": np.array(["2.5", "n/a", "", "3.0", "NULL"]),
        }
    )
    values, code = label_values(t, NAMES)
    np.testing.assert_array_equal(code, [[0, 0], [1, 2], [3, 2], [4, 0], [0, 2]])
    np.testing.assert_array_equal(np.isnan(values), code > 0)
    assert values[0].tolist() == [4000.0, 2.5] and values[3, 1] == 3.0


def test_text_label_that_is_no_number_is_a_label_error():
    with pytest.raises(LabelError, match=r"LOGG of star 1 is 'abc'"):
        as_label_array({"TEFF": [4000.0, 4100.0], "LOGG": ["2.5", "abc"]}, NAMES)


# ----------------------------------------------------------------------------- ids
def test_duplicate_ids_are_refused_in_fit_and_infer(data, model):
    # found: duplicated star ids were accepted silently
    labels, flux, ivar, ids = data
    dup = ids.copy()
    dup[5] = dup[2]
    with pytest.raises(InvalidInputError, match="s002 \\(2x\\)"):
        CannonModel(NAMES, 1).fit(flux, ivar, labels, ids=dup)
    with pytest.raises(InvalidInputError, match="s002"):
        model.infer(flux, ivar, ids=dup)


def test_duplicate_ids_in_label_table_are_named_at_the_join(tmp_path, data):
    from bayescannon.errors import CrossMatchError

    labels, flux, ivar, ids = data
    path = tmp_path / "labels.csv"
    _write_csv(path, np.r_[ids, ids[:1]], np.r_[labels, labels[:1] + 1], {})
    ds = make_spectra(np.linspace(5000, 5100, P), flux, ivar, ids=ids)
    with pytest.raises(CrossMatchError, match="s000"):
        join_labels(ds, path, NAMES, "ID")


# ----------------------------------------------------------------------------- flux / ivar
def test_complex_flux_is_a_typed_error(data, model):
    # found: complex flux lost its imaginary part with only a numpy ComplexWarning
    labels, flux, ivar, _ = data
    for call in (
        lambda: check_flux_ivar(flux + 1j, ivar),
        lambda: CannonModel(NAMES, 1).fit(flux.astype(complex), ivar, labels),
        lambda: model.infer(flux.astype(complex), ivar),
    ):
        with pytest.raises(InvalidInputError, match="complex"):
            call()


@pytest.mark.parametrize("value", [1e10, -3e12, 1e100, 1e300])
def test_absurd_flux_is_refused_naming_star_and_pixel(data, model, value):
    # found: flux >= 1e100 gave a numba SystemError in training; infer returned labels
    labels, flux, ivar, ids = data
    bad = flux.copy()
    bad[3, 4] = value
    for call in (
        lambda: CannonModel(NAMES, 1).fit(bad, ivar, labels, ids=ids),
        lambda: model.infer(bad, ivar, ids=ids),
        lambda: check_flux_ivar(bad, ivar, ids=ids),
    ):
        with pytest.raises(InvalidInputError, match=r"flux is absurd at star 3 \(id s003\), pixel 4"):
            call()
    masked = ivar.copy()
    masked[3, 4] = 0.0  # the same value where ivar = 0 is no information: accepted
    f, _ = check_flux_ivar(bad, masked)
    assert f[3, 4] == 0.0


@pytest.mark.parametrize("value", [1e16, 1e30])
def test_absurd_ivar_is_refused_naming_star_and_pixel(data, value):
    # found: one star with ivar = 1e30 "fitted" a model with every pixel flagged
    labels, flux, ivar, ids = data
    bad = ivar.copy()
    bad[6] = value
    with pytest.raises(InvalidInputError, match=r"ivar is absurd at star 6 \(id s006\), pixel 0"):
        CannonModel(NAMES, 1).fit(flux, bad, labels, ids=ids)
    ds = make_spectra(np.linspace(5000, 5100, P), flux, bad, ids=ids)
    with pytest.raises(InvalidInputError, match=r"star 6 \(id s006\), pixel 0 \(5000.000 A\)"):
        flux_ivar(ds)


def test_ivar_below_the_limit_is_accepted(data):
    _, flux, ivar, _ = data
    ok = ivar.copy()
    ok[6, 2] = 0.99e12 * 1e4  # just under 1e12 x the median
    f, iv = check_flux_ivar(flux, ok)
    assert iv[6, 2] == ok[6, 2] and np.array_equal(f, flux)


# ----------------------------------------------------------------------------- files
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("name", ["spectra.fits", "apStar-dr17-2M00000000+0000000.fits", "labels.csv"])
def test_fifo_named_like_a_data_file_does_not_hang(tmp_path, name):
    # found: reading a FIFO named .fits blocked forever
    path = tmp_path / name
    os.mkfifo(path)
    reader = read_labels if name.endswith(".csv") else read_spectra
    outcome = {}

    def run():
        try:
            reader(path)
        except Exception as exc:  # the outcome is inspected below
            outcome["exc"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():  # unblock the reader so that the test run ends, then fail
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(10)
        pytest.fail(f"reading a FIFO named {name} hung")
    assert isinstance(outcome.get("exc"), SurveyFormatError)
    assert str(path) in str(outcome["exc"]) and "FIFO" in str(outcome["exc"])


def test_folder_named_fits_is_a_format_error(tmp_path):
    path = tmp_path / "spectra.fits"
    path.mkdir()
    with pytest.raises(SurveyFormatError, match="folder"):
        read_spectra(path)


# ----------------------------------------------------------------------------- parameters
def test_n_starts_zero_is_an_error_not_the_default(data, model):
    # found: infer(n_starts=0) silently used the model's n_starts
    _, flux, ivar, _ = data
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidInputError, match="n_starts must be an integer >= 1"):
            model.infer(flux[:2], ivar[:2], n_starts=bad)
    with pytest.raises(InvalidInputError, match="n_starts"):
        CannonModel(NAMES, 1, n_starts=0).fit(flux, ivar, data[0])
    one = model.infer(flux[:2], ivar[:2], n_starts=1)
    assert one["labels"].shape == (2, 2)


def test_dataset_with_masked_label_variable_is_refused(data):
    labels, flux, ivar, ids = data
    ds = make_spectra(np.linspace(5000, 5100, P), flux, ivar, ids=ids, TEFF=labels[:, 0], LOGG=labels[:, 1])
    ds["TEFF"] = xr.where(ds["star"] == "s010", -9999.0, ds["TEFF"])
    with pytest.raises(LabelError, match=r"star 10 \(id s010\)"):
        CannonModel(NAMES, 1).fit(ds)
