"""Evaluation: the official AR exact match on crafted generations, pure curve helpers, and the demo model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from armt_viz import evaluate as ev
from armt_viz.config import ARMTConfig
from armt_viz.tasks.associative_retrieval import EOS, GEN, make_ar_batch


class _Oracle(torch.nn.Module):
    """Stands in for ARMTModel.generate: answers from the prompt itself, optionally corrupted."""

    def __init__(self, mode: str = "right"):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = ARMTConfig(segment_size=4)
        self.mode = mode
        self.calls = []

    def generate(self, ids, max_new_tokens, do_sample, pad_token_id):
        self.calls.append((tuple(ids.shape), max_new_tokens, do_sample, pad_token_id, self.config.segment_size))
        x = ids.numpy()
        out = []
        for row in x:
            assert row[-1] == GEN
            pairs = row[:-2].reshape(-1, 4)
            value = pairs[np.flatnonzero(pairs[:, 0] == row[-2])[-1], 2]  # last occurrence wins (rewrite)
            gen = {"right": [value, EOS], "no_eos": [value, value], "wrong": [(value + 1) % 16, EOS],
                   "short": [value]}[self.mode]
            out.append(gen)
        return torch.as_tensor(np.array(out))


@pytest.mark.parametrize("mode, expected", [("right", 1.0), ("no_eos", 0.0), ("wrong", 0.0), ("short", 0.0)])
def test_ar_exact_match_on_crafted_generations(mode, expected):
    model = _Oracle(mode)
    em = ev.ar_exact_match(model, 7, samples=10, rewrite=True, seed=3, batch_size=4)
    assert em.shape == (10,) and em.mean() == expected
    assert [c[0][0] for c in model.calls] == [4, 4, 2]  # batches of 4
    assert all(c[1:] == (2, False, EOS, 4) for c in model.calls)  # V+1 new tokens, greedy, pad EOS, segment K+V+2


def test_ar_samples_do_not_depend_on_batch_size():
    a = ev.ar_exact_match(_Oracle(), 5, samples=9, seed=1, batch_size=9)
    b = ev.ar_exact_match(_Oracle(), 5, samples=9, seed=1, batch_size=2)
    assert np.array_equal(a, b)


def test_capacity_is_n_times_em():
    cap = ev.capacity([1, 10, 50], [1.0, 0.9, 0.5])
    assert isinstance(cap, xr.DataArray) and cap.dims == ("n_pairs",)
    np.testing.assert_allclose(cap.values, [1.0, 9.0, 25.0])
    with pytest.raises(ValueError, match="same shape"):
        ev.capacity([1, 2], [1.0])


def test_query_hits_needs_answer_and_eos():
    tokens = np.array([3, 100, 7, 102, 3, 101, 7, 102])
    answer_tok = np.array([6])
    preds = np.zeros(8, dtype=np.int64)
    preds[5], preds[6] = 7, 102  # GEN predicts 7, the answer predicts EOS
    assert ev._query_hits(preds, tokens, answer_tok, 1).tolist() == [True]
    preds[6] = 7
    assert ev._query_hits(preds, tokens, answer_tok, 1).tolist() == [False]


def test_recall_vs_age_bins():
    q = xr.Dataset({"age_segments": ("query", np.array([1, 1, 2, 5, 9, -1])),
                    "correct": ("query", np.array([True, False, True, True, False, True]))})
    r = ev.recall_vs_age(q, "age_segments", edges=[0, 2, 4, 8, 16])
    assert r["count"].values.tolist() == [2, 1, 1, 1]  # the never-written query (-1) is left out
    np.testing.assert_allclose(r["accuracy"].values, [0.5, 1.0, 1.0, 0.0])


def _demo():
    try:
        from armt_viz.assets import load_demo_model
        return load_demo_model("ar")
    except FileNotFoundError:
        pytest.skip("no shipped demo model")


def test_demo_model_uses_its_memory():
    model = _demo()
    em = ev.ar_exact_match(model, 5, samples=48, seed=0, batch_size=48).mean()
    ablated = ev.ar_exact_match(model, 5, samples=48, seed=0, batch_size=48, ablate_memory=True).mean()
    assert em >= 0.9 and ablated <= 0.3, (em, ablated)


def test_run_eval_reports_the_required_fields():
    _demo()
    res = ev.run_eval(model="demo", task="ar-rewrite", pairs=3, samples=16, seed=0, batch_size=16, device="cpu")
    for key in ("exact_match", "task", "pairs", "samples", "seed", "ablate_memory", "model"):
        assert key in res
    assert res["task"] == "ar-rewrite" and res["model"] == "demo" and 0.0 <= res["exact_match"] <= 1.0
    with pytest.raises(ValueError, match="task"):
        ev.run_eval(model="demo", task="nope")


def test_stream_eval_and_recall_on_the_demo_stream():
    model = _demo()  # the AR model, on the AR-format stream its task.json names
    cfg = ev.model_stream_config(model)
    res = ev.stream_exact_match(model, cfg, 12, samples=4, seed=0)
    assert res["n_queries"] > 0 and res["exact_match"] > 0.5
    q = ev.stream_queries(model, ev.model_stream_config(model, seed=1), 4 * 40)
    assert q.sizes["query"] > 0 and set(q.data_vars) >= {"correct", "age_segments", "intervening_writes"}
    r = ev.recall_vs_age(q)
    assert int(r["count"].sum()) == int((q.age_segments >= 0).sum())


def test_make_ar_batch_prompt_matches_generation_layout():
    b = make_ar_batch(3, 1, 1, batch_size=2, rewrite=True, seed=0)
    assert b.prompt_ids.shape[1] == 3 * 4 + 2 and (b.prompt_ids[:, -1] == GEN).all()


def test_babi_exact_match_runs_and_demo_is_refused():
    model = _demo()
    from armt_viz.tasks.babi import BabiConfig
    em = ev.babi_exact_match(model, BabiConfig(n_facts=3, n_distractors=1, segment_size=16), samples=4, batch_size=4)
    assert 0.0 <= em <= 1.0  # an AR model knows no bAbI words: only the plumbing is checked
    with pytest.raises(ValueError, match="bAbI"):
        ev.run_eval(model="demo", task="babi")
