"""``build_app``: the dashboard page of one session (store + views in an offline-safe template).

The template is Panel's ``BootstrapTemplate``, whose CSS and JS Panel serves itself: templates that pull web
fonts from a CDN (FastList, Vanilla, Material) are avoided, so the page makes no request off the machine. The
URL query (``?trace=...&sample=...&layer=...&segment=...&fact=...``) is synced with the selection, so a view can
be shared as a link; a ``trace`` in the URL goes through the same root confinement as the Trace control.
"""

from __future__ import annotations

import panel as pn

from .store import TraceStore
from .views import AssocView, FactView, LayersView, StaleView, TimelineView, WritesView

__all__ = ["build_app", "APP_TITLE"]

APP_TITLE = "ARMT memory explorer"
_CSS = """
.armt-card { background: #ffffff; border: 1px solid #E3E6EA; border-radius: 8px; padding: 6px 8px;
             margin: 0 0 14px 0; box-shadow: 0 1px 2px rgba(32, 33, 36, 0.06); }
#main { background: #F5F7F9; }
"""


def build_app(trace_root: str, *, trace: str | None = None, sync_url: bool = True) -> pn.template.BootstrapTemplate:
    """The dashboard for one session over the traces under ``trace_root``.

    Args:
        trace_root: the only folder whose traces are listed and opened.
        trace: root-relative name of the trace to open first (default: the most recently written).
        sync_url: keep the selection in the page URL's query string (when served).
    """
    pn.extension("plotly", raw_css=[_CSS], notifications=False)
    from . import resources  # noqa: F401  (its script joins every page Panel serves from now on)
    store = TraceStore(trace_root=str(trace_root), trace=trace)
    timeline, layers = TimelineView(store=store), LayersView(store=store)
    assoc, writes = AssocView(store=store), WritesView(store=store)
    fact, stale = FactView(store=store), StaleView(store=store)
    # the timeline stays in view; the other views sit in tabs that the browser renders only when shown
    # (Tabs(dynamic=True)), so a page draws three figures, not six, and a Segment move redraws two
    tabs = pn.Tabs(
        ("Memory at the segment", pn.Row(assoc, writes, sizing_mode="stretch_width")),
        ("Facts", pn.Row(fact, stale, sizing_mode="stretch_width")),
        ("Layers", layers),
        dynamic=True, sizing_mode="stretch_width",
    )
    main = pn.Column(timeline, tabs, sizing_mode="stretch_width")
    if sync_url and pn.state.location is not None:
        # values that do not apply at once (the trace is still opening, or they do not fit) go to the store,
        # which applies them when it can and names the rest in its notice
        pn.state.location.sync(store, {"trace": "trace", "sample": "sample", "layer": "layer", "segment": "segment",
                                       "fact": "fact"}, on_error=store.apply_url_values)
    template = pn.template.BootstrapTemplate(
        title=APP_TITLE, sidebar=[store], main=[main], header_background="#17324D", sidebar_width=310,
    )
    template.store = store  # for tests and embedding
    template.tabs = tabs
    template.views = {"timeline": timeline, "assoc": assoc, "writes": writes, "fact": fact, "stale": stale,
                      "layers": layers}
    return template
