"""A sequential reference that mirrors the OFFICIAL implementation's execution order (ARMT_SPEC.md §1).

A test oracle and the benchmarks' baseline (`armt_viz.testing.official_order_reference`), like naive.py: written
from the spec (the official code itself runs on transformers <= 4.51), never used by the package itself.
It does what `AssociativeRecurrentWrapper.forward` does, in the same order: zero the memory; for each
segment, embed, append the memory tokens, pad the mask, run the backbone with
`output_hidden_states=True` through blocks wrapped in place whose per-layer state (W_mem, z, first_seg)
lives in module attributes and is moved to the activation device lazily on every call; collect the
segment logits and concatenate them at the end; zero the memory again. No hooks, no preallocation.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from armt_viz.model.backbones import get_attr_path


def _dpfp(x, nu=3):
    x = torch.cat([nn.functional.relu(x), nn.functional.relu(-x)], dim=-1)
    x_rolled = torch.cat([x.roll(shifts=j, dims=-1) for j in range(1, nu + 1)], dim=-1)
    x_repeat = torch.cat([x] * nu, dim=-1)
    return x_repeat * x_rolled


class _OfficialLayer(nn.Module):
    def __init__(self, ours_block, d_mem, M, correction):
        super().__init__()
        self.W_mq, self.W_mk, self.W_mv, self.W_mb = ours_block.W_mq, ours_block.W_mk, ours_block.W_mv, ours_block.W_mb
        self.layer = ours_block.layer
        self.M, self.correction = M, correction
        self.d_key = 2 * 3 * d_mem
        self.zero_mem()

    def zero_mem(self):
        d = self.W_mv.weight.shape[0]
        self.W_mem = torch.zeros(1, self.d_key, d)
        self.z = torch.zeros(1, self.d_key)
        self.first_seg = True

    def associate(self, h):
        self.W_mem = self.W_mem.to(h.device)
        self.z = self.z.to(h.device)
        mq = _dpfp(self.W_mq(h))
        num = torch.einsum("ijk,ikt->ijt", mq, self.W_mem)
        den = torch.einsum("ik,ijk->ij", self.z, mq)[..., None] + 1e-5
        return num / den

    def update_mem(self, m):
        self.W_mem = self.W_mem.to(m.device)
        self.z = self.z.to(m.device)
        mk = _dpfp(self.W_mk(m))
        mv = self.W_mv(m)
        if not self.first_seg:
            num = torch.einsum("ijk,ikt->ijt", mk, self.W_mem)
            den = torch.einsum("ij,ikj->ik", self.z, mk)[..., None] + 1e-5
            prev = num / den
            new_info = mv - prev
            gamma = (1 - den / (torch.einsum("ikj,ikj->ik", mk, mk)[..., None] + 1e-5)).clamp(0, 1).detach() \
                if self.correction else torch.ones_like(den)
        else:
            new_info, gamma = mv, torch.ones(mk.shape[:-1] + (1,), device=m.device)
        mb = torch.sigmoid(self.W_mb(m))
        self.W_mem = self.W_mem + torch.einsum("ijk,ijt->ikt", mk, new_info * mb)
        self.z = self.z + (gamma * mk).sum(dim=1)
        self.first_seg = False

    def forward(self, hidden_states, *args, **kwargs):
        if not self.first_seg:
            hidden_states = hidden_states + self.associate(hidden_states)
        out = self.layer(hidden_states, *args, **kwargs)
        self.update_mem(out[:, -self.M:] if not isinstance(out, tuple) else out[0][:, -self.M:])
        return out


class OfficialOrderARMT(nn.Module):
    """Built from an ARMTModel (shares its weights); same math, official execution order."""

    def __init__(self, ours):
        super().__init__()
        cfg = ours.config
        if cfg.n_heads != 1 or cfg.gating or not cfg.use_denom or cfg.normalize_features or cfg.wrap_pos:
            raise ValueError("the official-order reference covers the paper-era config only")
        self.backbone = copy.copy(ours.backbone)  # shallow: shares parameters
        self.S, self.M = cfg.segment_size, cfg.num_mem_tokens
        self.memory = ours.memory
        blocks = get_attr_path(ours.backbone, ours.adapter.layers_attr)
        self.layers = [_OfficialLayer(b, cfg.d_mem, cfg.num_mem_tokens, cfg.correction) for b in blocks]
        self._layers_attr = ours.adapter.layers_attr
        self._orig = list(blocks)

    def forward(self, input_ids):
        blocks = get_attr_path(self.backbone, self._layers_attr)
        for i, l in enumerate(self.layers):  # wrap in place for the call (official wraps at construction)
            blocks[i] = l
            l.zero_mem()
        try:
            logits = []
            for s in range(0, input_ids.shape[1], self.S):
                seg = input_ids[:, s:s + self.S]
                emb = self.backbone.get_input_embeddings()(seg)
                mem = self.memory.repeat(seg.shape[0], 1, 1)
                x = torch.cat([emb, mem], dim=1)
                mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
                out = self.backbone(inputs_embeds=x, attention_mask=mask, output_hidden_states=True, use_cache=False)
                logits.append(out.logits[:, :-self.M])
            return torch.cat(logits, dim=1)
        finally:
            for i, b in enumerate(self._orig):
                blocks[i] = b
            for l in self.layers:
                l.zero_mem()
