"""Fact bookkeeping for the analysis layer: which segment writes carry which fact versions (DESIGN.md §4-5).

A task ledger (`armt_viz.tasks.ledger`) lists every key/value/delete/query/answer row with its fact id and
version. In a trace the ledger's variables are stored with the prefix `ledger_` (dim `event`) and its attrs as
the JSON trace attr `ledger_attrs` (the recorder's convention). All functions also accept `ledger=` explicitly.

The rule that ties memory writes to facts (used by every ledger-aware metric):

* A segment *holds* a fact version when any row of that version with role key, value or delete lies in the
  segment (same sample). A segment may hold several versions (several events per segment) and a version may be
  held by two segments (its key and value rows straddle a boundary).
* Every write event of a segment (each memory token, each layer) carries all the versions its segment holds:
  the memory tokens read the whole segment, so the trace cannot split them further.
* A version is *superseded* at the first segment holding the next version of the same fact (a later write or a
  delete); `superseded_segment = -1` while it is the latest version.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

from ..tasks.ledger import NO_VALUE, ROLES, VERSION_ROLES
from ..tasks.stream import NONE as STREAM_NONE
from ._common import as_numpy, json_attr

__all__ = ["ledger_of", "Facts", "facts_of", "STATUS", "answer_spelling", "answer_digit", "answer_tokens"]

STATUS = ("current", "stale", "other")  # status codes 0, 1, 2 of a write relative to a queried fact
_CURRENT, _STALE, _OTHER = 0, 1, 2
_NEVER = np.iinfo(np.int64).max
_COLUMNS = ("role", "sample", "token", "segment", "fact_id", "version", "value", "valid_from", "valid_to", "n_tokens",
            "expected_answer")


def ledger_of(ds: xr.Dataset, ledger: xr.Dataset | None = None, *, required: bool = False) -> xr.Dataset | None:
    """The task ledger of a trace: `ledger` if given, else the trace's `ledger_*` variables (prefix stripped)."""
    if ledger is not None:
        return ledger
    names = [n for n in ds.variables if str(n).startswith("ledger_")]
    if not names:
        if required:
            raise ValueError(
                "this analysis needs the task ledger, but the trace has no ledger_* variables; record a task's "
                "tokens with their ledger, or pass ledger=<the task's ledger Dataset>"
            )
        return None
    out = xr.Dataset({n[len("ledger_"):]: ds[n].variable for n in names})  # facts_of loads only what it uses
    # the recorder stores the ledger's attrs as one JSON attr `ledger_attrs`; single `ledger_<name>` attrs also work
    attrs = json_attr(ds.attrs, "ledger_attrs", {}) or {}
    attrs = dict(attrs) if isinstance(attrs, dict) else {}
    attrs.update({k[len("ledger_"):]: v for k, v in ds.attrs.items()
                  if str(k).startswith("ledger_") and k != "ledger_attrs"})
    out.attrs = attrs
    return out


