"""Two runs side by side (issue 15): per-segment statistics overlaid, A − B, and answer classes with chance.

``compare_figure`` is the pure builder (small, already-selected inputs); ``compare(ds_a, ds_b)`` is the notebook
convenience over two traces (``av.compare``). Runs are aligned by segment index: the overlay rows show each run
over its own length, the difference column only where both runs have the segment.

Layout: one row per statistic (left: A and B overlaid, bucket means with a faint min/max band; right: A − B, bucket
means of the per-segment difference), and a last row of answer classes: the share of probed recalls that returned
the current value and an older value per time bucket for each run, with the chance level of each (grey).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import xarray as xr

from . import data as _data
from ._spec import FigureSpec
from ._style import OUTCOME_COLORS, axis_title
from .figures_timeline import SEGMENT_TITLE, envelope_traces

__all__ = ["compare_figure", "compare", "COMPARE_VARS", "RUN_COLORS"]

COMPARE_VARS = ("assoc_norm", "read_out_norm_mean", "write_gate_mean", "correction_mean")
RUN_COLORS = ("#0072B2", "#D55E00")  # A, B


def _bucket_rates(probes: pd.DataFrame | None, chance: pd.DataFrame | None, edges: np.ndarray, outcome: str):
    """Per bucket: share of answered recalls with ``outcome``, and the mean chance of it (NaN where none)."""
    n = len(edges) - 1
    if probes is None or probes.empty:
        return np.full(n, np.nan), np.full(n, np.nan)
    linked = probes[(probes["fact_id"] >= 0) & probes["outcome"].isin(["correct", "stale", "other", "wrong"])]
    col = np.clip(np.searchsorted(edges, linked["segment"].to_numpy(), side="right") - 1, 0, n - 1)
    total = np.bincount(col, minlength=n)
    hits = np.bincount(col[(linked["outcome"] == outcome).to_numpy()], minlength=n)
    rate = np.where(total > 0, hits / np.maximum(total, 1), np.nan)
    if chance is None or chance.empty:
        return rate, np.full(n, np.nan)
    p = chance.set_index("probe").reindex(linked["probe"].to_numpy())[outcome].to_numpy()
    ok = np.isfinite(p)
    num = np.bincount(col[ok], weights=p[ok], minlength=n)
    den = np.bincount(col[ok], minlength=n)
    return rate, np.where(den > 0, num / np.maximum(den, 1), np.nan)


def _bucket_mean(da: xr.DataArray, edges: np.ndarray) -> np.ndarray:
    x = np.asarray(da["segment"].values, dtype=float)
    y = np.asarray(da.values, dtype=float)
    n = len(edges) - 1
    col = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n - 1)
    ok = np.isfinite(y)
    s = np.bincount(col[ok], weights=y[ok], minlength=n)
    c = np.bincount(col[ok], minlength=n)
    return np.where(c > 0, s / np.maximum(c, 1), np.nan)


def compare_figure(series_a: Mapping[str, xr.DataArray], series_b: Mapping[str, xr.DataArray], *,
                   probes_a: pd.DataFrame | None = None, probes_b: pd.DataFrame | None = None,
                   chance_a: pd.DataFrame | None = None, chance_b: pd.DataFrame | None = None,
                   labels: Sequence[str] = ("A", "B"), n_bins: int = 120, segment: int | None = None,
                   title: str = "Compare two runs", subtitle: str | None = None) -> go.Figure:
    """Statistics of two runs overlaid and differenced, aligned by segment index, plus answer classes.

    Args:
        series_a, series_b: name -> 1-D DataArray over ``segment`` (same names drawn in the same row; a name only
            one run has is drawn for that run, without a difference).
        probes_a, probes_b: ``data.probe_frame`` rows of each run (one sample); adds the answer-class row.
        chance_a, chance_b: ``data.probe_chance`` of each run (grey chance lines in the answer-class row).
        labels: names of the two runs in the legend.
        n_bins: buckets of the difference and answer-class rows.
    """
    names = [n for n in dict.fromkeys([*series_a, *series_b])]
    has_answers = any(p is not None and len(p) for p in (probes_a, probes_b))
    n_rows = max(len(names) + (1 if has_answers else 0), 1)
    spec = FigureSpec(n_rows, 2, col_widths=[0.62, 0.38], shared_x=True, horizontal_spacing=0.09,
                      vertical_spacing=min(0.3 / n_rows, 0.07))
    ends = [float(d["segment"].values[-1]) for s in (series_a, series_b) for d in s.values() if d.size]
    hi_all = max(ends) if ends else 1.0
    common = min((float(s[n]["segment"].values[-1]) for n in names for s in (series_a, series_b)
                  if n in s and s[n].size), default=hi_all)
    edges = np.linspace(0, hi_all + 1, int(max(2, min(n_bins, hi_all + 1))) + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for i, name in enumerate(names, start=1):
        pair = [s.get(name) for s in (series_a, series_b)]
        for k, da in enumerate(pair):
            if da is None or not da.size:
                continue
            one = da.rename(labels[k])
            one.attrs = dict(da.attrs)
            for tr in envelope_traces(one, n_pixels=400, color=RUN_COLORS[k], legend=(i == 1), band_alpha=0.12):
                tr["legendgroup"] = f"run{k}"
                spec.add(tr, i, 1)
        spec.row_title(axis_title(next(d for d in pair if d is not None), name), i, 1)
        if all(d is not None and d.size for d in pair):
            a, b = (d.sel(segment=d["segment"] <= common) for d in pair)
            aa, bb = xr.align(a, b, join="inner")
            diff = (aa - bb).rename("A − B")
            mean = _bucket_mean(diff, edges)
            spec.add(dict(type="scatter", x=centres, y=mean, mode="lines", name=f"{name}: A − B",
                          showlegend=False, line=dict(color="#3C4043", width=1.3),
                          hovertemplate=f"{labels[0]} − {labels[1]}: %{{y:.4g}}<extra>segments near %{{x:.0f}}"
                                        "</extra>"), i, 2)
            spec.hline(0, i, 2, color="#9AA0A6", width=1, dash="dot")
        else:
            spec.note("only one run has it", i, 2)
    if has_answers:
        r = n_rows
        dash = ("solid", "dash")
        diff_rates = []
        for k, (probes, chance) in enumerate(((probes_a, chance_a), (probes_b, chance_b))):
            for outcome in ("correct", "stale"):
                rate, ch = _bucket_rates(probes, chance, edges, outcome)
                color = OUTCOME_COLORS[outcome]
                spec.add(dict(type="scatter", x=centres, y=rate, mode="lines", name=f"{labels[k]} {outcome}",
                              meta={"role": "rate", "outcome": outcome},
                              legendgroup=f"run{k}", showlegend=False, line=dict(color=color, width=1.5,
                                                                                  dash=dash[k]),
                              hovertemplate=f"{labels[k]}: {outcome} %{{y:.1%}}<extra>segments near %{{x:.0f}}"
                                            "</extra>"), r, 1)
                spec.add(dict(type="scatter", x=centres, y=ch, mode="lines", name=f"chance: {labels[k]} {outcome}",
                              meta={"role": "chance", "outcome": outcome}, showlegend=False,
                              line=dict(color="#9AA0A6", width=1.1, dash=dash[k]),
                              hovertemplate=f"{labels[k]}: chance of {outcome} %{{y:.1%}}<extra>uniform guess"
                                            "</extra>"), r, 1)
                if outcome == "correct":
                    diff_rates.append(rate)
        spec.row_title("answer classes: share of recalls [%] · <span style='color:#009E73'>━</span> current · "
                       "<span style='color:#D55E00'>━</span> older value · grey: chance · solid A, dashed B", r, 1)
        spec.yaxis(r, 1, tickformat=".0%", rangemode="tozero")
        if len(diff_rates) == 2:
            spec.add(dict(type="scatter", x=centres, y=diff_rates[0] - diff_rates[1], mode="lines",
                          name="correct: A − B", showlegend=False, line=dict(color="#009E73", width=1.3),
                          hovertemplate="correct share, A − B: %{y:.1%}<extra></extra>"), r, 2)
            spec.hline(0, r, 2, color="#9AA0A6", width=1, dash="dot")
            spec.yaxis(r, 2, tickformat=".0%")
    for c in (1, 2):
        spec.xaxis(n_rows, c, title=dict(text=SEGMENT_TITLE))
    spec.all_xaxes(range=[-0.5, hi_all + 0.5])
    (x0, x1), (_, y1) = spec.domains[(1, 2)]
    spec.annotations.append(dict(text="A − B (segments both runs have)", x=x0, y=1.0,
                                 xref="paper", yref="paper", xanchor="left", yanchor="bottom", yshift=18,
                                 showarrow=False, font=dict(size=11.5, color="#3C4043")))
    if segment is not None:
        for i in range(1, n_rows + 1):
            spec.vline(segment, i, 1)
    return spec.figure(title=title, subtitle=subtitle or f"{labels[0]} (blue) vs {labels[1]} (orange), aligned by "
                       "segment index", height=130 + 130 * n_rows, margin=dict(l=56, t=110, r=24),
                       legend=dict(yref="container", y=0.985, yanchor="top", x=1.0, xanchor="right"))


def compare(ds_a: xr.Dataset, ds_b: xr.Dataset, *, layer: int = 0, sample: int = 0,
            labels: Sequence[str] = ("A", "B"), names: Sequence[str] = COMPARE_VARS, stale: bool = False,
            n_bins: int = 120) -> go.Figure:
    """Two traces side by side (see ``compare_figure``): ``names`` of ``layer`` overlaid and differenced, and
    the answer classes of ``sample`` with their chance levels. ``stale=True`` adds the stale mass row of each
    run (``ds.armt.stale_mass``; it replays the memory, so it is slow on long runs)."""
    def pick(ds):
        out = {n: _data.series(ds, n, layer if "layer" in ds[n].dims else None, sample) for n in names if n in ds}
        if stale:
            s, _note = _data.stale_mass_series(ds, layer, sample)
            if s is not None:
                out["stale_mass"] = s
        return out

    def answers(ds):
        led = _data.ledger_frame(ds)
        probes = _data.probe_frame(ds, led)
        return _data.sample_probes(probes, sample), _data.probe_chance(ds)

    pa, ca = answers(ds_a)
    pb, cb = answers(ds_b)
    return compare_figure(pick(ds_a), pick(ds_b), probes_a=pa, probes_b=pb, chance_a=ca, chance_b=cb,
                          labels=labels, n_bins=n_bins, subtitle=f"layer {layer} · sample {sample}")
