"""Panel components without a browser (armt_viz/viz/dashboard): store, views, confinement, sessions, export."""

from __future__ import annotations

import importlib.util
import os
import zipfile

import pytest

pn = pytest.importorskip("panel")

from armt_viz.viz.dashboard import build_app  # noqa: E402
from armt_viz.viz.dashboard.store import NO_FACT, TraceStore  # noqa: E402
from armt_viz.viz.dashboard.views import (  # noqa: E402
    FactView, StaleView, TimelineView, merge_relayout, x_axis_request,
)
from armt_viz.viz import data as D  # noqa: E402
from armt_viz.viz import figures as F  # noqa: E402
from synthetic import make_trace, stack_samples, write_store  # noqa: E402


def _title(view) -> str:
    return view.pane.object.layout.title.text


@pytest.fixture(scope="module")
def app(trace_root):
    return build_app(str(trace_root["root"]), trace="run_writes.zarr", sync_url=False)


def test_controls_carry_the_four_labels(app):
    names = [w.name for w in app.store.controls().select(pn.widgets.Widget)]
    for label in ("Trace", "Layer", "Segment", "Fact"):
        assert label in names


def test_store_opens_the_trace_and_sets_bounds(app):
    st = app.store
    assert st.ds is not None and st.status == ""
    assert st.param.segment.bounds == (0, 47) and st.param.layer.bounds == (0, 1)
    assert st.fact != NO_FACT  # the most probed fact is selected
    offered = [v for v in st._trace_select.options.values() if v]
    assert offered == ["alias.zarr", "nested/run_summary.zarr", "run_writes.zarr"]


def test_segment_and_fact_update_their_views(app):
    # Given the app on segment 0
    st, views = app.store, app.views
    st.segment = 0
    # When the segment moves, Then the memory views follow
    st.segment = 17
    assert "segment 17" in _title(views["assoc"]) and "segment 17" in _title(views["writes"])
    # When another fact is chosen, Then the lifecycle view shows it
    other = next(v for v in st._fact.options.values() if v != st.fact)
    st._fact.value = other
    assert st.fact == other and _title(views["fact"]) == f"Fact {other} · lifecycle"


def test_timeline_zoom_and_click(app):
    st, tl = app.store, app.views["timeline"]
    tl.pane.relayout_data = {"xaxis3.range[0]": 9.5, "xaxis3.range[1]": 30.5}
    assert st.x_range == pytest.approx((10.0, 30.0))
    assert list(app.views["layers"].pane.object.layout.xaxis.range) == [9.5, 30.5]
    tl.pane.relayout_data = {"xaxis.autorange": True}
    assert st.x_range is None
    tl.pane.click_data = {"points": [{"x": 12.2, "y": 1.0}]}
    assert st.segment == 12


def test_relayout_requests_are_read_in_order():
    assert x_axis_request({"xaxis7.range": [10, 20]}) == (10.0, 20.0)
    assert x_axis_request({"xaxis3.range[0]": 9.5, "xaxis3.range[1]": 30.5}) == (9.5, 30.5)
    assert x_axis_request({"autosize": True, "width": 900}) is None
    assert x_axis_request({"yaxis2.autorange": True}) is None  # a y reset keeps the segment range
    assert x_axis_request(merge_relayout({"xaxis7.autorange": True}, {"autosize": True})) == "autorange"
    assert x_axis_request(merge_relayout({"xaxis7.range": [10, 20]}, {"xaxis7.autorange": True})) == "autorange"
    zoom_after_reset = merge_relayout({"xaxis.autorange": True}, {"xaxis.range[0]": 1, "xaxis.range[1]": 9})
    assert x_axis_request(zoom_after_reset) == (1.0, 9.0)


