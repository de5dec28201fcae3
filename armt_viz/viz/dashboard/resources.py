"""Browser resources the dashboard adds to Panel's page, served by the app itself (no request leaves the machine).

``PlotlySameSize`` is never placed on a page: Panel adds the ``__javascript__`` of every imported custom component
class to each page it serves, after the Bokeh model bundles (plotly included), and serves the file from this
package through its component-resource route. Its script (``plotly_same_size.js``) makes ``Plotly.relayout``
skip calls that would set a figure to the size it already has: Panel's Plotly pane sends one after every layout
pass of the page, and plotly redraws the whole figure each time (about 0.9 s of redraws of the run timeline per
page load on a 2-core machine, measured with bench/bench_dashboard.py).

``use_cartesian_plotly()`` makes the pages a server sends load plotly.js's "cartesian" bundle (``vendor/``, the
npm package ``plotly.js-cartesian-dist-min``, 1.3 MB) instead of the full ``plotly.min.js`` Panel ships (4.7 MB):
every trace type our figures draw (``FIGURE_TRACE_TYPES``) is in it, and the browser parses a third of the code
on every page load. The bundle must be the exact plotly.js version Panel's Plotly pane is built for
(``panel.models.plotly.PLOTLY_VERSION``); on any other version the full bundle is kept, with a warning.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from pathlib import Path

from panel.custom import JSComponent

__all__ = ["PlotlySameSize", "PlotlyCartesianBundle", "CARTESIAN_BUNDLE", "FIGURE_TRACE_TYPES", "PLOTLY_BUNDLE_ENV",
           "vendored_plotly_version", "panel_plotly_version", "use_cartesian_plotly", "use_full_plotly"]

log = logging.getLogger(__name__)

_SCRIPT = "plotly_same_size.js"
CARTESIAN_BUNDLE = "vendor/plotly-cartesian-3.1.0.min.js"  # relative to this module's folder
# the trace types the figure builders (viz/figures_*.py) emit; tests/viz checks every figure against this set and
# tests/ui checks that the served bundle registers each of them
FIGURE_TRACE_TYPES = frozenset({"scatter", "bar", "heatmap"})
PLOTLY_BUNDLE_ENV = "ARMT_VIZ_PLOTLY_BUNDLE"  # "cartesian" (default) or "full": which plotly.js a server sends
_HEADER = re.compile(r"plotly\.js \(cartesian - minified\) v(\d+\.\d+\.\d+)")


class PlotlySameSize(JSComponent):
    """Carries ``plotly_same_size.js`` onto every page Panel serves in this process (see the module docstring)."""

    __javascript__ = [_SCRIPT] if (Path(__file__).parent / _SCRIPT).is_file() else []
    _esm = "export function render() {}"


class PlotlyCartesianBundle:
    """Lists the vendored bundle for Panel's component-resource route, which serves only files a class in an
    imported module names. Not a component: it never joins a page by itself (``use_cartesian_plotly`` puts it
    where Panel's full bundle was)."""

    __javascript__ = [CARTESIAN_BUNDLE]


def vendored_plotly_version(path: str | os.PathLike | None = None) -> str:
    """The plotly.js version in the vendored bundle's header comment (``plotly.js (cartesian - minified) vX.Y.Z``).

    Raises:
        ValueError: the file does not start with that header (not the npm bundle this module expects).
    """
    path = Path(path) if path is not None else Path(__file__).parent / CARTESIAN_BUNDLE
    with open(path, encoding="utf-8") as f:
        head = f.read(400)
    match = _HEADER.search(head)
    if match is None:
        raise ValueError(f"{path.name!r} does not start with a plotly.js cartesian bundle header; expected "
                         "'plotly.js (cartesian - minified) vX.Y.Z' (the npm package plotly.js-cartesian-dist-min)")
    return match.group(1)


def panel_plotly_version() -> str:
    """The plotly.js version Panel's Plotly pane is built for (and ships as ``plotly-<version>.min.js``)."""
    from panel.models.plotly import PLOTLY_VERSION

    return PLOTLY_VERSION


def _bundle_url(cls) -> list[str]:
    from panel.io.resources import component_resource_path

    return [component_resource_path(PlotlyCartesianBundle, "__javascript__", CARTESIAN_BUNDLE)]


def use_cartesian_plotly() -> bool:
    """From now on, pages Panel serves in this process load the vendored cartesian plotly.js instead of the full one.

    Replaces the script list of Panel's ``PlotlyPlot`` model (its place in the page is kept, so
    ``plotly_same_size.js`` still runs after it). Call it in a server process only (``armt-viz serve``, the served
    ``apps/dashboard.py``): a notebook in the same process would lose the full bundle's other trace types.
    Idempotent; ``use_full_plotly()`` undoes it. The environment variable ``ARMT_VIZ_PLOTLY_BUNDLE=full`` keeps
    the full bundle.

    Returns:
        True when the cartesian bundle is in use; False when the full one is kept (asked for by the environment,
        or the vendored version differs from Panel's: then a ``RuntimeWarning`` says so).
    """
    from panel.models.plotly import PlotlyPlot
    from panel.util import classproperty

    choice = os.environ.get(PLOTLY_BUNDLE_ENV, "cartesian").strip().lower()
    if choice not in ("cartesian", "full"):
        raise ValueError(f"{PLOTLY_BUNDLE_ENV}={choice!r}; expected 'cartesian' or 'full'")
    if choice == "full":
        use_full_plotly()
        return False
    vendored, expected = vendored_plotly_version(), panel_plotly_version()
    if vendored != expected:
        warnings.warn(f"the vendored plotly.js cartesian bundle is v{vendored} but Panel's Plotly pane expects "
                      f"v{expected}: serving Panel's full plotly.js instead (update {CARTESIAN_BUNDLE}, see "
                      "vendor/README.md)", RuntimeWarning, stacklevel=2)
        use_full_plotly()
        return False
    if "_armt_full_javascript" not in PlotlyPlot.__dict__:
        PlotlyPlot._armt_full_javascript = PlotlyPlot.__dict__["__javascript__"]
    PlotlyPlot.__javascript__ = classproperty(_bundle_url)
    log.info("pages load plotly.js %s (cartesian bundle) instead of Panel's full bundle", vendored)
    return True


def use_full_plotly() -> None:
    """Undo ``use_cartesian_plotly``: pages load Panel's own full plotly.js again."""
    from panel.models.plotly import PlotlyPlot

    original = PlotlyPlot.__dict__.get("_armt_full_javascript")
    if original is not None:
        PlotlyPlot.__javascript__ = original
        del PlotlyPlot._armt_full_javascript
