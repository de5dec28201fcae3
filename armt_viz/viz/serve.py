"""``run_serve``: serve the Panel dashboard over a trace root (``armt-viz serve``), offline and optionally
behind a login.

* Only traces under ``trace_root`` are listed and opened (``viz.paths``); each browser session gets its own
  ``TraceStore`` (selection), while loaded data is shared through ``pn.cache``.
* ``basic_auth``: the path of a JSON file ``{"user": "password", ...}`` or ``"user:password"``; when not given,
  the environment variable ``ARMT_VIZ_BASIC_AUTH`` (same forms). A password on the command line shows in ``ps``
  to every user of the machine: a warning says so. Panel's login page is replaced by one that loads nothing from
  a CDN; logins are rate limited, compared exactly, and end at logout (``websec.py``); cookies are signed with
  ``cookie_secret`` (a random one per process when not given, so logins do not survive a restart).
* Every response carries a strict Content-Security-Policy, ``frame-ancestors 'none'`` and ``X-Frame-Options``
  (``websec.py``).
* Requests are bounded: websocket messages and HTTP bodies have size limits, sessions unused for a minute are
  dropped. The websocket origin is limited to the serving address (extend it with the environment variable
  ``ARMT_VIZ_WEBSOCKET_ORIGIN``, comma-separated ``host:port``, when serving behind a proxy or on 0.0.0.0).
* Pages load plotly.js's cartesian bundle, vendored in this package (``dashboard/resources.py``); set
  ``ARMT_VIZ_PLOTLY_BUNDLE=full`` to send Panel's full plotly.js instead.
"""

from __future__ import annotations

import os

# Many small linear-algebra calls (an SVD of A per segment move) from concurrent sessions: threaded OpenBLAS
# oversubscribes a small machine (a 192x128 SVD took 30-500 ms with 2 threads, 1 ms with 1). Takes effect when
# this module is imported before numpy, as `armt-viz serve` does.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import json  # noqa: E402
import logging  # noqa: E402
import secrets  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

__all__ = ["run_serve", "parse_basic_auth", "LOGIN_TEMPLATE", "LOGOUT_TEMPLATE", "BASIC_AUTH_ENV"]

BASIC_AUTH_ENV = "ARMT_VIZ_BASIC_AUTH"

log = logging.getLogger(__name__)