def test_a_pending_relayout_is_merged_not_replaced(app):
    # Given a reset waiting in Panel's debounce window, When plotly's resize relayout arrives before it is handled
    pane = app.views["timeline"].pane
    pane._events = {"relayout_data": {"xaxis7.autorange": True}}
    try:
        pane._server_change(None, "ref", None, "relayout_data", {}, {"autosize": True})
        # Then the pending change still asks for the reset
        assert x_axis_request(pane._events["relayout_data"]) == "autorange"
    finally:
        pane._events = {}


def test_the_same_reset_twice_is_applied_twice(app):
    st, tl = app.store, app.views["timeline"]
    tl.pane.relayout_data = {"xaxis.autorange": True}
    st.x_range = (5.0, 25.0)  # zoomed again by a message the pane did not see
    tl.pane.relayout_data = {"xaxis.autorange": True}
    assert st.x_range is None


def test_fact_view_follows_the_sample(tmp_path):
    # Given a two-sample trace whose sample 1 is another stream
    other = make_trace(level="writes", seed=5)
    write_store(stack_samples(make_trace(level="writes"), other), tmp_path / "two.zarr")
    st = TraceStore(trace_root=str(tmp_path), trace="two.zarr")
    view = FactView(store=st)
    # When sample 1 is selected, Then the lifecycle shows that stream's recalls of the fact, and only those
    st.param.update(fact=2, sample=1)
    probes = D.probe_frame(other, D.ledger_frame(other))
    drawn = sorted(x for t in view.pane.object.data if (t.name or "").startswith("recall ") for x in t.x)
    assert drawn == sorted(probes.loc[probes["fact_id"] == 2, "segment"])


def _recall_bars(fig) -> list:
    return [(t.name, list(t.x), list(t.y)) for t in fig.data if (t.name or "").startswith("recall ")]


def test_recall_views_follow_the_sample(tmp_path):
    # Given a two-sample trace whose sample 1 is another stream, with the timeline and stale answers views open
    other = make_trace(level="writes", seed=5)
    write_store(stack_samples(make_trace(level="writes"), other), tmp_path / "two.zarr")
    st = TraceStore(trace_root=str(tmp_path), trace="two.zarr")
    timeline, stale = TimelineView(store=st), StaleView(store=st)
    # When sample 1 is selected, Then both views count only that stream's recalls
    st.param.update(fact=2, segment=5, sample=1)
    alone = F.timeline(other, layer=st.layer, segment=5, fact=2, n_pixels=timeline.n_pixels)
    assert _recall_bars(timeline.pane.object) == _recall_bars(alone)
    assert stale.pane.object.to_json() == F.stale_answers(other, segment=5, fact=2).to_json()


@pytest.mark.parametrize("name", ["../outside/secret.zarr", "link_out.zarr", "linked_dir/secret.zarr", "/etc"])
def test_crafted_trace_names_are_refused(trace_root, name):
    st = TraceStore(trace_root=str(trace_root["root"]), trace="run_writes.zarr")
    st.trace = name
    assert st.ds is None and st.path == "" and st.status.startswith("Refused")
    assert st._trace_select.value == ""
    assert str(trace_root["outside"]) not in st.status


def test_sessions_do_not_share_selection(trace_root):
    a = build_app(str(trace_root["root"]), trace="run_writes.zarr", sync_url=False)
    b = build_app(str(trace_root["root"]), trace="run_writes.zarr", sync_url=False)
    start = b.store.segment
    a.store.segment = 30 if start != 30 else 31
    assert b.store.segment == start and f"segment {start}" in _title(b.views["assoc"])
    assert a.store._segment is not b.store._segment  # widgets are made per instance


def test_summary_trace_degrades_with_messages(trace_root):
    app = build_app(str(trace_root["root"]), trace="nested/run_summary.zarr", sync_url=False)
    fig = app.views["assoc"].pane.object
    assert "writes-level trace" in fig.layout.annotations[0].text
    fact = app.views["fact"].pane.object
    assert any("writes-level" in (a.text or "") for a in fact.layout.annotations)


