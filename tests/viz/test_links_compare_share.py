"""Deep-link state (dashboard/urlstate.py), restoring it in a store, the compare figure (figures_compare.py),
the offline HTML of a view (share.py), chance lines and the texts that explain a page (explain.py)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

pn = pytest.importorskip("panel")

from armt_viz.viz import data as D  # noqa: E402
from armt_viz.viz import figures as F  # noqa: E402
from armt_viz.viz.dashboard import build_app  # noqa: E402
from armt_viz.viz.dashboard.urlstate import TABS, query_string, query_to_state, state_to_query  # noqa: E402
from armt_viz.viz.explain import decode_tokens, range_warning, special_tokens_of  # noqa: E402
from armt_viz.viz.figures_compare import compare, compare_figure  # noqa: E402
from armt_viz.viz.share import view_html  # noqa: E402


def _random_state(rng, n_seg=48, n_layer=2, facts=(0, 1, 2, 3, 4, 5)):
    lo = float(rng.integers(0, n_seg - 10))
    return {"trace": "run_writes.zarr", "sample": 0, "layer": int(rng.integers(0, n_layer)),
            "segment": int(rng.integers(0, n_seg)), "fact": int(rng.choice(facts)), "tab": str(rng.choice(TABS)),
            "zoom": None if rng.random() < 0.3 else (lo, lo + float(rng.integers(3, 9))), "compare": None}


def test_query_round_trips_and_bad_values_are_dropped():
    rng = np.random.default_rng(0)
    for _ in range(50):
        state = _random_state(rng)
        want = {k: v for k, v in state.items() if v is not None}
        assert query_to_state(state_to_query(state)) == want
    got = query_to_state({"trace": [b"a.zarr"], "segment": [b"x"], "layer": "2", "tab": "nope", "zoom": "9-3"})
    assert got == {"trace": "a.zarr", "layer": 2, "ignored": ["segment='x'", "tab='nope'", "zoom='9-3'"]}
    assert query_string({}) == "" and query_string({"segment": 3}) == "?segment=3"


def test_a_deep_link_restores_its_view_in_the_named_trace(trace_root):
    # the bug of issue 15: another trace opened at 0 while the sidebar named the requested one
    rng = np.random.default_rng(1)
    for _ in range(4):
        state = _random_state(rng)
        app = build_app(str(trace_root["root"]), sync_url=False, query=state_to_query(state))
        got = app.store.view_state()
        want = {**state, "zoom": state["zoom"]}
        assert got == want
        assert app.tabs.active == TABS.index(state["tab"])
        assert app.store._trace_select.value == state["trace"]


def test_switching_trace_resets_what_no_longer_applies(trace_root):
    app = build_app(str(trace_root["root"]), sync_url=False,
                    query={"trace": "run_writes.zarr", "segment": "40", "zoom": "10-20", "layer": "1"})
    st = app.store
    st.trace = "nested/run_summary.zarr"
    assert st.x_range is None and st.segment <= st.param.segment.bounds[1] and st.segment > 0
    assert st.layer == 1 and app.link.value.endswith(query_string(st.view_state()))


def test_fresh_view_opens_on_the_most_recent_answered_recall(trace_root):
    app = build_app(str(trace_root["root"]), trace="run_writes.zarr", sync_url=False)
    probes = D.probe_frame(app.store.ds, D.ledger_frame(app.store.ds))
    answered = probes[(probes["fact_id"] >= 0) & (probes["outcome"] != "pending")]
    assert app.store.segment == int(answered["segment"].max()) > 0


def test_compare_figure_overlays_differences_and_chance(trace_writes):
    from synthetic import make_trace

    other = make_trace(level="writes", seed=3, n_segments=40)
    fig = compare(trace_writes, other, labels=("A", "B"))
    names = [t.name for t in fig.data]
    assert "assoc_norm: A − B" in names and any(n == "A" for n in names) and any(n == "B" for n in names)
    diff = next(t for t in fig.data if t.name == "assoc_norm: A − B")
    a = D.series(trace_writes, "assoc_norm", 0).values[:40]
    b = D.series(other, "assoc_norm", 0).values[:40]
    finite = np.isfinite(np.asarray(diff.y, dtype=float))
    assert finite.any()
    # the difference row is bucket means of A − B over the common segments (named tolerance: float32 sums)
    assert np.nanmean(np.asarray(diff.y, dtype=float)) == pytest.approx(float(np.mean(a - b)), rel=0.25, abs=1e-3)
    assert sum(1 for t in fig.data if (t.meta or {}).get("role") == "chance") == 4  # 2 runs x (correct, stale)
    assert compare_figure({}, {}).layout.title.text == "Compare two runs"


def test_rate_figures_draw_a_chance_line(trace_writes):
    for fig in (F.stale_answers(trace_writes), F.timeline(trace_writes)):
        chance = [t for t in fig.data if (t.meta or {}).get("role") == "chance"]
        assert chance and all(np.isfinite(np.asarray(t.y, dtype=float)).any() for t in chance)
    assert "vs chance" in F.stale_answers(trace_writes).layout.title.subtitle.text


def test_view_html_is_offline_and_escapes_trace_strings(trace_writes):
    fig = F.stale_answers(trace_writes)
    text = view_html({"stale": fig}, state={"trace": "<b>x</b>.zarr", "segment": 3},
                     provenance={"input_description": "<script>alert(1)</script>", "other": "dropped"},
                     how_to_read={"stale": "read me"})
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;" in text
    assert "<b>x</b>" not in text and "dropped" not in text and "read me" in text
    head, body = text.split("</head>", 1)  # plotly.js itself (inlined in the head) mentions URLs in strings
    assert "<script type='text/javascript'>" in head and not re.search(r"<script[^>]*\ssrc=", text)
    assert not re.search(r"""(src|href)\s*=\s*["']?https?://""", body)  # nothing fetched from the network
    payload = re.search(r"var f=(\{.*?\});Plotly.newPlot", body, re.S).group(1)
    assert json.loads(payload)["layout"]["title"]["text"] == fig.layout.title.text


