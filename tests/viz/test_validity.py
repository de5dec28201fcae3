"""Every builder's figure is valid plotly (the builders skip validation for speed; this test validates)."""

from __future__ import annotations

import plotly.graph_objects as go
import pytest

from armt_viz.viz import figures as F


@pytest.mark.parametrize("build", [
    lambda ds: F.timeline(ds, layer=1, segment=3, fact=2),
    lambda ds: F.layer_comparison(ds, segment=3),
    lambda ds: F.association_matrix(ds, 5, 1),
    lambda ds: F.write_events(ds, 5, 0),
    lambda ds: F.fact_lifecycle(ds, 2, 1, segment=5),
    lambda ds: F.stale_answers(ds, segment=5, fact=2),
], ids=["timeline", "layers", "assoc", "writes", "fact", "stale"])
def test_figure_is_valid_plotly(trace_writes, build):
    fig = build(trace_writes)
    go.Figure(fig.to_dict())  # validating constructor: raises on any invalid property
