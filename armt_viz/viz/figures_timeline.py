"""The run timeline and the layer comparison: per-segment series over the whole run (DESIGN.md §6).

Every series goes through ``aggregate_minmax`` for the visible x-range before it reaches the figure: a band
from the bucket minimum to the bucket maximum (so a one-segment spike stays visible at any zoom) and a line
through the bucket means. Only these envelopes are serialized; zooming calls the builder again with the new
``x_range`` (the dashboard does this on plotly's relayout event).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import xarray as xr

from ._spec import FigureSpec
from ._style import EVENT_STYLE, OUTCOME_COLORS, PALETTE, axis_title
from .aggregate import aggregate_minmax

__all__ = ["timeline_figure", "layer_comparison_figure", "envelope_traces"]

SEGMENT_TITLE = "segment index"


def _rgba(hex_color: str, alpha: float) -> str:
    h = hex_color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def envelope_traces(da: xr.DataArray, *, x_range=None, n_pixels: int = 800, color: str = PALETTE[0],
                    name: str | None = None, legend: bool = False, band: bool = True,
                    band_alpha: float = 0.25) -> list[dict]:
    """Plotly trace dicts of one series' min/max envelope (a filled band) and bucket means (a line)."""
    env = aggregate_minmax(da, x_range, n_pixels)
    dim = da.dims[0]
    x = env[dim].values
    name = name or str(da.name)
    traces = []
    aggregated = bool(env.attrs["aggregated"])
    if band and aggregated:
        traces.append(dict(type="scatter", x=x, y=env["max"].values, mode="lines",
                           line=dict(width=0.6, color=color), hoverinfo="skip", showlegend=False,
                           legendgroup=name, name=f"{name} max"))
        traces.append(dict(type="scatter", x=x, y=env["min"].values, mode="lines",
                           line=dict(width=0.6, color=color), fill="tonexty", fillcolor=_rgba(color, band_alpha),
                           hoverinfo="skip", showlegend=False, legendgroup=name, name=f"{name} min"))
    custom = np.stack([env["min"].values, env["max"].values, env["count"].values], axis=-1)
    hover = (f"{SEGMENT_TITLE} %{{x:.0f}}<br>mean %{{y:.4g}}<br>min %{{customdata[0]:.4g}} · "
             f"max %{{customdata[1]:.4g}}<br>%{{customdata[2]}} segments<extra>{name}</extra>"
             if aggregated else f"{SEGMENT_TITLE} %{{x:.0f}}<br>%{{y:.4g}}<extra>{name}</extra>")
    traces.append(dict(type="scatter", x=x, y=env["mean"].values, mode="lines", line=dict(width=1.4, color=color),
                       customdata=custom, hovertemplate=hover, name=name, legendgroup=name, showlegend=legend))
    return traces


