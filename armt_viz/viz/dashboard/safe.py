"""Text from a store, a path or a URL never reaches the page as markup (issue 16).

Trace folder names, attributes, dimension names, fill values and the error messages that quote them are data
that other people write. Everything the dashboard shows of them goes through ``escape`` (one helper) into
``text_pane`` (an HTML pane whose only markup is ours; the text is escaped) or into plotly text through
``plotly_text``. No Markdown pane ever shows data: Markdown passes raw HTML through and turns ``[x](y)`` into
links. ``public_message`` also removes server paths from error texts (the page must not reveal where the server
keeps its files).
"""

from __future__ import annotations

import html
import os
import re

import panel as pn

__all__ = ["escape", "public_message", "text_html", "text_pane", "plotly_text"]

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s'\"/:,;()]+/)+([^\s'\"/:,;()]*)")
MAX_CHARS = 1200  # a message longer than this is cut (a crafted name can be 1 kB; an error quoting it twice more)


def escape(text) -> str:
    """``text`` as inert HTML text: ``& < > " '`` become entities, control characters are dropped, long texts are
    cut at ``MAX_CHARS``."""
    s = _CONTROL.sub("", str(text))
    if len(s) > MAX_CHARS:
        s = s[:MAX_CHARS] + " …"
    return html.escape(s, quote=True)


def public_message(text, root: str | None = None) -> str:
    """An error text fit for the page: paths under ``root`` become root-relative, any other absolute path keeps
    only its last part."""
    s = str(text)
    if root:
        for r in {os.path.realpath(root), os.path.abspath(root)}:
            s = s.replace(r.rstrip("/") + "/", "").replace(r, "<trace root>")
    return _ABS_PATH.sub(lambda m: "…/" + m.group(1), s)


_STYLES = {
    "warning": "background:#FFF4E5;border:1px solid #F0C36D;color:#5F3B00;",
    "info": "background:#EEF3F8;border:1px solid #C9D6E3;color:#17324D;",
    "plain": "color:#3C4043;",
}


def text_html(text: str, kind: str = "plain") -> str:
    """One block of escaped ``text`` (newlines kept) in our own markup; '' for no text."""
    if not text:
        return ""
    return (f'<div class="armt-text armt-{kind}" style="{_STYLES[kind]}white-space:pre-wrap;'
            f'overflow-wrap:anywhere;border-radius:6px;padding:6px 10px;font-size:0.85em">{escape(text)}</div>')


def text_pane(text, kind: str = "plain", **kwargs) -> pn.pane.HTML:
    """An HTML pane that shows ``text`` (a string, or a reference such as ``store.param.status``) as text."""
    obj = pn.bind(text_html, text, kind) if not isinstance(text, str) else text_html(text, kind)
    return pn.pane.HTML(obj, sizing_mode="stretch_width", **kwargs)


def plotly_text(text) -> str:
    """``text`` for a plotly title or annotation: escaped (plotly reads ``<b>``, ``<a href>`` and entities in
    text; escaped text shows as written)."""
    return escape(text)
