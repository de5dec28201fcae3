"""Per-write view vs origin view of one read (issue 13; DESIGN.md §4 "Stale keys must respect the delta rule").

Both panels split the same read-out r of one probe, as shares along r (``<c, r>/|r|``, summing to |r|), by the
segment that wrote them and the status of that segment relative to the fact the probe asks about:

* per write (``attribute_read(by="write")``): c_w = (q.phi_w) u_w / D, what each write *added*. A rewrite's
  u = beta (v - v-bar) carries minus the old value, so the old version's write and the rewrite show large bars of
  opposite sign that cancel;
* per origin (``attribute_read(by="origin")``): c_o = (q.s_o) beta_o v_o / D, what each write's value still
  contributes after later writes erased along its key: the net.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from ._style import finish

__all__ = ["write_vs_origin_figure", "ORIGIN_COLORS"]

ORIGIN_COLORS = {"current": "#0072B2", "superseded": "#D55E00", "stale": "#D55E00", "other": "#B8B8B8",
                 "no-fact": "#E0E0E0"}


def _by_segment(shares: xr.DataArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segments, summed share per segment, status per segment) of a per-write or per-origin DataArray."""
    seg = np.asarray(shares["write_segment"].values)
    val = np.asarray(shares.values, dtype=np.float64)
    status = (np.asarray(shares["status"].values, dtype=object) if "status" in shares.coords
              else np.full(len(seg), "other", dtype=object))
    segs = np.unique(seg)
    total = np.array([val[seg == s].sum() for s in segs])
    st = np.array([status[seg == s][0] for s in segs], dtype=object)
    return segs, total, st


def write_vs_origin_figure(per_write: xr.DataArray, per_origin: xr.DataArray, *, height: int = 520,
                           title: str | None = None) -> go.Figure:
    """Two stacked bar panels over write segments: per-write shares (top) and per-origin shares (bottom).

    Args:
        per_write: ``attribute_read(ds, probe, layer)`` (dim ``write``, coords write_segment, status).
        per_origin: ``attribute_read(ds, probe, layer, by="origin")`` (same layout, origin statuses).
    Units: shares of |r| (each panel sums to 1). Bars are colored by status; the legend lists each status once.
    """
    norm = float(per_origin.attrs.get("read_out_norm", per_write.attrs.get("read_out_norm", 1.0))) or 1.0
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12, subplot_titles=(
        "per write: what each write added, (q·φ_w) u_w / D  (cancelling bars)",
        "per origin: what each write's value still contributes, (q·s_o) β_o v_o / D  (the net)"))
    seen = set()
    summary = {}
    for row, (shares, view) in enumerate(((per_write, "write"), (per_origin, "origin")), start=1):
        segs, total, status = _by_segment(shares)
        summary[view] = {s: float(total[status == s].sum() / norm) for s in np.unique(status)}
        for s in ("current", "stale", "superseded", "other", "no-fact"):
            mask = status == s
            if not mask.any():
                continue
            name = "superseded / stale" if s in ("stale", "superseded") else s
            fig.add_trace(go.Bar(
                x=segs[mask], y=total[mask] / norm, name=name, legendgroup=name, showlegend=name not in seen,
                marker_color=ORIGIN_COLORS[s],
                hovertemplate=f"{view} view<br>segment %{{x}}<br>{s}: %{{y:.3f}} of |r|<extra></extra>"),
                row=row, col=1)
            seen.add(name)
    fig.update_yaxes(title_text="share of |r|", row=1, col=1)
    fig.update_yaxes(title_text="share of |r|", row=2, col=1)
    fig.update_xaxes(title_text="write segment", row=2, col=1)
    fig.update_layout(barmode="relative", bargap=0.15, margin=dict(t=120))
    sw, so = summary["write"], summary["origin"]
    sub = ("stale/superseded share: per write {:.2f}, per origin {:.2f} of |r|; both panels sum to 1"
           .format(sw.get("stale", 0.0) + sw.get("superseded", 0.0), so.get("superseded", 0.0)))
    fig = finish(fig, title=title or f"One read, two views (probe {per_origin.attrs.get('probe', '?')}, "
                 f"layer {per_origin.attrs.get('layer', '?')})", height=height, subtitle=sub)
    fig.layout.meta = {"summary": summary}
    return fig
