"""Figure builders (armt_viz/viz/figures*.py) on synthetic traces: titles from CF attrs, exact data, small JSON."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from synthetic import make_trace, reference_memory, stack_samples

from armt_viz.viz import data as D
from armt_viz.viz import figures as F
from armt_viz.viz._style import axis_title, plain, row_titles


def _by_name(fig, name):
    return [t for t in fig.data if t.name == name]


def test_axis_title_from_long_name_and_units():
    da = xr.DataArray([1.0], dims="segment", attrs={"long_name": "next-token cross-entropy", "units": "nat"})
    assert axis_title(da) == "next-token cross-entropy [nat]"
    assert axis_title(xr.DataArray([1.0], dims="x", attrs={"long_name": "gate", "units": "1"})) == "gate"
    assert axis_title(xr.DataArray([1.0], dims="x", name="raw")) == "raw"
    assert plain(axis_title(da, width=10)) == "next-token cross-entropy [nat]"


def test_timeline_rows_titled_from_long_name_and_units(trace_writes):
    fig = F.timeline(trace_writes, layer=1, segment=5, fact=2)
    titles = row_titles(fig)
    expected = [axis_title(trace_writes[n]) for n in D.TIMELINE_VARS]
    assert [titles[i + 1] for i in range(len(expected))] == expected
    assert titles[len(expected)] == "next-token cross-entropy within the segment [nat]"
    assert fig.layout.xaxis6.title.text == "segment index" or any(
        getattr(fig.layout, k).title.text == "segment index" for k in fig.layout if k.startswith("xaxis"))
    # recall outcomes and the fact's events are on the last row
    assert _by_name(fig, "recall correct") and _by_name(fig, "fact 2: overwrite")


def test_timeline_keeps_a_spike_and_ships_only_envelopes():
    n = 200_000
    y = np.random.default_rng(0).normal(size=n).astype(np.float32)
    y[123_456] = 500.0
    da = xr.DataArray(y, dims="segment", coords={"segment": np.arange(n)}, name="write_delta_norm",
                      attrs={"long_name": "Frobenius norm of the segment's update to A", "units": "1"})
    fig = F.timeline_figure({"write_delta_norm": da}, n_pixels=600, segment=10)
    assert max(len(t.x) for t in fig.data) <= 602
    assert max(float(np.nanmax(t.y)) for t in fig.data) == 500.0
    assert len(fig.to_json()) < 150_000  # the raw series alone would be ~4 MB of JSON


def test_timeline_zoom_reaggregates():
    n = 100_000
    da = xr.DataArray(np.arange(n, dtype=float), dims="segment", coords={"segment": np.arange(n)}, name="v",
                      attrs={"long_name": "v", "units": "1"})
    fig = F.timeline_figure({"v": da}, x_range=(1000, 1100), n_pixels=800)
    xs = np.concatenate([np.asarray(t.x) for t in fig.data])
    assert xs.min() >= 999 and xs.max() <= 1101          # only the visible range was read
    assert list(fig.layout.xaxis.range) == [999.5, 1100.5]


def test_association_matrix_is_the_exact_memory(trace_writes):
    fig = F.association_matrix(trace_writes, segment=20, layer=1)
    heat = next(t for t in fig.data if t.type == "heatmap")
    ref_a, _ = reference_memory(trace_writes, 20, 1)
    np.testing.assert_allclose(np.asarray(heat.z), ref_a, rtol=1e-5, atol=1e-5)
    assert row_titles(fig)[1] == axis_title(attrs={"long_name": "association matrix A after the segment's write",
                                                   "units": "1"})
    assert fig.layout.yaxis.title.text == "key feature (DPFP index)"
    assert "segment 20" in fig.layout.title.text


def test_large_matrix_is_pooled_keeping_the_extreme():
    a = np.zeros((384, 768))
    a[200, 500] = -7.0
    da = xr.DataArray(a, dims=("key_feature", "hidden"), attrs={"long_name": "A", "units": "1"})
    fig = F.assoc_figure(da, segment=0, layer=0)
    heat = next(t for t in fig.data if t.type == "heatmap")
    assert np.asarray(heat.z).shape[0] <= 256 and np.asarray(heat.z).shape[1] <= 256
    assert np.asarray(heat.z).min() == -7.0


def test_summary_trace_says_what_is_needed(trace_summary):
    for fig in (F.association_matrix(trace_summary, 3, 0), F.write_events(trace_summary, 3, 0)):
        assert not fig.data
        assert "writes-level trace" in fig.layout.annotations[0].text


def test_write_events_show_the_segment(trace_writes):
    fig = F.write_events(trace_writes, segment=7, layer=0)
    gate = next(t for t in fig.data if t.name == "β")
    np.testing.assert_allclose(gate.y, trace_writes["write_gate"].isel(sample=0, segment=7, layer=0).values)
    titles = row_titles(fig)
    assert titles[1] == axis_title(trace_writes["write_gate"])
    assert titles[2] == axis_title(trace_writes["write_correction"])
    assert titles[4] == axis_title(trace_writes["write_key"])


def test_fact_lifecycle_attribution_splits_each_recall(trace_writes):
    fig = F.fact_lifecycle(trace_writes, fact=2, layer=1, segment=10)
    parts = {name: np.asarray(_by_name(fig, name)[0].y) for name in ("current", "stale", "other")}
    np.testing.assert_allclose(parts["current"] + parts["stale"] + parts["other"], 1.0, atol=1e-6)
    assert fig.layout.title.text == "Fact 2 · lifecycle"
    assert fig.layout.yaxis.categoryarray[-1] == "recalls"


def _drawn(fig) -> list:
    """What a figure shows: each trace's name and x, y values, and the subtitle (probe ids left out)."""
    return [fig.layout.title.text] + [(t.name, np.asarray(t.x).tolist(), np.asarray(t.y).tolist()) for t in fig.data]


