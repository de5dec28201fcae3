"""A view as one self-contained, offline HTML file (issue 15, "share a view").

``view_html(figures, state=..., provenance=...)`` writes every figure with plotly.js inlined once (no request
leaves the machine when the file is opened), the view state (the deep-link keys of ``dashboard.urlstate``) and the
trace's provenance as escaped text, and each figure's "how to read" line. Every string from the trace is
HTML-escaped; figures go in as plotly JSON (``fig.to_json``), so a trace name cannot inject markup.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping

import plotly.graph_objects as go

__all__ = ["view_html", "PROVENANCE_KEYS"]

PROVENANCE_KEYS = ("input_description", "checkpoint_sha256", "seed", "versions", "armt_config", "record_config",
                   "trained_range", "committed_segments", "complete")

_STYLE = """body{font-family:Inter,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;margin:24px;color:#202124;
background:#F5F7F9} .card{background:#fff;border:1px solid #E3E6EA;border-radius:8px;padding:8px 12px;margin:0 0 16px}
.how{font-size:13px;color:#5F6368;margin:4px 0} pre{white-space:pre-wrap;word-break:break-word;font-size:12px}
h1{font-size:20px} h2{font-size:15px;margin:6px 0}"""


def _json_for_script(obj) -> str:
    """JSON safe inside a <script> element (no '</', no HTML comment or CDATA openers)."""
    return (json.dumps(obj) if not isinstance(obj, str) else obj).replace("<", "\\u003c").replace(
        ">", "\\u003e").replace("&", "\\u0026")


def view_html(figures: Mapping[str, go.Figure], *, state: Mapping | None = None,
              provenance: Mapping | None = None, how_to_read: Mapping[str, str] | None = None,
              title: str = "ARMT memory explorer · shared view", link: str | None = None) -> str:
    """The HTML text of a shared view (see the module docstring).

    Args:
        figures: name -> figure, in page order.
        state: the view state (trace, sample, layer, segment, fact, tab, zoom).
        provenance: trace attrs to keep (``PROVENANCE_KEYS`` of ``ds.attrs``).
        how_to_read: name -> one-line reading guide shown under each figure.
        link: the dashboard link that reopens this view.
    """
    from plotly.offline import get_plotlyjs

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>",
             f"<h1>{html.escape(title)}</h1>"]
    if link:
        parts.append(f"<p class='how'>Live view: {html.escape(link)}</p>")
    parts.append("<div class='card'><h2>View state</h2><pre id='armt-state'>"
                 f"{html.escape(json.dumps(dict(state or {}), indent=1, default=str))}</pre></div>")
    for i, (name, fig) in enumerate(figures.items()):
        div = f"armt-fig-{i}"
        parts.append(f"<div class='card'><div id='{div}' class='armt-figure' data-name='{html.escape(name)}'></div>")
        if how_to_read and how_to_read.get(name):
            parts.append(f"<p class='how'>{html.escape(how_to_read[name])}</p>")
        parts.append(f"</div><script type='text/javascript'>(function(){{var f={_json_for_script(fig.to_json())};"
                     f"Plotly.newPlot('{div}', f.data, f.layout, {{responsive: true, displaylogo: false}});}})();"
                     "</script>")
    prov = {k: provenance[k] for k in PROVENANCE_KEYS if provenance and k in provenance}
    parts.append("<div class='card'><h2>Provenance of the trace</h2><pre id='armt-provenance'>"
                 f"{html.escape(json.dumps(prov, indent=1, default=str))}</pre></div></body></html>")
    return "".join(parts)
