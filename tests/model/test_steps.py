"""The segment-step contract (model/steps.py): pick_step chooses one step and says why; run_segments is the one
loop and hands a step only the segments it accepts."""

from __future__ import annotations

import pytest
import torch

from armt_viz.model.fast import GraphedStepper
from armt_viz.model.lean import LeanStep
from armt_viz.model.steps import HFStep, SegmentStep, explain, hf_step, pick_step
from armt_viz.testing import tiny_model


def test_pick_step_on_the_cpu_is_the_lean_step_and_says_why():
    m = tiny_model()
    choice = pick_step(m)
    assert isinstance(choice.step, LeanStep) and isinstance(choice.step, SegmentStep)
    assert "lean CPU step" in choice.reason and "CUDA device" in choice.reason
    assert explain(m) == choice.reason
    with torch.no_grad():  # model(ids) runs the same step where it is exact, and says so
        assert m.explain_executor() == choice.reason
    assert "autograd" in m.explain_executor()


@pytest.mark.parametrize("why, model_kw, call_kw, words", [
    ("autograd", {}, dict(grad=True), ["HF step", "autograd"]),
    ("fast off", {}, dict(fast=False), ["HF step", "fast=False"]),
    ("llama", dict(family="llama"), {}, ["HF step", "GPT-2 backbone"]),
    ("memory heads", dict(n_heads=2), {}, ["HF step", "one memory head"]),
])
def test_pick_step_falls_back_to_the_hf_step_with_the_reason(why, model_kw, call_kw, words):
    m = tiny_model(**model_kw)
    choice = pick_step(m, **call_kw)
    assert isinstance(choice.step, HFStep), why
    for w in words:
        assert w in choice.reason, (why, choice.reason)


def test_training_mode_takes_the_hf_step():
    m = tiny_model().train()
    assert isinstance(pick_step(m).step, HFStep)
    assert "training mode" in m.explain_executor()


def test_pick_step_emulated_graph():
    m = tiny_model()
    choice = pick_step(m, emulate=True, batch=2)
    assert isinstance(choice.step, GraphedStepper) and choice.step.B == 2 and "emulated" in choice.reason
    assert "wrap_pos" in pick_step(tiny_model(wrap_pos=True), emulate=True, build=False).reason


def test_run_segments_gives_a_step_only_the_segments_it_accepts():
    m = tiny_model()
    S = m.config.segment_size
    ids = torch.randint(0, m.vocab_size, (1, 3 * S + 5))
    with hf_step(m):  # the HF step (stream's default is the lean one on the CPU)
        ref = [o.logits for o in m.stream([ids])]
    seen = []

    class FullOnly(HFStep):
        @staticmethod
        def why_not(model, state=None, ids=None):
            return None if ids is None or ids.shape[1] == S else "partial"

        def __call__(self, ids, state, segment):
            seen.append(segment)
            return super().__call__(ids, state, segment)
    got = [o for o in m.stream([ids], step=FullOnly(m))]
    assert seen == [0, 1, 2] and [o.segment for o in got] == [0, 1, 2, 3]
    for r, g in zip(ref, got):
        torch.testing.assert_close(g.logits, r, rtol=0, atol=0)


def test_the_armt_docstring_names_the_one_loop():
    from armt_viz.model import armt

    assert "One segment loop: `ARMTModel.run_segments`" in armt.__doc__
    assert not hasattr(armt.ARMTModel, "_segments")


def test_pick_step_without_graphs_for_hook_observers():
    m = tiny_model()
    choice = pick_step(m, emulate=True, graph=False)
    assert isinstance(choice.step, LeanStep) and "hooks" in choice.reason


def test_generate_writes_its_segments_with_the_default_step_and_matches_the_hf_step():
    """generate's written segments run the default step (the lean step on the CPU); the tokens it generates equal
    those of the HF step's run, and the memory it reads equals it within float32 reordering."""
    import armt_viz.model.lean as lean_mod
    from armt_viz.model import steps as steps_mod
    from armt_viz.testing import tiny_model

    m = tiny_model(seed=5).eval()
    ids = torch.randint(2, 32, (2, 16 * 5 + 7))
    calls = []
    real = lean_mod.LeanStep.__call__
    lean_mod.LeanStep.__call__ = lambda self, *a, **k: calls.append(1) or real(self, *a, **k)
    try:
        got = m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    finally:
        lean_mod.LeanStep.__call__ = real
    with steps_mod.hf_step(m):
        want = m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert len(calls) == 5  # the five full segments before the last (partial) one
    assert torch.equal(got, want)


def test_the_cached_lean_step_follows_a_swapped_config_and_read_ablation():
    """The lean step is cached on the weights alone; it reads the segment size and the ablation flag per call, so
    `evaluate`'s per-task segment size and `ablate_memory()` must still give the HF step's logits."""
    from armt_viz.evaluate import _segment_size
    from armt_viz.testing import assert_close

    m = tiny_model(seed=6).eval()
    with torch.no_grad():
        m(torch.randint(0, 32, (2, 16 * 3)))  # builds and caches the lean step at segment size 16
        ids = torch.randint(0, 32, (2, 12 * 5 + 3))
        with _segment_size(m, 12):
            assert m.explain_executor().startswith("the lean CPU step")
            got = m(ids).logits
            with hf_step(m):
                want = m(ids).logits
            assert_close("lean step at a swapped segment size", want, got)
            with m.ablate_memory():
                got = m(ids).logits
                with hf_step(m):
                    want = m(ids).logits
            assert_close("lean step with reads ablated", want, got)


def test_recordings_share_the_packed_lean_step_until_a_weight_changes():
    """`pick_step` (the recorder's choice) reuses the model's cached LeanStep instead of packing the weights for
    every call, and packs anew after an in-place weight edit: a recording after the edit equals the HF step's."""
    import numpy as np

    import armt_viz as av

    m = tiny_model(seed=5).eval()
    a, b = pick_step(m).step, pick_step(m).step
    assert isinstance(a, LeanStep) and a is b
    ids = torch.randint(0, m.vocab_size, (1, 5 * m.config.segment_size))
    av.record(m, ids, level="summary", progress=False)
    with torch.no_grad():
        m.blocks[0].W_mv.weight.mul_(1.5)
    assert pick_step(m).step is not a
    fast = av.record(m, ids, level="summary", progress=False)
    slow = av.record(m, ids, level="summary", progress=False, fast=False)
    for k in ("assoc_norm", "read_out_norm_mean", "segment_loss"):
        np.testing.assert_allclose(fast[k].values, slow[k].values, rtol=1e-5, atol=1e-6, err_msg=k)
