"""The GPT-2 decoder block once, as a function over weights stacked on a leading `layer` axis.

Both fast executors run the backbone's blocks through `gpt2_block`:

* the lean CPU step (`lean.py`) calls it with one cell (one layer on one segment) per call, and
  `PackedLinear` products: oneDNN inner products over weights prepacked once, with the GELU fused into
  the MLP's first product and the residual add into each block's output projection;
* diagonal batching (`diagonal.py`) calls it with a stack of cells (layers lo..hi, each on its own
  segment) and `StackedLinear` products: one `baddbmm` per sub-layer against the stacked weights.

    x        [cell, batch*tokens, hidden]    cell i is layer layers.start + i
    returns  the block output, same shape: x + attn(ln_1(x)); then + mlp(ln_2(.)) (pre-LN GPT2Block)

The four products of a block are named "qkv" (c_attn), "attn_out" (attn.c_proj), "mlp_in" (mlp.c_fc, with
the activation) and "mlp_out" (mlp.c_proj). A faster kernel is a new products class with the same call,
`linear(name, x, layers, act=False, add=None)`; a Llama/NeoX block is one more function of this shape.
Attention is `scaled_dot_product_attention(is_causal=True)` (no padding: the fast paths take none), or the
products object's `attention(q, k, v, scale)` when it has one (the lean step's `cpu_kernels.CausalAttention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["GPT2Weights", "StackedLinear", "gpt2_block", "gpt2_cell", "TANH_GELU"]

TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))
_PRODUCTS = {"qkv": ("attn", "c_attn"), "attn_out": ("attn", "c_proj"), "mlp_in": ("mlp", "c_fc"),
             "mlp_out": ("mlp", "c_proj")}


class GPT2Weights:
    """The GPT-2 blocks of an ARMT backbone as stacked tensors (a snapshot of the current weights).

    weight[name] [layer, in, out] (Conv1D layout, x @ W + b) and bias[name] [layer, 1, out] per product;
    ln1/ln2 weight and bias [layer, 1, hidden]; scales: the attention scale of every layer (Python floats:
    head_dim**-0.5, divided by layer+1 with scale_attn_by_inverse_layer_idx).
    """

    def __init__(self, model):
        blocks = [b.layer for b in model.blocks]
        hf = model.backbone.config

        def stack(get):
            with torch.no_grad():
                return torch.stack([get(b).detach() for b in blocks]).contiguous()

        self.n_layers, self.d_model = len(blocks), model.d_model
        self.heads = blocks[0].attn.num_heads
        self.head_dim = self.d_model // self.heads
        self.activation = hf.activation_function
        self.ln_eps = hf.layer_norm_epsilon
        self.weight = {k: stack(lambda b, m=m, p=p: getattr(getattr(b, m), p).weight) for k, (m, p) in _PRODUCTS.items()}
        self.bias = {k: stack(lambda b, m=m, p=p: getattr(getattr(b, m), p).bias).unsqueeze(1)
                     for k, (m, p) in _PRODUCTS.items()}
        self.ln1 = (stack(lambda b: b.ln_1.weight).unsqueeze(1), stack(lambda b: b.ln_1.bias).unsqueeze(1))
        self.ln2 = (stack(lambda b: b.ln_2.weight).unsqueeze(1), stack(lambda b: b.ln_2.bias).unsqueeze(1))
        self.scales = [float(b.attn.scaling) for b in blocks]
        w = self.weight["qkv"]
        self.scale_tensor = torch.tensor(self.scales, dtype=w.dtype, device=w.device)

    def act(self, y: Tensor) -> Tensor:
        """The MLP activation (tanh-GELU variants as F.gelu(approximate='tanh'))."""
        if self.activation in TANH_GELU:
            return F.gelu(y, approximate="tanh")
        return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu, "swish": F.silu}[self.activation](y)


class StackedLinear:
    """Products of a stack of cells: one `baddbmm` against the stacked weights (diagonal batching)."""

    def __init__(self, w: GPT2Weights):
        self.w = w

    def __call__(self, name: str, x: Tensor, layers: slice, act: bool = False, add: Tensor | None = None) -> Tensor:
        y = torch.baddbmm(self.w.bias[name][layers], x, self.w.weight[name][layers])
        if act:
            y = self.w.act(y)
        return y if add is None else y + add


def _layer_norm(x: Tensor, wb: tuple[Tensor, Tensor], layers: slice, eps: float) -> Tensor:
    weight, bias = wb[0][layers], wb[1][layers]
    if x.shape[0] == 1:  # one cell: the fused affine
        return F.layer_norm(x, x.shape[-1:], weight[0, 0], bias[0, 0], eps)
    return F.layer_norm(x, x.shape[-1:], eps=eps) * weight + bias


def gpt2_block(x: Tensor, w: GPT2Weights, layers: slice, batch: int, tokens: int, linear) -> Tensor:
    """GPT2Block (pre-LN attention, pre-LN MLP) of layers `layers` on x [cell, batch*tokens, hidden]."""
    n = x.shape[0]
    cells = getattr(linear, "cells", None)  # products with per-layer cells: one cell runs `gpt2_cell`
    if cells is not None and n == 1:
        return gpt2_cell(x[0], cells[layers.start], batch, tokens).unsqueeze(0)
    d, H, hd = w.d_model, w.heads, w.head_dim
    a = _layer_norm(x, w.ln1, layers, w.ln_eps)
    qkv = linear("qkv", a, layers)  # [cell, batch*tokens, 3*hidden]
    q, k, v = (t.reshape(n * batch, tokens, H, hd).transpose(1, 2) for t in qkv.split(d, dim=-1))
    scales = w.scales[layers]
    attention = getattr(linear, "attention", None)  # a products class may bring its own causal attention kernel
    if attention is not None and len(set(scales)) == 1:
        attn = attention(q, k, v, scales[0]).reshape(n, batch * tokens, d)  # returns [cell*batch, tokens, hidden]
    else:
        if len(set(scales)) == 1:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scales[0])
        else:  # scales differ per layer: fold them into q (expand: no data-dependent size, safe in a CUDA graph)
            scale = w.scale_tensor[layers].to(q.dtype).view(n, 1).expand(n, batch).reshape(n * batch, 1, 1, 1)
            attn = F.scaled_dot_product_attention(q * scale, k, v, is_causal=True, scale=1.0)
        attn = attn.transpose(1, 2).reshape(n, batch * tokens, d)
    h = linear("attn_out", attn, layers, add=x)
    a = _layer_norm(h, w.ln2, layers, w.ln_eps)
    return linear("mlp_out", linear("mlp_in", a, layers, act=True), layers, add=h)


def gpt2_cell(x: Tensor, cell, batch: int, tokens: int) -> Tensor:
    """`gpt2_block` for one cell (one layer), 2-D: x [batch*tokens, hidden] -> the block output, same shape.

    The same math as `gpt2_block` in as few tensor calls as it takes (the lean CPU step runs it 4 x 64 times per
    64 segments, where each call's Python and dispatch cost counts): `cell` holds one layer's parameters and
    products (`lean._Cell`): ln1 and ln2 as (weight, bias), ln_eps, heads, head_dim, scale, the products
    qkv(a), attn_out(attn, add=), mlp_in(a) (with the activation), mlp_out(m, add=), and attention(q, k, v, scale)
    for q, k, v [batch, heads, tokens, head_dim] returning [batch, tokens, hidden]."""
    d = x.shape[-1]
    a = F.layer_norm(x, (d,), cell.ln1[0], cell.ln1[1], cell.ln_eps)
    q, k, v = cell.qkv(a).view(batch, tokens, 3, cell.heads, cell.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    h = cell.attn_out(cell.attention(q, k, v, cell.scale).view(batch * tokens, d), add=x)
    a = F.layer_norm(h, (d,), cell.ln2[0], cell.ln2[1], cell.ln_eps)
    return cell.mlp_out(cell.mlp_in(a), add=h)
