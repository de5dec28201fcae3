"""Diagonal batching of the layer x segment grid (ARMT_SPEC.md §8, arXiv 2506.05229), GPT-2 backbones.

Why it is exact. Cell (layer l, segment s) reads layer l's memory after segment s-1 and the hidden
states that layer l-1 produced for segment s, and nothing else (§1.6): memories are per layer, and
a write is visible only to later segments. So every cell on an anti-diagonal l + s = t depends only
on diagonal t-1, and the whole diagonal runs as ONE grouped call.

Schedule, for a window of n full segments and L layers (diagonal t = 0 .. L+n-2):

    active layers   lo = max(0, t-n+1) .. hi = min(L-1, t)     (a contiguous range)
    row i           layer lo+i on segment t-lo-i
    input           [embedding of segment t if lo == 0] + outputs of diagonal t-1 for layers lo-1 .. hi-1
    output row hi   when hi == L-1, segment t-L+1 has left the last layer: ln_f, lm_head, yield it

      t=0      t=1      t=2   ...           L+n-1 grouped calls instead of L*n layer calls
    l2 .      l2 .      l2 s0
    l1 .      l1 s0     l1 s1
    l0 s0     l0 s1     l0 s2

A grouped call stacks the active cells on a leading `cell` axis, [cell, batch*tokens, hidden], and
applies every sub-layer with the per-layer weights stacked on that axis: Conv1D/Linear as
`baddbmm` against [layer, in, out] weights, LayerNorm with per-layer weight and bias, attention as
one `scaled_dot_product_attention(is_causal=True)` over [cell*batch, heads, tokens, head_dim], and the
memory read/write as the functions of `memory.py` with `cell*batch` as their batch axis (layer l's
A and z are rows of one stacked [layer, batch, heads, key_feature, hidden/heads] buffer). Positions
are 0 .. S+M-1 in every segment (wrap_pos=False only), so one position table serves every cell.

Windows: a long input runs `group` segments at a time; the memory buffer carries over, so what is
alive is one window's input embeddings plus two diagonals of at most L cells, whatever the stream
length. A trailing partial segment runs through `model.step` with the final state.

CUDA: the loop has no host synchronisation (the schedule is static Python ints), but each diagonal
is still dozens of launches. Capturing one diagonal as a CUDA graph would need fixed shapes: the
steady-state diagonals (all L layers active) share one shape, the fill/drain diagonals (and the
first-segment cell of a fresh stream) would need their own graphs or padding with masked cells, and
the hidden/state buffers would have to become static (a rolling [layer, ...] buffer as in the
paper's GroupedBatcher instead of `torch.cat`).

Not in this path: the memory hook points (`block.memory.hook_*`) do not fire, and
`model.memory_kernels(...)` is ignored (the eager functions of memory.py are used).
`model.ablate_memory()` is honoured. Use `model.stream` to record or hook.
"""

from __future__ import annotations

import weakref
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .armt import STATE_DTYPE, ARMTModel, MemoryState, SegmentOutput
from .memory import feature_map, read_memory, write_memory

__all__ = ["DiagonalExecutor", "diagonal_stream", "DEFAULT_GROUP"]

DEFAULT_GROUP = 16  # segments per window: activations of one window are alive at a time


def _check_model(model: ARMTModel) -> None:
    import transformers

    if not isinstance(model, ARMTModel):
        raise TypeError(f"diagonal batching needs an armt_viz ARMTModel, got {type(model).__name__}")
    family = model.adapter.family
    if family != "gpt2" or not isinstance(model.backbone, transformers.GPT2LMHeadModel):
        raise ValueError(f"diagonal batching supports GPT-2 backbones (GPT2LMHeadModel) only, got family {family!r} "
                         f"({type(model.backbone).__name__}); use model.stream for this backbone")
    if model.config.wrap_pos:
        raise ValueError("diagonal batching needs wrap_pos=False (positions 0..S+M-1 in every segment), got "
                         "wrap_pos=True; use model.stream for wrap_pos models")
    if model.training:
        raise ValueError("diagonal batching is inference-only, but the model is in training mode (dropout would "
                         "apply); call model.eval() first")
    hf = model.backbone.config
    if getattr(hf, "add_cross_attention", False):
        raise ValueError("diagonal batching does not support GPT-2 with cross-attention (add_cross_attention=True); "
                         "use model.stream")


