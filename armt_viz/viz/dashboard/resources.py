"""Browser resources the dashboard adds to Panel's page, served by the app itself (no request leaves the machine).

``PlotlySameSize`` is never placed on a page: Panel adds the ``__javascript__`` of every imported custom component
class to each page it serves, after the Bokeh model bundles (plotly included), and serves the file from this
package through its component-resource route. Its script (``plotly_same_size.js``) makes ``Plotly.relayout``
skip calls that would set a figure to the size it already has: Panel's Plotly pane sends one after every layout
pass of the page, and plotly redraws the whole figure each time (about 0.9 s of redraws of the run timeline per
page load on a 2-core machine, measured with bench/bench_dashboard.py).
"""

from __future__ import annotations

from pathlib import Path

from panel.custom import JSComponent

__all__ = ["PlotlySameSize"]

_SCRIPT = "plotly_same_size.js"


class PlotlySameSize(JSComponent):
    """Carries ``plotly_same_size.js`` onto every page Panel serves in this process (see the module docstring)."""

    __javascript__ = [_SCRIPT] if (Path(__file__).parent / _SCRIPT).is_file() else []
    _esm = "export function render() {}"
