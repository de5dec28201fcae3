"""Tests of armt_viz.tasks.tokenizer.WordTokenizer: round trips, errors and JSON persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from armt_viz.tasks import SPECIAL_TOKENS, WordTokenizer, default_babi_tokenizer

TOK = default_babi_tokenizer()


def test_specials_come_first():
    assert TOK.vocab[:4] == SPECIAL_TOKENS == ("<pad>", "<eos>", "<gen>", "<sep>")
    assert (TOK.pad_id, TOK.eos_id, TOK.gen_id, TOK.sep_id) == (0, 1, 2, 3)
    assert [TOK.token_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]


def test_punctuation_is_split_off_words():
    assert WordTokenizer.split("Mary moved to the kitchen.Where is Mary? <gen> kitchen <eos>") == [
        "Mary", "moved", "to", "the", "kitchen", ".", "Where", "is", "Mary", "?", "<gen>", "kitchen", "<eos>"]


def test_round_trip_of_canonical_text():
    text = "Mary moved to the kitchen . Where is Mary ? <gen> kitchen <eos>"
    ids = TOK.encode(text)
    assert ids.dtype == np.int64 and len(ids) == len(text.split(" "))
    assert TOK.decode(ids) == text
    assert TOK.decode(np.concatenate([ids, [TOK.pad_id] * 3]), skip_pad=True) == text


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, TOK.vocab_size - 1), max_size=40))
def test_encode_inverts_decode(ids):
    np.testing.assert_array_equal(TOK.encode(TOK.decode(ids)), np.array(ids, dtype=np.int64))


def test_unknown_words_raise_with_suggestions():
    with pytest.raises(ValueError, match=r"unknown words \['Marry', 'kitchn'\].*'kitchen'.*from_words"):
        TOK.encode("Marry moved to the kitchn kitchn")
    with pytest.raises(ValueError, match="unknown words"):
        TOK.token_id("unicorn")
    with pytest.raises(ValueError, match=r"outside the vocabulary \[0, "):
        TOK.decode([TOK.vocab_size])


def test_save_and_load(tmp_path):
    path = tmp_path / "tok.json"
    TOK.save(path)
    assert json.loads(path.read_text())["vocab"] == list(TOK.vocab)
    loaded = WordTokenizer.load(path)
    assert loaded == TOK and loaded.vocab == TOK.vocab
    (tmp_path / "other.json").write_text(json.dumps({"vocab": ["a"]}))
    with pytest.raises(ValueError, match="not a saved WordTokenizer"):
        WordTokenizer.load(tmp_path / "other.json")


def test_vocabulary_checks():
    assert WordTokenizer.from_words(["b", "a", "b"]).vocab == SPECIAL_TOKENS + ("a", "b")
    with pytest.raises(ValueError, match="must start with"):
        WordTokenizer(["a", "<pad>", "<eos>", "<gen>", "<sep>"])
    with pytest.raises(ValueError, match="duplicate tokens"):
        WordTokenizer([*SPECIAL_TOKENS, "a", "a"])
    with pytest.raises(ValueError, match="cannot be produced by encode"):
        WordTokenizer.from_words(["picked up"])
