"""Truncated BPTT over long streams (`StreamCursor`) and the stream specimen family's configs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from armt_viz.tasks.stream import make_stream
from armt_viz.train import SPECIMEN_VARIANTS, StreamCursor, StreamPool, build_model, default_config, smoke_config, train


def _pool(seed=0, tokens=16 * 400):
    cfg = dataclasses.replace(smoke_config("stream"), stream_pool_tokens=tokens)
    return cfg, StreamPool(cfg, seed, torch.device("cpu"))


def test_cursor_walks_contiguous_windows_and_scores_only_answers_written_since_origin():
    cfg, pool = _pool()
    gen = torch.Generator().manual_seed(0)
    cur = StreamCursor(pool, batch_size=3, reset=0.0, generator=gen)
    model = build_model(cfg)
    S, n = cfg.stream_segment_size, 4
    ids1, mask1, _ = cur.sample(n, model)
    origin = cur.origin.clone()
    cur.carry(model.init_state(3))
    ids2, mask2, _ = cur.sample(n, model)
    assert torch.equal(cur.origin, origin)  # no restart with reset=0
    # the second window continues the first one in the same stream
    stream = make_stream(cfg.stream_config(seed=0), pool.tokens.shape[1])
    for b in range(3):
        o = int(origin[b])
        np.testing.assert_array_equal(torch.cat([ids1[b], ids2[b]]).numpy(), stream.input_ids[o:o + 2 * n * S])
    # reference mask from the ledger: GEN..last answer digit of queries whose version starts at/after origin
    led = stream.ledger
    ans = led["role"].values == "answer"
    tok, vf = led["token"].values[ans], led["valid_from"].values[ans]
    for b in range(3):
        o = int(origin[b])
        ref = np.zeros(2 * n * S, dtype=bool)
        for t, v in zip(tok, vf):
            if o <= t - 1 and t + cfg.stream_value_size - 1 < o + 2 * n * S and (v < 0 or v >= o):
                for j in range(-1, cfg.stream_value_size):
                    ref[t + j - o] = True
        np.testing.assert_array_equal(torch.cat([mask1[b], mask2[b]]).numpy(), ref)


def test_cursor_restart_zeroes_that_rows_memory_only():
    cfg, pool = _pool()
    model = build_model(cfg)
    cur = StreamCursor(pool, batch_size=4, reset=0.0, generator=torch.Generator().manual_seed(1))
    cur.sample(2, model)
    ones = model.init_state(4)
    ones = type(ones)(tuple(torch.ones(4, *a.shape[1:]) for a in ones.assoc),
                      tuple(torch.ones(4, *z.shape[1:]) for z in ones.normalizer), 1)
    cur.carry(ones)
    cur.reset = 1.0  # every row restarts
    _, _, state = cur.sample(2, model)
    assert all(float(a.abs().sum()) == 0 for a in state.assoc + state.normalizer)
    cur.carry(ones)
    cur.reset = 0.0
    _, _, state = cur.sample(2, model)
    assert all(bool((a == 1).all()) for a in state.assoc + state.normalizer)


def test_tbptt_training_carries_memory(tmp_path):
    cfg = dataclasses.replace(smoke_config("stream"), curriculum=(2, 3), steps=(2, 3), tbptt_from_stage=1,
                              tbptt_reset=0.0, stream_pool_tokens=16 * 400, eval_segments=6)
    progress = train(cfg, tmp_path / "run")
    assert progress["finished"] and progress["global_step"] == 5
    assert [e["n"] for e in progress["evals"] if e["stage"] == 1] == [3]


@pytest.mark.parametrize("variant", sorted(SPECIMEN_VARIANTS))
def test_specimen_variants_differ_from_the_baseline_in_one_switch(variant):
    base, cfg = default_config("stream"), default_config("stream", variant)
    diff = {f.name for f in dataclasses.fields(cfg) if getattr(cfg, f.name) != getattr(base, f.name)}
    assert diff == set(SPECIMEN_VARIANTS[variant])
    assert cfg.stream_segment_size >= 16 and cfg.stream_keys >= 64 and cfg.stream_p_delete > 0
    m = build_model(dataclasses.replace(cfg, n_layer=1, d_model=32, n_head=2))
    for k, v in SPECIMEN_VARIANTS[variant].items():
        assert getattr(m.config, k) == v


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant must be one of"):
        default_config("stream", "nope")


def test_fresh_windows_are_stream_starts_and_every_query_in_them_is_scored():
    cfg = dataclasses.replace(smoke_config("stream"), stream_pool_tokens=16 * 4 * 6)
    pool = StreamPool(cfg, 3, torch.device("cpu"), stream_segments=4, from_start=True)
    assert tuple(pool.tokens.shape) == (6, 4 * 16)
    ids, mask = pool.sample(3, 8, torch.Generator().manual_seed(0))
    S, V = cfg.stream_segment_size, cfg.stream_value_size
    for b in range(8):
        row = ids[b].numpy()
        match = [i for i in range(6) if np.array_equal(pool.tokens[i, :3 * S].numpy(), row)]
        assert match, "a fresh window is the beginning of one of the pool's streams"
        ref = make_stream(cfg.stream_config(seed=3 * 1_000_000 + match[0]), 4 * S)
        np.testing.assert_array_equal(ref.input_ids[:3 * S], row)
        led = ref.ledger
        answers = led["token"].values[led["role"].values == "answer"]
        expected = np.zeros(3 * S, dtype=bool)
        for t in answers[answers + V - 1 < 3 * S]:  # every query of the window, NONE answers included
            expected[t - 1:t + V] = True
        np.testing.assert_array_equal(mask[b].numpy(), expected)
    with pytest.raises(ValueError, match="windows of 5 segments need streams of at least 80 tokens"):
        pool.sample(5, 2, torch.Generator())


def test_cursor_over_a_from_start_pool_restarts_rows_at_a_stream_beginning():
    cfg = dataclasses.replace(smoke_config("stream"), stream_pool_tokens=16 * 8 * 5)
    pool = StreamPool(cfg, 0, torch.device("cpu"), stream_segments=8, from_start=True)
    model = build_model(cfg)
    cur = StreamCursor(pool, batch_size=4, reset=0.0, generator=torch.Generator().manual_seed(2))
    ids, _, _ = cur.sample(2, model)
    assert torch.equal(cur.origin, torch.zeros(4, dtype=torch.long))
    for b in range(4):
        assert torch.equal(ids[b], pool.tokens[int(cur.stream[b]), :2 * 16])
    cur.carry(model.init_state(4))
    for _ in range(3):
        cur.sample(2, model)
        cur.carry(model.init_state(4))
    ids, _, _ = cur.sample(2, model)  # 8 segments walked: every row is past the end and restarts at 0
    assert torch.equal(cur.origin, torch.zeros(4, dtype=torch.long)) and torch.equal(cur.pos, torch.full((4,), 32))
