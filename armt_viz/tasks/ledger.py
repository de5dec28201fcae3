"""Fact ledgers: the ground truth that every task generator returns next to its tokens.

A ledger is an ``xarray.Dataset`` over one dimension, ``event`` (one row per ledger event), plus a short
``stale`` dimension for the padded list of superseded values. It records, for every write, overwrite, delete
and query of a fact, where it sits in the token stream and which *version* of the fact it concerns, so the
analysis layer can say which memory writes carry superseded versions (DESIGN.md §4 "Stale keys", §5) and
what a recall should have returned. It mirrors the fact bookkeeping implicit in the official AR generator
(ARMT_SPEC.md §3.3: "the answer is the value at its last occurrence") and makes it explicit for every task.

Rows (``event``), one per role occurrence, ordered by ``(sample, token)``:

* ``key``: the token(s) naming the fact in a write (AR/stream: the key digits; bAbI: the entity word).
* ``value``: the token(s) carrying the written value (AR/stream: the value digits; bAbI: the location word).
  A write normally has one ``key`` and one ``value`` row sharing ``fact_id``, ``version`` and validity.
* ``delete``: the key tokens of a delete event (stream only); it starts a version whose value is absent.
* ``query``: the first token of a question about a fact (AR/stream: the query key; bAbI: "Where").
* ``answer``: the first token of the expected answer (right after GEN).
* ``filler``: a distractor span with no fact (bAbI distractor sentences).

Variables (all int64 unless stated; ``NO_VALUE = -1`` marks "none / not applicable"):

==================  ==============  =====================================================================
name                dims            meaning
==================  ==============  =====================================================================
``token``           event           index of the row's first token in its sample's flat token stream
``n_tokens``        event           number of tokens the row spans (key digits, value digits, question...)
``segment``         event           ``token // segment_size`` (the model segment holding the first token)
``sample``          event           batch index (0 for the single-stream task)
``role``            event           one of ``ROLES``; Python ``str`` objects (object dtype, see below)
``fact_id``         event           the fact: AR/stream key code, bAbI entity word id; -1 for filler
``version``         event           0-based version of the fact the row writes or (for queries) asks about;
                                    -1 for filler and for queries about a never-written fact
``valid_from``      event           first token at which that version holds: the first token of the event
                                    that wrote it (the validity interval is half-open)
``valid_to``        event           first token of the event that superseded it (next write or delete of
                                    the same fact), -1 while still valid at the end of the stream
``value``           event           value code written (key/value rows), -1 for an absent value (delete)
                                    and for filler; for query/answer rows the expected value code
``expected_answer`` event           query/answer rows: the value code valid at the query token, -1 when the
                                    fact has no value (never written or deleted); -1 on other rows
``n_superseded``    event           query/answer rows: number of distinct values of earlier versions of the
                                    fact that differ from the expected answer; 0 on other rows
``stale_values``    event, stale    those values, most recent first, truncated to ``DEFAULT_MAX_STALE``
                                    columns and padded with -1 (``n_superseded`` is not truncated)
==================  ==============  =====================================================================

Value codes: AR and stream values are the integer whose little-endian base-16 digits are the value tokens;
bAbI values are the token ids of location words in the task's ``WordTokenizer``.

Attrs: ``task``, ``params`` (JSON of the generator settings), ``seed`` (the resolved integer seed),
``segment_size``, ``ledger_schema_version``, ``special_tokens`` (JSON name -> id).

Roles are stored as object-dtype Python strings, not fixed-width numpy unicode, because zarr v3 has no
specification for fixed-width strings (it warns); object strings are written as variable-length strings.

Streaming: a ledger built chunk by chunk knows ``valid_to`` only for versions superseded inside the chunk;
``concat_ledgers`` recomputes it over the whole stream (``resolve_validity``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "DEFAULT_MAX_STALE",
    "LEDGER_SCHEMA",
    "LEDGER_SCHEMA_VERSION",
    "NO_VALUE",
    "ROLES",
    "VERSION_ROLES",
    "concat_ledgers",
    "ledger_queries",
    "make_ledger",
    "resolve_validity",
    "stale_list",
    "validate_ledger",
]

LEDGER_SCHEMA_VERSION = 1
DEFAULT_MAX_STALE = 8  # columns of `stale_values`; rewrite AR with K=1 has at most 15 stale values
NO_VALUE = -1
ROLES = ("key", "value", "query", "answer", "delete", "filler")
VERSION_ROLES = ("key", "value", "delete")  # rows that define a version (and its valid_from)

# name -> (dims, long_name, units, comment); dtype is int64 except `role` (object)
LEDGER_SCHEMA: dict[str, tuple[tuple[str, ...], str, str, str]] = {
    "token": (("event",), "first token index", "token", "Index of the row's first token in its sample."),
    "n_tokens": (("event",), "span length", "token", "Number of tokens the row covers."),
    "segment": (("event",), "segment index", "1", "token // segment_size."),
    "sample": (("event",), "sample index", "1", "Batch index of the row."),
    "role": (("event",), "event role", "1", "One of key, value, query, answer, delete, filler."),
    "fact_id": (("event",), "fact id", "1", "Key code or entity word id; -1 for filler."),
    "version": (("event",), "fact version", "1", "0-based version written or asked about; -1 if none."),
    "valid_from": (("event",), "version valid from", "token", "First token of the writing event."),
    "valid_to": (("event",), "version valid to", "token", "First token of the superseding event; -1 if open."),
    "value": (("event",), "value code", "1", "Value written, or expected for queries; -1 if absent."),
    "expected_answer": (("event",), "expected answer", "1", "Value valid at the query; -1 if absent or n/a."),
    "n_superseded": (("event",), "superseded values", "1", "Distinct earlier values != expected answer."),
    "stale_values": (("event", "stale"), "stale values", "1", "Most recent first, padded with -1."),
}


def stale_list(history: Sequence[int], current: int) -> list[int]:
    """Distinct values of ``history`` (oldest first) other than ``current``, most recent first."""
    out: list[int] = []
    seen = {current, NO_VALUE}
    for v in reversed(history):
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


def _pad_stale(rows: Sequence[Sequence[int]], max_stale: int) -> np.ndarray:
    out = np.full((len(rows), max_stale), NO_VALUE, dtype=np.int64)
    for i, r in enumerate(rows):
        r = list(r)[:max_stale]
        out[i, : len(r)] = r
    return out


def make_ledger(
    columns: Mapping[str, Any],
    *,
    task: str,
    params: Mapping[str, Any],
    seed: int,
    segment_size: int,
    special_tokens: Mapping[str, int],
    event_offset: int = 0,
    resolve: bool = True,
) -> xr.Dataset:
    """Build a validated ledger Dataset from per-row columns.

    Args:
        columns: every schema variable except ``segment`` (derived) and ``valid_to`` (optional; computed by
            ``resolve_validity`` when ``resolve``). ``stale_values`` may be a 2-D int array (rows, stale) or a
            sequence of per-row lists (padded to ``DEFAULT_MAX_STALE``). ``role`` is a sequence of str.
        task, params, seed, segment_size, special_tokens: stored in attrs (params/special_tokens as JSON).
        event_offset: first value of the ``event`` coordinate (chunked streams number events globally).
        resolve: recompute ``valid_to`` from the rows (versions superseded by a later row of the same fact).
    """
    n = len(columns["token"])
    data: dict[str, Any] = {}
    for name, (dims, long_name, units, comment) in LEDGER_SCHEMA.items():
        if name == "segment":
            values = np.asarray(columns["token"], dtype=np.int64) // segment_size
        elif name == "valid_to" and name not in columns:
            values = np.full(n, NO_VALUE, dtype=np.int64)
        elif name == "role":
            values = np.empty(n, dtype=object)
            values[:] = [str(r) for r in columns["role"]]
        elif name == "stale_values":
            raw = columns["stale_values"]
            values = raw if isinstance(raw, np.ndarray) and raw.ndim == 2 else _pad_stale(raw, DEFAULT_MAX_STALE)
            values = np.asarray(values, dtype=np.int64).reshape(n, -1)
        else:
            if name not in columns:
                raise KeyError(f"make_ledger: column {name!r} is missing; expected all of {sorted(LEDGER_SCHEMA)}")
            values = np.asarray(columns[name], dtype=np.int64)
        data[name] = xr.Variable(dims, values, attrs={"long_name": long_name, "units": units, "comment": comment})
    max_stale = data["stale_values"].shape[1]
    ds = xr.Dataset(
        data,
        coords={"event": np.arange(event_offset, event_offset + n, dtype=np.int64),
                "stale": np.arange(max_stale, dtype=np.int64)},
        attrs={
            "task": task,
            "params": json.dumps(dict(params), sort_keys=True),
            "seed": int(seed),
            "segment_size": int(segment_size),
            "ledger_schema_version": LEDGER_SCHEMA_VERSION,
            "special_tokens": json.dumps(dict(special_tokens), sort_keys=True),
        },
    )
    if resolve:
        ds = resolve_validity(ds)
    validate_ledger(ds)
    return ds


def _pair_ids(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Dense ids (0..n_unique-1) of the pairs ``(first[i], second[i])``."""
    _, ia = np.unique(first, return_inverse=True)
    _, ib = np.unique(second, return_inverse=True)
    _, ids = np.unique(ia.reshape(-1) * (int(ib.max()) + 1) + ib.reshape(-1), return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def resolve_validity(ledger: xr.Dataset) -> xr.Dataset:
    """Return a copy whose ``valid_to`` is the ``valid_from`` of the next version of the same fact.

    For every row with ``version >= 0`` (writes, deletes and the queries that ask about a version),
    ``valid_to = valid_from`` of the row defining version ``version + 1`` of the same ``(sample, fact_id)``,
    or -1 when no such row is in ``ledger`` (still valid, or superseded outside this chunk).
    """
    sample, fact = ledger["sample"].values, ledger["fact_id"].values
    version, valid_from = ledger["version"].values, ledger["valid_from"].values
    role = ledger["role"].values
    valid_to = np.full(len(sample), NO_VALUE, dtype=np.int64)
    has_version = version >= 0
    defines = has_version & np.isin(role, VERSION_ROLES)
    if defines.any():
        # ids of (sample, fact) pairs, then one key per (pair, version) so that version+1 is key+1
        pair = _pair_ids(sample, fact)
        stride = int(version.max()) + 2
        key = pair * stride + version
        def_key, first = np.unique(key[defines], return_index=True)
        def_from = valid_from[defines][first]
        nxt = key + 1
        pos = np.searchsorted(def_key, nxt)
        pos_clipped = np.minimum(pos, len(def_key) - 1)
        found = has_version & (def_key[pos_clipped] == nxt)
        valid_to[found] = def_from[pos_clipped[found]]
    out = ledger.copy()
    out["valid_to"] = ledger["valid_to"].copy(data=valid_to)
    return out


def concat_ledgers(parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """Concatenate ledger chunks along ``event`` and recompute ``valid_to`` over the whole stream."""
    if not parts:
        raise ValueError("concat_ledgers: expected at least one ledger chunk, received an empty sequence")
    if len(parts) == 1:
        return resolve_validity(parts[0])
    merged = xr.concat(list(parts), dim="event", data_vars="all", coords="different", compat="equals",
                       join="exact", combine_attrs="override")
    return resolve_validity(merged)


def ledger_queries(ledger: xr.Dataset) -> xr.Dataset:
    """The ``query`` rows of ``ledger`` (one per question; the matching ``answer`` row follows each)."""
    return ledger.isel(event=np.flatnonzero(ledger["role"].values == "query"))


def validate_ledger(ledger: xr.Dataset) -> None:
    """Raise ``ValueError`` if ``ledger`` does not follow ``LEDGER_SCHEMA`` (names, dims, dtypes, roles)."""
    problems = []
    for name, (dims, *_rest) in LEDGER_SCHEMA.items():
        if name not in ledger:
            problems.append(f"missing variable {name!r}")
            continue
        var = ledger[name]
        if var.dims != dims:
            problems.append(f"{name!r} has dims {var.dims}, expected {dims}")
        if name == "role":  # object strings; numpy's StringDType is what zarr v3 gives back
            if var.dtype != object and var.dtype.kind != "T":
                problems.append(f"'role' has dtype {var.dtype}, expected object (Python str)")
        elif var.dtype != np.int64:
            problems.append(f"{name!r} has dtype {var.dtype}, expected int64")
    if not problems:
        bad = sorted(set(ledger["role"].values.tolist()) - set(ROLES))
        if bad:
            problems.append(f"unknown roles {bad}, expected a subset of {ROLES}")
    for attr in ("task", "params", "seed", "segment_size", "ledger_schema_version"):
        if attr not in ledger.attrs:
            problems.append(f"missing attr {attr!r}")
    if problems:
        raise ValueError("not a valid armt_viz ledger: " + "; ".join(problems)
                         + ". Build ledgers with armt_viz.tasks generators or make_ledger.")