def test_broken_store_is_reported_not_raised(tmp_path):
    broken = tmp_path / "broken.zarr"
    broken.mkdir()
    (broken / "zarr.json").write_text("{not json")
    (broken / "armt_commit.json").write_text('{"sizes": {"segment": 1, "keyframe": 0}}')  # listed, but corrupted
    st = TraceStore(trace_root=str(tmp_path))
    assert st.ds is None and st.status.startswith("Cannot open")


def test_export_is_a_zipped_zarr_subset(app, tmp_path):
    import xarray as xr

    st = app.store
    st.segment, st.layer = 9, 1
    buf = st._export_selection()
    assert st._export.filename == "run_writes__seg9__layer1.zarr.zip"
    with zipfile.ZipFile(buf) as zf:
        zf.extractall(tmp_path)
    tree = xr.open_datatree(tmp_path / "run_writes__seg9__layer1.zarr", engine="zarr", consolidated=False)
    assert set(tree.children) == {"timeline", "segment", "fact"}
    seg = tree["segment"].ds
    assert seg["assoc_matrix"].shape[:3] == (1, 1, 1) and int(seg["segment"].item()) == 9
    assert "write_gate" in seg and tree["timeline"].ds.sizes["segment"] == 48


def test_dashboard_module_imports_without_side_effects(trace_root, monkeypatch, repo_root):
    servers_before = dict(pn.state._servers)  # other tests in this worker may have served apps
    spec = importlib.util.spec_from_file_location("apps_dashboard", repo_root / "apps" / "dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not pn.state.served and pn.state._servers == servers_before
    monkeypatch.setenv("ARMT_VIZ_TRACE_ROOT", str(trace_root["root"]))
    assert module.trace_root() == str(trace_root["root"])
    assert module.create_app().store.trace_root == str(trace_root["root"])


def test_parse_basic_auth(tmp_path):
    from armt_viz.viz.serve import parse_basic_auth

    assert parse_basic_auth(None) is None
    assert parse_basic_auth("ana:s3cret:x") == {"ana": "s3cret:x"}
    users = tmp_path / "users.json"
    users.write_text('{"ana": "a", "bo": "b"}')
    assert parse_basic_auth(str(users)) == {"ana": "a", "bo": "b"}
    for bad in ("nopassword", ":x", "x:"):
        with pytest.raises(ValueError, match="user:password"):
            parse_basic_auth(bad)
    users.write_text('["ana"]')
    with pytest.raises(ValueError, match="JSON object"):
        parse_basic_auth(str(users))


def test_serve_refuses_a_missing_root(tmp_path):
    from armt_viz.viz.serve import run_serve

    with pytest.raises(FileNotFoundError, match="trace-root"):
        run_serve(str(tmp_path / "nope"), port=0)
    assert os.path.isdir(tmp_path)


def test_stale_mass_row_on_demand(app):
    st, tl = app.store, app.views["timeline"]
    st.show_stale_mass = True
    try:
        titles = [a.text for a in tl.pane.object.layout.annotations if (a.name or "").startswith("row_title")]
        assert any(t.startswith("surviving superseded fraction of A") for t in titles)  # the origin view
    finally:
        st.show_stale_mass = False


# ---------------------------------------------------------------------------------------------- samples
def _expected_choices(single) -> dict[str, int]:
    """The Fact labels of a one-sample trace's facts, counted on that trace alone."""
    led = D.ledger_frame(single)
    probes = D.probe_frame(single, led)
    out = {}
    for fid, rows in led[led["fact_id"] >= 0].groupby("fact_id"):
        probed = int((probes["fact_id"] == fid).sum())
        out[f"{fid}  ·  {(rows.role == 'key').sum()} writes, {(rows.role == 'query').sum()} queries, "
            f"{probed} probed"] = int(fid)
    return out


def _most_probed(single) -> int:
    probes = D.probe_frame(single, D.ledger_frame(single))
    counts = probes[probes["fact_id"] >= 0]["fact_id"].value_counts()
    return int(counts[counts == counts.max()].index.min())


@pytest.fixture(scope="module")
def two_samples(tmp_path_factory):
    """A two-sample store: sample 0 the default stream (facts 0-5), sample 1 another stream with facts 0-2 only."""
    first, other = make_trace(level="writes"), make_trace(level="writes", seed=5, n_keys=3)
    root = tmp_path_factory.mktemp("two_samples")
    write_store(stack_samples(first, other), root / "two.zarr")
    return root, first, other


def test_fact_list_counts_the_selected_sample_and_follows_it(two_samples):
    # Given a store on sample 0 of a two-sample trace
    root, first, other = two_samples
    st = TraceStore(trace_root=str(root), trace="two.zarr")
    st.controls().get_root()  # widgets with Bokeh models, as in a session (a Select then resets a missing value)
    # Then the Fact control offers sample 0's facts with sample 0's counts, and selects its most probed fact
    assert st._fact.options == _expected_choices(first)
    assert st.fact == _most_probed(first)
    # When fact 5 (only in sample 0) is selected and sample 1 is chosen in the Sample control
    st._fact.value = 5
    st._sample.value = 1
    # Then the list is sample 1's and its most probed fact replaces fact 5
    assert st.sample == 1 and st._fact.options == _expected_choices(other)
    assert st.fact == _most_probed(other) and st._fact.value == _most_probed(other)
    # When fact 1 (in both samples) is selected and sample 0 is chosen again, Then fact 1 stays selected
    st._fact.value = 1
    st.sample = 0
    assert st.fact == 1 and st._fact.value == 1 and st._fact.options == _expected_choices(first)


def test_sample_control_shows_only_for_several_samples(two_samples, trace_root):
    root, _, _ = two_samples
    two = TraceStore(trace_root=str(root), trace="two.zarr")
    assert two._sample.visible and list(two._sample.options.values()) == [0, 1]
    one = TraceStore(trace_root=str(trace_root["root"]), trace="run_writes.zarr")
    assert not one._sample.visible


def test_sample_change_draws_each_view_once(two_samples):
    # Given the fact view on fact 5 of sample 0
    root, _, other = two_samples
    st = TraceStore(trace_root=str(root), trace="two.zarr")
    st.fact = 5
    fact, stale = FactView(store=st), StaleView(store=st)
    drawn = []
    for view in (fact, stale):
        view.pane.param.watch(lambda e, v=view: drawn.append(v.title), "object")
    # When sample 1 (which has no fact 5) is selected
    st.sample = 1
    # Then each view is drawn once, for sample 1's most probed fact
    assert sorted(drawn) == sorted([fact.title, stale.title])
    assert _title(fact) == f"Fact {st.fact} · lifecycle" and st.fact != 5


def test_a_sample_without_probes_or_facts_says_so(tmp_path):
    # Given a two-sample trace whose sample 1 has neither probes nor ledger rows
    both = stack_samples(make_trace(level="writes"), make_trace(level="writes", seed=5))
    bare = both.isel(probe=both["probe_sample"].values == 0, event=both["ledger_sample"].values == 0)
    write_store(bare, tmp_path / "bare.zarr")
    st = TraceStore(trace_root=str(tmp_path), trace="bare.zarr")
    stale, fact = StaleView(store=st), FactView(store=st)
    # When sample 1 is selected
    st.sample = 1
    # Then the stale answers view says the sample has no probes (not that no recall is linked to a fact)
    notes = [a.text for a in stale.pane.object.layout.annotations]
    assert any(n.startswith("No probes in sample 1") for n in notes), notes
    assert not any("No probed recalls are linked" in n for n in notes)
    # And the Fact control and lifecycle view say the sample has no facts
    assert list(st._fact.options) == ["(no facts in sample 1)"] and st.fact == NO_FACT
    assert any(a.text.startswith("No facts in sample 1") for a in fact.pane.object.layout.annotations)