def _outcome_bins(probes: pd.DataFrame, lo: float, hi: float, n_bins: int) -> tuple[np.ndarray, dict, float]:
    edges = np.linspace(lo, hi + 1, n_bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    counts = {}
    for outcome in OUTCOMES:
        seg = probes.loc[probes["outcome"] == outcome, "segment"].to_numpy()
        counts[outcome] = np.histogram(seg, bins=edges)[0]
    return centres, counts, float(edges[1] - edges[0])


OUTCOMES = ("correct", "stale", "other", "wrong")


def timeline_figure(series: Mapping[str, xr.DataArray], *, x_range: tuple[float, float] | None = None,
                    n_pixels: int = 800, segment: int | None = None, probes: pd.DataFrame | None = None,
                    fact_events: pd.DataFrame | None = None, fact: int | None = None,
                    stale_mass: xr.DataArray | None = None, chance: pd.DataFrame | None = None,
                    title: str = "Run timeline",
                    subtitle: str | None = None, height: int | None = None) -> go.Figure:
    """The whole run at a glance, one row per series, x = segment, with spikes kept by min/max envelopes.

    Args:
        series: name -> 1-D DataArray over ``segment`` (full resolution; aggregated here for ``x_range``).
            Each row is titled from its array's ``long_name`` and ``units`` (``_style.row_titles`` reads them).
        x_range: visible ``(lo, hi)`` segment range (None: everything).
        n_pixels: pixel columns of the plot (buckets per series).
        segment: the selected segment (a vertical rule on every row).
        probes: ``data.probe_frame`` output; adds a row of recall outcomes per bucket.
        fact_events: ``data.fact_events`` of the selected ``fact``; drawn as markers on the outcomes row.
        stale_mass: optional 1-D series (stale mass of the memory) added as a row.
        chance: ``data.probe_chance``; adds a grey line on the outcomes row at the number of correct recalls a
            uniform guess would get per bucket (compare it with the height of the green bars).
    """
    rows = dict(series)
    if stale_mass is not None:
        rows["stale_mass"] = stale_mass
    has_events = bool((probes is not None and len(probes)) or (fact_events is not None and len(fact_events)))
    n_rows = max(len(rows) + (1 if has_events else 0), 1)
    heights = [1.0] * len(rows) + ([1.3] if has_events else [])
    spec = FigureSpec(n_rows, 1, row_heights=heights or None, shared_x=True,
                      vertical_spacing=min(0.3 / n_rows, 0.08))
    first = next(iter(rows.values()), None)
    lo_all, hi_all = ((float(first["segment"].values[0]), float(first["segment"].values[-1]))
                      if first is not None and first.size else (0.0, 1.0))
    lo, hi = x_range if x_range is not None else (lo_all, hi_all)
    for i, (name, da) in enumerate(rows.items(), start=1):
        color = PALETTE[(i - 1) % len(PALETTE)]
        for tr in envelope_traces(da, x_range=x_range, n_pixels=n_pixels, color=color, name=name):
            spec.add(tr, i)
        spec.row_title(axis_title(da, name), i)
    if has_events:
        r = n_rows
        top = 1.0
        if probes is not None and len(probes):
            vis = probes[(probes["segment"] >= lo) & (probes["segment"] <= hi)]
            n_bins = int(max(10, min(n_pixels // 4, 200, hi - lo + 1)))
            centres, counts, width = _outcome_bins(vis, lo, hi, n_bins)
            for outcome in OUTCOMES:
                if outcome == "other" and not counts[outcome].any():
                    continue
                spec.add(dict(type="bar", x=centres, y=counts[outcome], width=width, name=f"recall {outcome}",
                              meta={"role": "rate", "outcome": outcome},
                              marker=dict(color=OUTCOME_COLORS[outcome], line=dict(width=0)), legendgroup="outcome",
                              hovertemplate=f"%{{y}} {outcome} recalls<extra>segments near %{{x:.0f}}</extra>"), r)
            top = max(1.0, float(max(c.max() if len(c) else 0 for c in counts.values())))
            if chance is not None and len(chance) and len(vis):
                p = chance.set_index("probe").reindex(vis["probe"].to_numpy())["correct"].to_numpy()
                ok = np.isfinite(p)
                edges = np.linspace(lo, hi + 1, n_bins + 1)
                expect = np.histogram(vis["segment"].to_numpy()[ok], bins=edges, weights=p[ok])[0]
                spec.add(dict(type="scatter", x=centres, y=expect, mode="lines", name="correct by chance",
                              meta={"role": "chance", "outcome": "correct"}, legendgroup="outcome",
                              line=dict(color="#3C4043", width=1.3, dash="dot", shape="hvh"),
                              hovertemplate="%{y:.1f} correct expected from a uniform guess"
                                            "<extra>segments near %{x:.0f}</extra>"), r)
        label = ("probed recalls per bucket, by outcome [count]" if probes is not None and len(probes)
                 else "fact events")
        spec.row_title(label + (f" · events of fact {fact}" if fact is not None else ""), r)
        if fact_events is not None and len(fact_events):
            ev = fact_events[(fact_events["segment"] >= lo) & (fact_events["segment"] <= hi)]
            for kind in ("write", "overwrite", "delete"):
                sel = ev[ev["event"] == kind]
                if sel.empty:
                    continue
                symbol, color, text = EVENT_STYLE[kind]
                max_marks = max(20, n_pixels // 8)
                if len(sel) > max_marks:  # too many to tell apart: one mark per bucket, sized by its count
                    edges = np.linspace(lo, hi + 1, max_marks + 1)
                    col = np.clip(np.searchsorted(edges, sel["segment"].to_numpy(), side="right") - 1, 0,
                                  max_marks - 1)
                    count = np.bincount(col, minlength=max_marks)
                    keep = count > 0
                    mid = 0.5 * (edges[1:] + edges[:-1])[keep]
                    spec.add(dict(type="scatter", x=mid, y=np.full(len(mid), top * 1.12), mode="markers",
                                  name=f"fact {fact}: {text} (per bucket)", customdata=count[keep],
                                  marker=dict(symbol=symbol, color=color, line=dict(width=1.2, color=color),
                                              size=np.clip(6 + 2 * np.sqrt(count[keep]), 6, 16)),
                                  hovertemplate=f"%{{customdata}} {text}s of fact {fact}<br>segments near %{{x:.0f}}"
                                                "<extra>zoom in to see each</extra>"), r)
                    continue
                spec.add(dict(type="scatter", x=sel["segment"].to_numpy(), y=np.full(len(sel), top * 1.12),
                              mode="markers", name=f"fact {fact}: {text}",
                              marker=dict(symbol=symbol, size=9, color=color, line=dict(width=1.2, color=color)),
                              customdata=sel[["version", "value"]].to_numpy(),
                              hovertemplate=f"fact {fact} {text}<br>segment %{{x}}<br>version %{{customdata[0]}}"
                                            " · value %{customdata[1]}<extra></extra>"), r)
    spec.all_xaxes(range=[lo - 0.5, hi + 0.5])
    spec.xaxis(n_rows, 1, title=dict(text=SEGMENT_TITLE))
    if segment is not None:
        for i in range(1, n_rows + 1):
            spec.vline(segment, i)
    return spec.figure(title=title, subtitle=subtitle, height=height or 110 + 118 * n_rows,
                       barmode="stack", bargap=0, hovermode="closest", margin=dict(l=56, t=96),
                       legend=dict(traceorder="normal", yref="container", y=0.985, yanchor="top", x=1.0,
                                   xanchor="right"))


def layer_comparison_figure(series: Mapping[str, xr.DataArray], *, x_range: tuple[float, float] | None = None,
                            n_pixels: int = 400, segment: int | None = None, title: str = "Layer comparison",
                            subtitle: str | None = None, height: int | None = None) -> go.Figure:
    """One row per variable, one line per layer (bucket means with a faint min/max band).

    Args:
        series: name -> DataArray ``(layer, segment)``; rows titled from its ``long_name`` and ``units``.
    """
    names = list(series)
    n_rows = max(len(names), 1)
    spec = FigureSpec(n_rows, 1, shared_x=True, vertical_spacing=min(0.3 / n_rows, 0.08))
    for i, name in enumerate(names, start=1):
        da = series[name]
        layers = da["layer"].values if "layer" in da.coords else np.arange(da.sizes["layer"])
        for j, layer in enumerate(layers):
            one = da.isel(layer=j).rename(f"layer {int(layer)}")
            one.attrs = dict(da.attrs)
            # bucket means only: min/max bands of several layers overlap unreadably (the timeline keeps them)
            for tr in envelope_traces(one, x_range=x_range, n_pixels=n_pixels, color=PALETTE[j % len(PALETTE)],
                                      legend=(i == 1), band=False):
                spec.add(tr, i)
        spec.row_title(axis_title(da, name), i)
    spec.xaxis(n_rows, 1, title=dict(text=SEGMENT_TITLE))
    if x_range is not None:
        spec.all_xaxes(range=[x_range[0] - 0.5, x_range[1] + 0.5])
    if segment is not None:
        for i in range(1, n_rows + 1):
            spec.vline(segment, i)
    return spec.figure(title=title, subtitle=subtitle, height=height or 110 + 125 * n_rows,
                       margin=dict(l=56, t=96))
