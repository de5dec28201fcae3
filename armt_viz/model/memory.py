"""The ARMT memory math as pure tensor functions (ARMT_SPEC.md §1.2, §1.5, §1.13).

Shapes use words, not letters (penzai style):

    batch, tokens      leading axes of a read; `mem` = memory tokens of a write
    heads              memory heads (1 in the paper-era code)
    key_feature        DPFP features per head, 2*nu*d_mem/heads
    hidden             model width per head, d/heads

State of one layer: `assoc` [batch, heads, key_feature, hidden] (A, stored as in the
official code: read as A^T phi(q)) and `normalizer` [batch, heads, key_feature] (z).

Nothing here keeps state: every function takes the memory and returns new tensors.
`naive.py` re-derives each function with Python loops; tests compare the two.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["dpfp", "feature_map", "split_heads", "merge_heads", "read_memory", "write_memory", "WriteResult",
           "Kernels", "EAGER_KERNELS", "compiled_kernels"]


def dpfp(x: Tensor, nu: int = 3) -> Tensor:
    """DPFP-nu feature map (Schlag et al. 2021) over the last axis: d -> 2*nu*d, non-negative.

    x' = [relu(x), relu(-x)];  phi(x) = concat_{j=1..nu} x' * roll(x', j).
    """
    xp = torch.cat([F.relu(x), F.relu(-x)], dim=-1)
    return torch.cat([xp * torch.roll(xp, shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[..., d] -> [..., heads, d/heads]."""
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


def merge_heads(x: Tensor) -> Tensor:
    """[..., heads, d/heads] -> [..., d]."""
    return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def feature_map(x: Tensor, heads: int = 1, nu: int = 3, normalize: bool = False) -> Tensor:
    """Projected query/key [..., d_mem] -> features [..., heads, 2*nu*d_mem/heads].

    `normalize` is the later-code variant: L2-normalise each head's DPFP features.
    """
    phi = dpfp(split_heads(x, heads), nu)
    if normalize:
        phi = F.normalize(phi, dim=-1)
    return phi


def read_memory(
    query_features: Tensor, assoc: Tensor, normalizer: Tensor, eps: float = 1e-5, use_denom: bool = True
) -> tuple[Tensor, Tensor]:
    """Associative read r = A^T q / (z.q + eps) for every token.

    query_features: [batch, tokens, heads, key_feature]
    assoc:          [batch, heads, key_feature, hidden]
    normalizer:     [batch, heads, key_feature]
    returns (read_out [batch, tokens, heads*hidden], denominator [batch, tokens, heads]);
    with use_denom=False the denominator is all ones and r = A^T q.
    """
    q = query_features.to(assoc.dtype)
    num = torch.einsum("bthf,bhfd->bthd", q, assoc)
    if use_denom:
        den = torch.einsum("bthf,bhf->bth", q, normalizer) + eps
    else:
        den = torch.ones(q.shape[:-1], dtype=q.dtype, device=q.device)
    return merge_heads(num / den.unsqueeze(-1)), den


class WriteResult(NamedTuple):
    assoc: Tensor  # [batch, heads, key_feature, hidden] after the write
    normalizer: Tensor  # [batch, heads, key_feature] after the write
    prev_value: Tensor  # v-bar [batch, mem, heads*hidden]
    correction: Tensor  # gamma [batch, mem, heads]
    delta: Tensor  # u = beta*(v - v-bar) [batch, mem, heads*hidden]


def write_memory(
    key_features: Tensor,
    value: Tensor,
    gate: Tensor,
    assoc: Tensor,
    normalizer: Tensor,
    *,
    first: bool,
    correction: bool = True,
    eps: float = 1e-5,
    use_denom: bool = True,
    gamma_eps: bool = True,
    delta_rule: bool = True,
) -> WriteResult:
    """Delta-rule write of all memory tokens at once (ARMT_SPEC §1.5 `update_mem`).

    key_features: [batch, mem, heads, key_feature]  phi(W_mk m)
    value:        [batch, mem, heads*hidden]        W_mv m
    gate:         [batch, mem, 1 | heads | heads*hidden]  beta = sigmoid(W_mb m)
    assoc, normalizer: state before the write (broadcastable over batch).

    First segment: v-bar = 0, gamma = 1. Otherwise
        den = z.k + eps;  v-bar = A^T k / den;
        gamma = clip(1 - den / (|k|^2 + eps), 0, 1), detached  (1 when correction is off)
    A += sum_j k_j (x) beta_j (v_j - v-bar_j);   z += sum_j gamma_j k_j
    delta_rule=False (the control of ARMTConfig.delta_rule): v-bar = 0, so u = beta v; gamma and z as above.
    """
    k = key_features.to(assoc.dtype)
    heads = k.shape[-2]
    v = split_heads(value.to(assoc.dtype), heads)
    if first:
        vbar = torch.zeros_like(v)
        gamma = torch.ones(k.shape[:-1], dtype=k.dtype, device=k.device)
    else:
        num = torch.einsum("bmhf,bhfd->bmhd", k, assoc)
        if use_denom:
            den = torch.einsum("bmhf,bhf->bmh", k, normalizer) + eps
            vbar = num / den.unsqueeze(-1)
            if correction:
                knorm = (k * k).sum(-1) + (eps if gamma_eps else 0.0)
                gamma = torch.clamp(1 - den / knorm, 0, 1).detach()
            else:
                gamma = torch.ones_like(den)
        else:
            vbar = num
            gamma = torch.ones(k.shape[:-1], dtype=k.dtype, device=k.device)
    if not delta_rule:
        vbar = torch.zeros_like(v)
    g = gate.to(assoc.dtype)
    # one beta per token (v1), per token and head (later code), or per dimension (gating)
    g = g.unsqueeze(-1) if g.shape[-1] in (1, heads) and g.shape[-1] != value.shape[-1] else split_heads(g, heads)
    delta = g * (v - vbar)  # [batch, mem, heads, hidden]
    new_assoc = assoc + torch.einsum("bmhf,bmhd->bhfd", k, delta)
    if use_denom:
        new_norm = normalizer + torch.einsum("bmh,bmhf->bhf", gamma, k)
    else:
        new_norm = normalizer.expand(new_assoc.shape[:-1]).clone()
    return WriteResult(new_assoc, new_norm, merge_heads(vbar), gamma, merge_heads(delta))


class Kernels(NamedTuple):
    """The three memory functions a step calls; swapped as a set (eager or compiled)."""

    feature_map: Callable
    read_memory: Callable
    write_memory: Callable


EAGER_KERNELS = Kernels(feature_map, read_memory, write_memory)


@functools.cache
def compiled_kernels() -> Kernels:
    """`torch.compile`d versions of the memory functions (fused elementwise work, fewer kernels).

    Same math; inductor may reorder floating-point sums, so results match the eager functions to
    rounding (tested <= 1e-5 relative in float32). Compiled lazily on first call, once per shape.
    """
    return Kernels(*(torch.compile(f, dynamic=False, fullgraph=True) for f in EAGER_KERNELS))
