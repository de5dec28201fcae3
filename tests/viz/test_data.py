"""Selections behind the figures (armt_viz/viz/data.py): ledger tables, probe outcomes, exact memory."""

from __future__ import annotations

import numpy as np
from synthetic import reference_memory

from armt_viz.viz import data as D


def test_memory_matrix_matches_the_write_events(trace_writes, trace_full):
    for ds, how in ((trace_writes, "reconstructed"), (trace_full, "stored")):
        a, z, got_how = D.memory_matrix(ds, 13, 1)
        ref_a, ref_z = reference_memory(ds, 13, 1)
        np.testing.assert_allclose(a.values, ref_a, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(z.values, ref_z, rtol=1e-5, atol=1e-5)
        assert got_how.startswith(how)


def test_fact_table_counts_the_ledger(trace_writes):
    led = D.ledger_frame(trace_writes)
    table = D.fact_table(led)
    keys = led[led.role == "key"]
    assert table["writes"].sum() == len(keys)
    assert table["queries"].sum() == (led.role == "query").sum()
    assert (table["overwrites"] <= table["writes"]).all()


def test_probe_outcomes_link_each_probe_to_its_query(trace_writes):
    probes = D.probe_frame(trace_writes, D.ledger_frame(trace_writes))
    assert len(probes) == trace_writes.sizes["probe"]
    assert (probes["fact_id"] >= 0).all()           # every synthetic probe sits on a query
    assert set(probes["outcome"]) <= {"correct", "stale", "other", "wrong", "n/a"}
    correct = probes["outcome"] == "correct"
    assert (probes.loc[correct, "prediction"] == probes.loc[correct, "expected"]).all()
    assert (probes["outcome"] == "stale").sum() > 0


def test_series_is_one_dimensional_and_labelled(trace_writes):
    s = D.series(trace_writes, "assoc_norm", layer=1)
    assert s.dims == ("segment",) and s.attrs["long_name"].startswith("Frobenius norm")
    loss = D.series(trace_writes, "segment_loss")
    assert loss.attrs["units"] == "nat"


def test_token_stream_rebuilds_the_input(trace_writes):
    stream = D.token_stream(trace_writes)
    np.testing.assert_array_equal(stream, trace_writes["tokens"].values.reshape(-1))


def test_probe_outcomes_agree_with_analysis_answer_status(trace_writes):
    analysis = __import__("pytest").importorskip("armt_viz.analysis")
    probes = D.probe_frame(trace_writes, D.ledger_frame(trace_writes))
    status = analysis.answer_status(trace_writes, source="probe").values
    mine = probes["outcome"].replace({"correct": "current"}).to_numpy()
    # including the queries of a key without a value (never written or deleted), answered NONE: current in both
    from armt_viz.tasks.stream import NONE

    assert (probes["expected"].to_numpy() == NONE).any()
    assert list(mine) == list(status)


def test_fact_table_and_probe_counts_are_per_sample(trace_writes):
    from synthetic import make_trace, stack_samples

    other = make_trace(level="writes", seed=5, n_keys=3)
    both = stack_samples(trace_writes, other)
    led, probes = D.ledger_frame(both), D.probe_frame(both, D.ledger_frame(both))
    for sample, single in enumerate((trace_writes, other)):
        alone = D.ledger_frame(single)
        assert D.fact_table(led, sample).equals(D.fact_table(alone))
        assert D.probe_counts(probes, sample).equals(D.probe_counts(D.probe_frame(single, alone)))
    assert D.fact_table(led, 2).empty


def test_pick_fact_keeps_the_current_else_the_most_probed():
    import pandas as pd

    counts = pd.Series({4: 9, 1: 9, 2: 3})  # ties: listed order (probe_counts puts the smaller id first)
    assert D.pick_fact(2, [1, 2, 4], counts) == 2
    assert D.pick_fact(7, [1, 2, 4], counts) == 4
    assert D.pick_fact(7, [3, 5], counts) == 3
    assert D.pick_fact(7, [], counts) is None
