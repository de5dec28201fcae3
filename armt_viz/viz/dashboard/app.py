"""``build_app``: the dashboard page of one session (store + views in an offline-safe template).

The template is Panel's ``BootstrapTemplate``, whose CSS and JS Panel serves itself: templates that pull web
fonts from a CDN (FastList, Vanilla, Material) are avoided, so the page makes no request off the machine.

Deep links (``urlstate``): the page URL's query (``?trace=...&sample=...&layer=...&segment=...&fact=...&tab=...
&zoom=lo-hi``) is read once when the session starts and applied after that trace is opened (so the selection is
clamped to the right trace's bounds), and rewritten whenever the selection changes. A ``trace`` in the URL goes
through the same root confinement as the Trace control. "Copy link" puts the current view's link on the
clipboard; the same link is shown, selectable, beside it.
"""

from __future__ import annotations

import panel as pn

from ..explain import CONTROL_HELP, GUIDE
from .store import LIVE_PERIOD_MS, TraceStore, plain_text
from .urlstate import TABS, query_string, query_to_state, session_query
from .views import AssocView, FactView, LayersView, StaleView, TimelineView, WritesView

__all__ = ["build_app", "APP_TITLE"]

APP_TITLE = "ARMT memory explorer"
_CSS = """
.armt-card { background: #ffffff; border: 1px solid #E3E6EA; border-radius: 8px; padding: 6px 8px;
             margin: 0 0 14px 0; box-shadow: 0 1px 2px rgba(32, 33, 36, 0.06); }
.armt-how { font-size: 0.82em; color: #5F6368; }
.armt-banner { background: #FFF4E5; border: 1px solid #F0B429; border-radius: 6px; padding: 4px 10px;
               color: #7A4B00; }
.armt-guide { font-size: 0.9em; color: #3C4043; }
.armt-tokens { font-family: ui-monospace, 'DejaVu Sans Mono', monospace; word-break: break-word; }
#main { background: #F5F7F9; }
select option { white-space: normal; }
"""
_TAB_LABELS = {"memory": "Memory at the segment", "facts": "Facts", "layers": "Layers", "compare": "Compare"}
# copies the link shown in the link box (a Bokeh CustomJS callback, served as part of the document, not inline)
_COPY_JS = """
const text = link.value;
if (navigator.clipboard && window.isSecureContext) { navigator.clipboard.writeText(text); }
else { const t = document.createElement('textarea'); t.value = text; document.body.appendChild(t); t.select();
       try { document.execCommand('copy'); } catch (e) {} document.body.removeChild(t); }
"""


def build_app(trace_root: str, *, trace: str | None = None, sync_url: bool = True,
              query: dict | None = None) -> pn.template.BootstrapTemplate:
    """The dashboard for one session over the traces under ``trace_root``.

    Args:
        trace_root: the only folder whose traces are listed and opened.
        trace: root-relative name of the trace to open first (default: the URL's, else the most recently written).
        sync_url: read the selection from the page URL's query when the session starts, and keep it there.
        query: the URL query to restore (default: the served session's); for tests and embedding.
    """
    pn.extension("plotly", raw_css=[_CSS], notifications=False)
    from . import resources  # noqa: F401  (its script joins every page Panel serves from now on)
    initial = query_to_state(query if query is not None else (session_query() if sync_url else {}))
    store = TraceStore(trace_root=str(trace_root), trace=trace, initial=initial)
    timeline, layers = TimelineView(store=store), LayersView(store=store)
    assoc, writes = AssocView(store=store), WritesView(store=store)
    fact, stale = FactView(store=store), StaleView(store=store)
    from .compare import CompareView

    compare = CompareView(store=store)
    # the timeline stays in view; the other views sit in tabs that the browser renders only when shown
    # (Tabs(dynamic=True)), so a page draws three figures, not six, and a Segment move redraws two
    tabs = pn.Tabs(
        (_TAB_LABELS["memory"], pn.Row(assoc, writes, sizing_mode="stretch_width")),
        (_TAB_LABELS["facts"], pn.Row(fact, stale, sizing_mode="stretch_width")),
        (_TAB_LABELS["layers"], layers),
        (_TAB_LABELS["compare"], compare),
        dynamic=True, sizing_mode="stretch_width", active=TABS.index(store.tab),
    )
    tabs.param.watch(lambda e: setattr(store, "tab", TABS[e.new]), "active")
    store.param.watch(lambda e: setattr(tabs, "active", TABS.index(e.new)) if tabs.active != TABS.index(e.new)
                      else None, "tab")
    banner = plain_text(pn.bind(lambda *_: store.range_text(), store.param.version), css_classes=["armt-banner"],
                        visible=pn.bind(lambda *_: bool(store.range_text()), store.param.version))
    guide = plain_text(GUIDE, css_classes=["armt-guide"])
    main = pn.Column(banner, guide, timeline, tabs, sizing_mode="stretch_width")
    link = pn.widgets.TextInput(name="Link to this view", value="", disabled=False, sizing_mode="stretch_width",
                                description=CONTROL_HELP["copy"])
    copy = pn.widgets.Button(name="Copy link", button_type="primary", sizing_mode="stretch_width",
                             description=CONTROL_HELP["copy"])
    copy.js_on_click(args={"link": link}, code=_COPY_JS)
    from .share import html_download

    sidebar = [store, pn.layout.Divider(), copy, link, html_download(store, lambda: template.views, link)]

    def update_url(*_):
        q = query_string(store.view_state())
        loc = pn.state.location
        if sync_url and loc is not None and loc.search != q:
            loc.search = q
        base = ""
        if loc is not None and loc.hostname:
            base = f"{loc.protocol}//{loc.hostname}{':' + str(loc.port) if loc.port else ''}{loc.pathname}"
        link.value = base + q

    store.param.watch(update_url, ["trace", "sample", "layer", "segment", "fact", "tab", "x_range", "compare"])
    if pn.state.location is not None:
        pn.state.location.param.watch(update_url, ["hostname", "pathname"])
    update_url()
    if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
        # a trace being recorded grows under the open view (its committed prefix), and new traces appear
        pn.state.add_periodic_callback(store.refresh, period=LIVE_PERIOD_MS)
    template = pn.template.BootstrapTemplate(
        title=APP_TITLE, sidebar=sidebar, main=[main], header_background="#17324D", sidebar_width=330,
    )
    template.store = store  # for tests and embedding
    template.tabs = tabs
    template.link = link
    template.views = {"timeline": timeline, "assoc": assoc, "writes": writes, "fact": fact, "stale": stale,
                      "layers": layers, "compare": compare}
    return template