class DiagonalExecutor:
    """The per-layer weights of a GPT-2 ARMT stacked on a leading `layer` axis, and one grouped step.

    Built from the model's current weights (a snapshot: `diagonal_stream` rebuilds it when a
    parameter changes). Linear weights are stored as [layer, in, out] for `baddbmm`.
    """

    def __init__(self, model: ARMTModel):
        _check_model(model)
        from transformers.activations import ACT2FN

        self.model, self.cfg = model, model.config
        hf = model.backbone.config
        blocks = model.blocks
        layers = [b.layer for b in blocks]
        self.n_layers, self.d_model = len(blocks), model.d_model
        self.attn_heads = layers[0].attn.num_heads
        self.head_dim = self.d_model // self.attn_heads
        self.act = ACT2FN[hf.activation_function]
        self.ln_eps = hf.layer_norm_epsilon

        def stack(get):
            with torch.no_grad():
                return torch.stack([get(b).detach() for b in blocks]).contiguous()

        # memory projections (nn.Linear stores [out, in])
        self.read_query_w = stack(lambda b: b.W_mq.weight.t())  # [layer, hidden, d_mem]
        self.write_key_w = stack(lambda b: b.W_mk.weight.t())  # [layer, hidden, d_mem]
        self.write_value_w = stack(lambda b: b.W_mv.weight.t())  # [layer, hidden, hidden]
        self.write_gate_w = stack(lambda b: b.W_mb.weight.t())  # [layer, hidden, 1 | heads | hidden]
        self.write_gate_b = stack(lambda b: b.W_mb.bias).unsqueeze(1)  # [layer, 1, ...]
        # GPT-2 block (Conv1D stores [in, out]); biases as [layer, 1, out] to broadcast over rows
        self.ln1_w = stack(lambda b: b.layer.ln_1.weight).unsqueeze(1)
        self.ln1_b = stack(lambda b: b.layer.ln_1.bias).unsqueeze(1)
        self.qkv_w = stack(lambda b: b.layer.attn.c_attn.weight)  # [layer, hidden, 3*hidden]
        self.qkv_b = stack(lambda b: b.layer.attn.c_attn.bias).unsqueeze(1)
        self.attn_out_w = stack(lambda b: b.layer.attn.c_proj.weight)
        self.attn_out_b = stack(lambda b: b.layer.attn.c_proj.bias).unsqueeze(1)
        self.ln2_w = stack(lambda b: b.layer.ln_2.weight).unsqueeze(1)
        self.ln2_b = stack(lambda b: b.layer.ln_2.bias).unsqueeze(1)
        self.mlp_in_w = stack(lambda b: b.layer.mlp.c_fc.weight)  # [layer, hidden, inner]
        self.mlp_in_b = stack(lambda b: b.layer.mlp.c_fc.bias).unsqueeze(1)
        self.mlp_out_w = stack(lambda b: b.layer.mlp.c_proj.weight)  # [layer, inner, hidden]
        self.mlp_out_b = stack(lambda b: b.layer.mlp.c_proj.bias).unsqueeze(1)
        # attention scale: head_dim**-0.5 (scale_attn_weights), /(layer+1) (scale_attn_by_inverse_layer_idx)
        scales = [float(lay.attn.scaling) for lay in layers]
        self.attn_scale = scales[0] if len(set(scales)) == 1 else None
        self.attn_scale_per_layer = torch.tensor(scales, dtype=self.qkv_w.dtype, device=self.qkv_w.device)
        self.fingerprint = _fingerprint(model)

    # ------------------------------------------------------------------ one diagonal
    def step(self, hidden: Tensor, lo: int, hi: int, first_last: bool,
             assoc: Tensor, normalizer: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One grouped call: layers lo..hi, each on its own segment.

        hidden:     [cell, batch, tokens, hidden]    inputs of the active cells (cell i = layer lo+i)
        assoc:      [cell, batch, heads, key_feature, hidden/heads]   A of layers lo..hi before the write
        normalizer: [cell, batch, heads, key_feature]
        first_last: the last cell is the first segment of a fresh stream (no read; v-bar 0, gamma 1)
        Returns (block outputs [cell, batch, tokens, hidden], new assoc, new normalizer), same layouts.
        """
        cfg, layer = self.cfg, slice(lo, hi + 1)
        n, B, T, d = hidden.shape
        M, dtype = cfg.num_mem_tokens, hidden.dtype
        rows = hidden.reshape(n, B * T, d)
        A = assoc.reshape(n * B, *assoc.shape[2:])
        z = normalizer.reshape(n * B, *normalizer.shape[2:])
        if not self.model._slot.ablate_read:
            q = feature_map(torch.bmm(rows, self.read_query_w[layer]).reshape(n * B, T, -1),
                            cfg.n_heads, cfg.nu, cfg.normalize_features)
            read_out, _ = read_memory(q, A, z, cfg.eps, cfg.use_denom)  # [cell*batch, tokens, hidden]
            if first_last:
                read_out[-B:] = 0  # the first segment does not read (its A is 0 anyway)
            rows = rows + read_out.reshape(n, B * T, d).to(dtype)
        rows = self._block(rows, layer, n, B, T)
        # write: the memory tokens' block outputs
        mem = rows.reshape(n, B, T, d)[:, :, T - M:].reshape(n, B * M, d)
        key = feature_map(torch.bmm(mem, self.write_key_w[layer]).reshape(n * B, M, -1),
                          cfg.n_heads, cfg.nu, cfg.normalize_features)
        value = torch.bmm(mem, self.write_value_w[layer]).reshape(n * B, M, d)
        gate = torch.sigmoid(torch.baddbmm(self.write_gate_b[layer], mem, self.write_gate_w[layer])).reshape(n * B, M, -1)
        kw = dict(correction=cfg.correction, eps=cfg.eps, use_denom=cfg.use_denom, gamma_eps=cfg.gamma_eps)
        if first_last:  # v-bar = 0 and gamma = 1 for that cell only: write it on its own
            cut = (n - 1) * B
            rest = write_memory(key[:cut], value[:cut], gate[:cut], A[:cut], z[:cut], first=False, **kw)
            first = write_memory(key[cut:], value[cut:], gate[cut:], A[cut:], z[cut:], first=True, **kw)
            new_A = torch.cat([rest.assoc, first.assoc])
            new_z = torch.cat([rest.normalizer, first.normalizer])
        else:
            res = write_memory(key, value, gate, A, z, first=False, **kw)
            new_A, new_z = res.assoc, res.normalizer
        return rows.reshape(n, B, T, d), new_A.reshape(assoc.shape), new_z.reshape(normalizer.shape)

    def _block(self, rows: Tensor, layer: slice, n: int, B: int, T: int) -> Tensor:
        """GPT2Block (pre-LN attention, pre-LN MLP) on [cell, batch*tokens, hidden] with stacked weights."""
        d, H, hd = self.d_model, self.attn_heads, self.head_dim
        x = self._layer_norm(rows, self.ln1_w[layer], self.ln1_b[layer])
        qkv = torch.baddbmm(self.qkv_b[layer], x, self.qkv_w[layer])  # [cell, batch*tokens, 3*hidden]
        q, k, v = (t.reshape(n * B, T, H, hd).transpose(1, 2) for t in qkv.split(d, dim=-1))
        if self.attn_scale is None:  # scales differ per layer: fold them into q
            scale = self.attn_scale_per_layer[layer].to(q.dtype).repeat_interleave(B).view(n * B, 1, 1, 1)
            attn = F.scaled_dot_product_attention(q * scale, k, v, is_causal=True, scale=1.0)
        else:
            attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.attn_scale)
        attn = attn.transpose(1, 2).reshape(n, B * T, d)
        rows = torch.baddbmm(self.attn_out_b[layer], attn, self.attn_out_w[layer]) + rows
        x = self._layer_norm(rows, self.ln2_w[layer], self.ln2_b[layer])
        x = self.act(torch.baddbmm(self.mlp_in_b[layer], x, self.mlp_in_w[layer]))
        return rows + torch.baddbmm(self.mlp_out_b[layer], x, self.mlp_out_w[layer])

    def _layer_norm(self, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.layer_norm(x, (x.shape[-1],), eps=self.ln_eps) * weight + bias

    # ------------------------------------------------------------------ one window
    def window(self, ids: Tensor, assoc: Tensor, normalizer: Tensor, fresh: bool,
               keep_states: bool) -> Iterator[tuple[int, Tensor, list | None]]:
        """Run n full segments ids [batch, n, S] through all layers by diagonals.

        assoc/normalizer: the stacked state [layer, batch, ...], updated in place.
        fresh: the window starts a stream (its segment 0 is the stream's first segment).
        Yields (segment index in the window, last-layer output [batch, tokens, hidden], per-layer
        (A, z) after that segment or None) as each segment leaves the last layer.
        """
        L = self.n_layers
        B, n, S = ids.shape
        x = self._embed(ids)  # [segment, batch, tokens, hidden]
        prev, prev_lo = None, 0
        pending: dict[int, list] = {}
        for t in range(L + n - 1):
            lo, hi = max(0, t - n + 1), min(L - 1, t)
            parts = [x[t:t + 1]] if lo == 0 else []
            if prev is not None:  # diagonal t-1's outputs of layers lo-1 .. hi-1 feed layers lo .. hi
                parts.append(prev[max(lo, 1) - 1 - prev_lo:hi - prev_lo])
            hidden = parts[0] if len(parts) == 1 else torch.cat(parts)
            out, new_A, new_z = self.step(hidden, lo, hi, fresh and t < L, assoc[lo:hi + 1], normalizer[lo:hi + 1])
            assoc[lo:hi + 1].copy_(new_A)
            normalizer[lo:hi + 1].copy_(new_z)
            if keep_states:  # new_A/new_z are fresh tensors, never written again: keep views
                for i in range(hi - lo + 1):
                    pending.setdefault(t - lo - i, [None] * L)[lo + i] = (new_A[i], new_z[i])
            if hi == L - 1:
                seg = t - L + 1
                yield seg, out[-1], (pending.pop(seg) if keep_states else None)
            prev, prev_lo = out, lo

    def _embed(self, ids: Tensor) -> Tensor:
        """ids [batch, segment, S] -> [segment, batch, S+M, hidden]: tokens, then the memory tokens, plus positions."""
        model = self.model
        B, n, S = ids.shape
        M = self.cfg.num_mem_tokens
        tok = model.backbone.get_input_embeddings()(ids).transpose(0, 1)  # [segment, batch, S, hidden]
        mem = model.memory.to(tok.dtype).expand(n, B, M, self.d_model)
        pos = model.backbone.transformer.wpe(torch.arange(S + M, device=ids.device))
        return torch.cat([tok, mem], dim=2) + pos.to(tok.dtype)

    def head(self, hidden: Tensor, S: int) -> Tensor:
        """Last-layer output [batch, tokens, hidden] -> logits of the S text positions [batch, S, vocab]."""
        bb = self.model.backbone
        return bb.lm_head(bb.transformer.ln_f(hidden[:, :S]))


def _fingerprint(model: ARMTModel) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


_EXECUTORS: "weakref.WeakKeyDictionary[ARMTModel, DiagonalExecutor]" = weakref.WeakKeyDictionary()


def _executor(model: ARMTModel) -> DiagonalExecutor:
    """The cached executor of `model`, rebuilt when any parameter was replaced or changed in place."""
    ex = _EXECUTORS.get(model)
    if ex is None or ex.fingerprint != _fingerprint(model):
        ex = _EXECUTORS[model] = DiagonalExecutor(model)
    return ex


def diagonal_stream(model: ARMTModel, ids: Tensor, *, group: int | None = None, state: MemoryState | None = None,
                    attention_mask: Tensor | None = None, states: bool = False) -> Iterator[SegmentOutput]:
    """`model.stream([ids])` computed by anti-diagonals of the layer x segment grid (module docstring).

    Args:
        model: a GPT-2 ARMTModel in eval mode with wrap_pos=False. Call under `torch.no_grad()` or
            `torch.inference_mode()`.
        ids: token ids [batch, seq] (or [seq]).
        group: full segments per window (default DEFAULT_GROUP); memory is flat in the stream length.
        state: memory to start from (default: empty).
        attention_mask: only None or all ones (no padding) is supported.
        states: if True every SegmentOutput carries the memory after its segment, as `model.stream`
            does (keeps up to L diagonals of per-layer states alive). If False (default) only the
            last segment of each window, and so the final segment, carries it; the others have None.

    Yields:
        SegmentOutput per segment, in order: logits [batch, segment_tokens, vocab], state, index, ids.

    Raises:
        ValueError: a non-GPT-2 backbone, wrap_pos=True, training mode, grad enabled, a padding mask,
            or a bad group.
    """
    if torch.is_grad_enabled():
        raise ValueError("diagonal_stream is inference-only, but grad is enabled; call it under torch.no_grad() "
                         "or torch.inference_mode(), or use model.stream(..., grad=True) for gradients")
    _check_model(model)  # every call: the executor is cached, but mode and config may have changed
    ex = _executor(model)
    group = DEFAULT_GROUP if group is None else group
    if isinstance(group, bool) or not isinstance(group, int) or group < 1:
        raise ValueError(f"group must be a positive int (segments per window), got {group!r}")
    ids = model._check_ids(torch.as_tensor(ids, device=model.memory.device))
    if attention_mask is not None:
        mask = model._check_mask(torch.as_tensor(attention_mask, device=ids.device), ids)
        if not bool(mask.all()):
            raise ValueError("diagonal_stream does not support padding: attention_mask has zeros; pass None or all "
                             "ones, or use model.stream / model.forward for padded batches")
    if state is not None and not isinstance(state, MemoryState):
        raise TypeError(f"state must be a MemoryState or None, got {type(state).__name__}")
    return _run(model, ex, ids, group, state, states)


def _run(model: ARMTModel, ex: DiagonalExecutor, ids: Tensor, group: int, state: MemoryState | None,
         keep_states: bool) -> Iterator[SegmentOutput]:
    B, total = ids.shape
    S = model.config.segment_size
    n_full = total // S
    start = model.init_state(B, ids.device) if state is None else model._sync_device(state, ids.device)
    done = start.segments
    # stacked per-layer state [layer, batch, heads, key_feature, hidden/heads], float32, updated in place
    assoc = torch.stack([a.to(STATE_DTYPE).expand(B, *a.shape[1:]) for a in start.assoc]).contiguous()
    normalizer = torch.stack([z.to(STATE_DTYPE).expand(B, *z.shape[1:]) for z in start.normalizer]).contiguous()
    last = state
    for w0 in range(0, n_full, group):
        n = min(group, n_full - w0)
        win_ids = ids[:, w0 * S:(w0 + n) * S].reshape(B, n, S)
        fresh = done + w0 == 0
        steps = ex.window(win_ids, assoc, normalizer, fresh, keep_states)
        while True:
            with torch.no_grad():  # never across a yield
                item = next(steps, None)
                if item is None:
                    break
                seg, hidden, per_layer = item
                logits = ex.head(hidden, S)
                index = done + w0 + seg
                if per_layer is not None:
                    st = MemoryState(tuple(a for a, _ in per_layer), tuple(z for _, z in per_layer), index + 1)
                elif seg == n - 1:
                    st = MemoryState(tuple(assoc.clone().unbind(0)), tuple(normalizer.clone().unbind(0)), index + 1)
                else:
                    st = None
            if seg == n - 1:
                last = st
            yield SegmentOutput(logits, st, index, win_ids[:, seg])
    if total > n_full * S:
        with torch.no_grad():
            out = model.step(ids[:, n_full * S:], last, segment=done + n_full)
        yield out
