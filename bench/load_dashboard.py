"""Bounded load test of the served dashboard: N concurrent sessions for T seconds against `armt-viz serve`.

Starts the real CLI (`armt-viz serve --trace-root ROOT --port P --address 127.0.0.1`) in a subprocess, then runs
N client sessions in threads. Each session is a real Bokeh/Panel session: `bokeh.client.pull_session` loads the
page's document over the websocket (as a browser does), then the session moves the Segment and Layer sliders
every 0.3-1 s and waits for the server to apply it (a round trip; the server recomputes the views); it is held
for the whole wave (or, with --renew R, replaced by a fresh one about every R s). `--browsers` of the sessions are headless Chromium
pages instead (Playwright, /usr/bin/chromium), which type a segment and wait until the association-matrix figure
shows it. Plain HTTP page loads run alongside.

Reported: sessions held, moves and their latency, page loads and their latency, errors (client exceptions,
browser page errors, non-200 replies, ERROR/Traceback lines in the server log), server RSS before, peak, right
after the sessions close and after --settle idle seconds, per wave (--waves load phases: a later wave must not
need more than 1.2x the first one's peak, i.e. memory is bounded), and the RSS slope of the last wave.

    PYTHONPATH=. .venv/bin/python bench/load_dashboard.py [--sessions 20] [--duration 60] [--trace-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from armt_viz.testing import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[1]




def make_trace_root(root: Path, segments: int) -> Path:
    """A trace root with one `writes` trace of a tiny model on a stream task (with its fact ledger)."""
    import numpy as np

    import armt_viz as av
    from armt_viz.tasks import StreamConfig, make_stream
    from armt_viz.testing import tiny_model
    cfg = StreamConfig(n_keys=16, key_size=1, value_size=1, segment_size=16, events_per_segment=2, seed=3)
    task = make_stream(cfg, segments * 16)
    ids = np.stack([task.input_ids % 32, task.input_ids[::-1] % 32])
    root.mkdir(parents=True, exist_ok=True)
    av.record(tiny_model(seed=1), ids, store=root / "load.zarr", level="writes", keyframe_every=16,
              chunk_segments=32, ledger=task.ledger, probes=[(0, 100), (1, 200)], seed=3, progress=False,
              description="load test stream")
    return root


def rss_mb(pid: int) -> float:
    import psutil
    p = psutil.Process(pid)
    return (p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))) / 2**20


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.moves = self.sessions = self.page_loads = self.browser_moves = self.held_to_end = 0
        self.page_latency: list[float] = []
        self.move_latency: list[float] = []
        self.browser_latency: list[float] = []
        self.pull_latency: list[float] = []
        self.errors: list[str] = []
        self.live = 0
        self.max_live = 0

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)
            self.max_live = max(self.max_live, self.live)

    def error(self, msg):
        with self.lock:
            self.errors.append(msg[:300])


def _client_models() -> None:
    """Register Panel's Bokeh models in this process, or the client cannot decode the documents it pulls."""
    import panel  # noqa: F401
    import panel.models  # noqa: F401
    import panel.models.location  # noqa: F401
    import panel.models.plotly  # noqa: F401


def session_worker(url: str, deadline: float, stats: Stats, seed: int, renew: float = 0.0) -> None:
    from bokeh.client import pull_session
    from bokeh.models import Slider
    rng = random.Random(seed)
    while time.time() < deadline:
        t0 = time.time()
        try:
            session = pull_session(url=url)
        except Exception as exc:  # noqa: BLE001 - everything counts as an error here
            stats.error(f"pull_session: {type(exc).__name__}: {exc}")
            time.sleep(1)
            continue
        stats.pull_latency.append(time.time() - t0)
        stats.add(sessions=1, live=1)
        doc = session.document
        renew_at = time.time() + rng.uniform(0.5 * renew, 1.5 * renew) if renew > 0 else deadline
        try:
            sliders = [m for m in doc.models if isinstance(m, Slider)]
            if not sliders:
                stats.error("no slider in the session document (the page did not load a trace?)")
            while time.time() < min(deadline, renew_at) and sliders:
                s = rng.choice(sliders)  # Segment or Layer: a value within its own bounds
                s.value = rng.randint(int(s.start), max(int(s.start), int(s.end)))
                t1 = time.time()
                session.force_roundtrip()  # sends the change; the server applies it before it answers
                stats.move_latency.append(time.time() - t1)
                stats.add(moves=1)
                if not session.connected:
                    stats.error("session disconnected by the server")
                    break
                time.sleep(rng.uniform(0.3, 1.0))
            if time.time() >= deadline and session.connected:
                stats.add(held_to_end=1)
        except Exception as exc:  # noqa: BLE001
            stats.error(f"session: {type(exc).__name__}: {exc}")
        finally:
            stats.add(live=-1)
            try:
                session.close()
            except Exception:  # noqa: BLE001
                pass


