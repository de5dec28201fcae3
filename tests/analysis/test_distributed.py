"""The same analysis on a LocalCluster with process workers equals the in-process result."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from armt_viz.analysis import attribute_read, stale_mass
from armt_viz.config import ARMTConfig
from armt_viz.distributed import cluster
from armt_viz.tasks.stream import StreamConfig, make_stream

from .conftest import embed_ledger, random_trace

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def zarr_trace(tmp_path_factory):
    config = ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8)
    stream = make_stream(StreamConfig(n_keys=4, key_size=1, value_size=1, segment_size=8, events_per_segment=2,
                                      seed=5), n_tokens=8 * 24)
    ds = embed_ledger(random_trace(config, segments=24, probes=6, hidden=8, storage="float32"), stream.ledger)
    path = tmp_path_factory.mktemp("trace") / "trace.zarr"
    chunked = ds.chunk({"segment": 4})
    chunked = chunked.assign({k: ds[k] for k in ds.data_vars if k.startswith("ledger_")})  # static, unchunked
    chunked.to_zarr(path, consolidated=False)
    return xr.open_zarr(path, consolidated=False)


def test_local_cluster_equals_in_process(zarr_trace):
    ds = zarr_trace
    assert ds["write_key"].chunks is not None  # dask-backed, read by the workers themselves
    mass_here = stale_mass(ds).compute()
    shares_here = [attribute_read(ds, p, 1).compute() for p in range(ds.sizes["probe"])]
    import dask
    from distributed import get_task_stream

    with cluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit="1GiB") as client:
        with get_task_stream(client) as tasks:
            mass_there = stale_mass(ds).compute()
            shares_there = dask.compute(*[attribute_read(ds, p, 1) for p in range(ds.sizes["probe"])])
        workers = {t["worker"] for t in tasks.data}
    assert len(tasks.data) > 0 and len(workers) >= 1  # the work ran on the cluster
    xr.testing.assert_allclose(mass_there, mass_here, rtol=1e-12)
    for a, b in zip(shares_there, shares_here):
        xr.testing.assert_allclose(a, b, rtol=1e-12)
    assert np.isfinite(mass_here.values[0, 1:]).all()
