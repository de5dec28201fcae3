"""The ipywidgets explorer (armt_viz/viz/explorer.py) over the shared figure builders."""

from __future__ import annotations

import pytest

pytest.importorskip("ipywidgets")

from armt_viz.viz import figures as F  # noqa: E402
from armt_viz.viz.explorer import Explorer, explore  # noqa: E402
from synthetic import make_trace, stack_samples  # noqa: E402


def test_explorer_controls_and_views(trace_writes):
    ex = Explorer(trace_writes)
    assert [ex.layer.description, ex.segment.description, ex.fact.description] == ["Layer", "Segment", "Fact"]
    assert ex.segment.max == 47 and ex.layer.max == 1
    ex.segment.value, ex.layer.value = 12, 1
    assert ex.figure("assoc").layout.title.text == "Association matrix · segment 12 · layer 1"
    assert ex.figure("writes").layout.title.text == "Write events · segment 12 · layer 1"
    fact = ex.fact.options[1][1]
    ex.fact.value = fact
    assert ex.figure("fact").layout.title.text == f"Fact {fact} · lifecycle"
    for name in ("timeline", "stale", "layers"):
        assert ex.figure(name).data


def test_explore_returns_a_widget(trace_summary):
    import ipywidgets as w

    box = explore(trace_summary, segment=3)
    assert isinstance(box, w.VBox)


def test_explorer_recall_figures_follow_the_sample(trace_writes):
    # Given an explorer on sample 1 of a two-sample trace whose sample 1 is another stream
    other = make_trace(level="writes", seed=5)
    ex = Explorer(stack_samples(trace_writes, other), sample=1, segment=5, layer=1, fact=2)
    # Then its timeline and stale answers are that stream's, drawn alone
    assert ex.figure("stale").to_json() == F.stale_answers(other, segment=5, fact=2).to_json()
    assert ex.figure("timeline").to_json() == F.timeline(other, layer=1, segment=5, fact=2).to_json()


def _labels(single) -> list[tuple[str, int]]:
    """The Fact labels of a one-sample trace's facts, counted on that trace alone."""
    from armt_viz.viz import data as D

    led = D.ledger_frame(single)
    probes = D.probe_frame(single, led)
    return [(f"{fid}  ·  {(rows.role == 'key').sum()} writes, {(rows.role == 'query').sum()} queries, "
             f"{int((probes['fact_id'] == fid).sum())} probed", int(fid))
            for fid, rows in led[led["fact_id"] >= 0].groupby("fact_id")]


def test_explorer_sample_selector_and_facts_follow_the_sample(trace_writes):
    # Given an explorer on a two-sample trace whose sample 1 is another stream with facts 0-2 only
    other = make_trace(level="writes", seed=5, n_keys=3)
    ex = Explorer(stack_samples(trace_writes, other), fact=5)
    # Then it has a Sample selector, and the Fact dropdown lists sample 0's facts with sample 0's counts
    assert ex.sample.description == "Sample" and ex.sample in ex.widget.children[0].children
    assert list(ex.fact.options) == _labels(trace_writes) and ex.fact.value == 5
    # When sample 1 is selected, Then the list is sample 1's and fact 5 (not in it) gives way to its most probed
    ex.sample.value = 1
    assert list(ex.fact.options) == _labels(other)
    assert ex.fact.value == max(_labels(other), key=lambda lv: int(lv[0].split(", ")[-1].split()[0]))[1]
    assert ex.figure("stale").to_json() == F.stale_answers(other, segment=0, fact=ex.fact.value).to_json()
    # When fact 1 (in both) is chosen and sample 0 selected again, Then fact 1 stays
    ex.fact.value = 1
    ex.sample.value = 0
    assert ex.fact.value == 1 and list(ex.fact.options) == _labels(trace_writes)


def test_explorer_has_no_sample_selector_for_one_sample(trace_writes):
    ex = Explorer(trace_writes)
    assert ex.sample not in ex.widget.children[0].children


def test_explorer_says_a_sample_has_no_probes(trace_writes):
    both = stack_samples(trace_writes, make_trace(level="writes", seed=5))
    ex = Explorer(both.isel(probe=both["probe_sample"].values == 0), sample=1)
    notes = [a.text for a in ex.figure("stale").layout.annotations]
    assert any(n.startswith("No probes in sample 1") for n in notes), notes
