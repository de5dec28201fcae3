"""CPU kernels of the lean step, chosen per CPU at run time: linear maps and small causal attention.

Two linear backends compute y = x W^T + b (optionally fused with tanh-GELU or a residual add):

* ``onednn``: oneDNN inner products over a weight prepacked once (`mkldnn._linear_pointwise`), GELU and
  residual fused as post-ops. On AVX-512 CPUs its kernels beat MKL's (measured ~2x on a Zen 5 core).
* ``mkl``: `torch.addmm` over a pre-transposed contiguous weight [in, out] (MKL sgemm), the GELU and the
  residual as one extra elementwise pass each. On AVX2-only CPUs oneDNN has no such advantage and its
  per-call overhead makes it slower for the lean step's small products (measured on a Zen 3 core:
  addmm 52-83 GFLOP/s vs oneDNN 30-56 for [144, 128] x [128, 64..512]).

``auto`` picks oneDNN when the CPU (as seen by ATen, `torch.backends.cpu.get_cpu_capability()`) has
AVX-512, oneDNN is built in and `ONEDNN_MAX_CPU_ISA` does not cap it below AVX-512; else MKL. Set
``ARMT_VIZ_CPU_KERNELS=onednn|mkl|auto`` to force a backend (CI runs both). `choose()` returns the choice
and a sentence saying why; `LeanStep.kernels` keeps it for inspection.

Attention: ``sdpa`` (`scaled_dot_product_attention(is_causal=True)`, flash attention for the CPU) or
``explicit`` (scores = q k^T with an additive causal mask by one `baddbmm`, softmax, one `bmm`), which
avoids the flash kernel's blocking overhead when a segment has few tokens. Same math, other summation
order (differences ~1e-7 relative in float32).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ENV", "KernelChoice", "choose", "Linear", "matmul_t", "CausalAttention", "EXPLICIT_ATTENTION_MAX_TOKENS"]

ENV = "ARMT_VIZ_CPU_KERNELS"
_BACKENDS = ("auto", "onednn", "mkl")
# segment + memory tokens up to which the explicit attention is used: 0, since the flash kernel measured faster
# even at 144 tokens x 4 heads x 32 dims on a Zen 3 core (231 vs 273 us thread time, attention only)
EXPLICIT_ATTENTION_MAX_TOKENS = 0
_ISA_BELOW_AVX512 = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2")


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise") \
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


@dataclass(frozen=True)
class KernelChoice:
    linear: str  # "onednn" | "mkl"
    attention: str  # "explicit" | "sdpa"
    reason: str  # why, one sentence per choice

    def __str__(self) -> str:
        return f"linear={self.linear}, attention={self.attention}: {self.reason}"


def choose(tokens: int, requested: str | None = None, explicit_attention_max_tokens: int | None = None) -> KernelChoice:
    """The kernels for a step of `tokens` rows (segment + memory tokens). `requested` (default: the
    ARMT_VIZ_CPU_KERNELS environment variable, else "auto") forces the linear backend."""
    if explicit_attention_max_tokens is None:
        explicit_attention_max_tokens = EXPLICIT_ATTENTION_MAX_TOKENS
    req = (requested if requested is not None else os.environ.get(ENV, "auto")).strip().lower() or "auto"
    forced = "forced by " + (f"{ENV}={req}" if requested is None else f"kernels={req!r}")
    if req not in _BACKENDS:
        raise ValueError(f"{ENV} must be one of {', '.join(_BACKENDS)}, got {req!r}; unset it to let the CPU decide")
    cap = torch.backends.cpu.get_cpu_capability()
    if req == "onednn":
        if not onednn_available():
            raise ValueError(f"{ENV}=onednn but this torch build has no usable oneDNN (mkldnn) linear ops; "
                             f"use {ENV}=mkl or auto")
        linear, why = "onednn", forced
    elif req == "mkl":
        linear, why = "mkl", forced
    else:
        isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().lower()
        if not onednn_available():
            linear, why = "mkl", "this torch build has no oneDNN linear ops"
        elif "AVX512" not in cap:
            linear, why = "mkl", f"the CPU's best ATen capability is {cap} (no AVX-512), where MKL's sgemm beats oneDNN"
        elif isa in _ISA_BELOW_AVX512:
            linear, why = "mkl", f"ONEDNN_MAX_CPU_ISA={isa} caps oneDNN below AVX-512"
        else:
            linear, why = "onednn", f"the CPU has {cap}, where oneDNN's prepacked kernels beat MKL"
    if tokens <= explicit_attention_max_tokens:
        attention, awhy = "explicit", f"{tokens} tokens <= {explicit_attention_max_tokens}: explicit masked softmax"
    else:
        attention, awhy = "sdpa", "flash attention (scaled_dot_product_attention)"
    return KernelChoice(linear, attention, f"{why}; {awhy}")


class Linear:
    """y = x W^T + b for 2-D x, optionally fused with tanh-GELU (`gelu=True`) or a residual (`add=`).

    backend "onednn": a weight packed once for oneDNN; "mkl": `addmm` over W^T stored contiguous."""

    __slots__ = ("w", "b", "plain", "wt", "backend")

    def __init__(self, weight_out_in: Tensor, bias: Tensor | None, rows_hint: int, backend: str):
        w = weight_out_in.detach().contiguous()
        self.plain = w
        self.b = None if bias is None else bias.detach().contiguous()
        self.backend = backend
        self.w = torch.ops.mkldnn._reorder_linear_weight(w, rows_hint) if backend == "onednn" else None
        self.wt = w.t().contiguous() if backend == "mkl" else None

    def __call__(self, x: Tensor, gelu: bool = False, add: Tensor | None = None) -> Tensor:
        if self.w is not None:
            if add is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, add, self.w, self.b, "add")
            if gelu:
                return torch.ops.mkldnn._linear_pointwise(x, self.w, self.b, "gelu", [], "tanh")
            return torch.ops.mkldnn._linear_pointwise(x, self.w, self.b, "none", [], "")
        if self.wt is not None:
            if add is not None:  # add + (x W^T + b), as the block computes it
                y = torch.mm(x, self.wt) if self.b is None else torch.addmm(self.b, x, self.wt)
                return y.add_(add)
            y = torch.mm(x, self.wt) if self.b is None else torch.addmm(self.b, x, self.wt)
        else:
            y = F.linear(x, self.plain, self.b)
            if add is not None:
                return add + y
        return gelu_tanh_(y) if gelu else y


_C1 = 2.0 * math.sqrt(2.0 / math.pi)
_C3 = _C1 * 0.044715


_C1_TENSORS: dict = {}


def gelu_tanh_(y: Tensor) -> Tensor:
    """tanh-GELU 0.5 y (1 + tanh(c (y + 0.044715 y^3))), in place, as y sigmoid(2 c (y + 0.044715 y^3)): the
    same function (1 + tanh(u) = 2 sigmoid(2u)); ATen's sigmoid is about 3x faster than its tanh on AVX2,
    and `F.gelu(approximate="tanh")` about 2x slower than these four passes (differences ~1e-8 relative):
    u = (c1 + c3 y^2) y by one addcmul and one multiply, then sigmoid and the product with y, both in place."""
    c1 = _C1_TENSORS.get(y.dtype)
    if c1 is None:
        c1 = _C1_TENSORS[y.dtype] = torch.tensor(_C1, dtype=y.dtype)
    u = torch.addcmul(c1, y, y, value=_C3).mul_(y)
    return y.mul_(u.sigmoid_())


def matmul_t(x: Tensor, w_t: Tensor, backend: str) -> Tensor:
    """x [rows, k] @ w_t [k, n] for a right factor that changes every call (the memory)."""
    if backend == "onednn" and x.shape[0] >= 64:
        return torch.ops.mkldnn._linear_pointwise(x, w_t.t(), None, "none", [], "")
    return torch.mm(x, w_t)


class CausalAttention:
    """softmax(q k^T * scale + causal mask) v per head, for q, k, v [B, H, T, dh] (any strides).

    "explicit": one baddbmm into the additive mask (cached per T), softmax, one bmm; "sdpa": flash attention.
    Returns [B, T, H * dh] (the layout of the output projection's input)."""

    def __init__(self, kind: str):
        if kind not in ("explicit", "sdpa"):
            raise ValueError(f"attention kind must be 'explicit' or 'sdpa', got {kind!r}")
        self.kind = kind
        self._masks: dict[int, Tensor] = {}

    def mask(self, T: int, dtype: torch.dtype) -> Tensor:
        m = self._masks.get(T)
        if m is None or m.dtype != dtype:
            m = self._masks[T] = torch.full((T, T), float("-inf"), dtype=dtype).triu_(1)
        return m

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        B, H, T, dh = q.shape
        if self.kind == "sdpa":
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
            return att.transpose(1, 2).reshape(B, T, H * dh)
        qb, kb, vb = (t.reshape(B * H, T, dh) for t in (q, k, v))
        s = torch.baddbmm(self.mask(T, q.dtype), qb, kb.transpose(1, 2), alpha=scale)
        p = torch.softmax(s, dim=-1)
        out = torch.bmm(p, vb)  # [B*H, T, dh]
        return out.view(B, H, T, dh).transpose(1, 2).reshape(B, T, H * dh)
