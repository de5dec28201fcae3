"""bAbI-style location tracking (qa1- and qa2-like) in distractor text, with our own generator.

The ARMT paper evaluates on BABILong (arXiv 2407.04841, BABILong experiments; pipeline in ARMT_SPEC.md §4.1):
bAbI facts hidden among PG19 sentences, one question at the end, answer after a "GEN" marker. This module
generates stories of the same shape from scratch, with seeded randomness, a closed word vocabulary
(``WordTokenizer``) and a fact ledger, so every answer and every superseded location is known:

* qa1-like: "Mary moved to the kitchen ." (verbs moved / went / journeyed / travelled); questions
  "Where is Mary ?" about people whose location is known;
* qa2-like: people also pick up and drop objects ("John picked up the apple .", "John dropped the apple ."); an
  object is where its holder is, or where it was dropped; questions "Where is the apple ?" about objects whose
  location is known (about people while no object has a location yet);
* distractors: "The dog barked loudly ." from a small built-in filler vocabulary, at random places.

Sample: story sentences, ``n_questions`` questions (the last one ends the sample), each as
``Where is X ? <gen> location <eos>``. Rows are right-padded with ``<pad>``; ``labels_mask`` is True on the
``<gen>``, answer and ``<eos>`` positions of every question (the official "|answer| + 2" positions).

World rules (so that every story is consistent): a move always goes to a different location; a person picks up
only a free object that has no location yet or lies where the person is; moving carries held objects.

Ledger (``armt_viz.tasks.ledger``): ``fact_id`` is the token id of the person or object word, ``value`` the
token id of the location word. Every change of a location is a new version: a move writes the person's fact
(``key`` row at the name, ``value`` row at the location word) and one ``value`` row per carried object; picking
up an object without a location writes it (``key`` row at the object word). Drops and other pick-ups change no
location and get no row. Distractor sentences are ``filler`` rows; questions are ``query`` (at "Where") and
``answer`` rows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from armt_viz.tasks._common import check_int, resolve_seed
from armt_viz.tasks.ledger import NO_VALUE, make_ledger, stale_list
from armt_viz.tasks.tokenizer import SPECIAL_TOKENS, WordTokenizer

__all__ = ["BabiBatch", "BabiConfig", "LOCATIONS", "OBJECTS", "PERSONS", "default_babi_tokenizer",
           "make_babi_batch"]

PERSONS = ("Mary", "John", "Daniel", "Sandra", "Bill", "Fred", "Julie", "Jeff")
LOCATIONS = ("bathroom", "bedroom", "garden", "hallway", "kitchen", "office", "cellar", "garage")
OBJECTS = ("apple", "football", "milk", "book", "umbrella", "hat")
MOVE_VERBS = ("moved", "went", "journeyed", "travelled")
PICK_VERBS = (("picked", "up"), ("grabbed",), ("got",))
DROP_VERBS = (("dropped",), ("discarded",), ("put", "down"))
FILLER_NOUNS = ("dog", "cat", "bird", "wind", "rain", "sun", "river", "clock")
FILLER_VERBS = ("barked", "sang", "blew", "fell", "shone", "flowed", "ticked", "slept")
FILLER_ADVERBS = ("loudly", "softly", "slowly", "quickly", "again", "quietly")
_GLUE = ("to", "the", "The", "Where", "is", ".", "?")
TASKS = ("qa1", "qa2")


def default_babi_tokenizer() -> WordTokenizer:
    """The tokenizer of every word the generator can emit (specials first, then words sorted)."""
    words = [*PERSONS, *LOCATIONS, *OBJECTS, *MOVE_VERBS, *FILLER_NOUNS, *FILLER_VERBS, *FILLER_ADVERBS, *_GLUE]
    words += [w for verb in PICK_VERBS + DROP_VERBS for w in verb]
    return WordTokenizer.from_words(words)


@dataclass(frozen=True)
class BabiConfig:
    """Settings of the bAbI-style generator.

    Attributes:
        task: "qa1" (people move) or "qa2" (people move and carry objects).
        n_persons, n_locations, n_objects: people, places and (qa2) objects per story, drawn from the built-in
            lists; n_locations >= 2 so a move can change place.
        n_facts: fact sentences per story (moves, pick-ups, drops). n_distractors: filler sentences per story.
        n_questions: questions per story; the last one ends the sample.
        segment_size: tokens per model segment, used for the ledger's ``segment``.
    """

    task: str = "qa1"
    n_persons: int = 4
    n_locations: int = 6
    n_objects: int = 3
    n_facts: int = 8
    n_distractors: int = 8
    n_questions: int = 1
    segment_size: int = 64

    def __post_init__(self) -> None:
        where = "BabiConfig"
        if self.task not in TASKS:
            raise ValueError(f"{where}: task must be one of {TASKS}, received {self.task!r}")
        check_int("n_persons", self.n_persons, low=1, high=len(PERSONS), where=where)
        check_int("n_locations", self.n_locations, low=2, high=len(LOCATIONS), where=where)
        check_int("n_objects", self.n_objects, low=1, high=len(OBJECTS), where=where)
        check_int("n_facts", self.n_facts, low=1, where=where)
        check_int("n_distractors", self.n_distractors, low=0, where=where)
        check_int("n_questions", self.n_questions, low=1, where=where)
        check_int("segment_size", self.segment_size, low=1, where=where)


@dataclass(frozen=True)
class BabiBatch:
    """A batch of stories.

    Attributes:
        input_ids: (sample, position) int64, right-padded with ``tokenizer.pad_id``.
        attention_mask: bool, False on padding. labels_mask: bool, True on <gen>, answer, <eos> of each question.
        answers: (sample, question) answer token ids. answer_positions: (sample, question) their positions.
        lengths: (sample,) unpadded lengths. ledger: the fact ledger. tokenizer, config: what produced it.
    """

    input_ids: np.ndarray
    attention_mask: np.ndarray
    labels_mask: np.ndarray
    answers: np.ndarray
    answer_positions: np.ndarray
    lengths: np.ndarray
    ledger: xr.Dataset
    tokenizer: WordTokenizer
    config: BabiConfig


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _simulate(rng: np.random.Generator, cfg: BabiConfig) -> list[tuple[list[str], list, str | None]]:
    """Fact sentences and questions in story order: (words, [(entity, role, offset, location)], answer)."""
    persons = [PERSONS[i] for i in rng.choice(len(PERSONS), cfg.n_persons, replace=False)]
    places = [LOCATIONS[i] for i in rng.choice(len(LOCATIONS), cfg.n_locations, replace=False)]
    objects = [OBJECTS[i] for i in rng.choice(len(OBJECTS), cfg.n_objects, replace=False)] if cfg.task == "qa2" else []
    where: dict[str, str | None] = {e: None for e in persons + objects}
    holder: dict[str, str | None] = {o: None for o in objects}
    asks = sorted(int(i) for i in rng.integers(0, cfg.n_facts, size=cfg.n_questions - 1)) + [cfg.n_facts - 1]
    items: list[tuple[list[str], list, str | None]] = []
    for i in range(cfg.n_facts):
        actor = _pick(rng, persons)
        held = [o for o in objects if holder[o] == actor]
        free = [o for o in objects if holder[o] is None and where[o] in (None, where[actor])]
        actions = ["move"]
        if objects and where[actor] is not None and rng.random() < 0.5:
            actions = (["drop"] if held else []) + (["pick"] if free else []) or ["move"]
        action = _pick(rng, actions)
        if action == "move":
            dest = _pick(rng, [p for p in places if p != where[actor]])
            words = [actor, _pick(rng, MOVE_VERBS), "to", "the", dest, "."]
            updates = [(actor, "key", 0, dest), (actor, "value", 4, dest)] + [(o, "value", 4, dest) for o in held]
            for entity in [actor, *held]:
                where[entity] = dest
        else:
            obj = _pick(rng, held if action == "drop" else free)
            verb = list(_pick(rng, DROP_VERBS if action == "drop" else PICK_VERBS))
            words = [actor, *verb, "the", obj, "."]
            updates = []
            if action == "pick" and where[obj] is None:
                updates = [(obj, "key", len(verb) + 2, where[actor])]
                where[obj] = where[actor]
            holder[obj] = None if action == "drop" else actor
        items.append((words, updates, None))
        for _ in range(asks.count(i)):
            located = [o for o in objects if where[o] is not None]
            if located:
                entity = _pick(rng, located)
                question = ["Where", "is", "the", entity, "?"]
            else:
                entity = _pick(rng, [p for p in persons if where[p] is not None])
                question = ["Where", "is", entity, "?"]
            items.append((question, [(entity, "query", 0, where[entity])], where[entity]))
    return items


def _filler(rng: np.random.Generator) -> list[str]:
    return ["The", _pick(rng, FILLER_NOUNS), _pick(rng, FILLER_VERBS), _pick(rng, FILLER_ADVERBS), "."]


def _story(rng, cfg: BabiConfig, tok: WordTokenizer, sample: int, cols: dict[str, list]):
    """Token ids, answer positions and answer ids of one story; appends its ledger rows to ``cols``."""
    items = _simulate(rng, cfg)
    n_slots = len(items) + cfg.n_distractors
    filler_slots = set(rng.choice(n_slots - 1, size=cfg.n_distractors, replace=False).tolist())
    order = iter(items)
    ids: list[int] = []
    positions, answers = [], []
    versions: dict[str, int] = {}
    history: dict[str, list[int]] = {}
    since: dict[str, int] = {}

    def row(role, token, n_tokens, fact=NO_VALUE, version=NO_VALUE, valid_from=NO_VALUE, value=NO_VALUE,
            expected=NO_VALUE, stale=()):
        for name, x in zip(("role", "token", "n_tokens", "fact_id", "version", "valid_from", "value",
                            "expected_answer", "stale_values"),
                           (role, token, n_tokens, fact, version, valid_from, value, expected, list(stale))):
            cols[name].append(x)
        cols["n_superseded"].append(len(stale))
        cols["sample"].append(sample)

    for slot in range(n_slots):
        start = len(ids)
        if slot in filler_slots:
            words = _filler(rng)
            row("filler", start, len(words))
            ids.extend(tok.encode(words).tolist())
            continue
        words, updates, answer = next(order)
        ids.extend(tok.encode(words).tolist())
        for entity, role, offset, place in updates:
            fact, value = tok.token_id(entity), tok.token_id(place)
            if role == "query":
                cur = history[entity][-1]
                assert cur == value, "world simulation and ledger replay disagree"  # internal invariant
                stale = stale_list(history[entity], cur)
                ver, vfrom = versions[entity], since[entity]
                row("query", start, len(words), fact, ver, vfrom, value, value, stale)
                positions.append(len(ids) + 1)
                answers.append(value)
                row("answer", len(ids) + 1, 1, fact, ver, vfrom, value, value, stale)
                ids.extend([tok.gen_id, value, tok.eos_id])
                continue
            if since.get(entity) != start:  # first row of this version (a move has key and value rows)
                versions[entity] = versions.get(entity, -1) + 1
                history.setdefault(entity, []).append(value)
                since[entity] = start
            row(role, start + offset, 1, fact, versions[entity], start, value)
    return ids, positions, answers


def make_babi_batch(config: BabiConfig | None = None, *, batch_size: int = 8, seed: int | None = None,
                    tokenizer: WordTokenizer | None = None) -> BabiBatch:
    """Generate ``batch_size`` stories (see the module docstring) with their ledger.

    Args:
        config: generator settings (default ``BabiConfig()``, qa1-like).
        batch_size: stories in the batch. seed: numpy ``default_rng`` seed; None draws one (ledger attrs).
        tokenizer: defaults to ``default_babi_tokenizer()``; must contain every generated word.
    """
    cfg = BabiConfig() if config is None else config
    if not isinstance(cfg, BabiConfig):
        raise TypeError(f"make_babi_batch: config must be a BabiConfig, received {type(cfg).__name__}")
    batch = check_int("batch_size", batch_size, low=1, where="make_babi_batch")
    seed = resolve_seed(seed, "make_babi_batch")
    tok = default_babi_tokenizer() if tokenizer is None else tokenizer
    rng = np.random.default_rng(seed)
    names = ("role", "token", "n_tokens", "fact_id", "version", "valid_from", "value", "expected_answer",
             "stale_values", "n_superseded", "sample")
    cols: dict[str, list] = {name: [] for name in names}
    stories = [_story(rng, cfg, tok, b, cols) for b in range(batch)]
    lengths = np.array([len(ids) for ids, _, _ in stories], dtype=np.int64)
    input_ids = np.full((batch, int(lengths.max())), tok.pad_id, dtype=np.int64)
    labels_mask = np.zeros(input_ids.shape, dtype=bool)
    for b, (ids, positions, _) in enumerate(stories):
        input_ids[b, : len(ids)] = ids
        for p in positions:
            labels_mask[b, p - 1 : p + 2] = True  # <gen>, answer, <eos>
    params = asdict(cfg) | {"batch_size": batch, "seed": seed, "vocab": list(tok.vocab)}
    ledger = make_ledger(cols, task=f"babi_{cfg.task}", params=params, seed=seed, segment_size=cfg.segment_size,
                         special_tokens={t: tok.token_id(t) for t in SPECIAL_TOKENS})
    return BabiBatch(
        input_ids=input_ids, attention_mask=np.arange(input_ids.shape[1]) < lengths[:, None],
        labels_mask=labels_mask, answers=np.array([a for _, _, a in stories], dtype=np.int64),
        answer_positions=np.array([p for _, p, _ in stories], dtype=np.int64), lengths=lengths,
        ledger=ledger, tokenizer=tok, config=cfg)
