"""Associative retrieval (AR), exactly in the format of the official ARMT experiments.

Implements the decoder branch of ``run_finetuning_associative_retrieval.py`` in
RodkinIvan/associative-recurrent-memory-transformer, as specified in ARMT_SPEC.md §3.1-3.4, the
associative-retrieval experiments of the ARMT paper (arXiv 2407.04841, "Associative Retrieval" experiments):

* vocabulary: digits 0..15 (``NUM_SYMBOLS``), ``SEP = 100``, ``GEN = 101``, ``EOS = 102``, ``VOCAB_SIZE = 128``;
* keys have K digits, values V digits, both little-endian base 16 (digit j = code // 16**j % 16);
* one sample: ``k_1 SEP v_1 EOS ... k_n SEP v_n EOS k_t GEN v_t EOS`` of length (n+1)(K+V+2), and each
  pair (and the query) is exactly one model segment of ``segment_size = K+V+2`` tokens;
* remember: distinct keys (a random draw without replacement from the 16**K codes, the official
  ``randperm(16**K)[:n]``), target uniform in [0, n);
  rewrite: keys drawn with replacement, target key uniform among the *distinct* keys of the sample, answer =
  the value at its *last* occurrence.

Not implemented: ``--vary_n_segments`` (per-batch redraw of n); call ``make_ar_batch`` with the n you want.
The random streams are numpy's, not torch's, so samples differ from the official cached datasets while
following the same distribution.

Metric (``exact_match``). The official metric (§3.4) generates ``max_new_tokens = 2V`` tokens with pad = EOS and
accepts when the continuation has >= V+1 tokens and its *last* V+1 tokens equal ``(v_t, EOS)``. With HF
``generate`` a finished sequence is padded with EOS while other samples in the batch continue, so for V > 1 the
tail rule depends on the batch. We generate ``max_new_tokens = V+1`` (``ARBatch.max_new_tokens``) and accept when
the *first* V+1 generated tokens equal ``(v_t, EOS)`` (``rule="prefix"``, the default). With exactly V+1
generated tokens the two rules are the same test; ``rule="official_tail"`` reproduces the official one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import xarray as xr

from armt_viz.tasks._common import check_int, resolve_seed
from armt_viz.tasks.ledger import NO_VALUE, make_ledger, stale_list

__all__ = [
    "ARBatch",
    "EOS",
    "GEN",
    "NUM_SYMBOLS",
    "SEP",
    "VOCAB_SIZE",
    "AR_SPECIAL_TOKENS",
    "digits_to_codes",
    "codes_to_digits",
    "exact_match",
    "make_ar_batch",
]

NUM_SYMBOLS = 16
SEP = 100
GEN = 101
EOS = 102
VOCAB_SIZE = 128
AR_SPECIAL_TOKENS = {"SEP": SEP, "GEN": GEN, "EOS": EOS}
MAX_DIGITS = 15  # 16**15 still fits int64 codes


def codes_to_digits(codes: np.ndarray, size: int) -> np.ndarray:
    """Little-endian base-16 digits: (...,) int codes -> (..., size) digits, digit j = code // 16**j % 16."""
    codes = np.asarray(codes, dtype=np.int64)
    return (codes[..., None] // NUM_SYMBOLS ** np.arange(size, dtype=np.int64)) % NUM_SYMBOLS


def digits_to_codes(digits: np.ndarray) -> np.ndarray:
    """Inverse of ``codes_to_digits``: (..., size) digits -> (...,) int64 codes."""
    digits = np.asarray(digits, dtype=np.int64)
    return (digits * NUM_SYMBOLS ** np.arange(digits.shape[-1], dtype=np.int64)).sum(-1)


@dataclass(frozen=True)
class ARBatch:
    """One batch of AR samples, official layout (ARMT_SPEC.md §3.1).

    Attributes:
        input_ids: (sample, (n+1)(K+V+2)) int64; also the labels (``labels = input_ids`` officially).
        labels_mask: same shape, bool, True on the last V+2 positions (GEN, v_t digits, EOS).
        prompt_ids: input_ids without the final V+1 tokens (ends with ``k_t GEN``), for generation.
        answers: (sample, V) int64 digits of v_t.
        keys, values: (sample, n) int64 codes of the pairs; target_index: (sample,) index of the queried pair.
        key_size, value_size, n_pairs, rewrite: the generator settings.
        segment_size: K+V+2, one pair per segment.
        ledger: fact ledger (see ``armt_viz.tasks.ledger``), token indices per sample.
    """

    input_ids: np.ndarray
    labels_mask: np.ndarray
    prompt_ids: np.ndarray
    answers: np.ndarray
    keys: np.ndarray
    values: np.ndarray
    target_index: np.ndarray
    key_size: int
    value_size: int
    n_pairs: int
    rewrite: bool
    segment_size: int
    ledger: xr.Dataset

    @property
    def attention_mask(self) -> np.ndarray:
        return np.ones_like(self.input_ids, dtype=bool)

    @property
    def n_segments(self) -> int:
        return self.n_pairs + 1

    @property
    def max_new_tokens(self) -> int:
        """Tokens to generate after ``prompt_ids`` for ``exact_match`` (V digits + EOS)."""
        return self.value_size + 1


def _draw_keys(rng: np.random.Generator, n: int, k: int, batch: int, rewrite: bool) -> np.ndarray:
    population = NUM_SYMBOLS**k
    if rewrite:
        return rng.integers(0, population, size=(batch, n), dtype=np.int64)
    return np.stack([rng.choice(population, size=n, replace=False) for _ in range(batch)]).astype(np.int64)


def _draw_targets(rng: np.random.Generator, keys: np.ndarray, rewrite: bool) -> np.ndarray:
    batch, n = keys.shape
    if not rewrite:
        return rng.integers(0, n, size=batch, dtype=np.int64)
    targets = np.empty(batch, dtype=np.int64)
    for b in range(batch):
        distinct = np.unique(keys[b])
        key = distinct[rng.integers(0, len(distinct))]
        targets[b] = np.flatnonzero(keys[b] == key)[-1]  # last occurrence
    return targets


def _occurrences(keys: np.ndarray) -> np.ndarray:
    """Per sample, the version of each pair: how many earlier pairs of the sample have the same key."""
    batch, n = keys.shape
    order = np.argsort(keys, axis=1, kind="stable")  # groups equal keys, positions ascending in a group
    sorted_keys = np.take_along_axis(keys, order, axis=1)
    cols = np.broadcast_to(np.arange(n), (batch, n))
    new_group = np.ones((batch, n), dtype=bool)
    new_group[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    group_start = np.maximum.accumulate(np.where(new_group, cols, 0), axis=1)
    version = np.empty_like(keys)
    np.put_along_axis(version, order, cols - group_start, axis=1)
    return version


def _ledger(keys, values, targets, k, v, params, seed) -> xr.Dataset:
    batch, n = keys.shape
    seg = k + v + 2
    rows = np.arange(batch)
    version = _occurrences(keys)
    start = np.arange(n, dtype=np.int64) * seg
    t_key, t_val = keys[rows, targets], values[rows, targets]

    def per_sample(pair_cols: list, query_cols: list) -> np.ndarray:
        # key/value rows from (B, n) columns, query/answer rows from (B,) columns (scalars broadcast)
        # -> one flat (B * (2n + 2),) column in (sample, token) order
        pairs = np.stack([np.broadcast_to(np.asarray(c, dtype=np.int64), (batch, n)) for c in pair_cols], axis=2)
        query = np.stack([np.broadcast_to(np.asarray(c, dtype=np.int64), (batch,)) for c in query_cols], axis=1)
        return np.concatenate([pairs.reshape(batch, 2 * n), query], axis=1).reshape(-1)

    stale_rows = []
    for b in range(batch):
        t = targets[b]
        history = values[b, :t][keys[b, :t] == t_key[b]]
        stale_rows.append(stale_list(history.tolist(), int(t_val[b])))
    n_sup = np.array([len(s) for s in stale_rows], dtype=np.int64)
    none_stale: list[list[int]] = [[] for _ in range(2 * n)]
    columns = {
        "token": per_sample([start, start + k + 1], [n * seg, n * seg + k + 1]),
        "n_tokens": per_sample([k, v], [k, v]),
        "sample": np.repeat(rows, 2 * n + 2),
        "role": (["key", "value"] * n + ["query", "answer"]) * batch,
        "fact_id": per_sample([keys, keys], [t_key, t_key]),
        "version": per_sample([version, version], [version[rows, targets]] * 2),
        "valid_from": per_sample([start, start], [targets * seg] * 2),
        "value": per_sample([values, values], [t_val, t_val]),
        "expected_answer": per_sample([NO_VALUE] * 2, [t_val, t_val]),
        "n_superseded": per_sample([0, 0], [n_sup, n_sup]),
        "stale_values": [row for s in stale_rows for row in (*none_stale, s, s)],
    }
    return make_ledger(columns, task="associative_retrieval_rewrite" if params["rewrite"] else
                       "associative_retrieval", params=params, seed=seed, segment_size=seg,
                       special_tokens=AR_SPECIAL_TOKENS)


def make_ar_batch(
    n_pairs: int,
    key_size: int = 1,
    value_size: int = 1,
    *,
    batch_size: int = 32,
    rewrite: bool = False,
    seed: int | None = None,
) -> ARBatch:
    """Generate a batch of official-format AR samples (ARMT_SPEC.md §3.1-3.3).

    Args:
        n_pairs: n, key-value pairs per sample (>= 1; remember needs n <= 16**key_size).
        key_size: K, digits per key (1..15). value_size: V, digits per value (1..15).
        batch_size: samples in the batch. rewrite: the rewrite setting (repeated keys, last occurrence wins).
        seed: seed of numpy's ``default_rng``; None draws one (recorded in ``ledger.attrs["seed"]``).

    Returns:
        ``ARBatch``; ``input_ids`` has shape (batch_size, (n_pairs+1)*(key_size+value_size+2)).

    Raises:
        ValueError: if n_pairs > 16**key_size in the remember setting, or an argument is out of range.
    """
    where = "make_ar_batch"
    n = check_int("n_pairs", n_pairs, low=1, where=where)
    k = check_int("key_size", key_size, low=1, high=MAX_DIGITS, where=where)
    v = check_int("value_size", value_size, low=1, high=MAX_DIGITS, where=where)
    batch = check_int("batch_size", batch_size, low=1, where=where)
    rewrite = bool(rewrite)
    if not rewrite and n > NUM_SYMBOLS**k:
        raise ValueError(
            f"{where}: the remember setting needs distinct keys, so n_pairs <= 16**key_size = {NUM_SYMBOLS**k}; "
            f"received n_pairs={n} with key_size={k}. Increase key_size (to >= "
            f"{int(np.ceil(np.log(n) / np.log(NUM_SYMBOLS)))}) or pass rewrite=True to allow repeated keys.")
    seed = resolve_seed(seed, where)
    rng = np.random.default_rng(seed)
    keys = _draw_keys(rng, n, k, batch, rewrite)
    values = rng.integers(0, NUM_SYMBOLS**v, size=(batch, n), dtype=np.int64)
    targets = _draw_targets(rng, keys, rewrite)

    rows = np.arange(batch)
    sep = np.full((batch, n, 1), SEP, dtype=np.int64)
    eos = np.full((batch, n, 1), EOS, dtype=np.int64)
    pairs = np.concatenate([codes_to_digits(keys, k), sep, codes_to_digits(values, v), eos], axis=2)
    answers = codes_to_digits(values[rows, targets], v)
    query = np.concatenate([codes_to_digits(keys[rows, targets], k), np.full((batch, 1), GEN), answers,
                            np.full((batch, 1), EOS)], axis=1)
    input_ids = np.concatenate([pairs.reshape(batch, -1), query], axis=1).astype(np.int64)
    labels_mask = np.zeros(input_ids.shape, dtype=bool)
    labels_mask[:, -(v + 2):] = True
    params = {"n_pairs": n, "key_size": k, "value_size": v, "batch_size": batch, "rewrite": rewrite}
    return ARBatch(
        input_ids=input_ids, labels_mask=labels_mask, prompt_ids=input_ids[:, : -(v + 1)].copy(),
        answers=answers, keys=keys, values=values, target_index=targets, key_size=k, value_size=v,
        n_pairs=n, rewrite=rewrite, segment_size=k + v + 2,
        ledger=_ledger(keys, values, targets, k, v, params, seed))


def exact_match(
    generated: np.ndarray | Sequence[Sequence[int]],
    answers: np.ndarray,
    *,
    rule: Literal["prefix", "official_tail"] = "prefix",
) -> np.ndarray:
    """Per-sample exact match of generated continuations (prompt excluded) against ``answers``.

    Args:
        generated: (sample, new_tokens) array, or one token sequence per sample (ragged allowed).
        answers: (sample, V) answer digits, e.g. ``ARBatch.answers``.
        rule: ``"prefix"``: the first V+1 generated tokens equal (v_t, EOS); ``"official_tail"``: the last V+1
            do (ARMT_SPEC.md §3.4). Both need >= V+1 tokens and agree when exactly V+1 were generated.

    Returns:
        (sample,) bool array; ``.mean()`` is the official EM.
    """
    answers = np.asarray(answers, dtype=np.int64)
    if answers.ndim != 2:
        raise ValueError(f"exact_match: answers must be (sample, value_size), received shape {answers.shape}")
    if len(generated) != len(answers):
        raise ValueError(f"exact_match: got {len(generated)} generated sequences for {len(answers)} answers; "
                         "pass one continuation per sample, in batch order")
    if rule not in ("prefix", "official_tail"):
        raise ValueError(f"exact_match: rule must be 'prefix' or 'official_tail', received {rule!r}")
    width = answers.shape[1] + 1
    out = np.zeros(len(answers), dtype=bool)
    for i, (seq, ans) in enumerate(zip(generated, answers)):
        seq = np.asarray(seq, dtype=np.int64).reshape(-1)
        if len(seq) < width:
            continue
        part = seq[:width] if rule == "prefix" else seq[-width:]
        out[i] = bool(np.array_equal(part[:-1], ans) and part[-1] == EOS)
    return out

