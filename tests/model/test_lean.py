"""The lean CPU step (model/lean.py) against the HF-wrapped step: logits, state and every hooked tensor."""

import pytest
import torch

from armt_viz.model import lean as lean_mod
from armt_viz.model.fast import fast_stream
from armt_viz.model.lean import LeanStep, lean_eligible, use_lean
from armt_viz.model.memory import dpfp
from armt_viz.model.steps import hf_step
from armt_viz.testing import tiny_model

LEAN_REL = 1e-5  # float32: same math, other summation order (measured ~1e-6)


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def _stream(model, ids, lean=None):
    with torch.no_grad():
        if lean is None:
            with hf_step(model):  # the reference: the HF step (stream's default is the lean one)
                return list(model.stream([ids]))
        with use_lean(model, lean):
            return list(model.stream([ids]))


CONFIGS = [{}, {"correction": False}, {"gating": True}, {"normalize_features": True}, {"use_denom": False},
           {"wrap_pos": True}, {"gamma_eps": False}, {"delta_rule": False}]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_lean_stream_equals_hf_step(cfg):
    model = tiny_model(**cfg)
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 5 * S + 7))  # batch 2, a partial tail
    want, got = _stream(model, ids), _stream(model, ids, LeanStep(model))
    assert len(got) == len(want) == 6
    for g, w in zip(got, want):
        assert g.logits.shape == w.logits.shape
        assert _rel(g.logits, w.logits) <= LEAN_REL, g.segment
        for a, b in zip(g.state.assoc, w.state.assoc):
            assert a.shape == b.shape and _rel(a, b) <= LEAN_REL, g.segment
        if model.config.use_denom:
            for a, b in zip(g.state.normalizer, w.state.normalizer):
                assert a.shape == b.shape and _rel(a, b) <= LEAN_REL, g.segment


def test_memory_matters_so_the_comparison_can_fail():
    model = tiny_model()
    ids = torch.randint(0, model.vocab_size, (1, 4 * model.config.segment_size))
    lean = LeanStep(model)
    with torch.no_grad(), use_lean(model, lean):
        plain = [o.logits for o in model.stream([ids])]
        with model.ablate_memory():
            ablated = [o.logits for o in model.stream([ids])]
    assert _rel(ablated[0], plain[0]) == 0  # nothing to read in the first segment
    assert _rel(ablated[-1], plain[-1]) > 1e-3


def test_every_hook_point_sees_the_same_tensors():
    model = tiny_model()
    ids = torch.randint(0, model.vocab_size, (2, 3 * model.config.segment_size))

    def collect(lean):
        seen = {}

        def grab(x, *, hook):
            seen.setdefault(hook.name, []).append(x.detach().clone())
        with model.hooks([(lambda n: True, grab)]):
            _stream(model, ids, lean)
        return seen
    want, got = collect(None), collect(LeanStep(model))
    assert set(got) == set(want) and len(want) == 2 * len(model.blocks[0].memory.points())
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for g, w in zip(got[name], want[name]):
            assert g.shape == w.shape, name
            assert _rel(g, w) <= LEAN_REL or (w.abs().max() == 0 and g.abs().max() == 0), name


def test_features_are_bit_identical_to_dpfp():
    model = tiny_model(d_mem=24)
    x = torch.randn(37, 24)
    assert torch.equal(LeanStep(model)._features(x), dpfp(x, model.config.nu))


def test_without_onednn_the_fallback_products_match(monkeypatch):
    monkeypatch.setattr(lean_mod, "_onednn", lambda: False)
    model = tiny_model()
    ids = torch.randint(0, model.vocab_size, (1, 3 * model.config.segment_size))
    lean = LeanStep(model)
    assert all(lin.w is None for per_layer in lean.linear.lin.values() for lin in per_layer)
    for g, w in zip(_stream(model, ids, lean), _stream(model, ids)):
        assert _rel(g.logits, w.logits) <= LEAN_REL


def test_a_state_edited_in_place_is_read_as_edited():
    """The step reuses its own [A | z]; an in-place edit of the returned state must not be missed."""
    model = tiny_model()
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (1, 2 * S))
    lean = LeanStep(model)
    with torch.no_grad():
        st = lean(ids[:, :S], model.init_state(1), 0).state.detach()
        st.assoc[0].mul_(3.0)
        st.normalizer[1].add_(0.5)
        got = lean(ids[:, S:], st, 1)
        want = model.step(ids[:, S:], st)
    assert _rel(got.logits, want.logits) <= LEAN_REL
    for a, b in zip(got.state.assoc, want.state.assoc):
        assert _rel(a, b) <= LEAN_REL


def test_use_lean_leaves_grad_and_padding_to_the_hf_step():
    model = tiny_model()
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (1, S))
    calls = []

    class Spy(LeanStep):
        def __call__(self, *a, **k):
            calls.append(1)
            return super().__call__(*a, **k)
    with use_lean(model, Spy(model)):
        out = model.step(ids)  # grad enabled: the HF step, so training works
        assert out.logits.requires_grad and not calls
        with torch.no_grad():
            model.step(ids, attention_mask=torch.ones_like(ids))
            assert not calls
            model.step(ids)
            assert calls == [1]
    assert model._slot.lean is None


def test_fast_stream_on_cpu_runs_the_lean_step():
    model = tiny_model()
    ids = torch.randint(0, model.vocab_size, (1, 3 * model.config.segment_size + 5))
    want = _stream(model, ids)
    got = list(fast_stream(model, ids))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert _rel(g.logits, w.logits) <= LEAN_REL
        assert not g.logits.is_inference()  # ordinary tensors leave the step


@pytest.mark.parametrize("kind, match", [("llama", "GPT-2 backbone"), ("heads", "one memory head"),
                                         ("bf16", "float32")])
def test_models_it_cannot_run_get_a_clear_reason(kind, match):
    if kind == "llama":
        model = tiny_model(family="llama")
    elif kind == "heads":
        model = tiny_model(n_heads=2)
    else:
        model = tiny_model().to(torch.bfloat16)
    assert match in lean_eligible(model)
    with pytest.raises(ValueError, match=match):
        LeanStep(model)


def test_the_lean_step_refuses_training_mode():
    """Issue 14 bug 4: eligibility needs eval mode (the lean step has no dropout)."""
    model = tiny_model()
    lean = LeanStep(model)  # built in eval mode
    model.train()
    assert "training mode" in LeanStep.why_not(model) and "model.eval()" in lean_eligible(model)
    with pytest.raises(ValueError, match="training mode"):
        LeanStep(model)
    calls = []

    class Spy:
        def __call__(self, *a, **k):
            calls.append(1)
            return lean(*a, **k)
    ids = torch.randint(0, model.vocab_size, (1, model.config.segment_size))
    with use_lean(model, Spy()), torch.no_grad():
        model.step(ids)  # a model switched to training inside use_lean takes the HF step (with its dropout)
    assert not calls
    model.eval()
    with use_lean(model, Spy()), torch.no_grad():
        model.step(ids)
    assert calls == [1]
