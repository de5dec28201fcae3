"""Plotly figure builders for ARMT traces (DESIGN.md §6): the public surface of ``armt_viz.viz``.

Two layers:

* pure builders that take small, already-selected data and return a ``go.Figure`` (no Panel, no trace I/O):
  ``timeline_figure``, ``layer_comparison_figure``, ``assoc_figure``, ``write_events_figure``,
  ``fact_lifecycle_figure``, ``stale_answers_figure``;
* one-call conveniences over a trace Dataset for notebooks: ``timeline``, ``layer_comparison``,
  ``association_matrix``, ``write_events``, ``fact_lifecycle``, ``stale_answers``. They select with
  ``armt_viz.viz.data`` (lazily: only the needed slices are read) and call the builders.

Every axis title comes from the variable's ``long_name`` and ``units`` (``_style.axis_title``). All figures share
one template and the Okabe-Ito palette (``_style``).

Examples:
    >>> import armt_viz as av                                   # doctest: +SKIP
    >>> from armt_viz.viz import figures
    >>> ds = av.open_trace("runs/demo.zarr")
    >>> figures.timeline(ds, layer=0).show()
    >>> figures.association_matrix(ds, segment=100, layer=1).show()
"""

from __future__ import annotations

import json

import pandas as pd
import plotly.graph_objects as go
import xarray as xr

from . import data as _data
from ._style import PALETTE, TEMPLATE, axis_title
from .aggregate import aggregate_minmax
from .figures_facts import fact_lifecycle_figure, stale_answers_figure
from .figures_memory import assoc_figure, write_events_figure
from .figures_timeline import layer_comparison_figure, timeline_figure

__all__ = [
    "PALETTE", "TEMPLATE", "aggregate_minmax", "axis_title", "message_figure",
    "timeline_figure", "layer_comparison_figure", "assoc_figure", "write_events_figure",
    "fact_lifecycle_figure", "stale_answers_figure",
    "timeline", "layer_comparison", "association_matrix", "write_events", "fact_lifecycle", "stale_answers",
    "segment_size", "missing_probes", "missing_facts",
]

LAYER_COMPARISON_VARS = ("assoc_norm", "write_gate_mean", "correction_mean", "read_out_norm_mean")


def message_figure(title: str, message: str, height: int = 320) -> go.Figure:
    """An empty figure that says why a view has nothing to show (e.g. "needs a writes-level trace").

    ``message`` is shown as text: it may quote data (names, attributes, error texts), so it is escaped for plotly,
    which would otherwise read ``<a href>``, ``<b>`` and entities in it; long lines are wrapped so a narrow pane
    does not cut them off."""
    import html

    from ._style import finish, wrap

    fig = go.Figure()
    lines = str(message)[:1200].split("\n")
    message = "<br>".join(wrap(html.escape(line, quote=True), 56) for line in lines)
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14, color="#5F6368"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return finish(fig, title=title, height=height)


def missing_probes(probes: pd.DataFrame, sample: int = 0) -> str | None:
    """Why there are no recall outcomes to draw for ``sample`` (``data.probe_frame`` rows of every sample), or
    None when that sample has probes."""
    if probes.empty:
        return "This trace has no probes: record with probes at the queries."
    if (probes["sample"] == sample).any():
        return None
    return f"No probes in sample {sample}: none of its recalls was probed (this trace probes other samples)."


def missing_facts(ledger: pd.DataFrame | None, sample: int = 0) -> str:
    """Why no fact of ``sample`` can be followed: no task ledger in the trace, or none of its facts in that sample."""
    if ledger is None or ledger.empty:
        return "This trace has no task ledger: record a task stream (armt_viz.tasks) to follow facts."
    return f"No facts in sample {sample}: the task ledger has no rows for this sample."


def segment_size(ds: xr.Dataset) -> int | None:
    """Tokens per segment, from the model config attrs or the ``position`` dim."""
    try:
        size = json.loads(ds.attrs.get("armt_config", "{}")).get("segment_size")
    except (TypeError, ValueError):
        size = None
    return int(size) if size else (int(ds.sizes["position"]) if "position" in ds.sizes else None)