def test_tokens_decode_with_the_task_vocabulary_and_range_warning():
    special = special_tokens_of({"ledger_attrs": json.dumps({"special_tokens": {"SEP": 100, "GEN": 101,
                                                                               "EOS": 102, "NONE": 105}})})
    assert decode_tokens([3, 100, 11, 102, -1], special) == "3 SEP B EOS"
    assert decode_tokens([3, 101, 11], special, mark=1) == "3 [GEN] B"
    rng = json.dumps({"max_segments_trained": 51, "recall_exact_up_to_segments": 200})
    assert range_warning({"trained_range": rng}, 200) is None
    assert "50,000 segments, beyond" in range_warning({"trained_range": rng}, 50_000)
    assert range_warning({}, 10 ** 6) is None


def test_many_fact_events_are_bucketed_not_merged(trace_writes):
    import pandas as pd

    from armt_viz.viz.figures_timeline import timeline_figure

    series = {"assoc_norm": D.series(trace_writes, "assoc_norm", 0)}
    seg = np.sort(np.random.default_rng(0).integers(0, 48, 470))
    events = pd.DataFrame({"event": "overwrite", "segment": seg, "version": 1, "value": 3})
    fig = timeline_figure(series, fact_events=events, fact=2, n_pixels=400)
    marks = [t for t in fig.data if t.name == "fact 2: overwrite (per bucket)"]
    assert len(marks) == 1 and len(marks[0].x) <= 50 and int(np.sum(marks[0].customdata)) == 470
    few = timeline_figure(series, fact_events=events.iloc[:10], fact=2, n_pixels=400)
    assert [len(t.x) for t in few.data if t.name == "fact 2: overwrite"] == [10]


def test_refresh_follows_a_growing_trace(tmp_path):
    import shutil
    import time

    from synthetic import make_trace, write_store

    full = make_trace(level="writes", seed=4, n_segments=64)
    write_store(full.isel(segment=slice(0, 32)), tmp_path / "grow.zarr")
    app = build_app(str(tmp_path), trace="grow.zarr", sync_url=False)
    st = app.store
    st.segment = st.n_segments - 1  # watching the end
    assert st.refresh() is False  # nothing new
    time.sleep(0.01)
    shutil.rmtree(tmp_path / "grow.zarr")
    write_store(full, tmp_path / "grow.zarr")  # more segments committed
    write_store(full.isel(segment=slice(0, 8)), tmp_path / "new.zarr")  # and a new trace appeared
    assert st.refresh() is True
    assert st.n_segments == 64 and st.segment == 63 and st._segment.end == 63 and st._segment.value == 63
    assert "new.zarr" in st._trace_select.options.values()
    assert "segment 63" in app.views["assoc"].pane.object.layout.title.text


def test_a_followed_view_put_back_on_an_earlier_end_keeps_following(tmp_path):
    """A browser widget whose range changed can send back the value it held (an earlier end): the view keeps
    following; a view the user moved elsewhere stays where the user put it."""
    import shutil
    import time

    from synthetic import make_trace, write_store

    full = make_trace(level="writes", seed=4, n_segments=96)
    write_store(full.isel(segment=slice(0, 32)), tmp_path / "grow.zarr")
    app = build_app(str(tmp_path), trace="grow.zarr", sync_url=False)
    st = app.store

    def grow(n):
        time.sleep(0.01)
        shutil.rmtree(tmp_path / "grow.zarr")
        write_store(full.isel(segment=slice(0, n)), tmp_path / "grow.zarr")

    st.segment = 31  # watching the end
    grow(64)
    assert st.refresh() is True and st.segment == 63
    st.segment = 31  # the stale echo of the old end
    assert st.refresh() is False and st.segment == 63  # nothing new committed: back to the end
    st.segment = 31
    grow(80)
    assert st.refresh() is True and st.segment == 79 and st._segment.value == 79
    st.segment = 10  # the user looks elsewhere
    grow(96)
    assert st.refresh() is True and st.segment == 10
