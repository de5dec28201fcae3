"""A word-level tokenizer with a fixed vocabulary, for the bAbI-style tasks.

The official BABILong pipeline (ARMT_SPEC.md §4.1, BABILong experiments of arXiv 2407.04841) tokenizes with
GPT-2's BPE and marks the answer with the first GPT-2 token of "GEN". Our generated tasks use a closed
vocabulary instead, so one token is one word, answers are single tokens, and a small model needs no
pretrained tokenizer. The tokenizer is built locally from word lists and saved as JSON.

Text rules: tokens are separated by whitespace; the punctuation marks ``. ? , ! ; :`` are tokens of their own
even when attached to a word ("kitchen." is "kitchen" "."); special tokens are written ``<pad>``, ``<eos>``,
``<gen>``, ``<sep>``. ``decode`` joins tokens with single spaces, so ``decode(encode(text)) == text`` for text in
that canonical form and ``encode(decode(ids)) == ids`` always.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["SPECIAL_TOKENS", "WordTokenizer"]

SPECIAL_TOKENS = ("<pad>", "<eos>", "<gen>", "<sep>")  # ids 0, 1, 2, 3 in every WordTokenizer
_FORMAT = "armt_viz.WordTokenizer"
_FORMAT_VERSION = 1
_TOKEN_RE = re.compile(r"<[a-z]+>|[^\s.?,!;:]+|[.?,!;:]")


class WordTokenizer:
    """Maps words to ids and back over a fixed vocabulary; unknown words are errors, never ``<unk>``.

    Args:
        vocab: the full token list, index = id; must start with ``SPECIAL_TOKENS`` and have no duplicates.
            Use ``WordTokenizer.from_words`` to build one from plain words.
    """

    def __init__(self, vocab: Sequence[str]) -> None:
        vocab = [str(t) for t in vocab]
        if tuple(vocab[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"WordTokenizer: vocab must start with {SPECIAL_TOKENS}, received "
                             f"{tuple(vocab[:len(SPECIAL_TOKENS)])}; build it with WordTokenizer.from_words(words)")
        if len(set(vocab)) != len(vocab):
            dupes = sorted({t for t in vocab if vocab.count(t) > 1})
            raise ValueError(f"WordTokenizer: vocab has duplicate tokens {dupes}; each token needs one id")
        bad = [t for t in vocab[len(SPECIAL_TOKENS):]
               if _TOKEN_RE.fullmatch(t) is None or (t.startswith("<") and t.endswith(">"))]
        if bad:
            raise ValueError(f"WordTokenizer: tokens {bad!r} cannot be produced by encode (no whitespace; "
                             "punctuation . ? , ! ; : only as single-character tokens; <name> is reserved for specials)")
        self._vocab = tuple(vocab)
        self._ids = {t: i for i, t in enumerate(vocab)}

    @classmethod
    def from_words(cls, words: Iterable[str]) -> WordTokenizer:
        """Specials, then the distinct ``words`` in sorted order (so the ids do not depend on input order)."""
        return cls(list(SPECIAL_TOKENS) + sorted(set(words) - set(SPECIAL_TOKENS)))

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    pad_id = property(lambda self: 0, doc="id of <pad>")
    eos_id = property(lambda self: 1, doc="id of <eos>")
    gen_id = property(lambda self: 2, doc="id of <gen>")
    sep_id = property(lambda self: 3, doc="id of <sep>")

    def __len__(self) -> int:
        return len(self._vocab)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WordTokenizer) and other._vocab == self._vocab

    def __hash__(self) -> int:
        return hash(self._vocab)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"

    @staticmethod
    def split(text: str) -> list[str]:
        """The tokens of ``text`` (see the module docstring for the rules)."""
        return _TOKEN_RE.findall(text)

    def token_id(self, token: str) -> int:
        """Id of one token; raises ``ValueError`` (with close matches) if it is not in the vocabulary."""
        try:
            return self._ids[token]
        except KeyError:
            raise self._unknown([token]) from None

    def encode(self, text: str | Sequence[str]) -> np.ndarray:
        """Ids (int64) of ``text``: a string (split by ``split``) or an already split token sequence."""
        tokens = self.split(text) if isinstance(text, str) else list(text)
        unknown = [t for t in tokens if t not in self._ids]
        if unknown:
            raise self._unknown(unknown)
        return np.array([self._ids[t] for t in tokens], dtype=np.int64)

    def decode(self, ids: Iterable[int], *, skip_pad: bool = False) -> str:
        """Tokens of ``ids`` joined by single spaces (``skip_pad`` drops ``<pad>``)."""
        ids = [int(i) for i in np.asarray(list(ids) if not isinstance(ids, np.ndarray) else ids).reshape(-1)]
        bad = [i for i in ids if not 0 <= i < len(self._vocab)]
        if bad:
            raise ValueError(f"WordTokenizer.decode: ids {bad[:5]} are outside the vocabulary [0, {len(self._vocab)}); "
                             "decode ids produced by this tokenizer")
        return " ".join(self._vocab[i] for i in ids if not (skip_pad and i == self.pad_id))

    def _unknown(self, tokens: Sequence[str]) -> ValueError:
        shown = list(dict.fromkeys(tokens))[:5]
        hints = {t: difflib.get_close_matches(t, self._vocab, n=3) for t in shown}
        return ValueError(
            f"WordTokenizer: unknown words {shown!r} (vocabulary of {self.vocab_size} tokens); "
            f"close matches: {hints}. Use only vocabulary words, or build a tokenizer that includes them with "
            "WordTokenizer.from_words([...]).")

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as JSON (``{"format", "version", "vocab"}``)."""
        data = {"format": _FORMAT, "version": _FORMAT_VERSION, "vocab": list(self._vocab)}
        Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        """Read a tokenizer written by ``save``."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"WordTokenizer.load: {str(path)!r} is not a saved WordTokenizer (expected JSON with "
                             f"format={_FORMAT!r}); write it with WordTokenizer.save")
        if data.get("version") != _FORMAT_VERSION:
            raise ValueError(f"WordTokenizer.load: {str(path)!r} has format version {data.get('version')!r}, "
                             f"this armt_viz reads version {_FORMAT_VERSION}")
        return cls(data["vocab"])
