"""The sidebar's "Download this view (HTML)" control: ``viz.share.view_html`` of the session's figures."""

from __future__ import annotations

import io
import os

import panel as pn

from ..explain import CONTROL_HELP, HOW_TO_READ
from ..share import view_html

__all__ = ["html_download", "current_view_html"]

# the figures of each tab, in page order (the timeline is always shown)
_TAB_VIEWS = {"memory": ("timeline", "assoc", "writes"), "facts": ("timeline", "fact", "stale"),
              "layers": ("timeline", "layers"), "compare": ("timeline", "compare")}


def current_view_html(store, views: dict, link: str | None = None) -> str:
    """The HTML of what the session shows now: the timeline and the open tab's figures, state, provenance."""
    figures = {name: views[name].pane.object for name in _TAB_VIEWS.get(store.tab, ("timeline",))
               if name in views and views[name].pane.object is not None}
    attrs = dict(store.ds.attrs) if store.ds is not None else {}
    return view_html(figures, state=store.view_state(), provenance=attrs,
                     how_to_read={k: HOW_TO_READ.get(k, "") for k in figures}, link=link)


def html_download(store, views, link=None) -> pn.widgets.FileDownload:
    """A FileDownload of ``current_view_html`` (``views``: a callable returning the session's views)."""
    def make():
        text = current_view_html(store, views(), link.value if link is not None else None)
        return io.BytesIO(text.encode("utf-8"))

    widget = pn.widgets.FileDownload(callback=make, filename="view.html", label="Download this view (HTML)",
                                     sizing_mode="stretch_width", description=CONTROL_HELP["html"])

    def rename(*_):
        stem = os.path.basename(store.trace.rstrip("/")).removesuffix(".zarr") or "view"
        widget.filename = f"{stem}__{store.tab}__seg{store.segment}.html"
    store.param.watch(rename, ["trace", "tab", "segment"])
    rename()
    return widget
