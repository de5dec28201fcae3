"""The memory at one segment and layer: the association matrix with its spectrum, and the segment's writes.

The association matrix A (key_feature x hidden) is reconstructed on demand by the caller
(``armt_viz.trace.memory_at``) and passed in; the builder only draws. Matrices larger than ``max_cells`` are
pooled block-wise by the entry of largest magnitude (sign kept), so a large A never ships whole and its
strongest associations stay visible. The spectrum (singular values of the full A, computed here) and the
effective rank exp(H(sigma / sum sigma)) describe how much of the memory is in use (ARMT paper §3, capacity).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from ._spec import FigureSpec
from ._style import DIVERGING, PALETTE, axis_title

__all__ = ["assoc_figure", "write_events_figure", "pool_maxabs", "DIM_TITLES"]

DIM_TITLES = {
    "key_feature": "key feature (DPFP index)",
    "hidden": "hidden dimension",
    "mem_token": "memory token",
    "key_dim": "key dimension (before the feature map)",
    "rank": "singular value index",
    "layer": "layer",
    "segment": "segment index",
}


def pool_maxabs(values: np.ndarray, max_rows: int, max_cols: int) -> tuple[np.ndarray, int, int]:
    """Pool a 2-D array in blocks to at most (max_rows, max_cols), keeping each block's largest-|x| entry.

    Returns the pooled array and the block sizes (rows, cols); blocks of 1 mean no pooling.
    """
    n, m = values.shape
    br, bc = max(1, -(-n // max_rows)), max(1, -(-m // max_cols))
    if br == 1 and bc == 1:
        return values, 1, 1
    pad = np.full((-(-n // br) * br, -(-m // bc) * bc), 0.0)
    pad[:n, :m] = values
    blocks = pad.reshape(pad.shape[0] // br, br, pad.shape[1] // bc, bc).transpose(0, 2, 1, 3)
    flat = blocks.reshape(blocks.shape[0], blocks.shape[1], -1)
    idx = np.abs(flat).argmax(-1)
    return np.take_along_axis(flat, idx[..., None], -1)[..., 0], br, bc


def _log_ticks(values: np.ndarray) -> list[float]:
    """1-2-5 ticks spanning the positive ``values`` (plotly's log ticks are cluttered over short ranges)."""
    pos = values[values > 0]
    if not pos.size:
        return []
    lo, hi = np.floor(np.log10(pos.min())), np.ceil(np.log10(pos.max()))
    ticks = [m * 10.0 ** e for e in np.arange(lo, hi + 1) for m in (1, 2, 5)]
    inside = [t for t in ticks if pos.min() / 1.5 <= t <= pos.max() * 1.5]
    return inside if len(inside) <= 8 else [t for t in inside if str(t).lstrip("0.").startswith("1")]


def _effective_rank(sv: np.ndarray) -> float:
    p = sv[sv > 0] / sv[sv > 0].sum() if np.any(sv > 0) else np.ones(1)
    return float(np.exp(-(p * np.log(p)).sum()))


def assoc_figure(assoc: xr.DataArray, normalizer: xr.DataArray | None = None, *, segment: int, layer: int,
                 how: str | None = None, max_cells: tuple[int, int] = (256, 256), title: str | None = None,
                 height: int = 600) -> go.Figure:
    """Heatmap of A (key_feature x hidden) at ``segment``/``layer`` above its singular-value spectrum.

    Args:
        assoc: DataArray ``(key_feature, hidden)``; the heatmap's title is its long_name [units].
        normalizer: optional ``(key_feature,)``; its norm goes in the subtitle.
        how: how A was obtained (shown in the subtitle, e.g. "reconstructed (keyframe + writes)").
        max_cells: the heatmap is pooled (signed max-|x|) down to at most this many rows and columns.
    """
    a = np.asarray(assoc.transpose("key_feature", "hidden").values, dtype=np.float64)
    sv = np.linalg.svd(a, compute_uv=False) if a.size else np.zeros(0)
    shown = sv[sv > sv.max() * 1e-6] if sv.size and sv.max() > 0 else sv[:0]  # numerically zero ones are dropped
    pooled, br, bc = pool_maxabs(a, *max_cells)
    vmax = float(np.abs(a).max()) if a.size and np.abs(a).max() > 0 else 1.0
    spec = FigureSpec(2, 1, row_heights=[0.7, 0.3], vertical_spacing=0.16)
    spec.row_title(axis_title(assoc, "A"), 1)
    spec.row_title(f"singular values of A ({shown.size} of {sv.size} above 10⁻⁶ σ<sub>max</sub>)", 2)
    top = spec.domains[(1, 1)][1]
    spec.add(dict(type="heatmap", z=pooled, x=np.arange(pooled.shape[1]) * bc, y=np.arange(pooled.shape[0]) * br,
                  zmin=-vmax, zmax=vmax, zmid=0, colorscale=DIVERGING,
                  colorbar=dict(title=dict(text="A", side="right"), y=top[1], yanchor="top",
                                len=top[1] - top[0], thickness=10),
                  hovertemplate="key feature %{y}<br>hidden %{x}<br>A %{z:.4g}<extra></extra>"), 1)
    spec.yaxis(1, 1, title=dict(text=DIM_TITLES["key_feature"]), autorange="reversed")
    spec.xaxis(1, 1, title=dict(text=DIM_TITLES["hidden"]))
    spec.add(dict(type="scatter", x=np.arange(1, shown.size + 1), y=shown, mode="lines+markers",
                  line=dict(color=PALETTE[0], width=1.5), marker=dict(size=4), name="σ", showlegend=False,
                  hovertemplate="σ<sub>%{x}</sub> = %{y:.4g}<extra></extra>"), 2)
    spec.yaxis(2, 1, type="log", tickvals=_log_ticks(shown), title=dict(text="σ"))
    spec.xaxis(2, 1, title=dict(text=DIM_TITLES["rank"]))
    parts = [f"‖A‖<sub>F</sub> = {np.linalg.norm(a):.3g}", f"effective rank {_effective_rank(sv):.1f} of {sv.size}"]
    if normalizer is not None:
        parts.append(f"‖z‖ = {float(np.linalg.norm(np.asarray(normalizer.values))):.3g}")
    if br > 1 or bc > 1:
        parts.append(f"pooled {br}×{bc} (max |A|)")
    subtitle = " · ".join(parts) + (f"<br>{how}" if how else "")
    return spec.figure(title=title or f"Association matrix · segment {segment} · layer {layer}",
                       subtitle=subtitle, height=height, margin=dict(l=70, r=24, t=110, b=56))


def write_events_figure(writes: xr.Dataset, *, segment: int, layer: int, title: str | None = None,
                        height: int = 640) -> go.Figure:
    """The writes of one segment and layer, one row per quantity over the memory tokens.

    Rows: write gate β, normalizer correction γ (per head), norms of the written delta u and of the old value
    v̄ read back at the key, and the write key (before the feature map) as a heatmap. Row titles come from the
    variables' long_name and units.

    Args:
        writes: Dataset over ``mem_token`` with ``write_gate``, ``write_correction`` (mem_token, head),
            ``write_delta`` (mem_token, hidden), optionally ``write_prev_value_norm`` and ``write_key``
            (mem_token, key_dim); e.g. ``data.segment_writes``.
    """
    mem = np.arange(writes.sizes["mem_token"])
    has_key = "write_key" in writes
    gate, corr, delta = writes["write_gate"], writes["write_correction"], writes["write_delta"]
    n_rows = 4 if has_key else 3
    spec = FigureSpec(n_rows, 1, row_heights=[1, 1, 1, 1.5][:n_rows], vertical_spacing=0.125)
    spec.add(dict(type="bar", x=mem, y=np.asarray(gate.values), marker_color=PALETTE[0], name="β",
                  showlegend=False, hovertemplate="memory token %{x}<br>β = %{y:.3f}<extra></extra>"), 1)
    spec.row_title(axis_title(gate), 1)
    spec.yaxis(1, 1, range=[0, 1.02], nticks=3)
    heads = corr.sizes.get("head", 1)
    for h in range(heads):
        vals = corr.isel(head=h).values if "head" in corr.dims else corr.values
        spec.add(dict(type="bar", x=mem, y=np.asarray(vals), marker_color=PALETTE[(1 + h) % len(PALETTE)],
                      name=f"γ head {h}", showlegend=heads > 1,
                      hovertemplate=f"memory token %{{x}}<br>head {h}: γ = %{{y:.3f}}<extra></extra>"), 2)
    spec.row_title(axis_title(corr), 2)
    spec.yaxis(2, 1, rangemode="tozero", nticks=3)
    norms = np.linalg.norm(np.asarray(delta.values, dtype=np.float64), axis=-1)
    spec.add(dict(type="bar", x=mem, y=norms, marker_color=PALETTE[2], name="‖u‖", showlegend=False,
                  hovertemplate="memory token %{x}<br>‖u‖ = %{y:.4g}<extra></extra>"), 3)
    if "write_prev_value_norm" in writes:
        spec.add(dict(type="scatter", x=mem, y=np.asarray(writes["write_prev_value_norm"].values), mode="markers",
                      name="‖v̄‖", showlegend=False, marker=dict(symbol="diamond", size=9, color=PALETTE[3]),
                      hovertemplate="memory token %{x}<br>‖v̄‖ = %{y:.4g}<extra></extra>"), 3)
    spec.row_title(f"<span style='color:{PALETTE[2]}'>▮</span> norm of the {axis_title(delta)}<br>"
                   f"<span style='color:{PALETTE[3]}'>◆</span> norm of the old value v̄ read at the write key", 3)
    spec.yaxis(3, 1, rangemode="tozero", nticks=3)
    if has_key:
        key = writes["write_key"].transpose("mem_token", "key_dim")
        values = np.asarray(key.values, dtype=np.float64)
        kmax = float(np.abs(values).max()) or 1.0
        dom = spec.domains[(4, 1)][1]
        spec.add(dict(type="heatmap", z=values.T, x=mem, y=np.arange(key.sizes["key_dim"]), colorscale=DIVERGING,
                      zmid=0, zmin=-kmax, zmax=kmax,
                      colorbar=dict(title=dict(text="key", side="right"), len=dom[1] - dom[0], y=dom[0],
                                    yanchor="bottom", thickness=10),
                      hovertemplate="memory token %{x}<br>key dim %{y}<br>%{z:.3g}<extra></extra>"), 4)
        spec.row_title(axis_title(writes["write_key"]), 4)
        spec.yaxis(4, 1, title=dict(text="key dim"), autorange="reversed")
    for r in range(1, n_rows + 1):
        spec.xaxis(r, 1, dtick=1 if len(mem) <= 32 else None, range=[-0.5, len(mem) - 0.5])
    spec.xaxis(n_rows, 1, title=dict(text=DIM_TITLES["mem_token"]))
    return spec.figure(title=title or f"Write events · segment {segment} · layer {layer}", height=height,
                       subtitle=f"{len(mem)} memory tokens write into A with gate β and correction γ",
                       bargap=0.3, margin=dict(l=64, r=24, t=96, b=56),
                       legend=dict(x=1.0, xanchor="right", y=spec.domains[(2, 1)][1][1], yanchor="bottom",
                                   font=dict(size=10.5), bgcolor="rgba(255,255,255,0)"))
