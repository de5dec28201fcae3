"""answer_status (armt_viz/analysis/answers.py) against a naive per-probe reference on random stream ledgers."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from armt_viz.analysis import answer_status
from armt_viz.analysis._ledger import facts_of
from armt_viz.config import ARMTConfig
from armt_viz.tasks.stream import NONE, StreamConfig, make_stream

from .conftest import embed_ledger

_CONFIG = ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=16).to_json()


def naive_answer_status(probe_sample, probe_token, prediction, ledger: xr.Dataset, *, value_size: int,
                        none: int) -> list[str]:
    """The module docstring's rules applied probe by probe, straight from the ledger rows (no shared code)."""
    col = {name: ledger[name].values for name in ("sample", "token", "fact_id", "version", "value", "valid_from",
                                                  "expected_answer", "n_tokens")}
    role = ledger["role"].values.astype(str)
    rows = range(len(role))

    def spell(value, j):
        return none if value < 0 else (int(value) // 16 ** j) % 16

    out = []
    for sample, token, answer in zip(probe_sample, probe_token, prediction):
        queries = [r for r in rows if role[r] == "query" and col["sample"][r] == sample and col["token"][r] <= token]
        if not queries:
            out.append("n/a")
            continue
        q = max(queries, key=lambda r: col["token"][r])
        fact, asked, at = col["fact_id"][q], col["version"][q], col["token"][q]
        answers = [r for r in rows if role[r] == "answer" and col["sample"][r] == sample
                   and col["fact_id"][r] == fact and col["token"][r] > at]
        if not answers:
            out.append("n/a")
            continue
        a = min(answers, key=lambda r: col["token"][r])
        j = token + 1 - col["token"][a]
        if not 0 <= j < col["n_tokens"][a]:
            out.append("n/a")
            continue
        version_rows = [r for r in rows if role[r] in ("key", "value", "delete") and col["sample"][r] == sample]
        value = {r: (-1 if role[r] == "delete" else col["value"][r]) for r in version_rows}
        stale = {spell(value[r], j) for r in version_rows if col["fact_id"][r] == fact and col["version"][r] < asked}
        other = {spell(value[r], j) for r in version_rows if col["fact_id"][r] != fact
                 and col["valid_from"][r] < at and value[r] >= 0}
        out.append(_classify(answer, spell(col["expected_answer"][q], j), stale, other))
    return out


def _classify(answer, current, stale: set, other: set) -> str:
    """The precedence both naive references apply: current, then stale, then another key's value, else wrong."""
    if answer == current:
        return "current"
    if answer in stale:
        return "stale"
    return "other" if answer in other else "wrong"


def _random_case(seed: int, value_size: int, samples: int = 2, keep_attrs: bool = True):
    """A trace of `samples` random streams (ledger embedded) with probes on answers and off them, and
    predictions drawn from the truth, NONE, older and other values' digits, and random tokens."""
    rng = np.random.default_rng(seed)
    ledgers, probe_sample, probe_token, prediction = [], [], [], []
    for s in range(samples):
        cfg = StreamConfig(n_keys=int(rng.integers(2, 6)), key_size=1, value_size=value_size, segment_size=16,
                           events_per_segment=2, p_write=0.45, p_query=0.35, p_delete=0.2, p_query_absent=0.3,
                           seed=int(rng.integers(1 << 30)))
        stream = make_stream(cfg, 16 * 30)
        led = stream.ledger
        ledgers.append(led.assign(sample=led["sample"] * 0 + s))
        answers = led["token"].values[led["role"].values == "answer"]
        on = (answers[:, None] - 1 + np.arange(value_size)).ravel()
        tokens = np.unique(np.r_[on, rng.integers(0, stream.input_ids.size - 1, size=on.size // 3)])
        truth = stream.input_ids[tokens + 1]
        digits = stream.input_ids[rng.choice(on + 1, size=tokens.size)]  # some value's digit, older or another's
        pick = rng.integers(0, 4, size=tokens.size)
        pred = np.select([pick == 0, pick == 1, pick == 2], [truth, digits, np.full(tokens.size, NONE)],
                         rng.integers(0, 20, size=tokens.size))
        probe_sample.append(np.full(tokens.size, s))
        probe_token.append(tokens)
        prediction.append(pred)
    ledger = xr.concat(ledgers, dim="event")
    ledger.attrs = dict(ledgers[0].attrs)
    ds = xr.Dataset({"probe_prediction": ("probe", np.concatenate(prediction).astype(np.int32))},
                    coords={"probe_sample": ("probe", np.concatenate(probe_sample)),
                            "probe_token": ("probe", np.concatenate(probe_token))},
                    attrs={"armt_config": _CONFIG})
    ds = embed_ledger(ds, ledger)
    if not keep_attrs:
        ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("ledger_")}
    return ds, ledger


@pytest.mark.parametrize("keep_attrs", [True, False], ids=["ledger-attrs", "no-ledger-attrs"])
@pytest.mark.parametrize("value_size", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_answer_status_matches_the_naive_reference(seed, value_size, keep_attrs):
    ds, ledger = _random_case(seed, value_size, keep_attrs=keep_attrs)
    got = answer_status(ds).values.tolist()
    want = naive_answer_status(ds["probe_sample"].values, ds["probe_token"].values, ds["probe_prediction"].values,
                               ledger, value_size=value_size, none=NONE)
    assert got == want
    assert {"current", "stale", "other", "wrong", "n/a"} <= set(want)  # every class occurs: the case is not trivial


def test_a_correct_none_answer_is_current_without_the_ledger_attrs(rewrite_delete_case, collision_case):
    # Given traces that kept the ledger variables but not its attrs (no special_tokens, no value_size)
    def strip(ds):
        ds = ds.copy()
        ds.attrs = {k: v for k, v in ds.attrs.items() if not k.startswith("ledger_")}
        return ds

    # When a deleted key (probe 1 of the first) and a never-written key (probe 1 of the second) are answered NONE,
    # Then the answers are current
    assert list(answer_status(strip(rewrite_delete_case)).values) == ["stale", "current"]
    assert list(answer_status(strip(collision_case)).values) == ["other", "current"]


def naive_key_probe_status(probe_sample, probe_segment, probe_fact, answer, ledger: xr.Dataset) -> list[str]:
    """The module docstring's rules for replayed key probes, answer by answer, straight from the ledger rows: the
    version asked is the newest one with a row in a segment up to the probed one; "before the query" is a row in
    a segment up to the probed one (no shared code)."""
    col = {name: ledger[name].values for name in ("sample", "segment", "fact_id", "version", "value")}
    role = ledger["role"].values.astype(str)
    version_rows = [r for r in range(len(role)) if role[r] in ("key", "value", "delete")]
    value = {r: (-1 if role[r] == "delete" else int(col["value"][r])) for r in version_rows}
    out = []
    for sample, segment, fact, a in zip(probe_sample, probe_segment, probe_fact, answer):
        mine = [r for r in version_rows if col["sample"][r] == sample and col["fact_id"][r] == fact]
        held = [r for r in mine if col["segment"][r] <= segment]
        live = max(held, key=lambda r: col["version"][r]) if held else None
        current = -1 if live is None else value[live]
        stale = set() if live is None else {value[r] for r in mine if col["version"][r] < col["version"][live]}
        other = {value[r] for r in version_rows if col["sample"][r] == sample and col["fact_id"][r] != fact
                 and col["segment"][r] <= segment and value[r] >= 0}
        out.append("wrong" if a == -2 else _classify(a, current, stale, other))
    return out


def _random_key_probes(seed: int, value_size: int, n: int = 400):
    """`_random_case`'s ledgers with `n` random key probes (any sample, segment, key, also keys never written by
    then) whose answers are drawn from the key's own values, other keys' values, NONE, malformed and random codes."""
    ds, ledger = _random_case(seed, value_size)
    rng = np.random.default_rng(seed + 100)
    sample = rng.integers(0, 2, n)
    segment = rng.integers(0, int(ledger["segment"].max()) + 1, n)
    fact = rng.integers(0, int(ledger["fact_id"].max()) + 2, n)
    values = ledger["value"].values
    same = np.array([rng.choice(np.r_[values[(ledger["sample"].values == s) & (ledger["fact_id"].values == f)], -1])
                     for s, f in zip(sample, fact)])
    pick = rng.integers(0, 5, n)
    answer = np.select([pick < 2, pick == 2, pick == 3], [same, rng.choice(values, n), np.full(n, -2)],
                       rng.integers(-1, 16 ** value_size, n))
    ds = ds.assign(key_probe_sample=("key_probe", sample), key_probe_segment=("key_probe", segment),
                   key_probe_fact=("key_probe", fact), key_probe_answer=("key_probe", answer))
    return ds, ledger


@pytest.mark.parametrize("value_size", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_key_probe_status_matches_the_naive_reference(seed, value_size):
    ds, ledger = _random_key_probes(seed, value_size)
    got = answer_status(ds, source="key_probe").values.tolist()
    want = naive_key_probe_status(ds["key_probe_sample"].values, ds["key_probe_segment"].values,
                                  ds["key_probe_fact"].values, ds["key_probe_answer"].values, ledger)
    assert got == want
    assert {"current", "stale", "other", "wrong"} <= set(want)  # every class occurs: the case is not trivial
    # the ledger's prepared Facts give the same answer, also for a trace without the ledger variables
    bare = ds.drop_vars([n for n in ds.variables if str(n).startswith("ledger_")])
    assert answer_status(bare, source="key_probe", ledger=facts_of(ledger)).values.tolist() == want


def test_key_probe_status_without_key_probes_or_versions():
    # Given no key probes, and key probes on a ledger whose versions all come after the probed segment
    ds, ledger = _random_key_probes(0, 1)
    none = ds.isel(key_probe=slice(0, 0))
    assert answer_status(none, source="key_probe").sizes["key_probe"] == 0
    early = ds.assign(key_probe_segment=ds["key_probe_segment"] * 0 - 1)
    # Then every NONE answer is current (the key was not written yet) and nothing else is
    status = answer_status(early, source="key_probe").values
    assert ((status == "current") == (early["key_probe_answer"].values == -1)).all()
