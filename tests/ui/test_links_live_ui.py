"""Issue 15 in headless chromium: deep links round-trip, the Compare tab, a live recording followed without
reload (test_live_ui.py), the offline HTML export, chance lines wherever a rate is plotted, a CLI-recorded stream trace on which
every tab shows data, and no console errors. One server for the module (over its own root).

Screenshots (test-artifacts/): tab_memory.png, tab_facts.png, tab_layers.png, tab_compare.png (the CLI-recorded
stream trace), live.png, export_offline.png.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("playwright")

from _browser import new_page  # noqa: E402
from conftest import REPO, _serve, _stop  # noqa: E402
from playwright.sync_api import expect  # noqa: E402
from synthetic import make_trace, write_store  # noqa: E402

from armt_viz.trace import open_trace  # noqa: E402
from armt_viz.viz import data as D  # noqa: E402
from armt_viz.viz.dashboard.urlstate import TABS, query_string, query_to_state  # noqa: E402

pytestmark = pytest.mark.ui

_ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "OMP_NUM_THREADS": "1"}
_TAB_TEXT = {"memory": "Memory at the segment", "facts": "Facts", "layers": "Layers", "compare": "Compare"}

# a recording that commits every 16 segments and pauses between input chunks, so a watcher sees it grow
_LIVE_SCRIPT = """
import sys, time
import numpy as np
from armt_viz.assets import demo_stream_config, load_demo_model
from armt_viz.record import record
from armt_viz.tasks.stream import make_stream
model = load_demo_model("stream")
cfg = demo_stream_config(seed=1)
S = model.config.segment_size
stream = make_stream(cfg, S * 16 * 12)
def chunks():
    ids = stream.input_ids
    for i in range(0, ids.size, 16 * S):
        yield ids[None, i:i + 16 * S]
        time.sleep(1.2)
record(model, chunks(), store=sys.argv[1], level="writes", ledger=stream.ledger, chunk_segments=16,
       progress=False, keyframe_every=16)
"""


@pytest.fixture(scope="module")
def live_root(tmp_path_factory) -> dict:
    """A root with a synthetic writes trace and a stream trace recorded by `armt-viz record` with defaults."""
    root = tmp_path_factory.mktemp("ui_links")
    write_store(make_trace(level="writes", seed=3), root / "synthetic.zarr")
    out = subprocess.run([sys.executable, "-m", "armt_viz.cli", "record", "--task", "stream", "--tokens", "800",
                          "--store", str(root / "stream.zarr")], cwd=REPO, env=_ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "level 'writes'" in out.stderr
    return {"root": root, "traces": {n: open_trace(root / n) for n in ("synthetic.zarr", "stream.zarr")}}


@pytest.fixture(scope="module")
def live_server(live_root):
    proc, url = _serve(live_root["root"])
    yield url
    _stop(proc)


_ZOOM = re.compile(r"segments ([\d,]+)–([\d,]+) \(double-click to reset\)")


def _page_state(page) -> dict:
    """The view state as the page shows it: the controls, the active tab, the timeline's zoom subtitle."""
    value = lambda label: page.get_by_label(label, exact=True).input_value()  # noqa: E731
    active = page.locator(".bk-tab.bk-active").all_text_contents()
    tab = next(k for k, v in _TAB_TEXT.items() if any(v == t.strip() for t in active))
    zooms = [m.groups() for t in page.locator(".gtitle-subtitle, .gtitle").all_text_contents()
             if (m := _ZOOM.search(t))]
    zoom = tuple(float(v.replace(",", "")) for v in zooms[0]) if zooms else None
    return {"trace": value("Trace"), "sample": 0, "layer": int(value("Layer")), "segment": int(value("Segment")),
            "fact": int(value("Fact").split()[0]), "tab": tab, "zoom": zoom}


def _wait_state(page, state: dict):
    seg, layer = state["segment"], state["layer"]
    expect(page.get_by_label("Segment", exact=True)).to_have_value(str(seg), timeout=60_000)
    expect(page.get_by_label("Layer", exact=True)).to_have_value(str(layer))
    expect(page.locator(".bk-tab.bk-active", has_text=_TAB_TEXT[state["tab"]])).to_have_count(1)
    if state["tab"] == "memory":
        expect(page.locator(".gtitle", has_text=f"Association matrix · segment {seg} · layer {layer}")).to_have_count(1)
    if state["zoom"]:
        expect(page.get_by_text(f"segments {state['zoom'][0]:,.0f}–{state['zoom'][1]:,.0f}")).to_have_count(1)


