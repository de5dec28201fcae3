"""The house plotly style for figures outside viz/ (reports, studies): the public names of `_style.py`."""

from ._style import DIVERGING, EVENT_STYLE, OUTCOME_COLORS, PALETTE, STATUS_COLORS, TEMPLATE, axis_title, finish

__all__ = ["TEMPLATE", "PALETTE", "DIVERGING", "EVENT_STYLE", "OUTCOME_COLORS", "STATUS_COLORS", "axis_title", "finish"]
