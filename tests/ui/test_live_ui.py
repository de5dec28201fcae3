"""The dashboard follows a trace while it is being recorded (a real Panel server, headless Chromium).

Its own file, so that under `--dist loadfile` it runs on the other worker than the deep-link tests beside it
(together they held one worker for about four minutes of a full run)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("playwright")

from _browser import new_page  # noqa: E402
from conftest import REPO, _stop  # noqa: E402
from playwright.sync_api import expect  # noqa: E402
from test_links_live_ui import _ENV, _LIVE_SCRIPT, live_root, live_server  # noqa: E402,F401  (fixtures)

pytestmark = pytest.mark.ui


def test_live_view_follows_a_recording(live_server, live_root, browser, artifacts_dir):
    store = Path(live_root["root"]) / "live.zarr"
    page, rec = new_page(browser, height=1400)
    page.goto(live_server + "/?trace=stream.zarr")  # a page open before the recording starts
    trace = page.get_by_label("Trace", exact=True)
    expect(trace).to_be_visible(timeout=60_000)
    assert "live.zarr" not in trace.locator("option").all_text_contents()
    proc = subprocess.Popen([sys.executable, "-c", _LIVE_SCRIPT, str(store)], cwd=REPO, env=_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the new trace shows up in the open page, and choosing it shows its committed prefix
        expect(trace.locator("option", has_text="live.zarr")).to_have_count(1, timeout=120_000)
        assert proc.poll() is None, proc.stdout.read()
        trace.select_option("live.zarr")
        segment = page.get_by_label("Segment", exact=True)
        expect(page.get_by_text("recording in progress", exact=False)).to_have_count(1, timeout=60_000)
        info = page.get_by_text("segments ·", exact=False).first

        def shown() -> int:
            text = info.text_content()
            return int(text.split(" segments")[0].split("·")[-1].strip().replace(",", ""))

        first = shown()
        seen = [first]
        deadline = time.time() + 90
        while seen[-1] < 192 and time.time() < deadline:  # 12 commits of 16 segments, no reload
            time.sleep(1.0)
            seen.append(shown())
        assert seen[-1] > first and len(set(seen)) >= 3, seen
        assert sorted(seen) == seen  # the committed prefix only grows
        # the view was on the last segment, so it followed the growing end
        # its value reaches the page one sync after the segment count shown: wait for it, not for a fixed time
        expect(segment).to_have_value(str(seen[-1] - 1), timeout=20_000)
        page.screenshot(path=str(artifacts_dir / "live.png"))
        assert rec.errors == [], rec.errors
    finally:
        page.context.close()
        _stop(proc, timeout=20)
