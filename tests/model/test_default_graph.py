"""`model(ids)` on CUDA replays a cached CUDA graph (steps.default_step), tested here through the emulated graph
(`GraphedStepper(emulate=True)`: the same static buffers, run eagerly) on the CPU; tests/gpu runs the real one.

The reference is the HF step (`steps.hf_step`), tolerance TOLERANCES["fp32_reorder"] of armt_viz.testing."""

from __future__ import annotations

import pytest
import torch

from armt_viz.model import steps
from armt_viz.testing import assert_close, tiny_model


@pytest.fixture
def model(monkeypatch):
    monkeypatch.setattr(steps, "_EMULATE_GRAPH", True)
    m = tiny_model(seed=3).eval()
    steps.clear_cache()
    yield m
    steps.clear_cache()


def _hf(model, ids, state=None):
    with steps.hf_step(model), torch.no_grad():
        return model(ids, state=state)


def _ids(batch, segments, tail=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32, (batch, segments * 16 + tail), generator=g)


@pytest.mark.parametrize("batch", [1, 2])
def test_forward_replays_the_graph_and_equals_the_hf_step(model, batch):
    ids = _ids(batch, steps.GRAPH_MIN_SEGMENTS)
    with torch.no_grad():
        why = model.explain_executor(input_ids=ids)
        out = model(ids)
    assert why.startswith("the emulated CUDA-graph step"), why
    assert steps._GRAPHS[model][1].B == batch
    ref = _hf(model, ids)
    assert_close("forward logits, graph default vs HF", ref.logits, out.logits, "fp32_reorder")
    for a, b in zip(ref.state.assoc + ref.state.normalizer, out.state.assoc + out.state.normalizer):
        assert_close("final memory, graph default vs HF", a, b, "fp32_reorder")


def test_outputs_are_copies_not_the_graphs_buffers(model):
    """A second call overwrites the graph's static buffers: the first call's logits and state must not change."""
    a, b = _ids(1, 9, seed=1), _ids(1, 9, seed=2)
    with torch.no_grad():
        first = model(a)
        kept = (first.logits.clone(), [t.clone() for t in first.state.assoc])
        model(b)
    assert torch.equal(first.logits, kept[0])
    assert all(torch.equal(x, y) for x, y in zip(first.state.assoc, kept[1]))
    stepper = steps._GRAPHS[model][1]
    assert all(x.data_ptr() != y.data_ptr() for x, y in zip(first.state.assoc, stepper.A))


def test_short_inputs_run_the_hf_step_until_a_graph_is_cached(model):
    short = _ids(1, 2)
    with torch.no_grad():
        assert model.explain_executor(input_ids=short).startswith("the HF step: 2 full segment(s)")
        model(short)
        assert model not in steps._GRAPHS
        model(_ids(1, steps.GRAPH_MIN_SEGMENTS))  # captures
        assert "replayed from the cache" in model.explain_executor(input_ids=short)
        out = model(short)
    assert_close("short input from the cached graph vs HF", _hf(model, short).logits, out.logits, "fp32_reorder")


def test_a_restored_state_continues_exactly(model):
    ids = _ids(1, 10, tail=0)
    with torch.no_grad():
        mid = _hf(model, ids[:, :48]).state
        got = model(ids[:, 48:], state=mid)
    ref = _hf(model, ids[:, 48:], state=mid)
    assert_close("graph default from a restored state vs HF", ref.logits, got.logits, "fp32_reorder")


def test_the_graph_is_rebuilt_for_new_weights_batch_and_grad(model):
    ids = _ids(1, 8)
    with torch.no_grad():
        model(ids)
        first = steps._GRAPHS[model][1]
        model.blocks[0].W_mv.weight.mul_(1.5)  # in place: the version counter moves
        out = model(ids)
        assert steps._GRAPHS[model][1] is not first
        assert_close("after an in-place weight edit", _hf(model, ids).logits, out.logits, "fp32_reorder")
        model(_ids(2, 8))
        assert steps._GRAPHS[model][1].B == 2
    # with autograd the HF step runs (it alone keeps the graph through the segments)
    assert model.explain_executor(input_ids=ids).startswith("the HF step")
    out = model(ids)
    assert out.logits.requires_grad


def test_stream_and_masks_and_hooks_keep_the_hf_step(model):
    ids = _ids(1, 8)
    assert "model.stream off the CPU runs the HF step" in steps.default_step(model, purpose="stream", build=False).reason
    with torch.no_grad():
        assert model.explain_executor(torch.ones_like(ids), input_ids=ids).startswith("the HF step: an attention_mask")
    h = model.backbone.transformer.h[0].register_forward_hook(lambda *a: None)
    try:
        assert "forward hooks" in model.explain_executor(input_ids=ids)
    finally:
        h.remove()


def test_ablation_and_a_swapped_config_recapture(model):
    """A capture bakes in whether reads are ablated and the segment size (evaluate swaps the config per task):
    neither may replay a graph captured without it."""
    import dataclasses

    from armt_viz.evaluate import _segment_size

    ids = _ids(1, 8)
    with torch.no_grad():
        model(ids)
        with model.ablate_memory():
            got = model(ids)
            with steps.hf_step(model):
                want = model(ids)
        assert_close("ablated reads, graph default vs HF", want.logits, got.logits, "fp32_reorder")
        assert_close("reads back on", _hf(model, ids).logits, model(ids).logits, "fp32_reorder")
        with _segment_size(model, 12):
            ids12 = torch.randint(0, 32, (1, 12 * 9))
            got = model(ids12)
            assert steps._GRAPHS[model][1].ids.shape[1] == 12
            assert_close("segment size 12", _hf(model, ids12).logits, got.logits, "fp32_reorder")
    assert dataclasses.is_dataclass(model.config)


def test_inference_mode_keeps_the_hf_step(model):
    ids = _ids(1, 8)
    with torch.inference_mode():
        assert model.explain_executor(input_ids=ids).startswith("the HF step: torch.inference_mode is on")
        out = model(ids)
    assert model not in steps._GRAPHS
    assert_close("inference mode, HF step", _hf(model, ids).logits, out.logits, "exact")