def timeline(ds: xr.Dataset, layer: int = 0, *, sample: int = 0, segment: int | None = None,
             fact: int | None = None, x_range=None, n_pixels: int = 800) -> go.Figure:
    """The run timeline of one layer in ``sample`` (see ``timeline_figure``), with that sample's recall outcomes
    and ``fact``'s events."""
    series = {n: _data.series(ds, n, layer if n != "segment_loss" else None, sample)
              for n in _data.TIMELINE_VARS if n in ds}
    ledger = _data.ledger_frame(ds)
    probes = _data.sample_probes(_data.probe_frame(ds, ledger), sample)
    events = _data.fact_events(ledger, fact, sample) if fact is not None else None
    return timeline_figure(series, x_range=x_range, n_pixels=n_pixels, segment=segment, probes=probes,
                           fact_events=events, fact=fact, subtitle=f"layer {layer}", chance=_data.probe_chance(ds))


def layer_comparison(ds: xr.Dataset, *, sample: int = 0, segment: int | None = None, x_range=None,
                     names=LAYER_COMPARISON_VARS) -> go.Figure:
    """Every layer side by side for a few per-segment variables (see ``layer_comparison_figure``)."""
    series = {n: _data.layer_series(ds, n, sample) for n in names if n in ds}
    return layer_comparison_figure(series, x_range=x_range, segment=segment)


def association_matrix(ds: xr.Dataset, segment: int, layer: int, *, sample: int = 0) -> go.Figure:
    """A and its spectrum after ``segment``'s write (reconstructed exactly with ``memory_at``)."""
    try:
        a, z, how = _data.memory_matrix(ds, segment, layer, sample)
    except _data.MemoryUnavailable as exc:
        return message_figure(f"Association matrix · segment {segment} · layer {layer}", str(exc))
    return assoc_figure(a, z, segment=segment, layer=layer, how=how)


def write_events(ds: xr.Dataset, segment: int, layer: int, *, sample: int = 0) -> go.Figure:
    """The write events of one segment and layer (see ``write_events_figure``)."""
    try:
        writes = _data.segment_writes(ds, segment, layer, sample)
    except _data.MemoryUnavailable as exc:
        return message_figure(f"Write events · segment {segment} · layer {layer}", str(exc))
    return write_events_figure(writes, segment=segment, layer=layer)


def fact_lifecycle(ds: xr.Dataset, fact: int, layer: int = 0, *, sample: int = 0, segment: int | None = None,
                   max_recalls: int = 24) -> go.Figure:
    """One fact's writes, overwrites, recalls and the attribution of its recalls (current/stale/other), in
    ``sample`` (each sample has its own stream and ledger)."""
    ledger = _data.ledger_frame(ds)
    if ledger is None:
        return message_figure(f"Fact {fact} · lifecycle", missing_facts(ledger, sample))
    probes = _data.probe_frame(ds, ledger)
    recalls = _data.fact_recalls(probes, fact, sample)
    attribution, message = _data.recall_attribution(ds, recalls, layer, max_recalls)
    return fact_lifecycle_figure(_data.fact_events(ledger, fact, sample), recalls, fact=fact,
                                 n_segments=_data.n_segments(ds), attribution=attribution, message=message,
                                 segment=segment, segment_size=segment_size(ds))


def stale_answers(ds: xr.Dataset, *, sample: int = 0, segment: int | None = None,
                  fact: int | None = None) -> go.Figure:
    """Stale answers over time (key x segment bucket) of the recalls probed in ``sample`` (fact ids are per
    sample)."""
    probes = _data.probe_frame(ds, _data.ledger_frame(ds))
    if (message := missing_probes(probes, sample)) is not None:
        return message_figure("Stale answers over time", message)
    return stale_answers_figure(_data.sample_probes(probes, sample), n_segments=_data.n_segments(ds),
                                segment=segment, fact=fact, chance=_data.probe_chance(ds))