def browser_worker(url: str, n_pages: int, deadline: float, stats: Stats, seed: int) -> None:
    """n headless Chromium pages (one browser): each moves the Segment control and waits until the
    association-matrix figure shows the new segment (end-to-end latency through the real UI)."""
    from playwright.sync_api import sync_playwright
    rng = random.Random(seed)
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)
        pages = []
        try:
            for _ in range(n_pages):
                page = browser.new_page(viewport={"width": 1200, "height": 1600})
                page.on("pageerror", lambda exc: stats.error(f"browser page error: {exc}"))
                page.goto(url, timeout=120_000)
                page.locator(".gtitle", has_text="Association matrix").first.wait_for(timeout=120_000)
                pages.append(page)
                stats.add(sessions=1, live=1)
            while time.time() < deadline:
                for page in pages:
                    box = page.get_by_label("Segment", exact=True)
                    hi = int(box.get_attribute("max") or 1)
                    v = rng.randint(0, hi)
                    t0 = time.time()
                    box.fill(str(v))
                    box.press("Enter")
                    page.locator(".gtitle", has_text=f"Association matrix · segment {v}").first.wait_for(
                        timeout=60_000)
                    stats.browser_latency.append(time.time() - t0)
                    stats.add(browser_moves=1)
                    if time.time() >= deadline:
                        break
            stats.add(held_to_end=sum(not pg.is_closed() for pg in pages))
        except Exception as exc:  # noqa: BLE001
            stats.error(f"browser: {type(exc).__name__}: {str(exc)[:200]}")
        finally:
            stats.add(live=-len(pages))
            browser.close()


