"""CPU kernel choice of the lean step (model/cpu_kernels.py) and `model(ids)`'s default executor
(steps.default_step): both linear backends against the HF-wrapped step, the auto rule, the overrides."""

import math

import pytest
import torch
import torch.nn.functional as F

from armt_viz.model import cpu_kernels, steps
from armt_viz.model.lean import LeanStep, use_lean
from armt_viz.testing import tiny_model

LEAN_REL = 1e-5  # float32: same math, other summation order (measured ~1e-6)
KERNEL_REL = 1e-6  # one kernel against its reference formulation


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def _hf_logits(model, ids):
    with torch.no_grad(), steps.hf_step(model):
        return torch.cat([o.logits for o in model.stream([ids])], 1)


def _lean_logits(model, ids, lean):
    with torch.no_grad(), use_lean(model, lean):
        return torch.cat([o.logits for o in model.stream([ids])], 1)


@pytest.mark.parametrize("backend", ["mkl", "onednn"])
@pytest.mark.parametrize("cfg", [{}, {"gating": True}, {"use_denom": False}])
def test_each_backend_matches_the_hf_step(backend, cfg):
    if backend == "onednn" and not cpu_kernels.onednn_available():
        pytest.fail("this torch build has no oneDNN linear ops: the oneDNN path cannot be tested here")
    model = tiny_model(**cfg)
    ids = torch.randint(0, model.vocab_size, (2, 4 * model.config.segment_size + 5))
    lean = LeanStep(model, backend)
    assert lean.kernels.linear == backend
    packed = lean.linear.lin["qkv"] + [lay["mq"] for lay in lean.layers] + [lean.lm_head]
    assert all((lin.w is not None) == (backend == "onednn") and (lin.wt is not None) == (backend == "mkl")
               for lin in packed)
    want = _hf_logits(model, ids)
    got = _lean_logits(model, ids, lean)
    assert _rel(got, want) <= LEAN_REL
    assert _rel(got, _hf_logits(tiny_model(seed=1, **cfg), ids)) > 1e-3  # the comparison can fail


@pytest.mark.parametrize("value,linear", [("mkl", "mkl"), ("onednn", "onednn"), ("MKL ", "mkl")])
def test_the_environment_variable_forces_the_backend(monkeypatch, value, linear):
    monkeypatch.setenv(cpu_kernels.ENV, value)
    lean = LeanStep(tiny_model())
    assert lean.kernels.linear == linear and cpu_kernels.ENV in lean.kernels.reason


