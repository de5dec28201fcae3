"""Trace IO: many runs along `run`, validation, a reader during writing sees a committed prefix."""

import numpy as np
import pytest
import torch
import xarray as xr

import armt_viz as av
from armt_viz.testing import tiny_model


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    m = tiny_model()
    d = tmp_path_factory.mktemp("runs")
    paths = []
    for seed, n in [(0, 64), (1, 96)]:
        g = torch.Generator().manual_seed(seed)
        p = d / f"run{seed}.zarr"
        av.record(m, torch.randint(0, 32, (1, n), generator=g), store=p, level="writes", progress=False, seed=seed)
        paths.append(p)
    return paths


def test_open_traces_combines_runs(stores):
    ds = av.open_traces(stores)
    assert ds.sizes["run"] == 2
    assert ds.sizes["segment"] == 6  # outer join of 4 and 6 segments
    single = av.open_trace(stores[1])
    np.testing.assert_array_equal(ds["assoc_norm"].isel(run=1).values, single["assoc_norm"].values)
    assert np.isnan(ds["assoc_norm"].isel(run=0, segment=5)).all()  # the shorter run is padded, not invented


def test_open_trace_is_lazy(stores):
    ds = av.open_trace(stores[0])
    assert ds["write_delta"].chunks is not None  # dask-backed


def test_validate_trace_names_the_problem(stores):
    ds = av.open_trace(stores[0]).load()
    bad = ds.assign(assoc_norm=ds["assoc_norm"].transpose("layer", "segment", "sample"))
    with pytest.raises(ValueError, match="assoc_norm: dims"):
        av.validate_trace(bad)
    with pytest.raises(ValueError, match="armt_config"):
        av.validate_trace(xr.Dataset(attrs={"record_config": "{}"}))


def test_memory_at_rejects_out_of_range(stores):
    ds = av.open_trace(stores[0])
    with pytest.raises(IndexError, match="outside"):
        av.memory_at(ds, segment=99, layer=0)


def test_summary_level_memory_at_only_at_keyframes():
    m = tiny_model()
    ds = av.record(m, torch.randint(0, 32, (1, 160)), level="summary", keyframe_every=4, progress=False)
    full = av.record(m, torch.randint(0, 32, (1, 160)).fill_(3), level="full", progress=False)
    A, _ = av.memory_at(ds, segment=7, layer=1)  # keyframe segment: exact
    assert A.shape[0] == 1
    with pytest.raises(ValueError, match="level='writes'"):
        av.memory_at(ds, segment=5, layer=1)
    assert full.sizes["segment"] == 10


def test_open_traces_with_ledgers_of_different_lengths(tmp_path):
    from armt_viz.record.run import task_stream
    m = tiny_model(vocab_size=128, segment_size=32)
    paths = []
    for seed in (0, 1, 2):
        inp = task_stream(m, "stream", 32 * 12, seed)
        p = tmp_path / f"s{seed}.zarr"
        av.record(m, inp, store=p, level="summary", progress=False)
        paths.append(p)
    ds = av.open_traces(paths)
    assert ds.sizes["run"] == 3
    n_events = [av.open_trace(p).sizes["event"] for p in paths]
    assert ds.sizes["event"] == max(n_events)


def test_replay_keeps_its_starting_memory(tmp_path):
    m = tiny_model()
    ds = av.record(m, torch.randint(0, 32, (1, 160)), level="writes", progress=False)
    rp = av.replay(m, ds, from_segment=4)
    for s in range(rp.sizes["segment"]):
        a, _ = av.memory_at(rp, s, 1)
        b, _ = av.memory_at(ds, s + 4, 1)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-6 * np.abs(b.values).max())


def test_record_refuses_a_misaligned_ledger():
    from armt_viz.record.run import task_stream
    m32 = tiny_model(vocab_size=128, segment_size=32)
    m16 = tiny_model(vocab_size=128, segment_size=16)
    inp = task_stream(m32, "stream", 32 * 4, 0)
    with pytest.raises(ValueError, match="segment_size"):
        av.record(m16, inp, progress=False)


def test_av_record_stays_callable_after_submodule_imports():
    import armt_viz.record.replay  # noqa: F401  (binds the subpackage over the lazy name)
    assert callable(av.record)
