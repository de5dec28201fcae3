"""A mutable key-value stream for millions of tokens, with a ledger of every version of every key.

Extends the AR format (ARMT_SPEC.md §3.1, associative-retrieval experiments of arXiv 2407.04841) from one
query per sample to one long stream in which keys are written, overwritten, deleted and queried over time,
several events per segment (DESIGN.md §5, "A mutable-state stream"). Generated lazily, chunk by chunk of whole
segments, so memory stays flat however long the stream.

Tokens: AR digits 0..15, ``SEP = 100``, ``GEN = 101``, ``EOS = 102`` plus ``DEL = 103``, ``FILL = 104`` and
``NONE = 105`` (all < ``VOCAB_SIZE = 128``). Events (K key digits, V value digits, little-endian base 16):

* write:  ``k SEP v EOS``   (K+V+2 tokens) sets key k to v (a new version). Writing a key that holds a value
  always draws a *different* value, so every overwrite makes a stale value.
* delete: ``k DEL EOS``     (K+2 tokens) removes k's value (a new version whose value is absent).
* query:  ``k GEN a EOS``   (K+V+2 tokens); a = the current value's digits, or V copies of ``NONE`` when k has no
  value (never written, or deleted).

Each segment holds ``events_per_segment`` events, none crossing a segment boundary; the remaining positions are
``FILL`` tokens, split at random into the gaps before, between and after the events. Each event is a write,
query or delete with probabilities ``p_write``, ``p_query``, ``p_delete``; a query asks about a key without a
value with probability ``p_query_absent``, otherwise about a key holding one, uniformly. With
``answer_outside_segment`` (default) a query only targets keys whose latest write or delete lies in an earlier
segment, so the answer is never available inside the query's own segment. Fallbacks keep the stream well
formed: a delete with no live key becomes a write; a query with no eligible key of the drawn kind asks the
other kind, and with none at all becomes a write.

Randomness comes from one ``numpy`` ``default_rng(seed)``, consumed as a (segments, 4·events) block of uniforms
per chunk, so the stream does not depend on ``chunk_segments``.

Ledger (``armt_viz.tasks.ledger``): ``sample = 0``, tokens are global stream indices, rows key/value per write,
delete per delete, query/answer per query. Chunk ledgers close only versions superseded within the chunk;
``concat_ledgers`` (used by ``make_stream``) resolves ``valid_to`` over the whole stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from typing import NamedTuple

import numpy as np
import xarray as xr

from armt_viz.tasks._common import check_int, resolve_seed
from armt_viz.tasks._keyset import KeySet
from armt_viz.tasks.associative_retrieval import EOS, GEN, NUM_SYMBOLS, SEP, codes_to_digits
from armt_viz.tasks.ledger import DEFAULT_MAX_STALE, NO_VALUE, concat_ledgers, make_ledger

__all__ = ["DEL", "FILL", "NONE", "STREAM_SPECIAL_TOKENS", "StreamChunk", "StreamConfig", "make_stream",
           "stream_chunks"]

DEL = 103
FILL = 104
NONE = 105
STREAM_SPECIAL_TOKENS = {"SEP": SEP, "GEN": GEN, "EOS": EOS, "DEL": DEL, "FILL": FILL, "NONE": NONE}
_MAX_KEY_DIGITS = 6  # digit tables are precomputed for every key code
_MAX_VALUE_DIGITS = 4
_WRITE, _QUERY, _DELETE = 0, 1, 2


@dataclass(frozen=True)
class StreamConfig:
    """Settings of the mutable-state stream.

    Attributes:
        n_keys: size of the key space (keys 0..n_keys-1); must be <= 16**key_size.
        key_size, value_size: digits per key / value (K <= 6, V <= 4).
        segment_size: tokens per segment; must hold events_per_segment events of K+V+2 tokens.
        events_per_segment: events in every segment.
        p_write, p_query, p_delete: event-type probabilities (sum to 1).
        p_query_absent: probability that a query asks about a key without a value (answer NONE).
        answer_outside_segment: queries only target keys last changed in an earlier segment.
        seed: seed of numpy's default_rng; None draws one (recorded in the ledger attrs).
        chunk_segments: segments per chunk yielded by ``stream_chunks``; does not change the stream.
    """

    n_keys: int = 64
    key_size: int = 2
    value_size: int = 1
    segment_size: int = 32
    events_per_segment: int = 4
    p_write: float = 0.5
    p_query: float = 0.4
    p_delete: float = 0.1
    p_query_absent: float = 0.1
    answer_outside_segment: bool = True
    seed: int | None = None
    chunk_segments: int = 2048

    def __post_init__(self) -> None:
        where = "StreamConfig"
        k = check_int("key_size", self.key_size, low=1, high=_MAX_KEY_DIGITS, where=where)
        v = check_int("value_size", self.value_size, low=1, high=_MAX_VALUE_DIGITS, where=where)
        check_int("n_keys", self.n_keys, low=1, high=NUM_SYMBOLS**k, where=where)
        e = check_int("events_per_segment", self.events_per_segment, low=1, where=where)
        s = check_int("segment_size", self.segment_size, low=1, where=where)
        check_int("chunk_segments", self.chunk_segments, low=1, where=where)
        if self.seed is not None:
            check_int("seed", self.seed, low=0, where=where)
        if e * (k + v + 2) > s:
            raise ValueError(
                f"{where}: events_per_segment={e} events of up to key_size+value_size+2={k + v + 2} tokens need "
                f"segment_size >= {e * (k + v + 2)}, received segment_size={s}. Raise segment_size or lower "
                f"events_per_segment (at most {s // (k + v + 2)}).")
        probs = (self.p_write, self.p_query, self.p_delete, self.p_query_absent)
        if any(not 0.0 <= float(p) <= 1.0 for p in probs):
            raise ValueError(f"{where}: probabilities must lie in [0, 1], received p_write={self.p_write}, "
                             f"p_query={self.p_query}, p_delete={self.p_delete}, p_query_absent={self.p_query_absent}")
        total = float(self.p_write) + float(self.p_query) + float(self.p_delete)
        if abs(total - 1.0) > 1e-9:
            raise ValueError(f"{where}: p_write + p_query + p_delete must sum to 1, received {total!r}; "
                             "rescale them (filler tokens fill each segment's spare room automatically)")


class StreamChunk(NamedTuple):
    """Tokens of whole segments (1-D int64, global positions continue across chunks) and their ledger."""

    input_ids: np.ndarray
    ledger: xr.Dataset


class _Generator:
    """The stream's state machine: ``chunk(n)`` draws, then emits, the next n segments.

    ``_decide`` draws a segment's events and updates the key sets and current values (later draws in the same
    segment depend on them); ``_emit`` then lays the events out and updates the version bookkeeping in the
    same order, so both views agree at every event.
    """

    def __init__(self, cfg: StreamConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.rng = np.random.default_rng(seed)
        k, v, n_keys = cfg.key_size, cfg.value_size, cfg.n_keys
        self.key_tokens = codes_to_digits(np.arange(n_keys), k).tolist()
        self.value_tokens = codes_to_digits(np.arange(NUM_SYMBOLS**v), v).tolist()
        self.n_values = NUM_SYMBOLS**v
        self.live = KeySet(n_keys, [])
        self.absent = KeySet(n_keys, range(n_keys))
        self.value = [NO_VALUE] * n_keys  # current value code
        self.n_versions = [0] * n_keys
        self.since = [NO_VALUE] * n_keys  # valid_from of the current version
        self.recent = [[] for _ in range(n_keys)]  # distinct written values, most recent first (capped)
        self.written = [set() for _ in range(n_keys)]  # every value ever written
        self.segment = 0  # next segment index
        self.rows = 0  # ledger rows emitted so far (global `event` coordinate)

    def _decide(self, row: list[float], touched: set[int]) -> list[tuple[int, int, int]]:
        """Draw this segment's events as (type, key, value code) and apply them to the key sets."""
        cfg, events = self.cfg, []
        # thresholds on u_type; a zero probability never fires, even with rounding in the sum
        lim_query = cfg.p_write + cfg.p_query if cfg.p_delete > 0 else 2.0
        lim_write = cfg.p_write if cfg.p_query > 0 or cfg.p_delete > 0 else 2.0
        excluded = touched if cfg.answer_outside_segment else ()
        for e in range(cfg.events_per_segment):
            u_type, u_key, u_val = row[4 * e], row[4 * e + 1], row[4 * e + 2]
            kind = _WRITE if u_type < lim_write else _QUERY if u_type < lim_query else _DELETE
            key = -1
            if kind == _QUERY:
                first, second = (self.absent, self.live) if u_val < cfg.p_query_absent else (self.live, self.absent)
                key = first.pick(u_key, excluded)
                if key < 0:
                    key = second.pick(u_key, excluded)
                if key < 0:
                    kind = _WRITE
            elif kind == _DELETE:
                key = self.live.pick(u_key, ())
                if key < 0:
                    kind = _WRITE
            if kind == _WRITE:
                key = min(int(u_key * cfg.n_keys), cfg.n_keys - 1)
                cur = self.value[key]
                if cur == NO_VALUE:
                    val = min(int(u_val * self.n_values), self.n_values - 1)
                else:  # a different value than the current one
                    val = min(int(u_val * (self.n_values - 1)), self.n_values - 2)
                    val += val >= cur
                self.live.add(key)
                self.absent.remove(key)
                touched.add(key)
            elif kind == _DELETE:
                self.live.remove(key)
                self.absent.add(key)
                touched.add(key)
                val = NO_VALUE
            else:
                val = self.value[key]
            events.append((kind, key, val))
            if kind != _QUERY:
                self.value[key] = val
        return events

    def _emit(self, kind: int, key: int, val: int, pos: int, tokens: list[int], cols: dict[str, list]) -> None:
        """Append the event's tokens and ledger rows at stream position ``pos``; update version bookkeeping."""
        k, v = self.cfg.key_size, self.cfg.value_size
        tokens.extend(self.key_tokens[key])
        if kind == _QUERY:
            tokens.append(GEN)
            tokens.extend(self.value_tokens[val] if val != NO_VALUE else [NONE] * v)
            tokens.append(EOS)
            version, since = self.n_versions[key] - 1, self.since[key]
            stale = [x for x in self.recent[key] if x != val][:DEFAULT_MAX_STALE]
            n_sup = len(self.written[key]) - (val != NO_VALUE)
            rows = (("query", pos, k), ("answer", pos + k + 1, v))
            cols["stale"].extend((len(cols["token"]) + i, stale) for i in range(2) if stale)
            expected = val
        else:
            if kind == _WRITE:
                tokens.append(SEP)
                tokens.extend(self.value_tokens[val])
                tokens.append(EOS)
                rows = (("key", pos, k), ("value", pos + k + 1, v))
                recent = self.recent[key]
                if val in recent:
                    recent.remove(val)
                recent.insert(0, val)
                del recent[DEFAULT_MAX_STALE + 1:]  # one spare: the current value is never stale
                self.written[key].add(val)
            else:
                tokens.append(DEL)
                tokens.append(EOS)
                rows = (("delete", pos, k),)
            version, since = self.n_versions[key], pos
            self.n_versions[key] += 1
            self.since[key] = pos
            n_sup, expected = 0, NO_VALUE
        for role, token, n_tokens in rows:
            cols["role"].append(role)
            cols["token"].append(token)
            cols["n_tokens"].append(n_tokens)
            cols["fact_id"].append(key)
            cols["version"].append(version)
            cols["valid_from"].append(since)
            cols["value"].append(val)
            cols["expected_answer"].append(expected)
            cols["n_superseded"].append(n_sup)

    def chunk(self, n_segments: int) -> StreamChunk:
        """Generate the next ``n_segments`` segments."""
        cfg = self.cfg
        k, v, size, n_events = cfg.key_size, cfg.value_size, cfg.segment_size, cfg.events_per_segment
        lengths = {_WRITE: k + v + 2, _QUERY: k + v + 2, _DELETE: k + 2}
        cols: dict[str, list] = {name: [] for name in _COLUMNS}
        tokens: list[int] = []
        for row in self.rng.random((n_segments, 4 * n_events)).tolist():
            events = self._decide(row, set())
            slack = size - sum(lengths[kind] for kind, _, _ in events)
            cuts = sorted(min(int(row[4 * e + 3] * (slack + 1)), slack) for e in range(n_events))
            gaps = [cuts[0]] + [b - a for a, b in zip(cuts, cuts[1:])]
            pos = self.segment * size
            for (kind, key, val), gap in zip(events, gaps):
                tokens.extend([FILL] * gap)
                pos += gap
                self._emit(kind, key, val, pos, tokens, cols)
                pos += lengths[kind]
            tokens.extend([FILL] * (slack - cuts[-1]))
            self.segment += 1
        stale = np.full((len(cols["token"]), DEFAULT_MAX_STALE), NO_VALUE, dtype=np.int64)
        for row_index, values in cols.pop("stale"):
            stale[row_index, : len(values)] = values
        cols["sample"] = np.zeros(len(cols["token"]), dtype=np.int64)
        cols["stale_values"] = stale
        ledger = make_ledger(cols, task="stream", params=_params(self.cfg, self.seed), seed=self.seed,
                             segment_size=size, special_tokens=STREAM_SPECIAL_TOKENS, event_offset=self.rows)
        self.rows += len(cols["token"])
        return StreamChunk(np.asarray(tokens, dtype=np.int64), ledger)