def test_fact_lifecycle_follows_the_sample(trace_writes):
    # Given a two-sample trace whose sample 1 is another stream (its own ledger, probes and writes)
    other = make_trace(level="writes", seed=5)
    both = stack_samples(trace_writes, other)
    # When the lifecycle of fact 2 is drawn for each sample, Then each matches that stream drawn alone
    drawn = {}
    for sample, alone in ((0, trace_writes), (1, other)):
        drawn[sample] = _drawn(F.fact_lifecycle(both, fact=2, layer=1, segment=10, sample=sample))
        assert drawn[sample] == _drawn(F.fact_lifecycle(alone, fact=2, layer=1, segment=10))
    assert drawn[0] != drawn[1]


@pytest.fixture(scope="module")
def two_samples(trace_writes):
    """``trace_writes`` as sample 0 and another stream (its own ledger, probes and writes) as sample 1."""
    other = make_trace(level="writes", seed=5)
    return stack_samples(trace_writes, other), {0: trace_writes, 1: other}


@pytest.mark.parametrize("draw", [
    lambda ds, **sample: F.timeline(ds, layer=1, segment=5, fact=2, **sample),
    lambda ds, **sample: F.stale_answers(ds, segment=5, fact=2, **sample),
], ids=["timeline", "stale_answers"])
def test_recall_figures_follow_the_sample(two_samples, draw):
    # Given a two-sample trace whose samples are different streams
    both, alone = two_samples
    # When the figure is drawn for each sample, Then it is that sample's stream drawn alone (recall outcomes of
    # the other sample are not pooled in), down to every value of every trace
    drawn = {}
    for sample, single in alone.items():
        drawn[sample] = draw(both, sample=sample).to_json()
        assert drawn[sample] == draw(single).to_json()
    assert drawn[0] != drawn[1]


def test_fact_lifecycle_without_writes_says_so(trace_summary):
    fig = F.fact_lifecycle(trace_summary, fact=1, layer=0)
    assert any("writes-level" in (a.text or "") for a in fig.layout.annotations)


def test_stale_answers_heatmap(trace_writes):
    fig = F.stale_answers(trace_writes, segment=4, fact=2)
    heat = next(t for t in fig.data if t.type == "heatmap")
    z = np.asarray(heat.z, dtype=float)
    assert np.nanmin(z) >= 0 and np.nanmax(z) <= 1
    probes = D.probe_frame(trace_writes, D.ledger_frame(trace_writes))
    assert list(heat.y) == [str(k) for k in sorted(probes.loc[probes.fact_id >= 0, "fact_id"].unique())]
    assert fig.layout.yaxis.title.text == "key (fact id)"


def test_layer_comparison_one_line_per_layer(trace_writes):
    fig = F.layer_comparison(trace_writes, segment=3)
    assert {t.name for t in fig.data} == {"layer 0", "layer 1"}
    assert row_titles(fig)[1] == axis_title(trace_writes["assoc_norm"])


@pytest.mark.parametrize("builder", ["timeline", "layer_comparison", "stale_answers"])
def test_figures_serialize_small(trace_writes, builder):
    fig = getattr(F, builder)(trace_writes)
    assert len(fig.to_json()) < 200_000
