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