def page_worker(url: str, deadline: float, stats: Stats) -> None:
    while time.time() < deadline:
        t0 = time.time()
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                r.read()
                if r.status != 200:
                    stats.error(f"GET / -> {r.status}")
        except Exception as exc:  # noqa: BLE001
            stats.error(f"GET /: {type(exc).__name__}: {exc}")
        stats.page_latency.append(time.time() - t0)
        stats.add(page_loads=1)
        time.sleep(1.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=20, help="concurrent sessions in all (protocol clients + browsers)")
    ap.add_argument("--browsers", type=int, default=3, help="how many of the sessions are headless Chromium pages")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--trace-root", default=None, help="serve this root (default: record a small one in a temp dir)")
    ap.add_argument("--segments", type=int, default=256, help="length of the generated trace")
    ap.add_argument("--settle", type=float, default=75.0,
                    help="idle seconds after the load before the last RSS reading (the server drops sessions "
                         "unused for 60 s)")
    ap.add_argument("--renew", type=float, default=0.0,
                    help="replace each protocol session by a fresh one about every RENEW s (0: hold it all wave)")
    ap.add_argument("--waves", type=int, default=2,
                    help="load phases (each --duration long, then --settle idle): equal peaks mean bounded memory")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)

    tmp = None
    if a.trace_root:
        root = Path(a.trace_root)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="armt_load_"))
        t = time.time()
        root = make_trace_root(tmp / "root", a.segments)
        print(f"recorded a {a.segments}-segment trace in {time.time() - t:.1f} s")
    port = free_port()
    exe = shutil.which("armt-viz", path=str(Path(sys.executable).parent)) or shutil.which("armt-viz")
    cmd = ([exe] if exe else [sys.executable, "-m", "armt_viz.cli"]) + [
        "serve", "--trace-root", str(root), "--port", str(port), "--address", "127.0.0.1"]
    log_path = Path(tempfile.mkstemp(prefix="armt_serve_", suffix=".log")[1])
    log = open(log_path, "w")
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        t0 = time.time()
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode}: {log_path.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=30) as r:
                    r.read()
                break
            except OSError:
                time.sleep(0.3)
        print(f"server up in {time.time() - t0:.1f} s (pid {server.pid}): {' '.join(cmd)}")
        # warm up: one full session, so the baseline includes the loaded trace
        from bokeh.client import pull_session
        _client_models()
        s = pull_session(url=url)
        s.close()
        time.sleep(1)
        rss0 = rss_mb(server.pid)
        stats = Stats()
        waves = []  # per wave: peak RSS, RSS right after, RSS after the idle settle
        for wave in range(a.waves):
            deadline = time.time() + a.duration
            n_clients = a.sessions - a.browsers
            threads = [threading.Thread(target=session_worker, args=(url, deadline, stats, 100 * wave + i, a.renew),
                                        daemon=True) for i in range(n_clients)]
            if a.browsers:
                threads.append(threading.Thread(target=browser_worker,
                                                args=(url, a.browsers, deadline, stats, 99 + wave), daemon=True))
            threads.append(threading.Thread(target=page_worker, args=(url, deadline, stats), daemon=True))
            start = time.time()
            for th in threads:
                th.start()
                time.sleep(0.05)
            samples = []
            while time.time() < deadline:
                samples.append((time.time() - start, rss_mb(server.pid), stats.live))
                time.sleep(2)
            for th in threads:
                th.join(timeout=60)
            held_end = stats.live
            time.sleep(3)
            rss_after = rss_mb(server.pid)
            time.sleep(max(0.0, a.settle - 3))
            rss_settled = rss_mb(server.pid)
            waves.append((max(r for _, r, _ in samples), rss_after, rss_settled))
            print(f"wave {wave + 1}: RSS peak {waves[-1][0]:.0f} MB, after {rss_after:.0f} MB, "
                  f"after {a.settle:.0f} s idle {rss_settled:.0f} MB; errors so far {len(stats.errors)}", flush=True)
        with urllib.request.urlopen(url, timeout=60) as r:  # still serving
            r.read()
        alive = server.poll() is None
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    text = log_path.read_text(errors="replace")
    server_errors = [ln for ln in text.splitlines() if "Traceback" in ln or " ERROR " in ln or ln.startswith("ERROR")]
    half = [r for t, r, _ in samples if t >= a.duration / 2]
    slope = 0.0
    if len(half) >= 3:
        ts = [t for t, _, _ in samples if t >= a.duration / 2]
        slope = statistics.linear_regression(ts, half).slope * 60
    peak = max(w[0] for w in waves)
    q = lambda xs, p: sorted(xs)[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")  # noqa: E731
    res = {
        "sessions_target": a.sessions, "duration_s": a.duration, "waves": a.waves,
        "max_concurrent_sessions": stats.max_live, "sessions_held_to_the_end_of_a_wave": stats.held_to_end,
        "sessions_opened": stats.sessions, "client_slider_moves": stats.moves,
        "client_move_roundtrip_p50_s": q(stats.move_latency, .5), "client_move_roundtrip_p95_s": q(stats.move_latency, .95),
        "browser_pages": a.browsers, "browser_segment_moves": stats.browser_moves,
        "browser_move_to_figure_p50_s": q(stats.browser_latency, .5),
        "browser_move_to_figure_p95_s": q(stats.browser_latency, .95),
        "page_loads": stats.page_loads, "page_load_p50_s": q(stats.page_latency, .5),
        "page_load_p95_s": q(stats.page_latency, .95), "session_open_p50_s": q(stats.pull_latency, .5),
        "session_open_p95_s": q(stats.pull_latency, .95), "client_errors": len(stats.errors),
        "server_error_lines": len(server_errors), "server_alive_at_end": alive, "sessions_live_at_deadline": held_end,
        "rss_before_mb": round(rss0, 1), "rss_peak_mb": round(peak, 1),
        "rss_peak_per_wave_mb": [round(w[0], 1) for w in waves],
        f"rss_after_{int(a.settle)}s_idle_per_wave_mb": [round(w[2], 1) for w in waves],
        "rss_slope_last_wave_second_half_mb_per_min": round(slope, 1),
    }
    bounded = len(waves) < 2 or waves[-1][0] <= 1.2 * waves[0][0]  # a later wave may not need 20% more memory
    res["rss_bounded_across_waves"] = bounded
    w = max(len(k) for k in res)
    print("\nload test of armt-viz serve on 127.0.0.1")
    for k, v in res.items():
        print(f"  {k:<{w}}  {v:.3f}" if isinstance(v, float) else f"  {k:<{w}}  {v}")
    for e in stats.errors[:10]:
        print("  client error:", e)
    for e in server_errors[:10]:
        print("  server log:", e)
    print(f"  server log: {log_path}")
    if a.json:
        Path(a.json).write_text(json.dumps({**res, "client_error_samples": stats.errors[:20],
                                            "server_error_samples": server_errors[:20]}, indent=2))
    ok = (alive and not stats.errors and not server_errors and stats.max_live >= a.sessions and bounded
          and (a.renew > 0 or stats.held_to_end == a.sessions * a.waves))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
