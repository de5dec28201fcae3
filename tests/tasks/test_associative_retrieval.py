"""Tests of armt_viz.tasks.associative_retrieval against the spec layout and naive re-derivations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from armt_viz.tasks import EOS, GEN, SEP, VOCAB_SIZE, codes_to_digits, digits_to_codes, exact_match, make_ar_batch

from ._oracles import check_ledger, distinct_recent, parse_ar

# ARMT_SPEC.md §3.1, K=2, V=1, n=3: the documented layout of one official sample
SPEC_EXAMPLE = [12, 10, 100, 15, 102, 7, 3, 100, 13, 102, 1, 14, 100, 7, 102, 1, 14, 101, 7, 102]


def test_token_ids_are_the_official_ones():
    assert (SEP, GEN, EOS, VOCAB_SIZE) == (100, 101, 102, 128)


def test_oracle_accepts_the_spec_example():
    pairs, query, answer = parse_ar(SPEC_EXAMPLE, k=2, v=1)
    assert pairs == [(12 + 10 * 16, 15), (7 + 3 * 16, 13), (1 + 14 * 16, 7)]
    assert dict(pairs)[query] == answer


def test_layout_matches_the_spec_example_structure():
    k, v, n = 2, 1, 3
    batch = make_ar_batch(n, k, v, batch_size=16, seed=0)
    assert batch.input_ids.shape == (16, len(SPEC_EXAMPLE)) == (16, (n + 1) * (k + v + 2))
    assert batch.input_ids.dtype == np.int64
    # same marker positions as the documented sample, digits everywhere else
    markers = np.isin(np.array(SPEC_EXAMPLE), [SEP, GEN, EOS])
    for ids in batch.input_ids:
        np.testing.assert_array_equal(ids[markers], np.array(SPEC_EXAMPLE)[markers])
        assert ((ids[~markers] >= 0) & (ids[~markers] < 16)).all()
        parse_ar(ids, k, v)
    assert batch.segment_size == k + v + 2 and batch.n_segments == n + 1
    np.testing.assert_array_equal(batch.prompt_ids, batch.input_ids[:, : -(v + 1)])
    assert (batch.prompt_ids[:, -1] == GEN).all()
    expected_mask = np.zeros(batch.input_ids.shape, dtype=bool)
    expected_mask[:, -(v + 2):] = True
    np.testing.assert_array_equal(batch.labels_mask, expected_mask)
    np.testing.assert_array_equal(batch.answers, batch.input_ids[:, -(v + 1):-1])
    assert batch.max_new_tokens == v + 1 and batch.attention_mask.all()


def test_digits_are_little_endian():
    codes = np.array([0, 1, 15, 16, 17, 255, 256 + 2 * 16 + 3])
    digits = codes_to_digits(codes, 3)
    for code, row in zip(codes, digits):
        assert sum(int(d) * 16**j for j, d in enumerate(row)) == code
    np.testing.assert_array_equal(digits_to_codes(digits), codes)
    assert digits[3].tolist() == [0, 1, 0]  # 16 = digit 1 in position 1


@pytest.mark.parametrize("k, n", [(1, 16), (2, 40), (1, 1)])
def test_remember_keys_are_distinct_and_answer_matches(k, n):
    batch = make_ar_batch(n, k, 2, batch_size=32, seed=k * 100 + n)
    for ids in batch.input_ids:
        pairs, query, answer = parse_ar(ids, k, 2)
        keys = [key for key, _ in pairs]
        assert len(set(keys)) == len(keys)
        assert dict(pairs)[query] == answer


def test_remember_rejects_more_pairs_than_keys():
    with pytest.raises(ValueError, match=r"n_pairs <= 16\*\*key_size = 16.*received n_pairs=17.*rewrite=True"):
        make_ar_batch(17, 1, 1)
    make_ar_batch(17, 1, 1, rewrite=True, seed=0)  # repeated keys are fine when rewriting


@pytest.mark.parametrize("n", [5, 30])
def test_rewrite_answer_is_the_value_at_the_last_occurrence(n):
    batch = make_ar_batch(n, 1, 1, batch_size=64, rewrite=True, seed=n)
    repeated = 0
    for ids in batch.input_ids:
        pairs, query, answer = parse_ar(ids, 1, 1)
        state = {}
        for key, value in pairs:  # later writes overwrite earlier ones
            state[key] = value
        assert answer == state[query]
        repeated += len({key for key, _ in pairs}) < len(pairs)
    assert repeated > 0  # the setting really overwrites


def test_rewrite_target_is_uniform_over_distinct_keys_not_positions():
    # E[#occurrences of the target key] is mean(n / distinct) if uniform over distinct keys, but the larger
    # mean(sum(c^2) / n) if uniform over positions (ARMT_SPEC.md §3.3).
    batch = make_ar_batch(20, 1, 1, batch_size=2000, rewrite=True, seed=7)
    got, distinct_rule, position_rule = [], [], []
    for ids in batch.input_ids:
        pairs, query, _ = parse_ar(ids, 1, 1)
        counts = np.bincount([key for key, _ in pairs], minlength=16)
        got.append(counts[query])
        distinct_rule.append(len(pairs) / (counts > 0).sum())
        position_rule.append((counts**2).sum() / len(pairs))
    assert abs(np.mean(got) - np.mean(distinct_rule)) < 0.1 < abs(np.mean(got) - np.mean(position_rule))


def test_seed_makes_batches_reproducible():
    a = make_ar_batch(8, 2, 1, batch_size=4, rewrite=True, seed=3)
    b = make_ar_batch(8, 2, 1, batch_size=4, rewrite=True, seed=3)
    c = make_ar_batch(8, 2, 1, batch_size=4, rewrite=True, seed=4)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert not np.array_equal(a.input_ids, c.input_ids)
    assert make_ar_batch(2, seed=None).ledger.attrs["seed"] >= 0


def _check_ledger_against_tokens(batch):
    k, v, size = batch.key_size, batch.value_size, batch.segment_size
    ledger = batch.ledger
    check_ledger(ledger)
    assert ledger.attrs["segment_size"] == size
    for b, ids in enumerate(batch.input_ids):
        pairs, query, answer = parse_ar(ids, k, v)
        rows = ledger.isel(event=ledger["sample"].values == b)
        role = rows["role"].values.tolist()
        assert role == ["key", "value"] * len(pairs) + ["query", "answer"]
        expected_tokens = [t for i in range(len(pairs)) for t in (i * size, i * size + k + 1)]
        expected_tokens += [len(pairs) * size, len(pairs) * size + k + 1]
        assert rows["token"].values.tolist() == expected_tokens
        assert rows["fact_id"].values.tolist() == [key for key, _ in pairs for _ in (0, 1)] + [query, query]
        assert rows["value"].values.tolist()[:-2] == [value for _, value in pairs for _ in (0, 1)]
        assert rows["expected_answer"].values.tolist()[-2:] == [answer, answer]
        seen: dict[int, list[int]] = {}
        for i, (key, value) in enumerate(pairs):
            assert rows["version"].values[2 * i] == len(seen.get(key, []))
            seen.setdefault(key, []).append(value)
        older = seen[query][:-1]
        assert rows["n_superseded"].values[-1] == len(distinct_recent(older, answer))


@pytest.mark.parametrize("rewrite", [False, True])
def test_ledger_agrees_with_naive_replay(rewrite):
    _check_ledger_against_tokens(make_ar_batch(12, 1, 1, batch_size=16, rewrite=rewrite, seed=11))


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 24), k=st.integers(1, 3), v=st.integers(1, 3), rewrite=st.booleans(),
       batch_size=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_generator_properties(n, k, v, rewrite, batch_size, seed):
    assume(rewrite or n <= 16**k)
    batch = make_ar_batch(n, k, v, batch_size=batch_size, rewrite=rewrite, seed=seed)
    assert batch.input_ids.shape == (batch_size, (n + 1) * (k + v + 2))
    for ids in batch.input_ids:
        pairs, query, answer = parse_ar(ids, k, v)
        keys = [key for key, _ in pairs]
        if not rewrite:
            assert len(set(keys)) == n
        assert answer == dict(pairs)[query]  # dict keeps the last occurrence
    _check_ledger_against_tokens(batch)


def test_exact_match_rules():
    answers = np.array([[3, 4], [5, 6], [7, 8], [9, 10], [1, 2]])
    generated = [
        [3, 4, EOS],  # exact
        [5, 6, EOS, 0],  # right first, extra token after: prefix yes, official tail no
        [0, 7, 8, EOS],  # right last: tail yes, prefix no
        [9, 10],  # too short
        [1, 3, EOS],  # wrong digit
    ]
    np.testing.assert_array_equal(exact_match(generated, answers), [True, True, False, False, False])
    np.testing.assert_array_equal(exact_match(generated, answers, rule="official_tail"),
                                  [True, False, True, False, False])


def test_exact_match_on_a_batch_and_bad_input():
    batch = make_ar_batch(4, 1, 2, batch_size=8, seed=5)
    continuation = batch.input_ids[:, batch.prompt_ids.shape[1]:]
    assert continuation.shape[1] == batch.max_new_tokens
    assert exact_match(continuation, batch.answers).all()
    assert exact_match(continuation, batch.answers, rule="official_tail").all()
    wrong = continuation.copy()
    wrong[0, 0] = (wrong[0, 0] + 1) % 16
    assert exact_match(wrong, batch.answers).tolist() == [False] + [True] * 7
    with pytest.raises(ValueError, match="one continuation per sample"):
        exact_match(continuation[:3], batch.answers)
    with pytest.raises(ValueError, match="rule must be"):
        exact_match(continuation, batch.answers, rule="last")


@pytest.mark.parametrize("kwargs, match", [
    ({"n_pairs": 0}, "n_pairs must be >= 1"),
    ({"n_pairs": 2, "key_size": 16}, r"key_size must be in \[1, 15\]"),
    ({"n_pairs": 2.5}, "n_pairs must be an int"),
    ({"n_pairs": 2, "batch_size": 0}, "batch_size must be >= 1"),
])
def test_argument_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make_ar_batch(**kwargs)
