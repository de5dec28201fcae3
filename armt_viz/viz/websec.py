"""HTTP hardening of ``armt-viz serve`` (issue 16): security headers with a strict Content-Security-Policy, and a
login that behaves like a real service.

**Headers.** Every response carries ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and a Content-Security-Policy. Scripts may come from this server only
(``'self'``), plus the inline scripts that the page itself was generated with (Bokeh's bootstrap code), which
are allowed one by one by their SHA-256 hash, computed on each HTML response as it leaves the server. Nothing
else inline runs: no ``onerror=`` / ``onload=`` attribute, no ``javascript:`` URL, no ``<script>`` a payload
adds later. ``frame-ancestors 'none'`` forbids framing (click-jacking). Styles stay ``'unsafe-inline'``
(Bokeh and plotly set styles inline; styles run no code). Bokeh needs ``'unsafe-eval'`` (it builds model code
with ``new Function``) and ``blob:`` (Panel loads its component modules from blob URLs): both run only code that
some script already running chose to run, never markup.

**Login** (``ArmtAuthProvider``, replacing Panel's basic-auth handlers):

* credentials compared exactly (no stripping of spaces), in constant time;
* failed logins are rate limited per client address and per user name with exponential backoff (after
  ``FREE_ATTEMPTS`` failures: 1 s, 2 s, 4 s ... up to ``MAX_BACKOFF_S``); while blocked, a login is refused
  with 429 without looking at the password;
* every login gets a server-side session id in its signed cookie; logout (and a server restart) ends the session,
  so a copied cookie is useless afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time

__all__ = ["SecurityHeaders", "install_security_headers", "ArmtAuthProvider", "LoginLimiter", "csp_for"]

log = logging.getLogger(__name__)

_BASE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
             "font-src 'self' data:; connect-src 'self' ws: wss:; worker-src 'self' blob:; object-src 'none'; "
             "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# the module loader Panel bundles (es-module-shims) runs feature-detection scripts (in a srcdoc iframe, whose
# content varies) when it starts; its options script gets a per-response nonce, which it puts on those scripts.
_ESMS_OPTIONS = re.compile(rb'(<script type="esms-options">\s*)\{"shimMode": true\}')
_INLINE_SCRIPT = re.compile(rb"<script(?P<attrs>[^>]*)>(?P<body>.*?)</script>", re.S | re.I)
_EXECUTABLE_TYPES = (b"", b"text/javascript", b"application/javascript", b"module")


def csp_for(html: bytes | None, nonce: str | None = None) -> str:
    """The Content-Security-Policy for a response: inline scripts of ``html`` (the page as generated, before any
    data reached the browser) are allowed by hash; nothing else inline."""
    hashes = []
    for m in _INLINE_SCRIPT.finditer(html or b""):
        attrs = m.group("attrs")
        if re.search(rb"\bsrc\s*=", attrs, re.I):
            continue
        t = re.search(rb"\btype\s*=\s*[\"']?([^\"'\s>]*)", attrs, re.I)
        if (t.group(1).lower() if t else b"") not in _EXECUTABLE_TYPES:
            continue  # data blocks (application/json) are not executed
        digest = base64.b64encode(hashlib.sha256(m.group("body")).digest()).decode()
        hashes.append(f"'sha256-{digest}'")
    # Bokeh evaluates its model code with new Function ('unsafe-eval') and loads Panel's ESM components from
    # blob: URLs; neither lets markup that reached the page run: an inline handler or <script> needs
    # 'unsafe-inline' (absent, and ignored anyway once hashes are listed)
    script = "script-src 'self' 'unsafe-eval' blob: " + " ".join(sorted(set(hashes)))
    if nonce:
        script += f" 'nonce-{nonce}'"
    return f"{_BASE_CSP}; {script.strip()}"


def _security_transform():
    from tornado.web import OutputTransform

    class SecurityHeaders(OutputTransform):
        """Adds the headers of the module docstring to every response of the server."""

        def transform_first_chunk(self, status_code, headers, chunk, finishing):
            ctype = headers.get("Content-Type", "")
            html = chunk if ("text/html" in ctype and finishing) else None
            nonce = None
            if html is not None and _ESMS_OPTIONS.search(html):
                import secrets as _secrets

                nonce = _secrets.token_urlsafe(18)
                chunk = html = _ESMS_OPTIONS.sub(
                    lambda m: m.group(1) + b'{"shimMode": true, "nonce": "' + nonce.encode() + b'"}', html, count=1)
                if "Content-Length" in headers:
                    headers["Content-Length"] = str(len(chunk))
            headers["Content-Security-Policy"] = csp_for(html, nonce)
            headers["X-Frame-Options"] = "DENY"
            headers["X-Content-Type-Options"] = "nosniff"
            headers["Referrer-Policy"] = "no-referrer"
            return status_code, headers, chunk

    return SecurityHeaders


SecurityHeaders = None


def install_security_headers() -> None:
    """Every Bokeh/Panel server created after this call in this process adds ``SecurityHeaders`` (idempotent)."""
    global SecurityHeaders
    from bokeh.server.tornado import BokehTornado

    if getattr(BokehTornado.__init__, "_armt_headers", False):
        return
    SecurityHeaders = _security_transform()
    original = BokehTornado.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.add_transform(SecurityHeaders)

    __init__._armt_headers = True
    BokehTornado.__init__ = __init__


# ------------------------------------------------------------------------------------------------------ login
FREE_ATTEMPTS = 5
MAX_BACKOFF_S = 300.0


class LoginLimiter:
    """Failed-login bookkeeping per key (client address, user name): after ``free`` failures, each further
    attempt must wait ``2**(n - free)`` s (at most ``max_backoff``) after the previous failure."""

    def __init__(self, free: int = FREE_ATTEMPTS, max_backoff: float = MAX_BACKOFF_S, clock=time.monotonic):
        self.free, self.max_backoff, self.clock = free, max_backoff, clock
        self._fails: dict[str, tuple[int, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, *keys: str) -> float:
        """Seconds before any of ``keys`` may try again (0: now)."""
        now = self.clock()
        with self._lock:
            waits = [0.0]
            for k in keys:
                n, last = self._fails.get(k, (0, 0.0))
                if n >= self.free:
                    waits.append(last + min(2.0 ** (n - self.free), self.max_backoff) - now)
            return max(waits)

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self._lock:
            for k in keys:
                n, _ = self._fails.get(k, (0, 0.0))
                self._fails[k] = (n + 1, now)
            if len(self._fails) > 100_000:  # bounded memory under a flood of names
                for k in list(self._fails)[:50_000]:
                    del self._fails[k]

    def succeeded(self, *keys: str) -> None:
        with self._lock:
            for k in keys:
                self._fails.pop(k, None)


def _check(users: dict[str, str], user: str, password: str) -> bool:
    """Exact comparison in constant time (per known user; an unknown user costs the same)."""
    expected = users.get(user)
    ok = hmac.compare_digest((expected if expected is not None else secrets.token_hex(16)).encode("utf-8"),
                             password.encode("utf-8", "surrogatepass"))
    return ok and expected is not None


def make_auth_provider(users: dict[str, str], login_template: str, logout_template: str,
                       limiter: LoginLimiter | None = None):
    """A Panel ``BasicAuthProvider`` with the login described in the module docstring."""
    import tornado.escape
    from panel.auth import BasicAuthProvider, BasicLoginHandler, LogoutHandler, _validate_next_url
    from panel.config import config
    from panel.io.state import state

    limiter = limiter or LoginLimiter()
    sessions: dict[str, str] = {}  # session id -> user; a login adds one, a logout removes it
    lock = threading.Lock()

    class ArmtLoginHandler(BasicLoginHandler):
        def post(self):
            # strip=False: "pw " is not "pw"
            user = self.get_argument("username", "", strip=False)
            password = self.get_argument("password", "", strip=False)
            keys = (f"ip:{self.request.remote_ip}", f"user:{user[:200]}")
            wait = limiter.wait_s(*keys)
            if wait > 0:
                self.set_status(429)
                self.set_header("Retry-After", str(int(wait) + 1))
                self.write(self._login_template.render(
                    login_endpoint=self._login_endpoint,
                    errormessage=f"Too many failed sign-ins: try again in {int(wait) + 1} s."))
                return
            if not _check(users, user, password):
                limiter.failed(*keys)
                log.warning("failed sign-in for %r from %s", user[:80], self.request.remote_ip)
                error = "?error=" + tornado.escape.url_escape("Invalid username or password!")
                self.redirect(self.request.path + error)
                return
            limiter.succeeded(*keys)
            sid = secrets.token_urlsafe(24)
            with lock:
                sessions[sid] = user
            self.clear_cookie("is_guest")
            self.set_secure_cookie("user", user, expires_days=config.oauth_expiry, httponly=True,
                                   path=config.cookie_path)
            self.set_secure_cookie("armt_session", sid, expires_days=config.oauth_expiry, httponly=True,
                                   path=config.cookie_path)
            self.redirect(_validate_next_url(self.get_cookie("next_url", state.base_url)) or "/")

    class ArmtLogoutHandler(LogoutHandler):
        def get(self):
            sid = self.get_secure_cookie("armt_session", max_age_days=config.oauth_expiry)
            if sid:
                with lock:
                    sessions.pop(sid.decode("utf-8", "replace"), None)
            self.clear_cookie("armt_session", path=config.cookie_path)
            self.clear_cookie("user", path=config.cookie_path)
            super().get()

    class ArmtAuthProvider(BasicAuthProvider):
        @property
        def get_user(self):
            def get_user(handler):
                user = handler.get_secure_cookie("user", max_age_days=config.oauth_expiry)
                sid = handler.get_secure_cookie("armt_session", max_age_days=config.oauth_expiry)
                if not user or not sid:
                    return None
                with lock:
                    owner = sessions.get(sid.decode("utf-8", "replace"))
                user = user.decode("utf-8", "replace")
                if owner is None or not hmac.compare_digest(owner.encode(), user.encode()):
                    return None  # logged out, or a cookie from before a restart
                return user
            return get_user

        @property
        def login_handler(self):
            ArmtLoginHandler._login_endpoint = self._login_endpoint
            ArmtLoginHandler._login_template = self._login_template
            return ArmtLoginHandler

        @property
        def logout_handler(self):
            ArmtLogoutHandler._logout_template = self._logout_template
            ArmtLogoutHandler._login_endpoint = self._login_endpoint
            return ArmtLogoutHandler

    provider = ArmtAuthProvider(login_template=login_template, logout_template=logout_template)
    provider.sessions = sessions
    provider.limiter = limiter
    return provider


ArmtAuthProvider = make_auth_provider  # the public name of the factory
