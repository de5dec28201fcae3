"""Reproducibility (issue 8.5): the same seed and input give identical traces: every variable, every value and
every attribute (no time stamps, host names or paths in a trace), whatever the store path."""

from __future__ import annotations

import numpy as np

import armt_viz as av
import record_worker as rw
from armt_viz.tasks import StreamConfig, make_stream
from armt_viz.testing import tiny_model


def test_same_seed_and_input_give_identical_traces(reference, tmp_path):
    again = rw.run(tmp_path / "elsewhere" / "again.zarr", model=rw.make_model()).load()  # fresh model, same seed
    rw.assert_same_trace(again, reference)


def test_full_level_task_trace_with_ledger_is_reproducible(tmp_path):
    cfg = StreamConfig(n_keys=16, key_size=1, value_size=1, segment_size=16, events_per_segment=2, seed=3)
    task = make_stream(cfg, 64)
    runs = []
    for i in range(2):
        ids = np.stack([task.input_ids, task.input_ids[::-1]])
        runs.append(av.record(tiny_model(seed=1, vocab_size=128), ids, store=tmp_path / f"r{i}.zarr", level="full", keyframe_every=2,
                              chunk_segments=2, probes=[(0, 40), (1, 60)], ledger=task.ledger, seed=cfg.seed,
                              description="stream task", progress=False).load())
    assert any(k.startswith("ledger_") for k in runs[0].variables) and "ledger_attrs" in runs[0].attrs
    rw.assert_same_trace(runs[0], runs[1])
