"""Hostile traces, links and logins against the served dashboard (issue 16), in headless Chromium.

Every markup payload calls ``pwn(tag)`` (a Playwright binding) or ``alert(tag)`` if it runs; a test fails on any
call or dialog. Positive controls show that the harness sees a call, and that each payload did reach the page as
text. The server runs in this process (``run_serve(threaded=True)``).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import statistics
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "viz"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ui"))
from synthetic import make_trace, write_store  # noqa: E402

from armt_viz.testing import free_port, wait_for_port  # noqa: E402

serve = pytest.importorskip("armt_viz.viz.serve")
CHROMIUM = "/usr/bin/chromium"

# one payload per class: event-handler attributes (img, svg, body-less tags), script elements, javascript: URLs,
# attribute breakouts, iframes with srcdoc, Markdown links and raw HTML, mutation-XSS nesting
PAYLOADS = {
    "img-onerror": "<img src=x onerror=pwn('img')>",
    "svg-onload": "<svg onload=pwn('svg')>",
    "script": "<script>pwn('script')</script>",
    "js-url": "<a id=jsurl href=\"javascript:pwn('jsurl')\">click</a>[md](javascript:pwn('mdlink'))",
    "attr-break": "\"><img src=x onerror=pwn('attr')>'><svg/onload=pwn('attr2')>",
    "iframe": "<iframe srcdoc=\"<script>parent.pwn('iframe')</script>\"></iframe>",
    "details": "<details open ontoggle=pwn('details')>",
    "mxss": "<math><mtext><table><mglyph><style><img src=x onerror=pwn('mxss')>",
    "alert": "<img src=x onerror=alert('dialog')>",
}
NAME_PAYLOADS = {  # folder names cannot hold '/'
    "img-onerror": "<img src=x onerror=pwn('name-img')>",
    "svg-onload": "<svg onload=pwn('name-svg')>",
    "attr-break": "\"'><img src=x onerror=pwn('name-attr')>",
}
SECRET = 424242.0


def _wait(port, timeout=60):
    wait_for_port(port, timeout)


def _get(port, path, headers=None, method="GET", body=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        h = dict(r.getheaders())
        h["Set-Cookie"] = ", ".join(r.msg.get_all("Set-Cookie") or [])
        return r.status, h, r.read()
    finally:
        c.close()


def _set_meta(store: Path, rel: str, edit) -> None:
    p = store / rel
    meta = json.loads(p.read_text())
    edit(meta)
    p.write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory):
    """root/good.zarr, hostile folder names (the newest opens by default), hostile metadata, a chunk linked
    outside, a 10^9 declared dimension; outside/ holds the secret chunk."""
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    good = root / "good.zarr"
    write_store(make_trace(level="writes", n_segments=24), good)
    write_store(make_trace(level="summary", n_segments=24, seed=4), outside / "secret.zarr")
    import zarr
    g = zarr.open_group(str(outside / "secret.zarr"), mode="r+", use_consolidated=False)
    g["assoc_norm"][...] = np.full(g["assoc_norm"].shape, SECRET, np.float32)

    def clone(name):
        shutil.copytree(good, root / name)
        return root / name

    meta = {}
    s = clone("meta_commit.zarr")  # a commit-marker key
    _set_meta(s, "armt_commit.json", lambda m: m["sizes"].update({PAYLOADS["img-onerror"]: 1}))
    meta["commit key"] = ("meta_commit.zarr", "onerror=pwn('img')")
    s = clone("meta_schema.zarr")  # schema_version
    _set_meta(s, "zarr.json", lambda m: m["attributes"].update(schema_version=PAYLOADS["svg-onload"]))
    meta["schema_version"] = ("meta_schema.zarr", "onload=pwn('svg')")
    s = clone("meta_dim.zarr")  # a dimension name
    _set_meta(s, "assoc_norm/zarr.json", lambda m: m.update(dimension_names=[PAYLOADS["script"], "segment", "layer"]))
    meta["dimension name"] = ("meta_dim.zarr", "<script>pwn('script')</script>")
    s = clone("meta_fill.zarr")  # a fill_value
    _set_meta(s, "assoc_norm/zarr.json", lambda m: m.update(fill_value=PAYLOADS["attr-break"]))
    meta["fill_value"] = ("meta_fill.zarr", "onerror=pwn('attr')")
    s = clone("meta_level.zarr")  # the record config's level, shown in the sidebar
    _set_meta(s, "zarr.json", lambda m: m["attributes"].update(record_config=json.dumps(
        {**json.loads(m["attributes"]["record_config"]), "level": PAYLOADS["mxss"]})))
    meta["record level"] = ("meta_level.zarr", None)
    s = clone("escape.zarr")  # a chunk that is a symlink to a file outside the root
    chunk = next(p for p in sorted((s / "assoc_norm" / "c").rglob("*")) if p.is_file())
    secret = next(p for p in sorted((outside / "secret.zarr" / "assoc_norm" / "c").rglob("*")) if p.is_file())
    chunk.unlink()
    chunk.symlink_to(secret)
    s = clone("huge.zarr")  # a declared dimension of 10^9
    _set_meta(s, "keyframe_assoc/zarr.json", lambda m: m.update(shape=m["shape"][:-1] + [10 ** 9]))
    time.sleep(0.05)
    names = {}
    for cls, payload in NAME_PAYLOADS.items():  # newest last: the default trace has a hostile name
        names[cls] = payload + ".zarr"
        shutil.copytree(good, root / names[cls])
    os.utime(root / names["img-onerror"] / "armt_commit.json")
    return {"root": root, "outside": outside, "meta": meta, "names": names}


@pytest.fixture(scope="module")
def server(hostile_root):
    port = free_port()
    srv = serve.run_serve(str(hostile_root["root"]), port=port, threaded=True)
    _wait(port)
    yield port
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    from _browser import launched_chromium
    yield from launched_chromium(CHROMIUM)


_DEEP_TEXT = """() => { const out = [];
    const walk = node => { for (const c of node.childNodes) {
        if (c.nodeType === 3) out.push(c.nodeValue);
        else if (c.nodeType === 1 && !['SCRIPT', 'STYLE'].includes(c.tagName)) {
            if (c.shadowRoot) walk(c.shadowRoot); walk(c); } } };
    walk(document.querySelector('#sidebar') || document.body); return out.join(' '); }"""


class Probe:
    """A page whose ``pwn`` calls and dialogs are recorded."""

    def __init__(self, browser):
        self.context = browser.new_context(viewport={"width": 1300, "height": 900})
        self.calls: list[str] = []
        self.context.expose_function("pwn", lambda tag="?": self.calls.append(str(tag)))
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.page.on("dialog", lambda d: (self.calls.append(f"dialog:{d.message}"), d.dismiss()))

    def load(self, url: str, expect_text: str | None = None) -> str:
        """Go to ``url``, wait for the sidebar to settle, click every link, return the sidebar's text."""
        self.page.goto(url)
        self.page.locator("#sidebar select").first.wait_for()
        deadline = time.time() + 30
        text = ""
        while time.time() < deadline:
            text = self.page.evaluate(_DEEP_TEXT)
            if "Opening" not in text and (expect_text is None or expect_text in text):
                break
            time.sleep(0.2)
        for a in self.page.locator("a[href^='javascript']").all():  # a javascript: link that got through
            try:
                a.click(timeout=2000)
            except Exception:
                pass
        time.sleep(0.5)
        return text

    def close(self):
        self.context.close()


