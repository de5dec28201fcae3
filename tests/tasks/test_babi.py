"""Tests of armt_viz.tasks.babi: answers by naive replay of the decoded text, layout and ledger."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armt_viz.tasks import BabiConfig, WordTokenizer, default_babi_tokenizer, ledger_queries, make_babi_batch

from ._oracles import check_ledger, replay_babi


def _words(batch, b):
    return batch.tokenizer.decode(batch.input_ids[b], skip_pad=True).split(" ")


def _check_batch(batch):
    cfg, tok = batch.config, batch.tokenizer
    check_ledger(batch.ledger)
    for b in range(len(batch.input_ids)):
        words = _words(batch, b)
        assert len(words) == batch.lengths[b]
        results = replay_babi(words)
        assert len(results) == cfg.n_questions
        for entity, expected, given_answer in results:
            assert given_answer == expected, f"sample {b}: {entity} is in the {expected}, not the {given_answer}"
        assert [tok.vocab[a] for a in batch.answers[b]] == [r[1] for r in results]
        assert words[-3] == "<gen>" and words[-1] == "<eos>"  # the last question ends the sample
        assert words.count("The") == cfg.n_distractors  # only distractors start with "The"
        assert words.count(".") == cfg.n_facts + cfg.n_distractors and words.count("?") == cfg.n_questions
        ids = batch.input_ids[b]
        assert (ids[batch.answer_positions[b] - 1] == tok.gen_id).all()
        assert (ids[batch.answer_positions[b] + 1] == tok.eos_id).all()
        np.testing.assert_array_equal(ids[batch.answer_positions[b]], batch.answers[b])
        mask = np.zeros(len(ids), dtype=bool)
        for p in batch.answer_positions[b]:
            mask[p - 1 : p + 2] = True
        np.testing.assert_array_equal(batch.labels_mask[b], mask)
        np.testing.assert_array_equal(batch.attention_mask[b], np.arange(len(ids)) < batch.lengths[b])
        assert (ids[batch.lengths[b]:] == tok.pad_id).all()
        # ledger rows of this sample point at the right words
        rows = batch.ledger.isel(event=batch.ledger["sample"].values == b)
        queries = ledger_queries(rows)
        assert [words[t] for t in queries["token"].values] == ["Where"] * cfg.n_questions
        assert [tok.vocab[f] for f in queries["fact_id"].values] == [r[0] for r in results]
        np.testing.assert_array_equal(queries["expected_answer"].values, batch.answers[b])
        answer_rows = rows.isel(event=rows["role"].values == "answer")
        np.testing.assert_array_equal(answer_rows["token"].values, batch.answer_positions[b])
        for role, token, fact, value in zip(rows["role"].values, rows["token"].values, rows["fact_id"].values,
                                            rows["value"].values):
            if role == "key":
                assert words[token] == tok.vocab[fact]
            elif role == "value":
                assert words[token] == tok.vocab[value]
            elif role == "filler":
                assert words[token] == "The"


@pytest.mark.parametrize("task", ["qa1", "qa2"])
def test_answers_are_correct_by_naive_replay(task):
    _check_batch(make_babi_batch(BabiConfig(task=task, n_facts=30, n_questions=5, n_distractors=10),
                                 batch_size=16, seed=1))


def test_qa2_tracks_objects_through_carrying():
    batch = make_babi_batch(BabiConfig(task="qa2", n_persons=2, n_objects=2, n_facts=40, n_questions=10),
                            batch_size=32, seed=2)
    _check_batch(batch)
    questions = [r for b in range(32) for r in replay_babi(_words(batch, b))]
    assert sum(entity in ("apple", "football", "milk", "book", "umbrella", "hat") for entity, _, _ in questions) > 200
    roles = Counter(batch.ledger["role"].values.tolist())
    carried = (batch.ledger["role"].values == "value") & np.isin(
        [batch.tokenizer.vocab[f] for f in batch.ledger["fact_id"].values], ["apple", "football", "milk", "book",
                                                                             "umbrella", "hat"])
    assert carried.any() and roles["key"] > 0
    assert (ledger_queries(batch.ledger)["n_superseded"].values > 0).any()


def test_seeded_and_reproducible():
    cfg = BabiConfig(task="qa2", n_facts=10)
    a, b = make_babi_batch(cfg, batch_size=4, seed=5), make_babi_batch(cfg, batch_size=4, seed=5)
    np.testing.assert_array_equal(a.input_ids, b.input_ids)
    assert not np.array_equal(a.input_ids, make_babi_batch(cfg, batch_size=4, seed=6).input_ids)
    assert a.ledger.attrs["task"] == "babi_qa2" and a.ledger.attrs["seed"] == 5


def test_segment_column_uses_the_configured_segment_size():
    batch = make_babi_batch(BabiConfig(segment_size=10), batch_size=2, seed=0)
    np.testing.assert_array_equal(batch.ledger["segment"].values, batch.ledger["token"].values // 10)


def test_a_tokenizer_missing_words_fails_clearly():
    small = WordTokenizer.from_words(["Mary", "moved"])
    with pytest.raises(ValueError, match="unknown words"):
        make_babi_batch(batch_size=1, seed=0, tokenizer=small)


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "qa3"}, r"task must be one of \('qa1', 'qa2'\)"),
    ({"n_locations": 1}, r"n_locations must be in \[2, 8\]"),
    ({"n_persons": 9}, r"n_persons must be in \[1, 8\]"),
    ({"n_questions": 0}, "n_questions must be >= 1"),
])
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BabiConfig(**kwargs)


def test_default_tokenizer_covers_generated_text():
    tok = default_babi_tokenizer()
    assert tok.vocab[:4] == ("<pad>", "<eos>", "<gen>", "<sep>")
    batch = make_babi_batch(BabiConfig(task="qa2", n_facts=50, n_distractors=50), batch_size=8, seed=3)
    assert batch.input_ids.max() < tok.vocab_size


@settings(max_examples=30, deadline=None)
@given(task=st.sampled_from(["qa1", "qa2"]), n_persons=st.integers(1, 8), n_locations=st.integers(2, 8),
       n_objects=st.integers(1, 6), n_facts=st.integers(1, 25), n_distractors=st.integers(0, 10),
       n_questions=st.integers(1, 6), batch_size=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_generator_properties(task, n_persons, n_locations, n_objects, n_facts, n_distractors, n_questions,
                              batch_size, seed):
    cfg = BabiConfig(task=task, n_persons=n_persons, n_locations=n_locations, n_objects=n_objects,
                     n_facts=n_facts, n_distractors=n_distractors, n_questions=n_questions)
    _check_batch(make_babi_batch(cfg, batch_size=batch_size, seed=seed))