MAX_WEBSOCKET_MESSAGE = 16 * 1024 * 1024   # bytes; widget events are tiny, uploads are not accepted
MAX_HTTP_BODY = 64 * 1024                  # bytes; only the login form posts

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ARMT memory explorer · {title}</title><link rel="icon" href="data:,">
<style>
 body {{ margin: 0; font-family: Inter, 'Segoe UI', Roboto, 'Helvetica Neue', 'DejaVu Sans', Arial, sans-serif;
        background: #F5F7F9; color: #202124; }}
 header {{ background: #17324D; color: white; padding: 14px 24px; font-size: 18px; }}
 .card {{ max-width: 360px; margin: 72px auto; background: white; border: 1px solid #E3E6EA; border-radius: 8px;
         padding: 28px 32px; box-shadow: 0 1px 2px rgba(32,33,36,.06); }}
 label {{ display: block; font-size: 13px; margin: 14px 0 4px; color: #3C4043; }}
 input {{ width: 100%; box-sizing: border-box; padding: 9px 10px; border: 1px solid #C5C9CE; border-radius: 6px;
         font-size: 14px; }}
 button, a.button {{ margin-top: 22px; width: 100%; padding: 10px; border: 0; border-radius: 6px; background: #0072B2;
          color: white; font-size: 14px; cursor: pointer; display: block; text-align: center; text-decoration: none; }}
 .error {{ color: #B2182B; font-size: 13px; min-height: 1em; }}
</style></head>
<body><header>ARMT memory explorer</header><div class="card">{body}</div></body></html>
"""
LOGIN_TEMPLATE = _PAGE.format(title="sign in", body="""
<h3 style="margin-top:0">Sign in</h3>
<p class="error">{{ errormessage|escape }}</p>
<form action=".{{ login_endpoint }}" method="post">
  <label for="username">User name</label>
  <input id="username" name="username" type="text" autocapitalize="off" autocorrect="off" autocomplete="username">
  <label for="password">Password</label>
  <input id="password" name="password" type="password" autocomplete="current-password">
  <button type="submit">Sign in</button>
</form>""")
LOGOUT_TEMPLATE = _PAGE.format(title="signed out", body="""
<h3 style="margin-top:0">Signed out</h3>
<a class="button" href=".{{ LOGIN_ENDPOINT }}">Sign in again</a>""")


def parse_basic_auth(spec: str | None) -> dict[str, str] | None:
    """``"user:password"`` or a JSON file ``{"user": "password"}`` -> ``{user: password}``; None -> None.

    Raises:
        ValueError: an empty user or password, or a file that is not a JSON object of strings.
    """
    if spec is None or spec == "":
        return None
    if os.path.isfile(spec):
        try:
            users = json.loads(Path(spec).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--basic-auth file {spec!r} is not readable JSON ({exc}); expected "
                             '{"user": "password", ...}') from exc
        if not isinstance(users, dict) or not users or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in users.items()):
            raise ValueError(f"--basic-auth file {spec!r} must hold a non-empty JSON object of "
                             'non-empty strings, {"user": "password", ...}')
        return dict(users)
    user, sep, password = spec.partition(":")
    if not sep or not user or not password:
        raise ValueError("--basic-auth expects 'user:password' (both non-empty) or the path of a JSON file "
                         '{"user": "password", ...}; received a value without a user and a password')
    return {user: password}


def _origins(address: str, port: int) -> list[str]:
    hosts = {address, "127.0.0.1", "localhost"} if address in ("127.0.0.1", "localhost") else {address}
    extra = [o.strip() for o in os.environ.get("ARMT_VIZ_WEBSOCKET_ORIGIN", "").split(",") if o.strip()]
    return sorted({f"{h}:{port}" for h in hosts} | set(extra))


_COMPONENT_PACKAGES = ("panel", "panel_material_ui", "bokeh", "param", "armt_viz")


def restrict_component_route() -> None:
    """Panel's `/components/<module>/...` route imports whatever module the URL names (running its top-level
    code, even before login). Allow only modules that are already imported and belong to the packages the
    page itself uses; anything else is a 404 before any import happens."""
    import sys

    from panel.io.server import ComponentResourceHandler
    from tornado.web import HTTPError

    if getattr(ComponentResourceHandler.parse_url_path, "_armt_restricted", False):
        return
    original = ComponentResourceHandler.parse_url_path

    def parse_url_path(self, path: str) -> str:
        mod = path.split("/", 1)[0]
        if mod.split(".")[0] not in _COMPONENT_PACKAGES or mod not in sys.modules:
            raise HTTPError(404, "Module not found")
        return original(self, path)

    parse_url_path._armt_restricted = True
    ComponentResourceHandler.parse_url_path = parse_url_path


def run_serve(trace_root: str, port: int = 5006, address: str = "127.0.0.1", basic_auth: str | None = None,
              cookie_secret: str | None = None, show: bool = False, *, threaded: bool = False):
    """Serve the dashboard over ``trace_root`` at ``http://address:port/`` until interrupted.

    Args:
        trace_root: the only folder whose traces are listed and opened.
        port, address: where to listen (default 127.0.0.1: this machine only).
        basic_auth: ``"user:password"`` or a JSON file of users (see ``parse_basic_auth``); None: no login.
        cookie_secret: secret that signs login cookies (random per process when omitted).
        show: open a browser tab.
        threaded: start in a background thread and return it (``.stop()`` ends it), for tests.

    Returns:
        0 after the server stops, or the server thread when ``threaded``.
    """
    import panel as pn

    from .dashboard import APP_TITLE, build_app

    from .websec import install_security_headers, make_auth_provider

    restrict_component_route()
    install_security_headers()
    root = os.path.realpath(trace_root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"--trace-root {trace_root!r} is not a directory; create it or record a trace "
                                "into it first (armt-viz record --store DIR/run.zarr)")
    if basic_auth is None:
        basic_auth = os.environ.get(BASIC_AUTH_ENV) or None
    elif not os.path.isfile(basic_auth) and any(basic_auth in a for a in __import__("sys").argv[1:]):
        log.warning("the --basic-auth password was given on the command line, where every user of this machine "
                    "can read it (ps); pass a JSON file of users or set $%s instead", BASIC_AUTH_ENV)
    users = parse_basic_auth(basic_auth)
    kwargs = {}
    if users:
        if not cookie_secret:
            cookie_secret = secrets.token_urlsafe(32)
            log.info("no --cookie-secret given: using a random one (logins end when the server restarts)")
        tmp = Path(tempfile.mkdtemp(prefix="armt_viz_auth_"))
        (tmp / "login.html").write_text(LOGIN_TEMPLATE, encoding="utf-8")
        (tmp / "logout.html").write_text(LOGOUT_TEMPLATE, encoding="utf-8")
        provider = make_auth_provider(users, str(tmp / "login.html"), str(tmp / "logout.html"))
        kwargs.update(auth_provider=provider, cookie_secret=cookie_secret)
    def app():  # one store and set of views per browser session
        return build_app(root)

    import threading

    from .dashboard import loaders
    from .dashboard.loaders import warm

    # a worker process checks every trace folder before this process reads it (loaders.scan_isolated)
    loaders.ISOLATE_SCAN = True
    loaders.start_scan_worker()
    # load the newest trace while the server starts, so the first visitor does not pay for it (a hostile one is
    # refused by the worker, within the time limit)
    threading.Thread(target=warm, args=(root,), name="armt-warm", daemon=True).start()

    pn.extension("plotly")
    from .dashboard.resources import use_cartesian_plotly

    use_cartesian_plotly()  # plotly.js's cartesian bundle (1.3 MB) instead of the full one (4.7 MB)
    log.info("serving traces under %s at http://%s:%d/", root, address, port)
    server = pn.serve(
        {"/": app}, port=port, address=address, websocket_origin=_origins(address, port),
        show=show, title=APP_TITLE, threaded=threaded, verbose=not threaded, admin=False,
        websocket_max_message_size=MAX_WEBSOCKET_MESSAGE,
        http_server_kwargs={"max_body_size": MAX_HTTP_BODY, "max_buffer_size": MAX_WEBSOCKET_MESSAGE},
        unused_session_lifetime_milliseconds=60_000, check_unused_sessions_milliseconds=10_000,
        **kwargs,
    )
    return server if threaded else 0
