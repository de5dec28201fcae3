"""Tests of armt_viz.tasks.ledger: schema, validity resolution, storage."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import xarray as xr

from armt_viz.tasks import (
    DEFAULT_MAX_STALE,
    LEDGER_SCHEMA,
    BabiConfig,
    StreamConfig,
    concat_ledgers,
    ledger_queries,
    make_ar_batch,
    make_babi_batch,
    make_ledger,
    make_stream,
    resolve_validity,
    validate_ledger,
)

from ._oracles import check_ledger


def _ledgers():
    return {
        "ar": make_ar_batch(10, 1, 1, batch_size=4, rewrite=True, seed=0).ledger,
        "stream": make_stream(StreamConfig(seed=0, chunk_segments=5), 32 * 20).ledger,
        "babi": make_babi_batch(BabiConfig(task="qa2", n_facts=12, n_questions=3), batch_size=3, seed=0).ledger,
    }


@pytest.mark.parametrize("name", ["ar", "stream", "babi"])
def test_every_task_ledger_follows_the_schema(name):
    ledger = _ledgers()[name]
    validate_ledger(ledger)
    check_ledger(ledger)
    assert set(ledger.data_vars) == set(LEDGER_SCHEMA)
    assert ledger["role"].dtype == object and isinstance(ledger["role"].values[0], str)
    assert ledger.sizes["stale"] == DEFAULT_MAX_STALE
    np.testing.assert_array_equal(ledger["event"].values, np.arange(ledger.sizes["event"]))
    for attr, value in ledger.attrs.items():  # netCDF/zarr-safe attribute types only
        assert isinstance(value, (str, int)), (attr, value)
    json.loads(ledger.attrs["params"])
    for var in ledger.data_vars.values():
        assert {"long_name", "units", "comment"} <= set(var.attrs)
    queries = ledger_queries(ledger)
    assert set(queries["role"].values.tolist()) == {"query"} and queries.sizes["event"] > 0


def _tiny(rows, **kw):
    cols = {name: [r[i] for r in rows] for i, name in enumerate(
        ("role", "token", "fact_id", "version", "valid_from", "value", "expected_answer"))}
    n = len(rows)
    stale = [[1] if r[0] in ("query", "answer") and r[3] == 1 else [] for r in rows]  # value 1 was deleted
    cols |= {"n_tokens": [1] * n, "sample": [0] * n, "n_superseded": [len(x) for x in stale], "stale_values": stale}
    return make_ledger(cols, task="tiny", params={}, seed=0, segment_size=4, special_tokens={}, **kw)


def test_resolve_validity_closes_each_version_at_the_next():
    rows = [("key", 0, 7, 0, 0, 1, -1), ("value", 1, 7, 0, 0, 1, -1),
            ("key", 4, 8, 0, 4, 2, -1), ("value", 5, 8, 0, 4, 2, -1),
            ("query", 8, 7, 0, 0, 1, 1), ("answer", 9, 7, 0, 0, 1, 1),
            ("delete", 12, 7, 1, 12, -1, -1),
            ("query", 16, 7, 1, 12, -1, -1), ("answer", 17, 7, 1, 12, -1, -1),
            ("key", 20, 7, 2, 20, 3, -1), ("value", 21, 7, 2, 20, 3, -1)]
    ledger = _tiny(rows)
    assert ledger["valid_to"].values.tolist() == [12, 12, -1, -1, 12, 12, 20, 20, 20, -1, -1]
    assert ledger["segment"].values.tolist() == [t // 4 for t in ledger["token"].values]
    check_ledger(ledger)
    # split anywhere: chunk-local resolution leaves later closures open, concatenation restores them
    for cut in range(1, len(rows)):
        first, second = _tiny(rows[:cut]), _tiny(rows[cut:], event_offset=cut)
        assert first["valid_to"].values.max(initial=-1) <= first["token"].values.max()
        xr.testing.assert_identical(concat_ledgers([first, second]), ledger)
    xr.testing.assert_identical(resolve_validity(ledger), ledger)


def test_validate_ledger_names_the_problem():
    ledger = _ledgers()["ar"]
    with pytest.raises(ValueError, match="missing variable 'version'"):
        validate_ledger(ledger.drop_vars("version"))
    with pytest.raises(ValueError, match="'token' has dtype int32, expected int64"):
        validate_ledger(ledger.assign(token=ledger["token"].astype("int32")))
    bad = ledger.copy(deep=True)
    bad["role"].values[0] = "writes"
    with pytest.raises(ValueError, match=r"unknown roles \['writes'\]"):
        validate_ledger(bad)
    with pytest.raises(ValueError, match="at least one ledger chunk"):
        concat_ledgers([])


def test_ledgers_round_trip_through_zarr_without_warnings(tmp_path):
    pytest.importorskip("zarr")
    for name, ledger in _ledgers().items():
        path = tmp_path / f"{name}.zarr"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ledger.to_zarr(path, consolidated=False)
            back = xr.open_zarr(path, consolidated=False).load()
        xr.testing.assert_identical(back, ledger)
        validate_ledger(back)
        xr.testing.assert_identical(resolve_validity(back), back)


def test_tasks_import_without_torch(repo_root):
    code = "import sys, armt_viz.tasks; assert 'torch' not in sys.modules, 'armt_viz.tasks imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=repo_root)
