"""Stale answers: classify what the model answered against the task ledger (DESIGN.md §4 "stale answers").

Two sources of answers:

* `source="probe"`: the greedy next-token prediction `probe_prediction` recorded at probes that sit on a query.
  A probe at stream token p predicts token p+1; when p+1 is the j-th token of the query's answer, the
  prediction is compared with the j-th token of each candidate value as the task spells it (`_ledger.answer_digit`:
  AR/stream: base-16 digit j, and the NONE token at every position for an absent value; bAbI: the value token
  itself). The NONE token comes from the ledger attrs (`special_tokens`); a trace that kept the ledger variables
  but not their attrs gets the stream's NONE (`_ledger.answer_spelling`).
* `source="key_probe"`: the decoded answers `key_probe_answer` that `armt_viz.record.probe_keys` appends (one
  query per live key, replayed from the stored memory after segment `key_probe_segment`), compared as codes
  (-1 = the model answered NONE, -2 = a malformed answer).

Classes, first match wins:
    current   the value valid at the query; for an absent value (never written, or deleted) that is NONE, so a
              NONE answer to such a query is current;
    stale     a value an earlier, superseded version of the same fact held (a deleted version counts as NONE);
    other     a value some other fact of the same sample held before the query (a written value, never NONE);
    wrong     anything else (a value never written, a malformed answer);
    n/a       the probe does not predict an answer token.

Both paths are vectorised (table lookups, no loop over answers): "stale" asks whether the oldest version of the
fact that spells the answer (token at position j, or value code) is older than the version asked; "other" whether
the earliest version of another fact that spells it was written before the query (the two earliest facts per
spelled token suffice). For key probes the version asked is the newest one first held by a segment up to the
probed one, and "before the query" means written in a segment up to the probed one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from ._common import as_numpy, check_trace, named, per_run
from ._ledger import Facts, _pair_key, answer_digit, answer_spelling, facts_of, ledger_of

__all__ = ["ANSWER_CLASSES", "answer_status"]

ANSWER_CLASSES = ("current", "stale", "other", "wrong", "n/a")
_MALFORMED = -2


@per_run
def answer_status(ds: xr.Dataset, *, source: str = "probe", ledger=None) -> xr.DataArray:
    """Class of every answer (current / stale / other / wrong / n/a), dims `probe` or `key_probe`.

    See the module docstring for the rules. Returns an object-dtype DataArray of class names (units 1); count
    them with e.g. `(status == "stale").sum()` or `status.to_series().value_counts()`. `ledger`: the task ledger
    (default: the trace's `ledger_*` variables), or its prepared `Facts` (the probe path still reads the spelling
    of answers from the ledger attrs).
    """
    if source not in ("probe", "key_probe"):
        raise ValueError(f"source must be 'probe' or 'key_probe', got {source!r}")
    if source == "key_probe" and isinstance(ledger, Facts):  # needs nothing else from the ledger
        return _key_probe_status(ds, ledger)
    led = ledger if isinstance(ledger, xr.Dataset) else ledger_of(ds, None, required=True)
    facts = ledger if isinstance(ledger, Facts) else facts_of(led)
    if source == "probe":
        return _probe_status(ds, facts, led)
    return _key_probe_status(ds, facts)


def _probe_status(ds, facts: Facts, led) -> xr.DataArray:
    check_trace(ds, ("probe_sample", "probe_token", "probe_prediction"), "answer_status(source='probe')")
    sample = as_numpy(ds["probe_sample"]).astype(np.int64)
    token = as_numpy(ds["probe_token"]).astype(np.int64)
    pred = as_numpy(ds["probe_prediction"]).astype(np.int64)
    out = np.full(len(sample), "n/a", dtype=object)
    q = facts.match_probes(sample, token)
    p = np.flatnonzero(q >= 0)
    i = q[p]
    j = token[p] + 1 - facts.query_answer_token[i]  # position in the answer of the token the probe predicts
    length = facts.query_answer_len[i]
    on_answer = (facts.query_answer_token[i] >= 0) & (j >= 0) & (j < length)
    p, i, j, length = p[on_answer], i[on_answer], j[on_answer], length[on_answer]
    size, none = answer_spelling(led)
    for n in np.unique(length):  # without a known value_size the answer's length is the number of digits
        g = length == n
        out[p[g]] = _answer_classes(facts, i[g], j[g], pred[p[g]], size if size is not None or n <= 1 else int(n),
                                    none)
    da = xr.DataArray(out, dims=("probe",), coords={"probe": np.arange(len(out))})
    return named(da, "answer_status", "class of the probe's predicted answer token", "1",
                 classes=list(ANSWER_CLASSES))


def _answer_classes(facts: Facts, i: np.ndarray, j: np.ndarray, answer: np.ndarray, size: int | None,
                    none: int) -> np.ndarray:
    """Class of each answer token (token ``j`` of the answer to query ``i``), by the module docstring's rules."""
    current = answer_digit(facts.query_expected[i], j, size, none)
    spelled = _spelled_versions(facts, size, none)
    key = [facts.query_sample[i], facts.query_fact[i], j, answer]
    oldest = spelled.groupby(["sample", "fact", "j", "token"])["version"].min()
    oldest = oldest.reindex(pd.MultiIndex.from_arrays(key)).to_numpy(dtype=float)
    stale = np.nan_to_num(oldest, nan=np.inf) < facts.query_version[i]
    other_from = _other_fact_since(spelled[spelled["value"] >= 0], facts.query_sample[i], facts.query_fact[i], j,
                                   answer)
    other = other_from < facts.query_token[i]
    return np.select([answer == current, stale, other], ["current", "stale", "other"], "wrong").astype(object)