def test_deep_links_round_trip_for_20_random_states(live_server, live_root, browser):
    traces = live_root["traces"]
    rng = np.random.default_rng(15)
    page, rec = new_page(browser, height=1400)
    try:
        for i in range(20):
            name = str(rng.choice(sorted(traces)))
            ds = traces[name]
            n_seg, n_layer = D.n_segments(ds), D.n_layers(ds)
            facts = sorted(set(D.ledger_frame(ds)["fact_id"].tolist()) - {-1})
            lo = float(rng.integers(0, n_seg - 12))
            state = {"trace": name, "sample": 0, "layer": int(rng.integers(0, n_layer)),
                     "segment": int(rng.integers(0, n_seg)), "fact": int(rng.choice(facts)),
                     "tab": str(rng.choice(TABS[:3])),
                     "zoom": None if i % 3 == 0 else (lo, lo + float(rng.integers(4, 11)))}
            page.goto(live_server + "/" + query_string(state))
            _wait_state(page, state)
            assert _page_state(page) == state, i
            # and the URL the page keeps names the same state
            search = page.evaluate("() => window.location.search").lstrip("?")
            kept = query_to_state(dict(urllib.parse.parse_qsl(search)))
            assert kept == {k: v for k, v in state.items() if v is not None}, (i, search)
        assert rec.errors == [], rec.errors
        assert rec.external == []
    finally:
        page.context.close()


def test_every_tab_of_a_cli_stream_trace_shows_data_with_chance_lines(live_server, browser, artifacts_dir):
    page, rec = new_page(browser, height=2000)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    try:
        page.goto(live_server + "/?trace=stream.zarr")
        expect(page.locator(".gtitle", has_text="Association matrix")).to_have_count(1, timeout=60_000)
        rated: set[str] = set()
        for tab in ("memory", "facts", "layers", "compare"):
            page.get_by_text(_TAB_TEXT[tab], exact=True).click()
            if tab == "compare":
                page.get_by_label("Compare with (B)").select_option("synthetic.zarr")
                expect(page.locator(".gtitle", has_text="Compare two runs")).to_have_count(1)
                expect(page.locator(".annotation-text", has_text="segments both runs have")).to_have_count(1)
            else:
                want = {"memory": "Write events", "facts": "Stale answers over time", "layers": "Layer comparison"}
                expect(page.locator(".gtitle", has_text=want[tab])).to_have_count(1)
            page.wait_for_timeout(500)
            plots = page.locator(".js-plotly-plot:visible").evaluate_all("""els => els.map(gd => ({
                title: (gd.layout.title || {}).text || '', n: gd.data.length,
                chance: gd.data.filter(t => t.meta && t.meta.role === 'chance' && t.visible !== false).length,
                rates: gd.data.filter(t => t.meta && t.meta.role === 'rate').length,
                message: (gd.layout.annotations || []).map(a => a.text).join(' ')}))""")
            assert plots, tab
            for p in plots:  # every figure has data, none is a "needs ..." message figure
                assert p["n"] > 0, (tab, p)
                assert "needs" not in p["message"] and "no probes" not in p["message"].lower(), (tab, p)
                if p["rates"]:  # a rate is plotted: a chance line too
                    assert p["chance"] > 0, (tab, p["title"])
            rated |= {p["title"] for p in plots if p["rates"]}
            page.screenshot(path=str(artifacts_dir / f"tab_{tab}.png"), full_page=True)
        # the figures that plot answer rates were all checked above
        assert {"Run timeline", "Stale answers over time", "Compare two runs"} <= rated, rated
        assert any(t for t in page.locator(".gtitle-subtitle").all_text_contents())
        # the Facts subtitle gives the stale rate with its CI and chance
        page.get_by_text("Facts", exact=True).click()
        expect(page.get_by_text("vs chance")).to_have_count(1)
        # the copy-link button puts the current view's link on the clipboard
        page.get_by_role("button", name="Copy link").click()
        copied = page.evaluate("() => navigator.clipboard.readText()")
        assert copied.endswith(page.evaluate("() => window.location.search")) and "tab=facts" in copied
        assert rec.errors == [], rec.errors
        assert rec.external == []
    finally:
        page.context.close()


def test_html_export_opens_offline_with_the_same_figures(live_server, browser, artifacts_dir, tmp_path):
    page, rec = new_page(browser, height=1600)
    try:
        page.goto(live_server + "/?trace=stream.zarr&tab=facts")
        expect(page.locator(".gtitle", has_text="Stale answers over time")).to_have_count(1, timeout=60_000)
        page.wait_for_timeout(500)
        titles = sorted(page.locator(".js-plotly-plot:visible").evaluate_all(
            "els => els.map(gd => (gd.layout.title || {}).text || '')"))
        with page.expect_download() as info:
            page.get_by_role("button", name="Download this view (HTML)").click()
        path = tmp_path / "view.html"
        info.value.save_as(path)
        assert rec.errors == []
    finally:
        page.context.close()
    offline, orec = new_page(browser, height=1600)
    try:
        offline.context.set_offline(True)
        offline.goto(path.as_uri())
        expect(offline.locator(".js-plotly-plot")).to_have_count(len(titles), timeout=30_000)
        got = sorted(offline.locator(".js-plotly-plot").evaluate_all(
            "els => els.map(gd => (gd.layout.title || {}).text || '')"))
        assert got == titles
        assert [u for u in orec.requests if not u.startswith(("file:", "data:", "blob:"))] == []
        assert orec.errors == [], orec.errors
        assert "stream.zarr" in offline.locator("#armt-state").text_content()
        assert "input_description" in offline.locator("#armt-provenance").text_content()
        offline.screenshot(path=str(artifacts_dir / "export_offline.png"), full_page=True)
    finally:
        offline.context.close()
