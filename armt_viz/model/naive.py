"""Loop-over-tokens reference of `memory.py` (test oracle only; slow on purpose).

Every quantity is computed one (batch, token, head) at a time from the equations of
ARMT_SPEC.md §1.2 and §1.5, without einsum, so a shape or axis mistake in the fast
path cannot be shared by the reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["naive_dpfp", "naive_read", "naive_write"]


def naive_dpfp(x: Tensor, nu: int = 3) -> Tensor:
    """DPFP of a single vector x [d] -> [2*nu*d], element by element."""
    d = x.shape[0]
    xp = [max(float(x[i]), 0.0) for i in range(d)] + [max(-float(x[i]), 0.0) for i in range(d)]
    n = len(xp)
    out = []
    for j in range(1, nu + 1):
        for i in range(n):
            out.append(xp[i] * xp[(i - j) % n])  # roll by +j: element i sees element i-j
    return torch.tensor(out, dtype=torch.float64)


def _features(x: Tensor, heads: int, nu: int, normalize: bool) -> list[Tensor]:
    per = x.shape[0] // heads
    feats = []
    for h in range(heads):
        f = naive_dpfp(x[h * per:(h + 1) * per], nu)
        if normalize:
            f = f / max(float(f.norm()), 1e-12)
        feats.append(f)
    return feats


def naive_read(q_proj, assoc, normalizer, *, heads=1, nu=3, normalize=False, eps=1e-5, use_denom=True):
    """q_proj [batch, tokens, d_mem] (pre-feature); assoc [batch, heads, F, D]; normalizer [batch, heads, F].

    Returns read_out [batch, tokens, heads*D] in float64.
    """
    B, T, _ = q_proj.shape
    D = assoc.shape[-1]
    out = torch.zeros(B, T, heads * D, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            feats = _features(q_proj[b, t].double(), heads, nu, normalize)
            for h in range(heads):
                q = feats[h]
                num = torch.zeros(D, dtype=torch.float64)
                for f in range(q.shape[0]):
                    num += q[f] * assoc[b, h, f].double()
                den = float((normalizer[b, h].double() * q).sum()) + eps if use_denom else 1.0
                out[b, t, h * D:(h + 1) * D] = num / den
    return out


def naive_write(k_proj, value, gate, assoc, normalizer, *, first, heads=1, nu=3, normalize=False,
                correction=True, eps=1e-5, use_denom=True, gamma_eps=True, delta_rule=True):
    """One segment's write, memory token by memory token (all against the pre-write state).

    k_proj [batch, mem, d_mem]; value [batch, mem, heads*D]; gate [batch, mem, 1 or heads*D].
    Returns (assoc, normalizer) after the write, float64.
    """
    B, M, _ = k_proj.shape
    A0 = assoc.double().expand(B, *assoc.shape[1:]).clone()
    z0 = normalizer.double().expand(B, *normalizer.shape[1:]).clone()
    A, z = A0.clone(), z0.clone()
    D = A.shape[-1]
    for b in range(B):
        for m in range(M):
            feats = _features(k_proj[b, m].double(), heads, nu, normalize)
            for h in range(heads):
                k = feats[h]
                v = value[b, m, h * D:(h + 1) * D].double()
                g = gate[b, m].double()
                beta = g[0] if g.shape[0] == 1 else (g[h] if g.shape[0] == heads and heads != value.shape[-1] else g[h * D:(h + 1) * D])
                if first:
                    vbar = torch.zeros(D, dtype=torch.float64)
                    gamma = 1.0
                else:
                    num = sum(k[f] * A0[b, h, f] for f in range(k.shape[0]))
                    if use_denom:
                        den = float((z0[b, h] * k).sum()) + eps
                        vbar = num / den
                        knorm = float((k * k).sum()) + (eps if gamma_eps else 0.0)
                        gamma = min(max(1 - den / knorm, 0.0), 1.0) if correction else 1.0
                    else:
                        vbar, gamma = num, 1.0
                    if not delta_rule:  # the control: u = beta v (v-bar not subtracted)
                        vbar = torch.zeros(D, dtype=torch.float64)
                for f in range(k.shape[0]):
                    A[b, h, f] += k[f] * beta * (v - vbar)
                    if use_denom:
                        z[b, h, f] += gamma * k[f]
    return A, z
