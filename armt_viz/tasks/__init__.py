"""Task generators with ground-truth fact ledgers (DESIGN.md §5): numpy and xarray only, never torch.

* ``associative_retrieval``: the official AR format of the ARMT paper (ARMT_SPEC.md §3), remember and rewrite.
* ``stream``: a mutable key-value stream for millions of tokens (writes, overwrites, deletes, queries).
* ``babi`` and ``tokenizer``: bAbI-style location tracking in distractor text, with a word tokenizer.
* ``ledger``: the ledger schema shared by all tasks (every version of every fact and its validity interval).
"""

from armt_viz.tasks.associative_retrieval import (
    AR_SPECIAL_TOKENS,
    EOS,
    GEN,
    NUM_SYMBOLS,
    SEP,
    VOCAB_SIZE,
    ARBatch,
    codes_to_digits,
    digits_to_codes,
    exact_match,
    make_ar_batch,
)
from armt_viz.tasks.babi import BabiBatch, BabiConfig, default_babi_tokenizer, make_babi_batch
from armt_viz.tasks.ledger import (
    DEFAULT_MAX_STALE,
    LEDGER_SCHEMA,
    LEDGER_SCHEMA_VERSION,
    NO_VALUE,
    ROLES,
    concat_ledgers,
    ledger_queries,
    make_ledger,
    resolve_validity,
    validate_ledger,
)
from armt_viz.tasks.stream import DEL, FILL, NONE, STREAM_SPECIAL_TOKENS, StreamChunk, StreamConfig, make_stream, stream_chunks
from armt_viz.tasks.tokenizer import SPECIAL_TOKENS, WordTokenizer

__all__ = [
    "AR_SPECIAL_TOKENS",
    "ARBatch",
    "BabiBatch",
    "BabiConfig",
    "DEFAULT_MAX_STALE",
    "DEL",
    "EOS",
    "FILL",
    "GEN",
    "LEDGER_SCHEMA",
    "LEDGER_SCHEMA_VERSION",
    "NONE",
    "NO_VALUE",
    "NUM_SYMBOLS",
    "ROLES",
    "SEP",
    "SPECIAL_TOKENS",
    "STREAM_SPECIAL_TOKENS",
    "StreamChunk",
    "StreamConfig",
    "VOCAB_SIZE",
    "WordTokenizer",
    "codes_to_digits",
    "concat_ledgers",
    "default_babi_tokenizer",
    "digits_to_codes",
    "exact_match",
    "ledger_queries",
    "make_ar_batch",
    "make_babi_batch",
    "make_ledger",
    "make_stream",
    "resolve_validity",
    "stream_chunks",
    "validate_ledger",
]