def test_payloads_in_the_url_trace_name_never_run(server, browser):
    probe = Probe(browser)
    try:
        probe.page.goto(f"http://127.0.0.1:{server}/login")  # any page of the app
        probe.page.evaluate("pwn('control')")  # positive control: the harness sees a call
        assert probe.calls == ["control"]
        probe.calls.clear()
        for cls, payload in PAYLOADS.items():
            text = probe.load(f"http://127.0.0.1:{server}/?trace=" + urllib.parse.quote(payload, safe=""),
                              expect_text="efused")
            assert probe.calls == [], (cls, probe.calls)
            shown = payload[:60].replace("\n", " ")
            assert "Refused trace name" in text and shown[:25] in text, (cls, text)  # shown, as text
    finally:
        probe.close()


def test_stored_payloads_in_names_and_metadata_never_run(server, browser, hostile_root):
    probe = Probe(browser)
    try:
        # a plain visit: the newest trace (a hostile folder name) opens by default
        text = probe.load(f"http://127.0.0.1:{server}/", expect_text="segments")
        assert probe.calls == [], probe.calls
        assert NAME_PAYLOADS["img-onerror"] in text, text  # the name is shown, as text
        for cls, name in hostile_root["names"].items():
            text = probe.load(f"http://127.0.0.1:{server}/?trace=" + urllib.parse.quote(name, safe=""),
                              expect_text="segments")
            assert probe.calls == [], (cls, probe.calls)
            assert NAME_PAYLOADS[cls] in text, (cls, text)
        for case, (name, fragment) in hostile_root["meta"].items():
            text = probe.load(f"http://127.0.0.1:{server}/?trace={name}", expect_text=fragment or "level")
            assert probe.calls == [], (case, probe.calls)
            if fragment:
                assert "Cannot open" in text and fragment in text, (case, text)
            assert "/tmp/" not in text and str(hostile_root["root"]) not in text, (case, text)  # no server paths
    finally:
        probe.close()