def test_auto_picks_onednn_only_with_avx512(monkeypatch):
    monkeypatch.delenv(cpu_kernels.ENV, raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(cpu_kernels, "onednn_available", lambda: True)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_kernels.choose(144).linear == "onednn"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # how CI forces the AVX2 path on an AVX-512 machine
    c = cpu_kernels.choose(144)
    assert c.linear == "mkl" and "ONEDNN_MAX_CPU_ISA" in c.reason
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    c = cpu_kernels.choose(144)
    assert c.linear == "mkl" and "AVX2" in c.reason and "AVX2" in str(c)
    monkeypatch.setattr(cpu_kernels, "onednn_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert cpu_kernels.choose(144).linear == "mkl"


def test_a_bad_backend_name_is_a_clear_error(monkeypatch):
    monkeypatch.setenv(cpu_kernels.ENV, "fast")
    with pytest.raises(ValueError, match="ARMT_VIZ_CPU_KERNELS must be one of auto, onednn, mkl, got 'fast'"):
        LeanStep(tiny_model())


def test_gelu_by_sigmoid_equals_tanh_gelu():
    y = torch.cat([torch.linspace(-12, 12, 4001), torch.tensor([-1e30, 1e30, 0.0, -0.0])])
    want = F.gelu(y.double(), approximate="tanh")
    got = cpu_kernels.gelu_tanh_(y.clone())
    assert torch.isfinite(got).all()
    assert ((got.double() - want).abs() / want.abs().clamp_min(1.0)).max().item() <= KERNEL_REL
    mid = y[:4001]
    assert (cpu_kernels.gelu_tanh_(mid.clone()) - F.gelu(mid)).abs().max() > 1e-4  # not the erf GELU: can fail


@pytest.mark.parametrize("B", [1, 3])
def test_explicit_attention_equals_flash_attention(B):
    q, k, v = torch.randn(3, B, 4, 37, 16).unbind(0)
    scale = 1 / math.sqrt(16)
    want = cpu_kernels.CausalAttention("sdpa")(q, k, v, scale)
    got = cpu_kernels.CausalAttention("explicit")(q, k, v, scale)
    assert got.shape == (B, 37, 64)
    assert _rel(got, want) <= KERNEL_REL
    noncausal = F.scaled_dot_product_attention(q, k, v, scale=scale).transpose(1, 2).reshape(B, 37, 64)
    assert _rel(noncausal, want) > 1e-3


def test_explicit_attention_in_the_step(monkeypatch):
    model = tiny_model()
    ids = torch.randint(0, model.vocab_size, (1, 3 * model.config.segment_size))
    monkeypatch.setattr(cpu_kernels, "EXPLICIT_ATTENTION_MAX_TOKENS", 10_000)
    lean = LeanStep(model)
    assert lean.kernels.attention == "explicit"
    assert lean.linear.attention.kind == "explicit"
    assert _rel(_lean_logits(model, ids, lean), _hf_logits(model, ids)) <= LEAN_REL


# ---------------------------------------------------------------- model(ids): the default executor
def test_model_call_runs_the_lean_step_by_default_and_matches_the_hf_step(monkeypatch):
    monkeypatch.delenv(steps.FORWARD_ENV, raising=False)
    model = tiny_model()
    ids = torch.randint(0, model.vocab_size, (2, 3 * model.config.segment_size + 3))
    calls = []
    with torch.no_grad():
        lean = steps.default_step(model).step  # the cached step model(ids) runs
    assert isinstance(lean, LeanStep)
    monkeypatch.setattr(type(lean), "__call__", lambda self, *a, _f=type(lean).__call__: calls.append(1) or _f(self, *a))
    with torch.no_grad():
        assert model.explain_executor().startswith("the lean CPU step (linear=")
        got = model(ids).logits
        assert len(calls) == 4
        monkeypatch.setenv(steps.FORWARD_ENV, "hf")
        assert model.explain_executor() == "the HF step: forced by ARMT_VIZ_FORWARD=hf"
        want = model(ids).logits
    assert len(calls) == 4  # the forced HF run did not call it
    assert _rel(got, want) <= LEAN_REL


def test_model_call_keeps_the_hf_step_where_the_lean_one_is_not_exact(monkeypatch):
    monkeypatch.delenv(steps.FORWARD_ENV, raising=False)
    model = tiny_model()
    ids = torch.randint(0, model.vocab_size, (1, 2 * model.config.segment_size))
    assert "autograd" in model.explain_executor()  # grad mode on, parameters require grad
    with torch.no_grad():
        assert "attention_mask" in model.explain_executor(torch.ones_like(ids))
        model.train()
        assert "training mode" in model.explain_executor()
        model.eval()
        handle = model.blocks[0].layer.mlp.register_forward_hook(lambda *a: None)
        assert "forward hooks" in model.explain_executor()
        handle.remove()
        assert model.explain_executor().startswith("the lean CPU step")
    with pytest.raises(ValueError, match="ARMT_VIZ_FORWARD must be 'auto' or 'hf'"):
        monkeypatch.setenv(steps.FORWARD_ENV, "lean")
        model.explain_executor()


def test_the_cached_lean_step_follows_weight_edits(monkeypatch):
    monkeypatch.delenv(steps.FORWARD_ENV, raising=False)
    model = tiny_model()
    ids = torch.randint(0, model.vocab_size, (1, 2 * model.config.segment_size))
    with torch.no_grad():
        before = model(ids).logits
        model.blocks[0].layer.mlp.c_fc.weight.mul_(1.5)  # in place: the packed copy must be rebuilt
        after = model(ids).logits
        monkeypatch.setenv(steps.FORWARD_ENV, "hf")
        want = model(ids).logits
    assert _rel(after, before) > 1e-4
    assert _rel(after, want) <= LEAN_REL
