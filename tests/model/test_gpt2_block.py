"""The one functional GPT-2 block (model/gpt2_block.py) against the HF GPT2Block, with both products (stacked
baddbmm for diagonal batching, packed per-layer linears for the lean step, with each CPU backend)."""

from __future__ import annotations

import pytest
import torch

from armt_viz.model import cpu_kernels
from armt_viz.model.gpt2_block import GPT2Weights, StackedLinear, gpt2_block
from armt_viz.model.lean import _PackedLinear
from armt_viz.testing import assert_close, tiny_model


def _hf_block(model, layer: int, x):
    out = model.blocks[layer].layer(x)
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("variant", [{}, dict(scale_attn_by_inverse_layer_idx=True), dict(activation_function="relu")])
@pytest.mark.parametrize("products", ["stacked", "packed-mkl", "packed-onednn", "packed-mkl-explicit-attention"])
def test_gpt2_block_equals_the_hf_block(variant, products):
    model = tiny_model()
    for k, v in variant.items():
        setattr(model.backbone.config, k, v)
        for b in model.blocks:
            if k == "scale_attn_by_inverse_layer_idx":
                b.layer.attn.scale_attn_by_inverse_layer_idx = v
                b.layer.attn.scaling = (b.layer.attn.head_dim ** -0.5) / (b.layer.attn.layer_idx + 1)
            if k == "activation_function":
                from transformers.activations import ACT2FN
                b.layer.mlp.act = ACT2FN[v]
    B, T, d = 2, 7, model.d_model
    x = torch.randn(model.n_layers, B, T, d)
    w = GPT2Weights(model)
    if products == "stacked":
        linear = StackedLinear(w)
    else:  # the lean step's products, each CPU backend (cpu_kernels), optionally the explicit attention kernel
        backend = products.split("-")[1]
        if backend == "onednn" and not cpu_kernels.onednn_available():
            pytest.fail("this torch build has no oneDNN linear ops: the oneDNN products cannot be tested here")
        linear = _PackedLinear(w, B * T, backend, "explicit" if products.endswith("explicit-attention") else "sdpa")
    with torch.no_grad():
        want = torch.stack([_hf_block(model, l, x[l]) for l in range(model.n_layers)])
        for l in range(model.n_layers):  # one cell per call (the lean step)
            got = gpt2_block(x[l].reshape(1, B * T, d), w, slice(l, l + 1), B, T, linear)
            assert_close(f"block layer {l}", want[l], got.reshape(B, T, d), "fp32_reorder")
        if products == "stacked":  # a stack of cells (a diagonal), per-layer scales folded into q
            got = gpt2_block(x.reshape(model.n_layers, B * T, d), w, slice(0, model.n_layers), B, T, linear)
            assert_close("block stack", want, got.reshape(model.n_layers, B, T, d), "fp32_reorder")
