"""Facts over time: one fact's lifecycle with the attribution of each recall, and stale answers (key x time).

Lifecycle (DESIGN.md §4, "Stale keys"): each row of the upper panel is a value the key held; a bar spans the
segments during which that value was current (from the write to the next write or delete of the key), so
overwrites read as steps between rows. Recalls of the key sit on the top row, colored by outcome (correct,
stale = an older value of the key, wrong). The lower panel splits each recall's read-out over past writes,
``a_w = <c_w, r>/|r|`` summed by status (current version / superseded versions / other keys) and divided by
``|r|``, so the three parts add up to 1 (a part can be negative when writes point away from the read-out).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ._spec import FigureSpec
from ._style import EVENT_STYLE, OUTCOME_COLORS, STATUS_COLORS
from .explain import SIGNED_SHARE_FORMULA, chance_sentence

__all__ = ["fact_lifecycle_figure", "stale_answers_figure"]

_ANSWER_NAMES = {"stale": "stale (older value)", "other": "other key's value", "wrong": "wrong"}
_STALE_SCALE = [[0.0, "#E9ECEF"], [0.35, "#F4A582"], [1.0, "#B2182B"]]


def _nearest(frame: pd.DataFrame, segment: int | None, limit: int) -> pd.DataFrame:
    """At most ``limit`` rows of a segment-sorted frame, centred on ``segment``."""
    if len(frame) <= limit:
        return frame
    pos = int(np.searchsorted(frame["segment"].to_numpy(), segment if segment is not None else 0))
    start = int(np.clip(pos - limit // 2, 0, len(frame) - limit))
    return frame.iloc[start:start + limit]


def fact_lifecycle_figure(events: pd.DataFrame, recalls: pd.DataFrame | None = None, *, fact: int,
                          n_segments: int, attribution: pd.DataFrame | None = None, message: str | None = None,
                          segment: int | None = None, segment_size: int | None = None, max_events: int = 400,
                          height: int = 580) -> go.Figure:
    """Writes, overwrites, deletes and recalls of one fact, and what each recall drew on.

    Args:
        events: ``data.fact_events`` (event kinds write/overwrite/delete/query, segment, version, value,
            valid_to in tokens).
        recalls: ``data.probe_frame`` rows of this fact (segment, outcome, prediction, expected, probe).
        n_segments: segments in the run (open validity intervals end there).
        attribution: ``data.recall_attribution`` frame (segment, current, stale, other), or None.
        message: shown instead of the attribution panel when ``attribution`` is None.
        segment_size: tokens per segment, to place ``valid_to`` (tokens) on the segment axis.
        max_events: at most this many writes and recalls (nearest the selected ``segment``) are drawn.
    """
    writes = events[events["event"].isin(["write", "overwrite", "delete"])].sort_values("segment")
    writes = _nearest(writes, segment, max_events)
    size = segment_size or 1
    valid_to = writes["valid_to"].to_numpy()
    end = np.where(valid_to >= 0, valid_to // size, n_segments)
    start = writes["segment"].to_numpy()
    kinds = writes["event"].to_numpy()
    label = np.where(kinds == "delete", "deleted",
                     np.array([f"value {v}" for v in writes["value"].to_numpy()], dtype=object))
    order = ["recalls"] + sorted(set(label.tolist()) - {"deleted"},
                                 key=lambda s: int(s.split()[-1])) + (["deleted"] if "deleted" in label else [])
    # rows of the upper panel get >= 18 px each so no category label is dropped
    top_px, bottom_px, gap_px, margins_px = max(150, 18 * len(order)), 210, 90, 96 + 120
    height = max(height, top_px + bottom_px + gap_px + margins_px)
    plot_px = height - margins_px
    spec = FigureSpec(2, 1, row_heights=[top_px, plot_px - gap_px - top_px], vertical_spacing=gap_px / plot_px)
    spec.row_title("each recall's read-out split over writes (signed; hover: formula)<br>"
                   + " · ".join(f"<span style='color:{STATUS_COLORS[k]}'>■</span> {text}" for k, text in
                                (("current", "current value"), ("stale", "older values"), ("other", "other keys"))), 2)
    spec.annotations[-1].update(hovertext=SIGNED_SHARE_FORMULA, captureevents=True)
    status = np.where(label == "deleted", "deleted", np.where(valid_to < 0, "current", "superseded"))
    for name, color in (("current", STATUS_COLORS["current"]), ("superseded", "#F2C879"), ("deleted", "#C5C9CE")):
        sel = status == name
        if not sel.any():
            continue
        spec.add(dict(type="bar", orientation="h", base=start[sel], x=np.maximum(end[sel] - start[sel], 0.6),
                      y=label[sel], marker=dict(color=color, line=dict(width=0)), width=0.5, name=f"value {name}",
                      showlegend=False,
                      customdata=np.stack([start[sel], end[sel], writes["version"].to_numpy()[sel]], axis=-1),
                      hovertemplate="%{y}<br>version %{customdata[2]}<br>segments %{customdata[0]}–"
                                    f"%{{customdata[1]}}<extra>{name}</extra>"), 1)
    for kind in ("write", "overwrite", "delete"):
        sel = kinds == kind
        if not sel.any():
            continue
        symbol, color, text = EVENT_STYLE[kind]
        spec.add(dict(type="scatter", x=start[sel], y=label[sel], mode="markers", name=text,
                      marker=dict(symbol=symbol, size=10, color=color, line=dict(width=1.5, color=color)),
                      hovertemplate=f"{text} at segment %{{x}}<extra></extra>"), 1)
    if recalls is not None and len(recalls):
        rec = _nearest(recalls.sort_values("segment"), segment, max_events)
        for outcome in ("correct", "stale", "other", "wrong", "n/a", "pending"):
            sel = rec[rec["outcome"] == outcome]
            if sel.empty:
                continue
            spec.add(dict(type="scatter", x=sel["segment"].to_numpy(), y=["recalls"] * len(sel), mode="markers",
                          name=f"recall {outcome}",
                          marker=dict(symbol="circle", size=11, color=OUTCOME_COLORS[outcome],
                                      line=dict(width=1, color="white")),
                          customdata=sel[["prediction", "expected", "probe"]].to_numpy(),
                          hovertemplate=f"recall ({outcome}) at segment %{{x}}<br>predicted %{{customdata[0]}}"
                                        " · next token %{customdata[1]}<br>probe %{customdata[2]}<extra></extra>"), 1)
    spec.yaxis(1, 1, type="category", categoryorder="array", categoryarray=order[::-1],
               title=dict(text="value held by the key"))
    spec.xaxis(1, 1, title=dict(text="segment index"), range=[-0.5, n_segments + 0.5])
    if segment is not None:
        spec.vline(segment, 1)
    if attribution is not None and len(attribution):
        labels, seen = [], {}
        for seg in attribution["segment"].to_numpy():
            seen[seg] = seen.get(seg, 0) + 1
            labels.append(str(seg) if seen[seg] == 1 else f"{seg} ({seen[seg]})")
        for status_name in ("current", "stale", "other"):
            spec.add(dict(type="bar", x=labels, y=attribution[status_name].to_numpy(), name=status_name,
                          showlegend=False, marker_color=STATUS_COLORS[status_name],
                          customdata=attribution["probe"].to_numpy(),
                          hovertemplate=f"{status_name}: %{{y:.1%}} of the read-out (signed projection)"
                                        "<extra>recall at segment %{x}"
                                        " · probe %{customdata}</extra>"), 2)
        spec.yaxis(2, 1, title=dict(text="signed share of read-out [%]"), tickformat=".0%")
        spec.xaxis(2, 1, title=dict(text="recall (segment of the probe)"), type="category")
    else:
        spec.xaxis(2, 1, visible=False)
        spec.yaxis(2, 1, visible=False)
        spec.note(message or "No attribution for this fact.", 2, 1, bgcolor="#F1F3F4", borderpad=10)
    counts = {k: int((events["event"] == k).sum()) for k in ("write", "overwrite", "delete", "query")}
    plural = lambda n, one, many: f"{n} {one if n == 1 else many}"  # noqa: E731
    sub = (f"{plural(counts['write'] + counts['overwrite'], 'write', 'writes')} "
           f"({plural(counts['overwrite'], 'overwrite', 'overwrites')}) · "
           f"{plural(counts['delete'], 'delete', 'deletes')}"
           f" · {plural(counts['query'], 'query', 'queries')}")
    if len(writes) < counts["write"] + counts["overwrite"] + counts["delete"]:
        sub += f" · showing the {len(writes)} nearest the selected segment"
    window = None
    if len(writes) and len(writes) < counts["write"] + counts["overwrite"] + counts["delete"]:
        window = [int(writes["segment"].min()), int(writes["segment"].max())]
    return spec.figure(title=f"Fact {fact} · lifecycle", subtitle=sub, height=height, barmode="relative",
                       meta={"segment_window": window},
                       margin=dict(l=96, r=24, t=96, b=120),
                       legend=dict(x=0.0, xanchor="left", y=-80 / plot_px, yanchor="top", font=dict(size=10.5)))


def stale_answers_figure(recalls: pd.DataFrame, *, n_segments: int, n_bins: int = 96, max_keys: int = 64,
                         segment: int | None = None, fact: int | None = None, chance: pd.DataFrame | None = None,
                         height: int = 560) -> go.Figure:
    """Stale answers over time: key x segment-bucket heatmap of the fraction of recalls answering an older value,
    and the share of recalls per outcome over time beside the chance level of each.

    Args:
        recalls: ``data.probe_frame`` (fact_id, segment, outcome); probes at no fact are ignored.
        n_segments: segments in the run (the time axis).
        n_bins: time buckets; each cell is the stale fraction of that key's recalls in the bucket (blank: none).
        max_keys: the keys with the most recalls are shown, at most this many.
        fact: the selected key (outlined).
        chance: ``data.probe_chance`` (per probe, the probability that a uniform guess lands in each outcome);
            drawn as a grey line of the same dash beside each outcome's share, and summarised in the subtitle.
    """
    spec = FigureSpec(2, 1, row_heights=[0.68, 0.32], shared_x=True, vertical_spacing=0.12)
    linked = recalls[(recalls["fact_id"] >= 0) & recalls["outcome"].isin(["correct", "stale", "other", "wrong"])]
    n_bins = int(max(1, min(n_bins, n_segments)))
    edges = np.linspace(0, n_segments, n_bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    keys = np.sort(linked["fact_id"].value_counts().head(max_keys).index.to_numpy())
    if len(keys):
        sub = linked[linked["fact_id"].isin(keys)]
        row = np.searchsorted(keys, sub["fact_id"].to_numpy())
        col = np.clip(np.searchsorted(edges, sub["segment"].to_numpy(), side="right") - 1, 0, n_bins - 1)
        total = np.zeros((len(keys), n_bins))
        stale = np.zeros((len(keys), n_bins))
        np.add.at(total, (row, col), 1)
        np.add.at(stale, (row, col), (sub["outcome"] == "stale").to_numpy())
        with np.errstate(invalid="ignore"):
            frac = np.where(total > 0, stale / np.maximum(total, 1), np.nan)
        spec.add(dict(type="heatmap", z=frac, x=centres, y=[str(k) for k in keys], zmin=0, zmax=1,
                      colorscale=_STALE_SCALE, customdata=np.stack([stale, total], axis=-1), ygap=1,
                      colorbar=dict(title=dict(text="stale fraction", side="right"), tickformat=".0%", len=0.62,
                                    y=1.0, yanchor="top", thickness=10),
                      hovertemplate="key %{y} · segments near %{x:.0f}<br>%{customdata[0]:.0f} stale of "
                                    "%{customdata[1]:.0f} recalls<extra></extra>"), 1)
        all_total = np.bincount(col, minlength=n_bins)
        chance_of = None
        if chance is not None and len(chance):
            chance_of = chance.set_index("probe").reindex(sub["probe"].to_numpy())
        for outcome, dash in (("stale", "solid"), ("other", "dash"), ("wrong", "dot")):
            hits = np.bincount(col[(sub["outcome"] == outcome).to_numpy()], minlength=n_bins)
            if outcome == "other" and not hits.any():
                continue
            rate = np.where(all_total > 0, hits / np.maximum(all_total, 1), np.nan)
            spec.add(dict(type="scatter", x=centres, y=rate, mode="lines", name=_ANSWER_NAMES[outcome],
                          showlegend=False, meta={"role": "rate", "outcome": outcome},
                          line=dict(color=OUTCOME_COLORS[outcome], width=1.6, dash=dash),
                          hovertemplate=f"{outcome}: %{{y:.1%}}<extra>segments near %{{x:.0f}}</extra>"), 2)
            if chance_of is not None:
                p = chance_of[outcome].to_numpy()
                ok = np.isfinite(p)
                num = np.bincount(col[ok], weights=p[ok], minlength=n_bins)
                den = np.bincount(col[ok], minlength=n_bins)
                spec.add(dict(type="scatter", x=centres, y=np.where(den > 0, num / np.maximum(den, 1), np.nan),
                              mode="lines", name=f"chance: {outcome}", showlegend=False,
                              meta={"role": "chance", "outcome": outcome},
                              line=dict(color="#80868B", width=1.2, dash=dash),
                              hovertemplate=f"chance of {outcome} (uniform guess): %{{y:.1%}}"
                                            "<extra>segments near %{x:.0f}</extra>"), 2)
        if fact is not None and fact in set(keys.tolist()):
            spec.hline(str(fact), 1)
    else:
        spec.note("No probed recalls are linked to facts in this trace.", 1)
    spec.yaxis(1, 1, title=dict(text="key (fact id)"), type="category")
    spec.yaxis(2, 1, tickformat=".0%", rangemode="tozero", nticks=4)
    spec.all_xaxes(range=[0, n_segments])
    spec.xaxis(2, 1, title=dict(text="segment index"))
    if segment is not None:
        for r in (1, 2):
            spec.vline(segment, r)
    n_stale = int((linked["outcome"] == "stale").sum())
    spec.row_title("share of recalls per time bucket [%]" + (", grey: chance" if chance is not None else "")
                   + "<br>" + " · ".join(f"<span style='color:{OUTCOME_COLORS[k]}'>{mark}</span> {text}"
                                         for k, mark, text in (("stale", "━", "older value"), ("other", "╍", "other key"),
                                                               ("wrong", "┄", "wrong"))), 2)
    sub_text = f"{n_stale} of {len(linked)} probed recalls returned an older value of their key"
    if chance is not None and len(linked):
        c = chance.set_index("probe").reindex(linked["probe"].to_numpy())["stale"].to_numpy()
        c = c[np.isfinite(c)]
        if len(c):
            sub_text = chance_sentence("stale", n_stale, len(linked), float(c.mean()))
    return spec.figure(title="Stale answers over time", height=height, subtitle=sub_text,
                       margin=dict(l=80, r=24, t=96, b=56))
