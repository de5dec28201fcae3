"""Naive, independent re-derivations used as test oracles for armt_viz.tasks.

Nothing here imports the generators' internals: token streams are parsed from the spec's layout
(ARMT_SPEC.md §3.1 and the module docstrings), facts are replayed with plain dicts, and ledgers are checked
row by row against those replays.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

SEP, GEN, EOS, DEL, FILL, NONE = 100, 101, 102, 103, 104, 105


def little_endian(digits) -> int:
    return sum(int(d) * 16**j for j, d in enumerate(digits))


def parse_ar(ids, k: int, v: int) -> tuple[list[tuple[int, int]], int, int]:
    """(pairs as (key, value) codes, query key, answer) of one AR sample; asserts the exact layout."""
    ids = [int(x) for x in ids]
    size = k + v + 2
    assert len(ids) % size == 0, f"length {len(ids)} is not a multiple of K+V+2={size}"
    blocks = [ids[i : i + size] for i in range(0, len(ids), size)]
    pairs = []
    for j, block in enumerate(blocks):
        key, marker, value, end = block[:k], block[k], block[k + 1 : k + 1 + v], block[-1]
        assert all(0 <= d < 16 for d in key + value), f"block {j}: digits out of range: {block}"
        assert end == EOS, f"block {j} must end with EOS: {block}"
        assert marker == (GEN if j == len(blocks) - 1 else SEP), f"block {j} has marker {marker}: {block}"
        pairs.append((little_endian(key), little_endian(value)))
    (query, answer) = pairs.pop()
    return pairs, query, answer


def parse_stream(ids, k: int, v: int, segment_size: int) -> list[dict]:
    """Events of a stream: dicts kind/key/value/start/segment; asserts no event crosses a segment boundary."""
    ids = [int(x) for x in ids]
    events, i = [], 0
    while i < len(ids):
        if ids[i] == FILL:
            i += 1
            continue
        start, key = i, little_endian(ids[i : i + k])
        assert all(0 <= d < 16 for d in ids[i : i + k]), f"bad key digits at {i}: {ids[i:i + k]}"
        marker = ids[i + k]
        if marker == DEL:
            assert ids[i + k + 1] == EOS
            event = {"kind": "delete", "key": key, "value": None, "end": i + k + 2}
        else:
            body = ids[i + k + 1 : i + k + 1 + v]
            assert ids[i + k + 1 + v] == EOS, f"event at {i} does not end with EOS"
            if marker == SEP:
                event = {"kind": "write", "key": key, "value": little_endian(body)}
            else:
                assert marker == GEN, f"unexpected marker {marker} at {i + k}"
                value = None if body == [NONE] * v else little_endian(body)
                event = {"kind": "query", "key": key, "value": value}
            event["end"] = i + k + v + 2
        event.update(start=start, segment=start // segment_size)
        assert (event["end"] - 1) // segment_size == event["segment"], f"event at {start} crosses a segment"
        events.append(event)
        i = event["end"]
    return events


def replay_stream(events: list[dict]) -> None:
    """Assert every query's answer is the key's current value (None if absent), replaying with a dict."""
    state: dict[int, int] = {}
    for e in events:
        if e["kind"] == "write":
            state[e["key"]] = e["value"]
        elif e["kind"] == "delete":
            state.pop(e["key"], None)
        else:
            assert e["value"] == state.get(e["key"]), f"query at {e['start']}: {e['value']} != {state.get(e['key'])}"


def distinct_recent(values: list[int], exclude: int) -> list[int]:
    out: list[int] = []
    for x in reversed(values):
        if x != exclude and x != -1 and x not in out:
            out.append(x)
    return out


def check_ledger(ledger, expect_tokens=None) -> None:
    """Row-by-row invariants of a ledger, each re-derived naively from the other rows."""
    n = ledger.sizes["event"]
    cols = {name: ledger[name].values.tolist() for name in ledger.data_vars if name != "stale_values"}
    stale = ledger["stale_values"].values
    size = ledger.attrs["segment_size"]
    rows = [{name: cols[name][i] for name in cols} | {"stale": [x for x in stale[i] if x != -1]} for i in range(n)]
    defining = defaultdict(list)  # (sample, fact) -> rows of versions, in stream order
    for r in rows:
        assert r["segment"] == r["token"] // size
        if r["role"] in ("key", "value", "delete"):
            versions = defining[(r["sample"], r["fact_id"])]
            if not versions or versions[-1]["version"] != r["version"]:
                versions.append(r)
            else:  # a second row of the same version (a write's value row) agrees with the first
                first = versions[-1]
                assert (r["valid_from"], r["valid_to"], r["value"]) == (
                    first["valid_from"], first["valid_to"], first["value"])
    for (sample, fact), versions in defining.items():
        assert [r["version"] for r in versions] == list(range(len(versions))), (sample, fact)
        for a, b in zip(versions, versions[1:]):
            assert a["valid_from"] < a["valid_to"] == b["valid_from"], (sample, fact, a, b)
        assert versions[-1]["valid_to"] == -1
    for i, r in enumerate(rows):
        if r["role"] not in ("query", "answer"):
            assert r["expected_answer"] == -1 and r["n_superseded"] == 0 and not r["stale"]
            continue
        versions = defining.get((r["sample"], r["fact_id"]), [])
        live = [v for v in versions if v["valid_from"] <= r["token"] and (v["valid_to"] == -1 or r["token"] < v["valid_to"])]
        assert len(live) <= 1
        if live:
            cur = live[0]
            assert (r["version"], r["valid_from"], r["valid_to"]) == (cur["version"], cur["valid_from"], cur["valid_to"])
            assert r["expected_answer"] == r["value"] == cur["value"]
            older = [v["value"] for v in versions if v["version"] < cur["version"]]
        else:
            assert r["version"] == -1 and r["expected_answer"] == -1
            older = []
        want = distinct_recent(older, r["expected_answer"])
        assert r["n_superseded"] == len(want), (r, want)
        assert r["stale"] == want[: stale.shape[1]], (r, want)
        if r["role"] == "query":
            nxt = rows[i + 1]
            assert nxt["role"] == "answer" and nxt["sample"] == r["sample"] and nxt["token"] > r["token"]
            assert (nxt["fact_id"], nxt["expected_answer"]) == (r["fact_id"], r["expected_answer"])
    if expect_tokens is not None:
        assert [r["token"] for r in rows] == expect_tokens


def replay_babi(words: list[str]) -> list[tuple[str, str, str]]:
    """(entity, expected, given) for every question of a decoded story, by replaying the sentences."""
    person_at: dict[str, str] = {}
    object_at: dict[str, str] = {}
    held_by: dict[str, str] = {}
    results = []
    sentence: list[str] = []
    i = 0
    while i < len(words):
        w = words[i]
        i += 1
        if w == "<pad>":
            continue
        sentence.append(w)
        if w == "?":
            entity = sentence[-2]
            assert words[i] == "<gen>" and words[i + 2] == "<eos>"
            if sentence[2] == "the":  # "Where is the apple ?": with its holder, else where it was left
                here = person_at[held_by[entity]] if entity in held_by else object_at[entity]
            else:
                here = person_at[entity]
            results.append((entity, here, words[i + 1]))
            i += 3
            sentence = []
        elif w == ".":
            subject, rest = sentence[0], sentence[1:-1]
            if subject == "The":
                pass  # distractor
            elif rest[-2:-1] == ["the"] and rest[0] in ("moved", "went", "journeyed", "travelled"):
                assert person_at.get(subject) != rest[-1], "a move must change place"
                person_at[subject] = rest[-1]
            elif rest[0] in ("picked", "grabbed", "got"):
                obj = rest[-1]
                assert obj not in held_by, f"{obj} picked up while held"
                assert object_at.get(obj, person_at[subject]) == person_at[subject], "picked up elsewhere"
                held_by[obj] = subject
            elif rest[0] in ("dropped", "discarded", "put"):
                obj = rest[-1]
                assert held_by.pop(obj) == subject
                object_at[obj] = person_at[subject]
            else:
                raise AssertionError(f"unknown sentence {sentence}")
            for obj, holder in held_by.items():
                object_at[obj] = person_at[holder]
            sentence = []
    return results


def as_list(x) -> list[int]:
    return np.asarray(x).reshape(-1).tolist()
