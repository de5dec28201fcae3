"""A small, fast builder of plotly figure dicts laid out on a subplot grid.

plotly's object API (``make_subplots``, ``add_vline``, ``update_yaxes(row=, col=)``) validates every property on
every call and costs tens of milliseconds per figure; the dashboard redraws on each slider move, so the
builders assemble plain dicts here and validate once when ``figure()`` wraps them in a ``go.Figure``
(about 5 ms for the largest figure). Grid semantics follow ``make_subplots``: rows top to bottom, subplot
``k = (row - 1) * cols + col`` uses axes ``x{k}``/``y{k}``, shared x-axes match the bottom row's axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import plotly.graph_objects as go

from ._style import TEMPLATE

__all__ = ["FigureSpec", "move_segment_line", "VALIDATE"]

_TEMPLATE_DICT = TEMPLATE.to_plotly_json()
VALIDATE = False  # tests switch it on


def _domains(n: int, sizes: Sequence[float] | None, spacing: float) -> list[tuple[float, float]]:
    sizes = list(sizes) if sizes else [1.0] * n
    free = max(1.0 - spacing * (n - 1), 0.05)
    total = float(sum(sizes))
    out, pos = [], 0.0
    for s in sizes:
        width = free * s / total
        out.append((pos, min(pos + width, 1.0)))
        pos += width + spacing
    return out


class FigureSpec:
    """Traces, axes, shapes and annotations of one figure on a ``rows`` x ``cols`` grid, as plain dicts."""

    def __init__(self, rows: int = 1, cols: int = 1, *, row_heights: Sequence[float] | None = None,
                 col_widths: Sequence[float] | None = None, vertical_spacing: float = 0.08,
                 horizontal_spacing: float = 0.08, shared_x: bool = False,
                 titles: Sequence[str] | None = None) -> None:
        self.rows, self.cols = rows, cols
        self.data: list[dict] = []
        self.shapes: list[dict] = []
        self.annotations: list[dict] = []
        self.layout: dict[str, Any] = {}
        heights = list(row_heights)[::-1] if row_heights else None
        ydom = _domains(rows, heights, vertical_spacing)[::-1]  # row 1 on top
        xdom = _domains(cols, col_widths, horizontal_spacing)
        self.domains: dict[tuple[int, int], tuple[tuple[float, float], tuple[float, float]]] = {}
        bottom = {c: self.names(rows, c)[0] for c in range(1, cols + 1)}
        for r in range(1, rows + 1):
            for c in range(1, cols + 1):
                x, y = self.names(r, c)
                self.domains[(r, c)] = (xdom[c - 1], ydom[r - 1])
                xa = {"domain": list(xdom[c - 1]), "anchor": y}
                if shared_x and r < rows:
                    xa.update(matches=bottom[c], showticklabels=False)
                self.layout[self._key(x)] = xa
                self.layout[self._key(y)] = {"domain": list(ydom[r - 1]), "anchor": x}
        for i, text in enumerate(titles or []):
            if text:
                r, c = divmod(i, cols)
                (x0, x1), (_, y1) = self.domains[(r + 1, c + 1)]
                self.annotations.append(dict(text=text, x=(x0 + x1) / 2, y=y1, xref="paper", yref="paper",
                                             xanchor="center", yanchor="bottom", yshift=4, showarrow=False,
                                             font=dict(size=12, color="#3C4043")))

    # ------------------------------------------------------------------ names
    def names(self, row: int = 1, col: int = 1) -> tuple[str, str]:
        k = (row - 1) * self.cols + col
        return ("x", "y") if k == 1 else (f"x{k}", f"y{k}")

    @staticmethod
    def _key(axis: str) -> str:
        return ("xaxis" if axis[0] == "x" else "yaxis") + axis[1:]

    # ------------------------------------------------------------------ content
    def add(self, trace: dict, row: int = 1, col: int = 1) -> None:
        x, y = self.names(row, col)
        self.data.append({**trace, "xaxis": x, "yaxis": y})

    def xaxis(self, row: int = 1, col: int = 1, **props: Any) -> None:
        self.layout[self._key(self.names(row, col)[0])].update(props)

    def yaxis(self, row: int = 1, col: int = 1, **props: Any) -> None:
        self.layout[self._key(self.names(row, col)[1])].update(props)

    def all_xaxes(self, **props: Any) -> None:
        for r in range(1, self.rows + 1):
            for c in range(1, self.cols + 1):
                self.xaxis(r, c, **props)

    def vline(self, x: float, row: int = 1, col: int = 1, **line: Any) -> None:
        """The selected segment's rule (shape name ``"segment"``: ``move_segment_line`` finds it)."""
        xa, ya = self.names(row, col)
        self.shapes.append(dict(type="line", xref=xa, yref=f"{ya} domain", x0=x, x1=x, y0=0, y1=1, name="segment",
                                line={"color": "#202124", "width": 1, "dash": "dot", **line}, layer="above"))

    def hline(self, y: Any, row: int = 1, col: int = 1, **line: Any) -> None:
        xa, ya = self.names(row, col)
        self.shapes.append(dict(type="line", xref=f"{xa} domain", yref=ya, x0=0, x1=1, y0=y, y1=y,
                                line={"color": "#0072B2", "width": 1.5, **line}, layer="above"))

    def note(self, text: str, row: int = 1, col: int = 1, **props: Any) -> None:
        """Centered grey text in a cell (e.g. why a panel is empty)."""
        (x0, x1), (y0, y1) = self.domains[(row, col)]
        self.annotations.append(dict(text=text, x=(x0 + x1) / 2, y=(y0 + y1) / 2, xref="paper", yref="paper",
                                     showarrow=False, font=dict(size=13, color="#5F6368"), **props))

    def row_title(self, text: str, row: int, col: int = 1) -> None:
        """A left-aligned title just above a row (stacked series keep their y-axis titles here)."""
        _, ya = self.names(row, col)
        self.annotations.append(dict(text=text, name=f"row_title:{row}", xref="paper", x=0.0, xanchor="left",
                                     yref=f"{ya} domain", y=1.0, yanchor="bottom", yshift=2, showarrow=False,
                                     align="left", font=dict(size=11.5, color="#3C4043")))

    # ------------------------------------------------------------------ output
    def figure(self, *, title: str | None = None, subtitle: str | None = None, height: int | None = None,
               **layout: Any) -> go.Figure:
        """The validated ``go.Figure`` with the house template, title and subtitle."""
        lay = {**self.layout, "template": _TEMPLATE_DICT, "uirevision": "armt",
               "shapes": self.shapes, "annotations": self.annotations}
        if title:
            lay["title"] = {"text": title, **({"subtitle": {"text": subtitle}} if subtitle else {})}
        if height:
            lay["height"] = height
        for key, value in layout.items():
            if isinstance(value, dict) and isinstance(lay.get(key), dict):
                lay[key] = {**lay[key], **value}
            else:
                lay[key] = value
        # validated by the tests (go.Figure(fig.to_dict()) for every builder); skipping it here saves ~40 ms per
        # figure on each dashboard update
        return go.Figure({"data": self.data, "layout": lay}, _validate=VALIDATE)


def move_segment_line(fig: go.Figure, segment: float) -> bool:
    """Move the selected-segment rules of ``fig`` with one ``plotly_relayout`` (a figure shown in a Panel pane
    with ``link_figure`` sends only this small relayout to the browser); False if it has none."""
    update = {}
    for i, sh in enumerate(fig.layout.shapes):
        if sh.name == "segment":
            update[f"shapes[{i}].x0"] = update[f"shapes[{i}].x1"] = segment
    if update:
        fig.plotly_relayout(update)
    return bool(update)
