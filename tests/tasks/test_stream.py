"""Tests of armt_viz.tasks.stream: format, state replay, segment rule, chunking and ledger."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from armt_viz.tasks import (
    DEL,
    FILL,
    NONE,
    STREAM_SPECIAL_TOKENS,
    VOCAB_SIZE,
    StreamConfig,
    concat_ledgers,
    ledger_queries,
    make_stream,
    stream_chunks,
)

from armt_viz.tasks._keyset import KeySet

from ._oracles import check_ledger, parse_stream, replay_stream

SMALL = StreamConfig(n_keys=6, key_size=1, value_size=1, segment_size=16, events_per_segment=3, seed=5,
                     chunk_segments=7)


def _last_change_segments(events):
    """For each query event: segment of the latest write/delete of its key before it (-1 if none)."""
    last, out = {}, []
    for e in events:
        if e["kind"] == "query":
            out.append(last.get(e["key"], -1))
        else:
            last[e["key"]] = e["segment"]
    return out


def test_special_tokens():
    assert (DEL, FILL, NONE) == (103, 104, 105) and max(STREAM_SPECIAL_TOKENS.values()) < VOCAB_SIZE


@pytest.mark.parametrize("cfg", [SMALL, StreamConfig(n_keys=200, key_size=2, value_size=2, seed=1),
                                 StreamConfig(seed=2)])
def test_stream_parses_and_replays(cfg):
    stream = make_stream(cfg, 400 * cfg.segment_size)
    assert stream.input_ids.dtype == np.int64 and len(stream.input_ids) == 400 * cfg.segment_size
    events = parse_stream(stream.input_ids, cfg.key_size, cfg.value_size, cfg.segment_size)
    replay_stream(events)
    per_segment = Counter(e["segment"] for e in events)
    assert set(per_segment.values()) == {cfg.events_per_segment} and len(per_segment) == 400
    kinds = Counter(e["kind"] for e in events)
    assert kinds["write"] and kinds["query"] and kinds["delete"]
    assert any(e["kind"] == "query" and e["value"] is None for e in events)
    assert any(e["kind"] == "query" and e["value"] is not None for e in events)


def test_overwrites_change_the_value():
    events = parse_stream(make_stream(SMALL, 16 * 300).input_ids, 1, 1, 16)
    state = {}
    for e in events:
        if e["kind"] == "write":
            assert state.get(e["key"]) != e["value"]
            state[e["key"]] = e["value"]
        elif e["kind"] == "delete":
            state.pop(e["key"])  # only live keys are deleted


def test_answers_are_never_written_in_the_query_segment():
    cfg = SMALL
    events = parse_stream(make_stream(cfg, 16 * 500).input_ids, 1, 1, 16)
    queries = [e for e in events if e["kind"] == "query"]
    assert len(queries) > 100
    for q, last in zip(queries, _last_change_segments(events)):
        assert last < q["segment"], f"query at token {q['start']} can read its answer inside segment {last}"


def test_the_segment_rule_can_be_switched_off():
    # the check above is not vacuous: without the rule, same-segment answers do occur
    cfg = StreamConfig(**{**SMALL.__dict__, "answer_outside_segment": False})
    events = parse_stream(make_stream(cfg, 16 * 500).input_ids, 1, 1, 16)
    replay_stream(events)
    queries = [e for e in events if e["kind"] == "query"]
    assert any(last == q["segment"] for q, last in zip(queries, _last_change_segments(events)))


def test_chunks_concatenate_to_make_stream():
    n_tokens = 16 * 50
    chunks = list(stream_chunks(SMALL, n_tokens))
    assert len(chunks) == 8 and all(len(c.input_ids) % 16 == 0 for c in chunks)
    whole = make_stream(SMALL, n_tokens)
    np.testing.assert_array_equal(np.concatenate([c.input_ids for c in chunks]), whole.input_ids)
    xr.testing.assert_identical(concat_ledgers([c.ledger for c in chunks]), whole.ledger)
    # chunking does not change the stream
    other = make_stream(StreamConfig(**{**SMALL.__dict__, "chunk_segments": 13}), n_tokens)
    np.testing.assert_array_equal(other.input_ids, whole.input_ids)
    xr.testing.assert_identical(other.ledger, whole.ledger)


def test_chunk_ledgers_leave_later_supersessions_open():
    chunks = list(stream_chunks(SMALL, 16 * 50))
    whole = make_stream(SMALL, 16 * 50).ledger
    first = chunks[0].ledger
    assert first["token"].values.max() < len(chunks[0].input_ids)
    same = whole.sel(event=first["event"])
    closed_later = (first["valid_to"].values == -1) & (same["valid_to"].values >= len(chunks[0].input_ids))
    assert closed_later.any()
    agree = first["valid_to"].values != -1
    np.testing.assert_array_equal(first["valid_to"].values[agree], same["valid_to"].values[agree])


def test_ledger_matches_the_parsed_stream():
    cfg = SMALL
    stream = make_stream(cfg, 16 * 200)
    check_ledger(stream.ledger)
    events = parse_stream(stream.input_ids, 1, 1, 16)
    led = stream.ledger
    heads = led.isel(event=np.isin(led["role"].values, ["key", "delete", "query"]))
    assert heads["token"].values.tolist() == [e["start"] for e in events]
    assert heads["fact_id"].values.tolist() == [e["key"] for e in events]
    kind = {"key": "write", "delete": "delete", "query": "query"}
    assert [kind[r] for r in heads["role"].values.tolist()] == [e["kind"] for e in events]
    values = [-1 if e["value"] is None else e["value"] for e in events]
    assert heads["value"].values.tolist() == values
    queries = ledger_queries(led)
    assert queries["expected_answer"].values.tolist() == [v for v, e in zip(values, events) if e["kind"] == "query"]
    assert (queries["segment"].values > queries["valid_from"].values // 16)[queries["version"].values >= 0].all()
    assert (led["sample"].values == 0).all()
    assert led.attrs["task"] == "stream" and led.attrs["seed"] == 5


def test_stale_values_appear_under_heavy_overwriting():
    cfg = StreamConfig(n_keys=2, key_size=1, segment_size=16, events_per_segment=3, seed=9, p_delete=0.0,
                       p_write=0.6, p_query=0.4)
    ledger = make_stream(cfg, 16 * 100).ledger
    check_ledger(ledger)
    queries = ledger_queries(ledger)
    assert queries["n_superseded"].values.max() > ledger.sizes["stale"]  # more than fit: stored truncated
    assert (queries["stale_values"].values[:, -1] >= 0).any()


def test_zero_probabilities_never_fire():
    cfg = StreamConfig(seed=3, p_write=0.7, p_query=0.3, p_delete=0.0)
    ids = make_stream(cfg, 32 * 100).input_ids
    assert DEL not in ids
    only_writes = make_stream(StreamConfig(seed=3, p_write=1.0, p_query=0.0, p_delete=0.0), 32 * 50).input_ids
    assert NONE not in only_writes and 101 not in only_writes


def test_a_million_tokens_are_fast_and_chunked():
    cfg = StreamConfig(seed=0)
    start = time.perf_counter()
    total, longest = 0, 0
    for chunk in stream_chunks(cfg, 1_000_000):
        total += len(chunk.input_ids)
        longest = max(longest, len(chunk.input_ids))
    elapsed = time.perf_counter() - start
    assert total == 1_000_000 and longest == cfg.chunk_segments * cfg.segment_size
    assert elapsed < 10.0, f"1M tokens took {elapsed:.1f} s"


@pytest.mark.parametrize("kwargs, match", [
    ({"events_per_segment": 9}, r"need segment_size >= 45.*at most 6"),
    ({"p_write": 0.5, "p_query": 0.2, "p_delete": 0.1}, "must sum to 1"),
    ({"n_keys": 300, "key_size": 2}, r"n_keys must be in \[1, 256\]"),
    ({"p_query_absent": 1.5}, r"must lie in \[0, 1\]"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamConfig(**kwargs)


def test_n_tokens_must_be_whole_segments():
    with pytest.raises(ValueError, match="multiple of segment_size=32.*use 1024 or 992"):
        make_stream(StreamConfig(seed=0), 1000)
    with pytest.raises(ValueError, match="multiple of segment_size=32.*use 32"):
        stream_chunks(StreamConfig(seed=0), 20)  # raised at the call, before any chunk is drawn


def test_keyset_pick_is_uniform_over_eligible_members():
    keys = KeySet(10, [3, 1, 4, 0, 9, 2, 6])
    keys.remove(4)
    keys.add(7)
    grid = (np.arange(6000) + 0.5) / 6000
    picks = Counter(keys.pick(u, {1, 9, 5}) for u in grid)  # 5 is not a member: ignored
    assert set(picks) == {3, 0, 2, 6, 7} and set(picks.values()) == {1200}
    assert KeySet(3, [1]).pick(0.5, {1}) == -1


@settings(max_examples=25, deadline=None)
@given(n_keys=st.integers(1, 20), key_size=st.integers(1, 2), value_size=st.integers(1, 2),
       events=st.integers(1, 4), spare=st.integers(0, 6), p=st.tuples(*[st.integers(0, 4)] * 3),
       p_absent=st.sampled_from([0.0, 0.3, 1.0]), outside=st.booleans(), chunk=st.integers(1, 9),
       n_segments=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
def test_stream_properties(n_keys, key_size, value_size, events, spare, p, p_absent, outside, chunk, n_segments,
                           seed):
    if sum(p) == 0:
        p = (1, 0, 0)
    size = events * (key_size + value_size + 2) + spare
    cfg = StreamConfig(n_keys=min(n_keys, 16**key_size), key_size=key_size, value_size=value_size,
                       segment_size=size, events_per_segment=events, p_write=p[0] / sum(p), p_query=p[1] / sum(p),
                       p_delete=p[2] / sum(p), p_query_absent=p_absent, answer_outside_segment=outside, seed=seed,
                       chunk_segments=chunk)
    chunks = list(stream_chunks(cfg, n_segments * size))
    ids = np.concatenate([c.input_ids for c in chunks])
    events_parsed = parse_stream(ids, key_size, value_size, size)
    replay_stream(events_parsed)
    assert Counter(e["segment"] for e in events_parsed) == {s: events for s in range(n_segments)}
    if outside:
        queries = [e for e in events_parsed if e["kind"] == "query"]
        assert all(last < q["segment"] for q, last in zip(queries, _last_change_segments(events_parsed)))
    ledger = concat_ledgers([c.ledger for c in chunks])
    check_ledger(ledger)
    xr.testing.assert_identical(ledger, make_stream(cfg, n_segments * size).ledger)
