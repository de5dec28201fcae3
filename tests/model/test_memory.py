"""Fast memory math (memory.py) against the loop reference (naive.py): outputs, state, gradients."""

import itertools

import pytest
import torch

from armt_viz.model.memory import dpfp, feature_map, read_memory, write_memory
from armt_viz.model.naive import naive_dpfp, naive_read, naive_write
from armt_viz.testing import stable_seed

TOL = dict(rtol=1e-5, atol=1e-6)  # float32 fast path vs float64 loops

GRID = [
    dict(heads=h, normalize=n, correction=c, use_denom=u, gamma_eps=g, gating=gt, first=f)
    for h, n, c, u, g, gt, f in itertools.product([1, 2], [False, True], [True, False], [True, False],
                                                   [True, False], [False, True], [True, False])
    if not (not u and (not c or not g))  # without denominators, correction/gamma_eps do not enter
]


def _ids(p):
    return "-".join(f"{k}={int(v)}" for k, v in p.items())


def test_dpfp_matches_loops():
    x = torch.randn(7)
    torch.testing.assert_close(dpfp(x).double(), naive_dpfp(x), **TOL)
    assert (dpfp(torch.randn(3, 5)) >= 0).all()
    assert dpfp(torch.randn(4, 6), nu=3).shape == (4, 36)