def _spelled_versions(facts: Facts, size: int | None, none: int) -> pd.DataFrame:
    """One row per (fact version, answer position j): sample, fact, version, value, written (token), j and the
    token that spells the version's value at j."""
    n = len(facts.ver_value)
    j = np.repeat(np.arange(size or 1), n)
    v = np.tile(np.arange(n), size or 1)
    return pd.DataFrame({"sample": facts.ver_sample[v], "fact": facts.ver_fact[v], "version": facts.ver_version[v],
                         "value": facts.ver_value[v], "written": facts.ver_token[v], "j": j,
                         "token": answer_digit(facts.ver_value[v], j, size, none)})


def _other_fact_since(spelled: pd.DataFrame, sample, fact, j, answer) -> np.ndarray:
    """Per answer: the first stream token at which a fact other than ``fact`` (same sample) held a value whose
    token at position ``j`` is ``answer`` (inf if none). The two earliest facts per spelled token suffice."""
    by = ["sample", "j", "token"]
    first = spelled.groupby([*by, "fact"], as_index=False)["written"].min().sort_values("written", kind="stable")
    first = first.groupby(by).head(2)
    rank = first.groupby(by).cumcount().to_numpy()
    key = pd.MultiIndex.from_arrays([sample, j, answer])
    one, two = (first[rank == r].set_index(by).reindex(key) for r in (0, 1))
    since = np.where(one["fact"].to_numpy(dtype=float) != fact, one["written"].to_numpy(dtype=float),
                     two["written"].to_numpy(dtype=float))
    return np.nan_to_num(since, nan=np.inf)


def _key_probe_status(ds, facts: Facts) -> xr.DataArray:
    check_trace(ds, ("key_probe_sample", "key_probe_segment", "key_probe_fact", "key_probe_answer"),
                "answer_status(source='key_probe')")
    sample = as_numpy(ds["key_probe_sample"]).astype(np.int64)
    segment = as_numpy(ds["key_probe_segment"]).astype(np.int64)
    fact = as_numpy(ds["key_probe_fact"]).astype(np.int64)
    answer = as_numpy(ds["key_probe_answer"]).astype(np.int64)
    out = _key_answer_classes(facts, sample, segment, fact, answer)
    da = xr.DataArray(out, dims=("key_probe",), coords={"key_probe": np.arange(len(out))})
    return named(da, "key_probe_status", "class of the replayed answer for a live key", "1",
                 classes=list(ANSWER_CLASSES))


def _key_answer_classes(facts: Facts, sample: np.ndarray, segment: np.ndarray, fact: np.ndarray,
                        answer: np.ndarray) -> np.ndarray:
    """Class of each replayed answer code ``answer`` to key ``fact`` of ``sample`` from the memory after
    ``segment``, by the module docstring's rules; "before the query" is everything written up to the end of the
    probed segment (a version counts from its first holding segment, ``Facts.ver_segment``)."""
    current, version = _live_versions(facts, sample, segment, fact)
    versions = pd.DataFrame({"sample": facts.ver_sample, "fact": facts.ver_fact, "version": facts.ver_version,
                             "value": facts.ver_value})
    oldest = versions.groupby(["sample", "fact", "value"])["version"].min()  # first version holding each value
    oldest = oldest.reindex(pd.MultiIndex.from_arrays([sample, fact, answer])).to_numpy(dtype=float)
    stale = np.nan_to_num(oldest, nan=np.inf) < version
    written = pd.DataFrame({"sample": facts.ver_sample, "fact": facts.ver_fact, "j": 0, "token": facts.ver_value,
                            "written": facts.ver_segment})
    other = _other_fact_since(written[written["token"] >= 0], sample, fact, np.zeros_like(answer), answer) <= segment
    return np.select([answer == _MALFORMED, answer == current, stale, other], ["wrong", "current", "stale", "other"],
                     "wrong").astype(object)


def _live_versions(facts: Facts, sample: np.ndarray, segment: np.ndarray, fact: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (value code, version) of the newest version of ``fact`` (in ``sample``) whose first holding
    segment is at most ``segment``; (-1, 0) when there is none (the key was not written by then)."""
    current = np.full(len(sample), -1, dtype=np.int64)
    version = np.zeros(len(sample), dtype=np.int64)
    if len(facts.ver_value) == 0 or len(sample) == 0:
        return current, version
    # ver_* is sorted by (sample, fact, version): `group` numbers the facts in that order
    groups, group = np.unique(_pair_key(facts.ver_sample, facts.ver_fact), return_inverse=True)
    order = np.lexsort((facts.ver_version, facts.ver_segment, group))
    key = (group[order].astype(np.int64) << 32) + facts.ver_segment[order] + 1
    # the groups stay contiguous and in ver_* order, so a running max of ver_* indices is the newest version of
    # the fact among its versions first held up to each position
    newest = np.maximum.accumulate(order)
    g = np.minimum(np.searchsorted(groups, _pair_key(sample, fact)), len(groups) - 1)
    pos = np.searchsorted(key, (g.astype(np.int64) << 32) + segment + 1, side="right") - 1
    ok = (groups[g] == _pair_key(sample, fact)) & (pos >= 0)
    ok &= group[order][np.maximum(pos, 0)] == g
    idx = newest[np.maximum(pos, 0)][ok]
    current[ok], version[ok] = facts.ver_value[idx], facts.ver_version[idx]
    return current, version
