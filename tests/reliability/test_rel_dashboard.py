"""The served dashboard under hostile requests (issue 8.4), over real HTTP/websocket on 127.0.0.1.

`run_serve(..., threaded=True)` serves in this process, so a spy on `zarr.open_group` sees every store the
server opens: a crafted trace name must never open anything outside the trace root (traversal, URL encoding,
absolute paths, symlinks). The function-level and browser-level checks are in tests/viz/test_paths.py and
tests/ui; the 20-session load test is bench/load_dashboard.py.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import sys
import time
import urllib.parse

import pytest
from armt_viz.testing import free_port, wait_for_port  # noqa: E402

serve = pytest.importorskip("armt_viz.viz.serve", reason="the dashboard server (armt_viz/viz/serve.py) is not there yet")




def _wait(port, timeout=60):
    wait_for_port(port, timeout)


@pytest.fixture(scope="module")
def layout(reference, tmp_path_factory):
    """root/good.zarr, root/live.zarr.partial (a recording before its first commit), outside/secret.zarr,
    root/link_out.zarr -> outside/secret.zarr and root/linked_dir -> outside/."""
    base = tmp_path_factory.mktemp("dash")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    src = reference.encoding["source"]
    shutil.copytree(src, root / "good.zarr")
    shutil.copytree(src, outside / "secret.zarr")
    shutil.copytree(src, root / "live.zarr.partial", ignore=shutil.ignore_patterns("armt_commit.json"))
    os.symlink(outside / "secret.zarr", root / "link_out.zarr")
    os.symlink(outside, root / "linked_dir")
    return {"root": root, "outside": outside, "base": base}


@pytest.fixture(scope="module")
def opened():
    """Every path zarr.open_group is called with, from any thread, while the module runs."""
    import zarr
    seen: list[str] = []
    real = zarr.open_group

    def spy(store=None, *a, **k):
        seen.append(os.path.realpath(str(getattr(store, "root", store))))  # a path or a (confined) zarr store
        return real(store, *a, **k)

    zarr.open_group = spy
    yield seen
    zarr.open_group = real


def _start(root, **kw):
    port = free_port()
    srv = serve.run_serve(str(root), port=port, threaded=True, **kw)
    _wait(port)
    return srv, port


@pytest.fixture(scope="module")
def server(layout, opened):
    srv, port = _start(layout["root"])
    yield port
    srv.stop()


def _get(port, path, headers=None, method="GET", body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        headers = dict(r.getheaders())
        headers["Set-Cookie"] = ", ".join(r.msg.get_all("Set-Cookie") or [])  # every cookie, not the last one
        return r.status, headers, r.read()
    finally:
        c.close()


def _raw(port, data: bytes) -> bytes:
    """Send bytes as they are (no client-side URL normalisation); the reply, or b'' if the server hung up."""
    c = socket.create_connection(("127.0.0.1", port), timeout=30)
    out = b""
    try:
        c.sendall(data)
        while chunk := c.recv(65536):
            out += chunk
    except OSError:  # reset by the server: refused
        pass
    finally:
        c.close()
    return out


def _outside(paths, root):
    root = os.path.realpath(root)
    return [p for p in paths if os.path.commonpath([root, p]) != root]


# ---------------------------------------------------------------- crafted trace names in the page URL

EVIL_NAMES = [  # each is one page load, i.e. one full server-side session (~0.5 s)
    "../outside/secret.zarr", "good.zarr/../../outside/secret.zarr", "..%2Foutside%2Fsecret.zarr",
    "%252E%252E%252Foutside%252Fsecret.zarr", "..\\outside\\secret.zarr", "link_out.zarr", "linked_dir/secret.zarr",
    "/etc", "good.zarr\x00../../outside/secret.zarr", "live.zarr.partial/../../outside/secret.zarr",
]


def test_trace_names_in_the_url_never_open_anything_outside_the_root(server, layout, opened):
    outside = layout["outside"] / "secret.zarr"
    status, _, body = _get(server, "/?trace=good.zarr")  # positive control: the spy sees what is opened
    assert status == 200
    deadline = time.time() + 60  # the trace opens off the event loop, shortly after the page is served
    while not any(p == os.path.realpath(layout["root"] / "good.zarr") for p in opened) and time.time() < deadline:
        time.sleep(0.1)
    assert any(p == os.path.realpath(layout["root"] / "good.zarr") for p in opened), opened
    for name in EVIL_NAMES + [str(outside)]:
        q = urllib.parse.quote(name, safe="%/") if "%" in name else urllib.parse.quote(name, safe="")
        status, _, body = _get(server, f"/?trace={q}")
        assert status in (200, 400, 403, 404), (name, status)
        assert not _outside(opened, layout["root"]), (name, _outside(opened, layout["root"]))
    assert _get(server, "/")[0] == 200  # still serving


STATIC_PATHS = [
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/extensions/panel/../../../../../../etc/passwd",
    "/static/extensions/panel/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/extensions/panel/..%5c..%5c..%5c..%5cetc%5cpasswd", "/static//etc/passwd", "//etc/passwd",
    "/..%2f..%2f..%2fetc/passwd", "/components/panel/../../../etc/passwd", "/good.zarr/zarr.json",
    "/static/good.zarr/zarr.json", "/static/../good.zarr/armt_commit.json", "/link_out.zarr/zarr.json",
    "/components/../../../../etc/passwd",
]


@pytest.mark.parametrize("path", STATIC_PATHS)
def test_static_routes_serve_nothing_outside_their_folders(server, path):
    reply = _raw(server, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server}\r\nConnection: close\r\n\r\n".encode())
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
    assert status in (400, 403, 404, 500), (path, reply[:200])
    assert b"root:x:0:0" not in reply and b"zarr_format" not in reply and b"sizes" not in reply


def test_component_route_does_not_import_modules_named_in_the_url(server):
    name = "this"  # the stdlib easter egg: importing it prints the Zen of Python
    if name in sys.modules:
        pytest.skip("already imported")
    _raw(server, f"GET /components/{name}/x/_resources/y HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
    assert name not in sys.modules


def test_a_recording_in_progress_is_not_listed(layout):
    from armt_viz.viz.paths import list_traces
    assert "live.zarr.partial" not in list_traces(layout["root"])


# ---------------------------------------------------------------- oversized and malformed requests

def _ws_token(port, path="/", headers=None):
    status, _, body = _get(port, path, headers=headers)
    assert status == 200
    return re.findall(rb'"token":\s*"([^"]+)"', body)[0].decode()


def test_oversized_and_malformed_requests_are_refused(server):
    import websocket
    host = f"Host: 127.0.0.1:{server}\r\n"
    cases = {
        "malformed request line": b"GARBAGE\r\n\r\n",
        "binary junk": bytes(range(256)) * 4 + b"\r\n\r\n",
        "200 kB header": f"GET / HTTP/1.1\r\n{host}X-Big: {'a' * 200_000}\r\n\r\n".encode(),
        "200 kB body (limit 64 kB)": f"POST / HTTP/1.1\r\n{host}Content-Length: 200000\r\nConnection: close\r\n\r\n".encode() + b"a" * 200_000,
        "absurd Content-Length": f"POST / HTTP/1.1\r\n{host}Content-Length: 99999999999\r\nConnection: close\r\n\r\nabc".encode(),
        "negative Content-Length": f"POST / HTTP/1.1\r\n{host}Content-Length: -5\r\nConnection: close\r\n\r\nabc".encode(),
        "HTTP/0.9": b"GET /\r\n\r\n",
    }
    for name, data in cases.items():
        reply = _raw(server, data)
        assert reply == b"" or re.match(rb"HTTP/1\.[01] (400|405|413|414|431)", reply), (name, reply[:120])

    url = f"ws://127.0.0.1:{server}/ws"
    origin = f"http://127.0.0.1:{server}"
    ws = websocket.create_connection(url, subprotocols=["bokeh", _ws_token(server)], origin=origin, timeout=30)
    assert "ACK" in ws.recv()
    with pytest.raises((websocket.WebSocketException, OSError)):  # 17 MiB > the 16 MiB message limit
        ws.send("x" * (17 * 1024 * 1024))
        ws.recv()
    ws.close()
    ws = websocket.create_connection(url, subprotocols=["bokeh", _ws_token(server)], origin=origin, timeout=30)
    assert "ACK" in ws.recv()
    for junk in ("{", "[]", '{"msgtype": "PATCH-DOC"}', "\x00" * 100):  # not bokeh protocol frames
        try:
            ws.send(junk)
        except (websocket.WebSocketException, OSError):
            break
    ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException):  # another site's page may not connect
        websocket.create_connection(url, subprotocols=["bokeh", _ws_token(server)], origin="http://evil.example",
                                    timeout=30)
    with pytest.raises((websocket.WebSocketException, OSError)):  # a forged session token
        w = websocket.create_connection(url, subprotocols=["bokeh", "forged.token"], origin=origin, timeout=30)
        w.recv()
    assert _get(server, "/")[0] == 200  # the server survived all of it


# ---------------------------------------------------------------- authentication

def test_authentication_is_enforced_when_configured(layout, opened):
    import websocket
    srv, port = _start(layout["root"], basic_auth="alice:s3cret-pw")
    try:
        n_opened = len(opened)
        for path in ("/", "/?trace=good.zarr"):
            status, headers, _ = _get(port, path)
            assert status in (302, 401, 403), (path, status)
            assert status != 302 or "login" in headers.get("Location", ""), headers
        assert len(opened) == n_opened  # nothing was opened for an anonymous request
        with pytest.raises(websocket.WebSocketBadStatusException):
            websocket.create_connection(f"ws://127.0.0.1:{port}/ws", subprotocols=["bokeh", "x.y"],
                                        origin=f"http://127.0.0.1:{port}", timeout=30)
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        login_cookie = re.compile(r"\b(user|id_token|access_token)=")
        for user, pw in (("alice", "wrong"), ("mallory", "s3cret-pw"), ("alice", ""), ("", "")):
            status, headers, _ = _get(port, "/login", headers=form, method="POST",
                                      body=urllib.parse.urlencode({"username": user, "password": pw}))
            assert not login_cookie.search(headers.get("Set-Cookie", "")), (user, pw, headers)
        status, headers, _ = _get(port, "/login", headers=form, method="POST",
                                  body=urllib.parse.urlencode({"username": "alice", "password": "s3cret-pw"}))
        cookie = headers.get("Set-Cookie", "")
        assert status in (200, 302) and login_cookie.search(cookie), (status, headers)
        cookies = "; ".join(c.split(";", 1)[0] for c in re.split(r",\s*(?=[A-Za-z_]+=)", cookie))
        assert _get(port, "/?trace=good.zarr", headers={"Cookie": cookies})[0] == 200
        tampered = re.sub(r"=\"?2\|[^;]*", '="2|1:0|10:1|8:id_token|8:YWxpY2U=|00"', cookies)  # bad signature
        assert tampered != cookies
        assert _get(port, "/", headers={"Cookie": tampered})[0] in (302, 401, 403)
    finally:
        srv.stop()
