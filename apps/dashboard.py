"""The hosted ARMT dashboard, for ``panel serve apps/dashboard.py`` (or use ``armt-viz serve``).

Serves the traces under ``$ARMT_VIZ_TRACE_ROOT`` (default ``runs``) and nothing outside it. Importing this module
has no side effects: the app is built per browser session, and only when Panel serves this file.

    ARMT_VIZ_TRACE_ROOT=runs panel serve apps/dashboard.py --address 127.0.0.1 --port 5006 \
        [--basic-auth users.json --cookie-secret SECRET]

``armt-viz serve`` adds an offline login page and request-size limits; prefer it for a shared server.
"""

from __future__ import annotations

import os

import panel as pn

from armt_viz.viz.dashboard import build_app

TRACE_ROOT_ENV = "ARMT_VIZ_TRACE_ROOT"


def trace_root() -> str:
    """The configured trace root (``$ARMT_VIZ_TRACE_ROOT``, default ``runs``)."""
    return os.environ.get(TRACE_ROOT_ENV, "runs")


def create_app():
    """One session's dashboard over ``trace_root()``."""
    return build_app(trace_root())


if pn.state.served:
    from armt_viz.viz.dashboard.resources import use_cartesian_plotly

    pn.extension("plotly")
    use_cartesian_plotly()  # plotly.js's cartesian bundle, vendored in armt_viz (ARMT_VIZ_PLOTLY_BUNDLE=full: Panel's)
    create_app().servable()
