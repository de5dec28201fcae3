"""Many runs combined along `run` (as av.open_traces does): every analysis equals the per-run results."""

from __future__ import annotations

import numpy as np
import xarray as xr

from armt_viz.analysis import answer_status, attribute_read, recall_shares, stale_mass
from armt_viz.config import ARMTConfig
from armt_viz.tasks.stream import StreamConfig, make_stream

from .conftest import embed_ledger, random_trace


def _run(seed, segments):
    config = ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8)
    stream = make_stream(StreamConfig(n_keys=3, key_size=1, value_size=1, segment_size=8, events_per_segment=2,
                                      seed=seed), n_tokens=8 * segments)
    return embed_ledger(random_trace(config, segments=segments, probes=3, seed=seed), stream.ledger)


def test_runs_combine_along_run():
    # unindexed dims of different sizes (event) need an index to be outer-joined
    runs = [r.assign_coords(event=np.arange(r.sizes["event"])) for r in (_run(1, 6), _run(2, 8))]
    # outer join (shorter runs are padded), new `run` dim; coords="different" keeps each run's probe coords
    both = xr.concat(runs, dim="run", join="outer", combine_attrs="drop_conflicts", coords="different",
                     compat="equals").assign_coords(run=["a", "b"])
    mass = stale_mass(both)
    assert mass.dims[0] == "run" and list(mass["run"].values) == ["a", "b"]
    for i, ds in enumerate(runs):
        n = ds.sizes["segment"]
        np.testing.assert_allclose(mass.isel(run=i).values[:, :n], stale_mass(ds).values, rtol=1e-12)
        np.testing.assert_allclose(recall_shares(both).isel(run=i).values, recall_shares(ds).values, rtol=1e-12)
        got = attribute_read(both, 2, 1).isel(run=i).dropna("write")
        np.testing.assert_allclose(got.values, attribute_read(ds, 2, 1).values, rtol=1e-12)
        assert list(answer_status(both).isel(run=i).values) == list(answer_status(ds).values)