def test_no_byte_from_outside_the_root_reaches_the_page(server, browser):
    probe = Probe(browser)
    try:
        text = probe.load(f"http://127.0.0.1:{server}/?trace=escape.zarr", expect_text="Cannot open")
        assert "resolves outside the trace folder" in text, text
        data = probe.page.evaluate("""() => { const out = [];
            const walk = root => { root.querySelectorAll('*').forEach(el => {
                if (el.data) out.push(JSON.stringify(el.data)); if (el.shadowRoot) walk(el.shadowRoot); }); };
            walk(document); return out.join(' '); }""")
        assert "424242" not in data
    finally:
        probe.close()


def test_the_page_renders_under_the_content_security_policy(server, browser):
    status, headers, body = _get(server, "/?trace=good.zarr")
    csp = headers.get("Content-Security-Policy", "")
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp.split("script-src")[1], csp
    assert headers.get("X-Frame-Options") == "DENY" and headers.get("X-Content-Type-Options") == "nosniff"
    for path in ("/login", "/static/js/bokeh.min.js", "/nonexistent"):
        assert "frame-ancestors 'none'" in _get(server, path)[1].get("Content-Security-Policy", ""), path
    probe = Probe(browser)
    try:
        probe.load(f"http://127.0.0.1:{server}/?trace=good.zarr", expect_text="segments")
        probe.page.locator(".main-svg").first.wait_for()  # plotly drew under the policy
        assert probe.page.locator(".main-svg").count() >= 1
        # an inline handler added after load is blocked by the policy itself (defence in depth)
        probe.page.evaluate("""() => { const d = document.createElement('div');
            d.innerHTML = "<img src=x onerror=pwn('late')>"; document.body.appendChild(d); }""")
        time.sleep(0.5)
        assert probe.calls == []
    finally:
        probe.close()


def _many_chunks(store: Path, n: int = 15_000) -> None:
    """Two schema arrays declare about as many chunks as the default limits allow, none written: about the most
    work a trace within the limits can ask of a reader."""
    for name in ("spectrum", "keyframe_normalizer"):
        def edit(m):
            m["shape"] = m["shape"][:-1] + [n]
            m["chunk_grid"]["configuration"]["chunk_shape"] = [1] * len(m["shape"])
        _set_meta(store, f"{name}/zarr.json", edit)
    _set_meta(store, "armt_commit.json", lambda m: m.update(dense_chunks=False))


def test_hostile_traces_opening_never_slow_other_sessions(hostile_root):
    """Sessions open a trace declaring 10^9 rows and one declaring as many chunks as the limits allow; another
    session's page load is slowed by less than 2 s (against loads of the same page measured just before, so a
    busy test machine does not decide the outcome; on an idle 2-core machine a load takes ~0.5 s)."""
    heavy = hostile_root["root"] / "heavy.zarr"
    if not heavy.exists():
        shutil.copytree(hostile_root["root"] / "good.zarr", heavy)
        _many_chunks(heavy)
    port = free_port()
    srv = serve.run_serve(str(hostile_root["root"]), port=port, threaded=True)
    try:
        _wait(port)
        assert _get(port, "/?trace=good.zarr")[0] == 200  # warm-up: the first session

        def alongside(other: str) -> float:
            """Load time of good.zarr's page while another visitor opens ``other``."""
            t = threading.Thread(target=_get, args=(port, f"/?trace={other}"), daemon=True)
            t.start()
            time.sleep(0.3)
            t1 = time.perf_counter()
            assert _get(port, "/?trace=good.zarr")[0] == 200
            elapsed = time.perf_counter() - t1
            t.join(60)
            return elapsed

        # interleaved, and compared by their medians: one page load that a loaded CI machine stalls (seen: 6.6 s
        # once among 3 s loads) must not decide; a blocked event loop (main before issue 16: 6.5-20 s for every
        # visitor while a hostile trace opened) slows every load and still fails this
        baseline, times = [], []
        for other in ("heavy.zarr", "huge.zarr", "heavy.zarr"):
            baseline.append(alongside("good.zarr"))
            times.append(alongside(other))
        assert statistics.median(times) < statistics.median(baseline) + 2.0, (times, baseline)
    finally:
        srv.stop()


def test_a_scan_over_its_time_limit_is_stopped_and_the_worker_replaced(hostile_root):
    from armt_viz.viz.dashboard import loaders
    good = str(hostile_root["root"] / "good.zarr")
    assert loaders.scan_isolated(good, timeout=120).arrays  # the worker runs (and is started)
    with pytest.raises(TimeoutError, match="took longer than"):
        loaders.scan_isolated(str(hostile_root["root"] / "heavy.zarr"), timeout=0.001)
    assert loaders.scan_isolated(good, timeout=120).arrays  # a new worker took its place


