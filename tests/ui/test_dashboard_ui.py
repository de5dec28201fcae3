"""The served dashboard in headless chromium: offline, labelled controls, live updates, confinement, login.

Screenshots go to test-artifacts/: dashboard.png (timeline and the memory tab), dashboard_fact.png (Facts tab
after choosing a fact), dashboard_layers.png, dashboard_samples.png (sample 1 of a two-sample trace), refused.png,
login.png. Look at them after UI changes.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request

import pytest

pytest.importorskip("playwright")

from _browser import new_page  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from armt_viz.viz import data as D  # noqa: E402
from armt_viz.viz.dashboard.resources import (  # noqa: E402
    CARTESIAN_BUNDLE, FIGURE_TRACE_TYPES, panel_plotly_version,
)

pytestmark = pytest.mark.ui


def _titles(page) -> list[str]:
    return page.locator(".gtitle").all_text_contents()


@pytest.fixture(scope="module")
def loaded(server, browser):
    """One page on the default trace, shared by the read-only and interaction checks below."""
    page, rec = new_page(browser, height=1900)
    page.goto(server + "/?segment=0")  # a fresh view opens on the latest recall; the checks below start at 0
    expect(page.locator(".js-plotly-plot").nth(2)).to_be_visible(timeout=60_000)
    expect(page.locator(".gtitle", has_text="Association matrix · segment 0")).to_have_count(1)
    yield page, rec
    page.context.close()


def test_page_is_offline_and_clean(loaded, artifacts_dir):
    page, rec = loaded
    assert page.locator(".js-plotly-plot").count() >= 2
    page.screenshot(path=str(artifacts_dir / "dashboard.png"))
    assert rec.external == [], f"requests leaving the machine: {rec.external}"
    assert rec.errors == [], f"console errors: {rec.errors}"
    assert any(u.endswith(".js") or ".js?" in u for u in rec.requests)  # scripts came from the app itself
    assert any("plotly_same_size.js" in u for u in rec.requests)  # viz/dashboard/resources.py
    # plotly.js is the vendored cartesian bundle, not Panel's full one (resources.use_cartesian_plotly)
    assert [u for u in rec.requests if "plotly" in u and "same_size" not in u and u.endswith(".js")] == [
        next(u for u in rec.requests if u.endswith(CARTESIAN_BUNDLE))]


def test_four_labelled_controls(loaded):
    page, _ = loaded
    for label in ("Trace", "Layer", "Segment", "Fact"):
        expect(page.get_by_label(label, exact=True)).to_be_visible()
        expect(page.get_by_text(label, exact=True)).to_be_visible()


def test_moving_segment_changes_the_figures(loaded):
    page, rec = loaded
    segment = page.get_by_label("Segment", exact=True)
    segment.fill("7")
    segment.press("Enter")
    expect(page.locator(".gtitle", has_text="Association matrix · segment 7")).to_have_count(1)
    expect(page.locator(".gtitle", has_text="Write events · segment 7")).to_have_count(1)
    # the slider next to the box moves the same selection
    handle = page.locator(".noUi-handle").nth(1)
    handle.focus()
    handle.press("ArrowRight")
    expect(page.locator(".gtitle", has_text="Association matrix · segment 8")).to_have_count(1)
    assert rec.errors == []


def test_same_size_relayouts_are_skipped(loaded):
    # Panel resizes each plot after every layout pass; one that keeps the size must not redraw the figure
    page, rec = loaded
    counts = page.locator(".js-plotly-plot").nth(1).evaluate("""async gd => {
        const w = gd._fullLayout.width, h = gd._fullLayout.height;
        await window.Plotly.relayout(gd, {width: w, height: h});       // pin the size (a new figure has none)
        let n = 0;
        gd.on('plotly_relayout', () => { n += 1; });
        await window.Plotly.relayout(gd, {width: w, height: h});       // the size it has: skipped
        const skipped = n;
        await window.Plotly.relayout(gd, {width: w - 10, height: h});  // another size: applied
        await window.Plotly.relayout(gd, {width: w, height: h});       // and back: applied
        return [skipped, n];
    }""")
    assert counts == [0, 2]
    assert rec.errors == []


# Every relayout below is followed at once by the {autosize: true} relayout that plotly sends after each render
# (Plots.resize): Panel debounces browser changes (50 ms) and keeps the last value of a property, so a zoom or a
# reset that is not merged with what follows it never reaches the server (the old flaky failure, made certain).
_THEN_AUTOSIZE = "gd => window.Plotly.relayout(gd, %s).then(() => window.Plotly.relayout(gd, {autosize: true}))"


def test_zooming_the_timeline_requeries_the_visible_range(loaded):
    page, rec = loaded
    timeline = page.locator(".js-plotly-plot").first
    timeline.evaluate(_THEN_AUTOSIZE % "{'xaxis7.range': [10, 20]}")
    expect(page.get_by_text("segments 10–20")).to_have_count(1)  # subtitle of the re-aggregated figure
    timeline.evaluate(_THEN_AUTOSIZE % "{'xaxis7.autorange': true}")
    expect(page.get_by_text("segments 10–20")).to_have_count(0)
    timeline.evaluate(_THEN_AUTOSIZE % "{'xaxis7.range': [10, 20]}")  # the same zoom again after the reset
    expect(page.get_by_text("segments 10–20")).to_have_count(1)
    timeline.evaluate(_THEN_AUTOSIZE % "{'xaxis7.autorange': true}")
    expect(page.get_by_text("segments 10–20")).to_have_count(0)
    assert rec.errors == []


def test_choosing_a_fact_updates_its_lifecycle(loaded, artifacts_dir):
    page, rec = loaded
    page.get_by_text("Facts", exact=True).click()
    expect(page.locator(".gtitle", has_text="lifecycle")).to_have_count(1)
    fact = page.get_by_label("Fact", exact=True)
    before = next(t for t in _titles(page) if t.endswith("lifecycle"))
    options = fact.locator("option").all_text_contents()
    target = next(o for o in options if not before.startswith(f"Fact {o.split()[0]} "))
    fact.select_option(label=target)
    expected = f"Fact {target.split()[0]} · lifecycle"
    expect(page.locator(".gtitle", has_text=expected)).to_have_count(1)
    expect(page.locator(".gtitle", has_text="Stale answers over time")).to_have_count(1)
    page.screenshot(path=str(artifacts_dir / "dashboard_fact.png"))
    page.get_by_text("Layers", exact=True).click()
    expect(page.locator(".gtitle", has_text="Layer comparison")).to_have_count(1)
    page.screenshot(path=str(artifacts_dir / "dashboard_layers.png"))
    assert rec.errors == []


# each plot on the page: its title, the trace types it asks for and the types plotly.js drew them as
_PLOTS = """els => els.map(gd => ({title: (gd.layout.title || {}).text || '',
                                   asked: gd.data.map(t => t.type || 'scatter'),
                                   drawn: (gd._fullData || []).map(t => t.type)}))"""


def _check_plots(page, registered: set[str]) -> list[str]:
    """Every plot on the page asks only for registered trace types and was drawn with them; returns the titles."""
    plots = page.locator(".js-plotly-plot").evaluate_all(_PLOTS)
    for plot in plots:
        assert set(plot["asked"]) <= registered, plot
        assert plot["drawn"] == plot["asked"], plot
    return [p["title"] for p in plots]


def test_every_view_draws_with_the_served_plotly(server, browser):
    # Given a fresh page on the default trace
    page, rec = new_page(browser, height=1900)
    try:
        page.goto(server + "/?segment=0")
        expect(page.locator(".gtitle", has_text="Association matrix · segment 0")).to_have_count(1, timeout=60_000)
        # Then the page's plotly.js is the version Panel expects and registers every trace type the figures use
        version, types = page.evaluate("() => [window.Plotly.version, Object.keys(window.Plotly.PlotSchema.get()"
                                       ".traces)]")
        assert version == panel_plotly_version() and FIGURE_TRACE_TYPES <= set(types)
        registered = set(types)
        # And every view, tab by tab, draws with them: timeline (with the stale mass row), memory, facts, layers
        page.get_by_role("checkbox").check()  # "Show stale mass on the timeline", the page's only checkbox
        expect(page.locator(".annotation-text", has_text="superseded fraction")).to_have_count(1)
        drawn = _check_plots(page, registered)
        page.get_by_text("Facts", exact=True).click()
        expect(page.locator(".gtitle", has_text="lifecycle")).to_have_count(1)
        expect(page.locator(".gtitle", has_text="Stale answers over time")).to_have_count(1)
        drawn += _check_plots(page, registered)
        page.get_by_text("Layers", exact=True).click()
        expect(page.locator(".gtitle", has_text="Layer comparison")).to_have_count(1)
        drawn += _check_plots(page, registered)
        for title in ("Run timeline", "Association matrix", "Write events", "lifecycle", "Stale answers",
                      "Layer comparison"):
            assert any(title in t for t in drawn), (title, drawn)
        # And the console is clean (plotly warns, not errors, about a trace type it does not know)
        assert rec.errors == [] and not [t for kind, t in rec.console if kind == "warning"], rec.console
        assert rec.external == []
    finally:
        page.context.close()


def _fact_labels(single) -> list[str]:
    """The Fact options of a one-sample trace, counted on that trace alone (whitespace-normalised)."""
    led = D.ledger_frame(single)
    probes = D.probe_frame(single, led)
    facts = led[led["fact_id"] >= 0].groupby("fact_id")
    return [f"{fid} · {(rows.role == 'key').sum()} writes, {(rows.role == 'query').sum()} queries, "
            f"{int((probes['fact_id'] == fid).sum())} probed" for fid, rows in facts]


def test_sample_control_switches_the_facts(samples_server, samples_root, browser, artifacts_dir):
    first, other = samples_root["samples"]
    page, rec = new_page(browser, height=1900)
    try:
        # Given the two-sample trace on sample 0
        page.goto(samples_server + "/?trace=two.zarr")
        sample, fact = page.get_by_label("Sample", exact=True), page.get_by_label("Fact", exact=True)
        expect(sample).to_be_visible(timeout=60_000)
        options = lambda: [" ".join(o.split()) for o in fact.locator("option").all_text_contents()]  # noqa: E731
        expect(fact.locator("option")).to_have_count(len(_fact_labels(first)))
        assert options() == _fact_labels(first)
        selected = lambda: fact.evaluate("s => s.options[s.selectedIndex].text").split()[0]  # noqa: E731
        most = {name: str(D.probe_counts(D.probe_frame(ds, D.ledger_frame(ds))).index[0])
                for name, ds in (("first", first), ("other", other))}
        assert most["first"] not in {label.split()[0] for label in _fact_labels(other)}
        assert selected() == most["first"]
        # When sample 1 is chosen, Then the Fact list is sample 1's, its most probed fact replaces sample 0's
        # (which sample 1 has not), and the URL names the sample
        sample.select_option("1")
        expect(fact.locator("option")).to_have_count(len(_fact_labels(other)))
        assert options() == _fact_labels(other)
        expect(page).to_have_url(re.compile(rf"fact={most['other']}"))
        assert selected() == most["other"]
        expect(page).to_have_url(re.compile(r"sample=1"))
        page.get_by_text("Facts", exact=True).click()
        expect(page.locator(".gtitle", has_text=f"Fact {most['other']} · lifecycle")).to_have_count(1)
        expect(page.locator(".gtitle", has_text="Stale answers over time")).to_have_count(1)
        page.screenshot(path=str(artifacts_dir / "dashboard_samples.png"))
        # And a link to sample 1's fact 1 opens on that sample and fact
        page.goto(samples_server + "/?trace=two.zarr&sample=1&fact=1")
        expect(fact.locator("option")).to_have_count(len(_fact_labels(other)), timeout=60_000)
        assert options() == _fact_labels(other)
        assert selected() == "1"
        assert rec.errors == [] and rec.external == []
    finally:
        page.context.close()


def test_traversal_is_refused(server, browser, artifacts_dir):
    page, rec = new_page(browser)
    try:
        page.goto(server + "/")
        trace = page.get_by_label("Trace", exact=True)
        expect(trace).to_be_visible(timeout=60_000)
        offered = trace.locator("option").all_text_contents()
        assert offered == ["— no trace —", "alias.zarr", "nested/run_summary.zarr", "run_writes.zarr"]
        assert not [o for o in offered if re.search(r"secret|link_out|linked_dir|\.\.", o)], offered
        for crafted in ("../outside/secret.zarr", "link_out.zarr", "linked_dir/secret.zarr"):
            page.goto(f"{server}/?trace={crafted}")
            expect(page.get_by_text("Refused", exact=False).first).to_be_visible(timeout=60_000)
            assert not [t for t in _titles(page) if "secret" in t]
            expect(page.locator(".gtitle", has_text="Association matrix ·")).to_have_count(0)
        page.screenshot(path=str(artifacts_dir / "refused.png"))
        assert rec.external == []
    finally:
        page.context.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_login_is_enforced(auth_server, browser, artifacts_dir):
    # Given a server with basic auth, When the page is fetched without credentials, Then it redirects to login
    opener = urllib.request.build_opener(_NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as info:
        opener.open(auth_server + "/", timeout=10)
    assert info.value.code in (302, 401, 403)
    assert info.value.code != 302 or "/login" in info.value.headers["Location"]
    page, rec = new_page(browser)
    try:
        page.goto(auth_server + "/")
        expect(page.get_by_label("Password")).to_be_visible()
        page.screenshot(path=str(artifacts_dir / "login.png"))
        page.get_by_label("User name").fill("ana")
        page.get_by_label("Password").fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Invalid username or password")).to_be_visible()
        page.get_by_label("User name").fill("ana")
        page.get_by_label("Password").fill("wonderland")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        expect(page.get_by_label("Trace", exact=True)).to_be_visible()
        assert rec.external == [], rec.external
        assert not [e for e in rec.errors if "favicon" not in e], rec.errors
    finally:
        page.context.close()


def test_oversized_request_is_refused(auth_server):
    body = b"username=ana&password=" + b"x" * 200_000
    request = urllib.request.Request(auth_server + "/login", data=body, method="POST")
    with pytest.raises((urllib.error.HTTPError, urllib.error.URLError, ConnectionError)) as info:
        urllib.request.urlopen(request, timeout=10)
    if isinstance(info.value, urllib.error.HTTPError):
        assert info.value.code in (400, 413)
