"""Stale answers: classify what the model answered against the task ledger (DESIGN.md §4 "stale answers").

Two sources of answers:

* `source="probe"`: the greedy next-token prediction `probe_prediction` recorded at probes that sit on a query.
  A probe at stream token p predicts token p+1; when p+1 is the j-th token of the query's answer, the
  prediction is compared with the j-th token of each candidate value (AR/stream: base-16 digit j, or NONE for an
  absent value; bAbI: the value token itself).
* `source="key_probe"`: the decoded answers `key_probe_answer` that `armt_viz.record.probe_keys` appends (one
  query per live key, replayed from the stored memory after segment `key_probe_segment`), compared as codes
  (-1 = the model answered NONE, -2 = a malformed answer).

Classes, first match wins:
    current   the value valid at the query (for an absent value: NONE);
    stale     a value an earlier, superseded version of the same fact held (a deleted version counts as NONE);
    other     a value some other fact of the same sample held before the query;
    wrong     anything else (a value never written, a malformed answer);
    n/a       the probe does not predict an answer token.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._common import as_numpy, check_trace, named, per_run
from ._ledger import Facts, answer_tokens, facts_of, ledger_of

__all__ = ["ANSWER_CLASSES", "answer_status"]

ANSWER_CLASSES = ("current", "stale", "other", "wrong", "n/a")
_MALFORMED = -2


def _classify(answer, current, stale, other) -> str:
    if answer == current:
        return "current"
    if answer in stale:
        return "stale"
    if answer in other:
        return "other"
    return "wrong"


def _candidates(facts: Facts, sample: int, fact: int, version: int, before_token: int):
    """(values of earlier versions of `fact`, values of other facts written before `before_token`)."""
    mine = facts.versions_of(sample, fact)
    stale = set(facts.ver_value[mine][facts.ver_version[mine] < version].tolist())
    others = (facts.ver_sample == sample) & (facts.ver_fact != fact) & (facts.ver_token < before_token) \
        & (facts.ver_value >= 0)
    return stale, set(facts.ver_value[others].tolist())


@per_run
def answer_status(ds: xr.Dataset, *, source: str = "probe", ledger=None) -> xr.DataArray:
    """Class of every answer (current / stale / other / wrong / n/a), dims `probe` or `key_probe`.

    See the module docstring for the rules. Returns an object-dtype DataArray of class names (units 1); count
    them with e.g. `(status == "stale").sum()` or `status.to_series().value_counts()`.
    """
    led = ledger if isinstance(ledger, xr.Dataset) else ledger_of(ds, None, required=True)
    facts = ledger if isinstance(ledger, Facts) else facts_of(led)
    if source == "probe":
        return _probe_status(ds, facts, led)
    if source == "key_probe":
        return _key_probe_status(ds, facts)
    raise ValueError(f"source must be 'probe' or 'key_probe', got {source!r}")


def _probe_status(ds, facts: Facts, led) -> xr.DataArray:
    check_trace(ds, ("probe_sample", "probe_token", "probe_prediction"), "answer_status(source='probe')")
    sample = as_numpy(ds["probe_sample"]).astype(np.int64)
    token = as_numpy(ds["probe_token"]).astype(np.int64)
    pred = as_numpy(ds["probe_prediction"]).astype(np.int64)
    q = facts.match_probes(sample, token)
    out = np.full(len(sample), "n/a", dtype=object)
    for p in np.flatnonzero(q >= 0):
        i = q[p]
        j = token[p] + 1 - facts.query_answer_token[i]
        length = int(facts.query_answer_len[i])
        if facts.query_answer_token[i] < 0 or not 0 <= j < length:
            continue
        fact, version = int(facts.query_fact[i]), int(facts.query_version[i])
        stale, other = _candidates(facts, int(sample[p]), fact, version, int(facts.query_token[i]))
        spell = lambda values: set(answer_tokens(np.array(sorted(values), dtype=np.int64), led, length)[:, j].tolist()) \
            if values else set()  # noqa: E731
        current = int(answer_tokens(np.array([facts.query_expected[i]]), led, length)[0, j])
        out[p] = _classify(int(pred[p]), current, spell(stale), spell(other))
    da = xr.DataArray(out, dims=("probe",), coords={"probe": np.arange(len(out))})
    return named(da, "answer_status", "class of the probe's predicted answer token", "1",
                 classes=list(ANSWER_CLASSES))


def _key_probe_status(ds, facts: Facts) -> xr.DataArray:
    check_trace(ds, ("key_probe_sample", "key_probe_segment", "key_probe_fact", "key_probe_answer"),
                "answer_status(source='key_probe')")
    sample = as_numpy(ds["key_probe_sample"]).astype(np.int64)
    segment = as_numpy(ds["key_probe_segment"]).astype(np.int64)
    fact = as_numpy(ds["key_probe_fact"]).astype(np.int64)
    answer = as_numpy(ds["key_probe_answer"]).astype(np.int64)
    out = np.full(len(sample), "wrong", dtype=object)
    for i in range(len(sample)):
        vers = facts.versions_of(int(sample[i]), int(fact[i]))
        vers = vers[facts.ver_segment[vers] <= segment[i]]
        if len(vers) == 0:
            current, version = -1, 0
        else:
            current, version = int(facts.ver_value[vers[-1]]), int(facts.ver_version[vers[-1]])
        # "before the query": everything written up to the end of the probed segment
        before = np.iinfo(np.int64).max
        others = (facts.ver_sample == sample[i]) & (facts.ver_fact != fact[i]) \
            & (facts.ver_segment <= segment[i]) & (facts.ver_value >= 0)
        stale, _ = _candidates(facts, int(sample[i]), int(fact[i]), version, before)
        a = int(answer[i])
        out[i] = "wrong" if a == _MALFORMED else _classify(a, current, stale, set(facts.ver_value[others].tolist()))
    da = xr.DataArray(out, dims=("key_probe",), coords={"key_probe": np.arange(len(out))})
    return named(da, "key_probe_status", "class of the replayed answer for a live key", "1",
                 classes=list(ANSWER_CLASSES))
