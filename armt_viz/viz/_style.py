"""The house look of every figure: one plotly template, a colorblind-safe palette, CF-attr axis titles.

Colors are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), distinguishable under the
common color-vision deficiencies. Heatmaps use Cividis (sequential, CVD-optimised) or a blue-white-red
diverging scale centred on zero. Fonts are system fonts only: the dashboard must never fetch a web font.

Axis titles follow xarray's ``label_from_attrs`` (xarray plot/utils.py): ``long_name [units]``, with the
units left out when dimensionless ("1"). Long titles are wrapped with ``<br>`` so small subplots stay legible.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

__all__ = ["PALETTE", "STATUS_COLORS", "OUTCOME_COLORS", "EVENT_STYLE", "TEMPLATE", "DIVERGING", "SEQUENTIAL",
           "axis_title", "wrap", "plain", "finish", "row_titles"]

# Okabe-Ito, reordered so the first colors are the most distinct on white
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
STATUS_COLORS = {"current": "#0072B2", "stale": "#D55E00", "other": "#B8B8B8"}
# recall outcomes: correct (current value), stale (an older value of the key), other (another key's value)
OUTCOME_COLORS = {"correct": "#009E73", "stale": "#D55E00", "other": "#CC79A7", "wrong": "#7F7F7F",
                  "pending": "#DADCE0", "n/a": "#DADCE0"}
# ledger roles as markers: (symbol, color, label)
EVENT_STYLE = {
    "write": ("triangle-up", "#0072B2", "write"),
    "overwrite": ("triangle-up", "#E69F00", "overwrite"),
    "delete": ("x-thin-open", "#000000", "delete"),
}
SEQUENTIAL = "Cividis"
DIVERGING = [[0.0, "#2166AC"], [0.25, "#92C5DE"], [0.5, "#F7F7F7"], [0.75, "#F4A582"], [1.0, "#B2182B"]]
FONT = "Inter, 'Segoe UI', Roboto, 'Helvetica Neue', 'DejaVu Sans', Arial, sans-serif"

_AXIS = dict(showline=True, linecolor="#9AA0A6", linewidth=1, ticks="outside", tickcolor="#9AA0A6", ticklen=4,
             gridcolor="#ECEEF1", zeroline=False, title_font=dict(size=12, color="#3C4043"),
             tickfont=dict(size=11, color="#5F6368"), automargin=True)
TEMPLATE = go.layout.Template(
    layout=go.Layout(
        font=dict(family=FONT, size=12, color="#202124"),
        title=dict(font=dict(size=15, color="#202124"), x=0.0, xanchor="left", xref="paper", y=1.0,
                   yref="container", yanchor="top", pad=dict(t=14, l=0),
                   subtitle=dict(font=dict(size=11, color="#5F6368"))),
        paper_bgcolor="white", plot_bgcolor="white", colorway=list(PALETTE),
        xaxis=_AXIS, yaxis=_AXIS,
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1.0, font=dict(size=11),
                    bgcolor="rgba(255,255,255,0)"),
        hoverlabel=dict(font=dict(family=FONT, size=12), bgcolor="white"),
        margin=dict(l=64, r=24, t=64, b=48),
        coloraxis=dict(colorbar=dict(thickness=12, outlinewidth=0, tickfont=dict(size=10))),
    )
)


def plain(text: str) -> str:
    """``text`` without the ``<br>`` line breaks ``wrap`` inserts (for comparisons in tests)."""
    return " ".join(text.replace("<br>", " ").split())


def wrap(text: str, width: int = 30) -> str:
    """Break ``text`` into lines of at most ``width`` characters, joined by plotly's ``<br>``."""
    return "<br>".join(textwrap.wrap(text, width=width, break_on_hyphens=False, break_long_words=False)) or text


def axis_title(obj: Any = None, name: str | None = None, *, attrs: Mapping[str, Any] | None = None,
               width: int | None = None) -> str:
    """``long_name [units]`` from a DataArray's (or a mapping's) CF attrs, like xarray's ``label_from_attrs``.

    Falls back to ``standard_name``, then the name. Dimensionless units (``"1"`` or empty) are left out.

    Args:
        obj: an ``xarray.DataArray`` (its ``attrs`` and ``name`` are used), or None with ``attrs``.
        name: fallback name when no ``long_name`` exists.
        attrs: explicit attrs (override ``obj.attrs``).
        width: wrap to lines of this many characters (``<br>``), or None for one line.
    """
    a = dict(getattr(obj, "attrs", {}) or {})
    a.update(attrs or {})
    label = a.get("long_name") or a.get("standard_name") or name or getattr(obj, "name", None) or ""
    units = a.get("units")
    if units not in (None, "", "1"):
        label = f"{label} [{units}]"
    label = str(label)
    return wrap(label, width) if width else label


def finish(fig: go.Figure, *, title: str | None = None, height: int | None = None,
           subtitle: str | None = None) -> go.Figure:
    """Apply the house template, a left-aligned title (with an optional grey subtitle) and a height."""
    fig.update_layout(template=TEMPLATE, title_text=title or None, uirevision="armt")
    if subtitle:
        fig.update_layout(title_subtitle_text=subtitle)
    if height:
        fig.update_layout(height=height)
    fig.update_annotations(font=dict(size=12, color="#3C4043"))
    return fig


def row_titles(fig: go.Figure) -> dict[int, str]:
    """The row titles of a stacked figure (``FigureSpec.row_title`` annotations), by row."""
    return {int(a.name.split(":")[1]): a.text for a in fig.layout.annotations
            if a.name and a.name.startswith("row_title:")}