_COLUMNS = ("role", "token", "n_tokens", "fact_id", "version", "valid_from", "value", "expected_answer",
            "n_superseded", "stale")


def _params(cfg: StreamConfig, seed: int) -> dict:
    params = asdict(cfg) | {"seed": seed}
    del params["chunk_segments"]  # chunking does not change the stream
    return params


def _n_segments(cfg: StreamConfig, n_tokens: int, where: str) -> int:
    n_tokens = check_int("n_tokens", n_tokens, low=1, where=where)
    if n_tokens % cfg.segment_size:
        lower = n_tokens // cfg.segment_size * cfg.segment_size
        raise ValueError(
            f"{where}: n_tokens must be a multiple of segment_size={cfg.segment_size} (the stream is made of whole "
            f"segments), received {n_tokens}; use {lower + cfg.segment_size}" + (f" or {lower}" if lower else ""))
    return n_tokens // cfg.segment_size


def stream_chunks(cfg: StreamConfig, n_tokens: int) -> Iterator[StreamChunk]:
    """Lazily generate ``n_tokens`` stream tokens as ``StreamChunk(input_ids, ledger)`` of whole segments.

    Each chunk holds ``cfg.chunk_segments`` segments (the last may hold fewer). Ledger ``token`` values and the
    ``event`` coordinate are global. ``valid_to`` in a chunk closes only versions superseded within that chunk;
    ``concat_ledgers`` of all chunk ledgers gives the final ledger (equal to ``make_stream``'s).

    Raises:
        ValueError: if ``n_tokens`` is not a positive multiple of ``cfg.segment_size``.
    """
    n_segments = _n_segments(cfg, n_tokens, "stream_chunks")  # checked now, not at the first next()
    gen = _Generator(cfg, resolve_seed(cfg.seed, "stream_chunks"))
    return (gen.chunk(min(cfg.chunk_segments, n_segments - first))
            for first in range(0, n_segments, cfg.chunk_segments))


def make_stream(cfg: StreamConfig, n_tokens: int) -> StreamChunk:
    """The whole stream at once: concatenated ``stream_chunks`` tokens and the resolved ledger.

    With ``cfg.seed=None`` a seed is drawn once (see ``ledger.attrs["seed"]``).
    """
    if cfg.seed is None:
        cfg = replace(cfg, seed=resolve_seed(None, "make_stream"))
    chunks = list(stream_chunks(cfg, n_tokens))
    return StreamChunk(np.concatenate([c.input_ids for c in chunks]), concat_ledgers([c.ledger for c in chunks]))