@pytest.mark.parametrize("p", GRID, ids=_ids)
def test_write_then_read_matches_naive(p):
    torch.manual_seed(stable_seed(_ids(p), modulo=1000))
    B, M, T, dmem, D, H = 2, 3, 5, 8, 6, p["heads"]
    F_ = 6 * dmem // H
    A = torch.randn(B, H, F_, D // H) * 0.1
    z = torch.rand(B, H, F_)
    kp, qp = torch.randn(B, M, dmem), torch.randn(B, T, dmem)
    v = torch.randn(B, M, D)
    gate = torch.rand(B, M, D if p["gating"] else H)
    kf = feature_map(kp, H, 3, p["normalize"])
    res = write_memory(kf, v, gate, A, z, first=p["first"], correction=p["correction"],
                       use_denom=p["use_denom"], gamma_eps=p["gamma_eps"])
    A_ref, z_ref = naive_write(kp, v, gate, A, z, first=p["first"], heads=H, normalize=p["normalize"],
                               correction=p["correction"], use_denom=p["use_denom"], gamma_eps=p["gamma_eps"])
    torch.testing.assert_close(res.assoc.double(), A_ref, **TOL)
    if p["use_denom"]:
        torch.testing.assert_close(res.normalizer.double(), z_ref, **TOL)
    r, _ = read_memory(feature_map(qp, H, 3, p["normalize"]), res.assoc, res.normalizer, use_denom=p["use_denom"])
    r_ref = naive_read(qp, res.assoc, res.normalizer, heads=H, normalize=p["normalize"], use_denom=p["use_denom"])
    torch.testing.assert_close(r.double(), r_ref, **TOL)


@pytest.mark.parametrize("heads,gating,use_denom", [(1, False, True), (2, True, True), (1, True, False)])
def test_no_delta_rule_matches_naive_and_adds_beta_v(heads, gating, use_denom):
    """ARMTConfig.delta_rule=False (the control): u = beta v, v-bar not subtracted; gamma and z unchanged."""
    torch.manual_seed(3)
    B, M, dmem, D = 2, 3, 8, 6
    F_ = 6 * dmem // heads
    A, z = torch.randn(B, heads, F_, D // heads) * 0.1, torch.rand(B, heads, F_)
    kp, v = torch.randn(B, M, dmem), torch.randn(B, M, D)
    gate = torch.rand(B, M, D if gating else heads)
    kf = feature_map(kp, heads, 3, False)
    res = write_memory(kf, v, gate, A, z, first=False, use_denom=use_denom, delta_rule=False)
    A_ref, z_ref = naive_write(kp, v, gate, A, z, first=False, heads=heads, use_denom=use_denom, delta_rule=False)
    torch.testing.assert_close(res.assoc.double(), A_ref, **TOL)
    if use_denom:
        torch.testing.assert_close(res.normalizer.double(), z_ref, **TOL)
    beta = gate if gating else gate.repeat_interleave(D // heads, -1)
    torch.testing.assert_close(res.delta, beta * v, **TOL)  # u = beta v
    assert (res.prev_value == 0).all()
    with_rule = write_memory(kf, v, gate, A, z, first=False, use_denom=use_denom)
    assert (with_rule.assoc - res.assoc).abs().max() > 1e-3  # the flag changes the write
    torch.testing.assert_close(with_rule.normalizer, res.normalizer)  # ... but not z


def test_rewrite_same_key_returns_new_value():
    """The correction's purpose (ARMT_SPEC §1.5): rewriting a key with beta=1 replaces its value."""
    k = torch.randn(1, 1, 4)
    kf = feature_map(k)
    A, z = torch.zeros(1, 1, 24, 3), torch.zeros(1, 1, 24)
    one = torch.ones(1, 1, 1)
    v1, v2 = torch.tensor([[[1.0, 0, 0]]]), torch.tensor([[[0, 1.0, 0]]])
    w1 = write_memory(kf, v1, one, A, z, first=True)
    w2 = write_memory(kf, v2, one, w1.assoc, w1.normalizer, first=False)
    r, _ = read_memory(kf, w2.assoc, w2.normalizer)
    torch.testing.assert_close(r[0, 0], v2[0, 0], rtol=0, atol=1e-4)
    assert w2.correction.item() < 1e-4  # z not incremented for a known key
    w2_nc = write_memory(kf, v2, one, w1.assoc, w1.normalizer, first=False, correction=False)
    r_nc, _ = read_memory(kf, w2_nc.assoc, w2_nc.normalizer)
    torch.testing.assert_close(r_nc[0, 0], v2[0, 0] / 2, rtol=0, atol=1e-4)  # without gamma, z doubles


def test_gradients_match_between_fast_and_naive_paths():
    torch.manual_seed(0)
    B, M, dmem, D = 1, 2, 4, 3
    kp = torch.randn(B, M, dmem, dtype=torch.float64, requires_grad=True)
    v = torch.randn(B, M, D, dtype=torch.float64, requires_grad=True)
    A = torch.randn(B, 1, 24, D, dtype=torch.float64) * 0.1
    z = torch.rand(B, 1, 24, dtype=torch.float64)
    gate = torch.full((B, M, 1), 0.7, dtype=torch.float64)
    res = write_memory(feature_map(kp), v, gate, A, z, first=False)
    g_fast = torch.autograd.grad(res.assoc.sum() + res.normalizer.pow(2).sum(), [kp, v])
    A_ref, z_ref = naive_write_autograd(kp, v, gate, A, z)
    g_ref = torch.autograd.grad(A_ref.sum() + z_ref.pow(2).sum(), [kp, v])
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def naive_write_autograd(kp, v, gate, A, z, eps=1e-5):
    """Differentiable per-token loop (gamma detached, as in the official code)."""
    A_new, z_new = A.clone(), z.clone()
    for m in range(kp.shape[1]):
        k = dpfp(kp[0, m])
        den = (z[0, 0] * k).sum() + eps
        vbar = (k[:, None] * A[0, 0]).sum(0) / den
        gamma = torch.clamp(1 - den / ((k * k).sum() + eps), 0, 1).detach()
        A_new = A_new + (k[:, None] * (gate[0, m] * (v[0, m] - vbar))[None, :])[None, None]
        z_new = z_new + (gamma * k)[None, None]
    return A_new, z_new


def test_compiled_kernels_match_naive_and_eager_model():
    """The torch.compile'd memory math (GPU fast paths, `record(fast="compile")`) equals the loops and the
    eager functions to rounding; checked here with inductor's CPU code generation."""
    from armt_viz.model.memory import EAGER_KERNELS, compiled_kernels
    from armt_viz.testing import tiny_model

    kn = compiled_kernels()
    assert kn is compiled_kernels() and kn != EAGER_KERNELS
    torch.manual_seed(0)
    B, M, dmem, D = 2, 3, 8, 6
    A, z = torch.randn(B, 1, 6 * dmem, D) * 0.1, torch.rand(B, 1, 6 * dmem)
    kp, v, gate = torch.randn(B, M, dmem), torch.randn(B, M, D), torch.rand(B, M, 1)
    res = kn.write_memory(kn.feature_map(kp, 1, 3, False), v, gate, A, z, first=False)
    A_ref, z_ref = naive_write(kp, v, gate, A, z, first=False, heads=1, normalize=False, correction=True,
                               use_denom=True, gamma_eps=True)
    torch.testing.assert_close(res.assoc.double(), A_ref, **TOL)
    torch.testing.assert_close(res.normalizer.double(), z_ref, **TOL)

    model = tiny_model(seed=1).eval()
    ids = torch.randint(0, model.vocab_size, (1, 5 * model.config.segment_size))
    with torch.no_grad():
        eager = [o.logits for o in model.stream([ids])]
        with model.memory_kernels(kn):
            outs = list(model.stream([ids]))
    for e, o in zip(eager, outs):
        torch.testing.assert_close(o.logits, e, rtol=1e-5, atol=1e-5)
    assert model._slot.kernels is EAGER_KERNELS  # the context restores the eager math