# ---------------------------------------------------------------- authentication

@pytest.fixture(scope="module")
def auth_server(hostile_root):
    port = free_port()
    srv = serve.run_serve(str(hostile_root["root"]), port=port, threaded=True, basic_auth="ana:wonder land",
                          cookie_secret="test-secret-0123456789")
    _wait(port)
    yield port
    srv.stop()


_FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _login(port, user, pw, ip_headers=None):
    return _get(port, "/login", headers={**_FORM, **(ip_headers or {})}, method="POST",
                body=urllib.parse.urlencode({"username": user, "password": pw}))


def _cookies(headers) -> str:
    raw = headers.get("Set-Cookie", "")
    return "; ".join(c.split(";", 1)[0] for c in re.split(r",\s*(?=[A-Za-z_]+=)", raw) if "=" in c)


def test_credentials_are_compared_exactly_and_logout_ends_the_session(auth_server):
    for pw in (" wonder land", "wonder land ", "wonder  land", "WONDER LAND"):
        status, headers, _ = _login(auth_server, "ana", pw)
        assert "armt_session" not in headers["Set-Cookie"], pw
    status, headers, _ = _login(auth_server, "ana", "wonder land")
    cookies = _cookies(headers)
    assert status == 302 and "armt_session=" in cookies, (status, headers)
    assert _get(auth_server, "/?trace=good.zarr", headers={"Cookie": cookies})[0] == 200
    assert _get(auth_server, "/logout", headers={"Cookie": cookies})[0] == 200
    status, headers, _ = _get(auth_server, "/?trace=good.zarr", headers={"Cookie": cookies})
    assert status in (302, 401, 403), "a cookie stayed valid after logout"


def test_failed_logins_are_rate_limited_with_backoff(auth_server):
    t0 = time.perf_counter()
    codes = [_login(auth_server, "bob", f"guess{i}")[0] for i in range(30)]
    assert codes[:5] == [302] * 5 and set(codes[5:]) == {429}, codes
    status, headers, body = _login(auth_server, "bob", "guess")
    assert status == 429 and int(headers["Retry-After"]) >= 1 and b"try again in" in body
    assert time.perf_counter() - t0 < 20  # refusals are cheap for the server


def test_credentials_come_from_a_file_or_the_environment(tmp_path, monkeypatch, caplog):
    import logging

    from armt_viz.viz.serve import parse_basic_auth
    f = tmp_path / "users.json"
    f.write_text(json.dumps({"ana": " spaced "}))
    assert parse_basic_auth(str(f)) == {"ana": " spaced "}  # kept exactly
    monkeypatch.setenv("ARMT_VIZ_BASIC_AUTH", str(f))
    monkeypatch.setattr(sys, "argv", ["armt-viz", "serve", "--basic-auth", "ana:inline-pw"])
    root = tmp_path / "r"
    root.mkdir()
    for spec, warned in ((None, False), ("ana:inline-pw", True)):
        port = free_port()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="armt_viz.viz.serve"):
            srv = serve.run_serve(str(root), port=port, threaded=True, basic_auth=spec)
        try:
            _wait(port)
            assert _get(port, "/")[0] in (302, 401, 403)
            assert ("command line" in caplog.text) == warned, caplog.text
        finally:
            srv.stop()


# ---------------------------------------------------------------- the session, without a browser

def test_url_values_that_do_not_fit_are_named_not_dropped(hostile_root):
    from armt_viz.viz.dashboard.store import TraceStore
    st = TraceStore(trace_root=str(hostile_root["root"]), trace="good.zarr")
    assert st.ds is not None
    st.apply_url_values({"layer": "abc", "segment": 10 ** 6, "sample": 0})
    assert "layer='abc'" in st.notice and "segment='1000000'" in st.notice and "Ignored URL values" in st.notice


def test_export_of_missing_data_is_refused_and_said(reference, tmp_path):
    from armt_viz.viz.dashboard.store import TraceStore
    root = tmp_path / "root"
    shutil.copytree(reference.encoding["source"], root / "t.zarr")  # recorded: every chunk is written
    st = TraceStore(trace_root=str(root), trace="t.zarr")
    assert st.ds is not None, st.status
    for p in (root / "t.zarr" / "write_key" / "c").rglob("*"):
        if p.is_file():
            p.unlink()  # deleted while the session shows the trace
    assert st._export_selection() is None
    assert st.status.startswith("Export refused: MissingChunkError") and "'write_key'" in st.status, st.status
    assert str(tmp_path) not in st.status  # no server paths on the page