def _pair_key(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One int64 per (a, b) pair of non-negative-ish ints, order-preserving in (a, b)."""
    return (a.astype(np.int64) << 32) + (b.astype(np.int64) + 1)


@dataclass(frozen=True)
class Facts:
    """Numpy tables derived from a ledger (all int64 unless stated).

    held_*:    one row per (sample, segment, fact, version) held by a segment, sorted by (sample, fact, segment),
               with held_token = the first token of the version's rows in that segment.
    ver_*:     one row per (sample, fact, version), sorted the same way: value (-1 for a delete), kind
               (str: write | delete), token (valid_from), segment (first holding segment), valid_to (token, -1),
               superseded_segment (-1 if still latest), superseded_by (str: write | delete | "").
    query_*:   one row per query row: event (ledger row), sample, fact, version (asked; -1 if never written),
               token, segment, expected (value code, -1 absent), answer_token, answer_len (0 if no answer row).
    """

    held_sample: np.ndarray
    held_segment: np.ndarray
    held_fact: np.ndarray
    held_version: np.ndarray
    held_token: np.ndarray
    ver_sample: np.ndarray
    ver_fact: np.ndarray
    ver_version: np.ndarray
    ver_value: np.ndarray
    ver_kind: np.ndarray
    ver_token: np.ndarray
    ver_segment: np.ndarray
    ver_valid_to: np.ndarray
    ver_superseded_segment: np.ndarray
    ver_superseded_by: np.ndarray
    query_event: np.ndarray
    query_sample: np.ndarray
    query_fact: np.ndarray
    query_version: np.ndarray
    query_token: np.ndarray
    query_segment: np.ndarray
    query_expected: np.ndarray
    query_answer_token: np.ndarray
    query_answer_len: np.ndarray

    # ------------------------------------------------------------------ lookups
    def _held_range(self, sample: int, fact: int) -> slice:
        key = _pair_key(self.held_sample, self.held_fact)
        k = _pair_key(np.array([sample]), np.array([fact]))[0]
        return slice(int(np.searchsorted(key, k, "left")), int(np.searchsorted(key, k, "right")))

    def segment_status(self, sample: int, fact: int, version: int, n_segments: int) -> np.ndarray:
        """Status code per segment 0..n_segments-1 of the writes relative to the fact version asked.

        current (0): the segment holds `version` of `fact`; stale (1): it holds an earlier version (superseded
        by the time of the query) and not the asked one; other (2): neither. No fact (fact < 0): all other.
        """
        out = np.full(n_segments, _OTHER, dtype=np.int8)
        if fact < 0 or n_segments == 0:
            return out
        rng = self._held_range(sample, fact)
        seg, ver = self.held_segment[rng], self.held_version[rng]
        keep = seg < n_segments
        seg, ver = seg[keep], ver[keep]
        code = np.where(ver == version, _CURRENT, np.where(ver < version, _STALE, _OTHER)).astype(np.int8)
        np.minimum.at(out, seg, code)  # precedence current < stale < other
        return out

    def status_segments(self, sample: int, fact: int, version: int, below: int) -> tuple[np.ndarray, np.ndarray]:
        """The (sorted) segments < `below` whose status is current, and those whose status is stale."""
        status = self.segment_status(sample, fact, version, below)
        return np.flatnonzero(status == _CURRENT), np.flatnonzero(status == _STALE)

    def stale_time(self, rule: str = "any") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segments that become stale: (sample, segment, tau) with tau the first segment S at whose end the
        segment's writes count as superseded. rule="any": when any version it holds is superseded;
        rule="all": when every version it holds is superseded. Segments holding no version never become stale."""
        if rule not in ("any", "all"):
            raise ValueError(f"rule must be 'any' or 'all', got {rule!r}")
        sup = self._superseded_of_held()
        pair = _pair_key(self.held_sample, self.held_segment)
        order = np.argsort(pair, kind="stable")
        pair, sup = pair[order], sup[order]
        sample, segment = self.held_sample[order], self.held_segment[order]
        if len(pair) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        starts = np.flatnonzero(np.r_[True, pair[1:] != pair[:-1]])
        never = np.where(sup < 0, _NEVER, sup)
        if rule == "any":
            tau = np.minimum.reduceat(never, starts)
        else:
            tau = np.maximum.reduceat(never, starts)
        keep = tau != _NEVER
        return sample[starts][keep], segment[starts][keep], tau[keep]

    def _superseded_of_held(self) -> np.ndarray:
        """superseded_segment of the version each held row holds.

        Joined on the (sample, fact, version) triple itself: a nested `_pair_key` shifts the sample out of int64
        for samples >= 1 (sample 1's versions then collided with sample 0's)."""
        if len(self.held_sample) == 0:
            return np.zeros(0, dtype=np.int64)
        rows = np.concatenate([np.stack([self.ver_sample, self.ver_fact, self.ver_version], 1),
                               np.stack([self.held_sample, self.held_fact, self.held_version], 1)])
        _, inv = np.unique(rows, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        table = np.full(int(inv.max()) + 1, NO_VALUE, dtype=np.int64)
        table[inv[: len(self.ver_sample)]] = self.ver_superseded_segment
        return table[inv[len(self.ver_sample):]]

    def match_probes(self, probe_sample: np.ndarray, probe_token: np.ndarray) -> np.ndarray:
        """Index into query_* of the query whose span [query token, end of answer) holds each probe; -1 if none."""
        out = np.full(len(probe_sample), -1, dtype=np.int64)
        for s in np.unique(probe_sample):
            rows = np.flatnonzero(self.query_sample == s)
            if len(rows) == 0:
                continue
            rows = rows[np.argsort(self.query_token[rows], kind="stable")]
            mine = np.flatnonzero(probe_sample == s)
            idx = np.searchsorted(self.query_token[rows], probe_token[mine], side="right") - 1
            ok = idx >= 0
            cand = rows[np.maximum(idx, 0)]
            end = np.maximum(self.query_answer_token[cand] + self.query_answer_len[cand], self.query_token[cand] + 1)
            ok &= probe_token[mine] < end
            out[mine[ok]] = cand[ok]
        return out

    def versions_of(self, sample: int, fact: int) -> np.ndarray:
        """Indices into ver_* of the versions of one fact, oldest first."""
        key = _pair_key(self.ver_sample, self.ver_fact)
        k = _pair_key(np.array([sample]), np.array([fact]))[0]
        return np.arange(np.searchsorted(key, k, "left"), np.searchsorted(key, k, "right"))


def facts_of(ledger: xr.Dataset) -> Facts:
    """Build the `Facts` tables of a ledger (see the module docstring for the rules)."""
    ledger = ledger[[n for n in _COLUMNS if n in ledger.variables]].load()  # one compute for a lazy ledger
    raw = as_numpy(ledger["role"])  # object, <U or numpy StringDType (zarr v3 strings)
    real = np.asarray(pd.notna(raw) & (raw != ""), dtype=bool) if raw.dtype == object else raw != ""
    if not real.all():  # padding rows of runs combined along `run` (outer join on `event`)
        ledger = ledger.isel(event=np.flatnonzero(real))
        raw = raw[real]
    role = np.full(len(raw), "", dtype=object)  # a few shared str objects, not one per row
    for name in ROLES:
        role[raw == name] = name
    sample = as_numpy(ledger["sample"]).astype(np.int64)
    token = as_numpy(ledger["token"]).astype(np.int64)
    segment = as_numpy(ledger["segment"]).astype(np.int64)
    fact = as_numpy(ledger["fact_id"]).astype(np.int64)
    version = as_numpy(ledger["version"]).astype(np.int64)
    value = as_numpy(ledger["value"]).astype(np.int64)
    valid_from = as_numpy(ledger["valid_from"]).astype(np.int64)
    valid_to = as_numpy(ledger["valid_to"]).astype(np.int64)
    n_tokens = as_numpy(ledger["n_tokens"]).astype(np.int64)
    expected = as_numpy(ledger["expected_answer"]).astype(np.int64)

    # held: unique (sample, fact, segment, version) over version-defining rows
    vrow = np.isin(role, VERSION_ROLES) & (version >= 0) & (fact >= 0)
    idx = np.flatnonzero(vrow)
    order = np.lexsort((token[idx], version[idx], segment[idx], fact[idx], sample[idx]))
    idx = idx[order]
    key4 = np.stack([sample[idx], fact[idx], segment[idx], version[idx]], 1)
    first = np.r_[True, np.any(key4[1:] != key4[:-1], axis=1)] if len(idx) else np.zeros(0, bool)
    h = idx[first]

    # versions: unique (sample, fact, version)
    vorder = np.lexsort((token[idx], version[idx], fact[idx], sample[idx]))
    vidx = idx[vorder]
    key3 = np.stack([sample[vidx], fact[vidx], version[vidx]], 1)
    vstart = np.flatnonzero(np.r_[True, np.any(key3[1:] != key3[:-1], axis=1)]) if len(vidx) else np.zeros(0, int)
    v0 = vidx[vstart]
    is_delete = (role[vidx] == "delete").astype(np.int64)
    kind_delete = np.maximum.reduceat(is_delete, vstart) if len(vidx) else np.zeros(0, np.int64)
    vals = np.maximum.reduceat(value[vidx], vstart) if len(vidx) else np.zeros(0, np.int64)
    seg_min = np.minimum.reduceat(segment[vidx], vstart) if len(vidx) else np.zeros(0, np.int64)
    ver_kind = np.where(kind_delete > 0, "delete", "write").astype(object)
    vals = np.where(kind_delete > 0, NO_VALUE, vals)
    # superseded: first segment holding version+1 of the same fact (the next row in this sorted table)
    ver_s, ver_f, ver_v = sample[v0], fact[v0], version[v0]
    nxt = np.r_[(ver_s[1:] == ver_s[:-1]) & (ver_f[1:] == ver_f[:-1]) & (ver_v[1:] == ver_v[:-1] + 1), False]
    sup_seg = np.full(len(v0), NO_VALUE, dtype=np.int64)
    sup_by = np.full(len(v0), "", dtype=object)
    j = np.flatnonzero(nxt[: len(v0)])
    sup_seg[j] = seg_min[j + 1]
    sup_by[j] = ver_kind[j + 1]

    # queries and their answer rows (the next answer row of the same sample and fact)
    q = np.flatnonzero(role == "query")
    a = np.flatnonzero(role == "answer")
    ans_tok = np.full(len(q), NO_VALUE, dtype=np.int64)
    ans_len = np.zeros(len(q), dtype=np.int64)
    if len(a) and len(q):
        rows = np.r_[q, a]
        is_answer = np.r_[np.zeros(len(q), bool), np.ones(len(a), bool)]
        order = np.lexsort((is_answer, token[rows], fact[rows], sample[rows]))
        rows, is_answer = rows[order], is_answer[order]
        n = len(rows)
        # position of the next answer row at or after each sorted position (n if none)
        nxt = np.minimum.accumulate(np.where(is_answer, np.arange(n), n)[::-1])[::-1]
        qpos = np.flatnonzero(~is_answer)
        cand = nxt[np.minimum(qpos + 1, n - 1)]
        cand = np.where(qpos + 1 < n, cand, n)
        ok = cand < n
        cand_c = np.minimum(cand, n - 1)
        ok &= (sample[rows[cand_c]] == sample[rows[qpos]]) & (fact[rows[cand_c]] == fact[rows[qpos]])
        q_sorted = rows[qpos]  # ledger rows of the queries in sorted order
        where = np.searchsorted(q, q_sorted)  # q is ascending: back to query order
        ans_tok[where[ok]] = token[rows[cand_c[ok]]]
        ans_len[where[ok]] = n_tokens[rows[cand_c[ok]]]
    return Facts(
        held_sample=sample[h], held_segment=segment[h], held_fact=fact[h], held_version=version[h],
        held_token=token[h],
        ver_sample=ver_s, ver_fact=ver_f, ver_version=ver_v, ver_value=vals, ver_kind=ver_kind,
        ver_token=valid_from[v0], ver_segment=seg_min, ver_valid_to=valid_to[v0],
        ver_superseded_segment=sup_seg, ver_superseded_by=sup_by,
        query_event=q.astype(np.int64), query_sample=sample[q], query_fact=fact[q], query_version=version[q],
        query_token=token[q], query_segment=segment[q], query_expected=expected[q],
        query_answer_token=ans_tok, query_answer_len=ans_len,
    )


def answer_spelling(ledger: xr.Dataset) -> tuple[int | None, int]:
    """``(value_size, none)``: how the ledger's task spells an answer, read from the ledger attrs.

    value_size: digits per value (AR and stream: ``params.value_size``); None when the task does not say (bAbI:
    the answer token is the value itself). none: the token of an absent value, ``special_tokens["NONE"]``;
    ``NO_VALUE`` (matches no token) for a task without one (AR, bAbI). When the attrs carry no special tokens at all
    (a trace that kept the ledger's variables but not its attrs), the mutable-state stream's NONE: the stream is
    the only task whose answers can be absent.
    """
    params = json_attr(ledger.attrs, "params", {}) or {}
    special = json_attr(ledger.attrs, "special_tokens", None)
    size = params.get("value_size") if isinstance(params, dict) else None
    none = int(special.get("NONE", NO_VALUE)) if isinstance(special, dict) else STREAM_NONE
    return (None if size is None else int(size)), none


def answer_digit(values: np.ndarray, j: np.ndarray, size: int | None, none: int) -> np.ndarray:
    """Token ``j`` of the answer that spells each value code (broadcast over ``values`` and ``j``).

    With ``size`` digits: the little-endian base-16 digit j, ``(value // 16**j) % 16``; with ``size=None``: the
    value itself (one-token answers). An absent value (code < 0) is spelled ``none`` at every position.
    """
    values, j = np.asarray(values, dtype=np.int64), np.asarray(j, dtype=np.int64)
    token = values if size is None else (np.maximum(values, 0) // 16 ** j) % 16
    return np.where(values < 0, none, token)


def answer_tokens(values: np.ndarray, ledger: xr.Dataset, length: int | None = None) -> np.ndarray:
    """Token ids [n, length] that spell each value code as the task writes answers (see ``answer_spelling``).

    AR and stream (`params.value_size` known, or an answer ``length`` > 1): little-endian base-16 digits, and V
    copies of the NONE token for an absent value (-1). Otherwise (bAbI): one token, the value itself.
    """
    size, none = answer_spelling(ledger)
    if size is None and (length or 1) > 1:
        size = length
    values = np.asarray(values, dtype=np.int64)
    return answer_digit(values[:, None], np.arange(size or 1)[None, :], size, none)
