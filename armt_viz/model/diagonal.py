"""Diagonal batching of the layer x segment grid (ARMT_SPEC.md §8, arXiv 2506.05229), GPT-2 backbones.

Why it is exact. Cell (layer l, segment s) reads layer l's memory after segment s-1 and the hidden
states that layer l-1 produced for segment s, and nothing else (§1.6): memories are per layer, and
a write is visible only to later segments. So every cell on an anti-diagonal l + s = t depends only
on diagonal t-1, and the whole diagonal runs as ONE grouped call.

Schedule: one continuous pipeline over the n full segments of the stream and L layers
(diagonal t = 0 .. n+L-2, so n+L-1 grouped calls instead of n*L layer calls):

    active layers   lo = max(0, t-n+1) .. hi = min(L-1, t)     (a contiguous range)
    row i           layer lo+i on segment t-lo-i
    input           [embedding of segment t if lo == 0] + outputs of diagonal t-1 for layers lo-1 .. hi-1
    output row hi   when hi == L-1, segment t-L+1 has left the last layer: ln_f, lm_head, yield it

      t=0      t=1      t=2      t=3   ...    fill: t < L-1 (fewer layers, only at the stream start)
    l2 .      l2 .      l2 s0    l2 s1        steady: L-1 <= t <= n-1 (all L layers, one per segment)
    l1 .      l1 s0     l1 s1    l1 s2        drain: t > n-1 (fewer layers, only at the stream end)
    l0 s0     l0 s1     l0 s2    l0 s3

Static buffers (`DiagonalPipeline`, allocated once per batch size; memory is flat in the stream
length: one segment is embedded per diagonal, when layer 0 needs it):

    ids        [batch, S]                                   the segment layer 0 takes on this diagonal
    hidden     [layer, batch, S+M, hidden]                  row l: the input of layer l on this diagonal;
                                                            row 0 <- embedding of `ids`
    assoc      [layer, batch, heads, key_feature, hidden/heads]   float32, layer l's A (z likewise)
    last       [batch, S+M, hidden]                         the last layer's output on this diagonal

A diagonal reads rows lo..hi of `hidden`, `assoc` and `normalizer`, and at its end copies the new
A, z back into those rows and shifts the block outputs up: layer l's output -> row l+1 (the last
layer's -> `last`). A steady diagonal is always the same call on the same buffers, so on CUDA it is
captured once as a CUDA graph (`graph=True`, the default there) and replayed for every steady
diagonal; the fill and drain diagonals, and the diagonal where the first segment of a fresh stream
reaches the last layer (no read, v-bar 0, gamma 1 for that cell), run eagerly on the same buffers.
`emulate=True` runs the would-be-captured step eagerly instead of replaying it (tests on the CPU).
The loop has no host synchronisation (the schedule is static Python ints); capturing does one,
once per cached pipeline. The logits are computed outside the graph from `last` (ln_f, lm_head:
a few launches), so the yielded logits are ordinary tensors, never views of static buffers.

A grouped call stacks the active cells on a leading `cell` axis, [cell, batch*tokens, hidden], and
runs the GPT-2 block shared with the lean CPU step (`gpt2_block.py`) with the per-layer weights stacked
on that axis: Conv1D as `baddbmm` against [layer, in, out] weights, LayerNorm with per-layer weight and
bias, attention as one `scaled_dot_product_attention(is_causal=True)` over [cell*batch, heads, tokens,
head_dim]; the memory read/write are the functions of `memory.py` with `cell*batch` as their batch axis. Positions
are 0 .. S+M-1 in every segment (wrap_pos=False only), so one position table serves every cell.
A trailing partial segment runs through `model.step` with the final state.

Not in this path: the memory hook points (`block.memory.hook_*`) do not fire, and
`model.memory_kernels(...)` is ignored (the eager functions of memory.py are used).
`model.ablate_memory()` is honoured (as it stands when the iteration starts; a captured graph
bakes it in, and the cache keys on it). Use `model.stream` to record or hook.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from .armt import STATE_DTYPE, ARMTModel, MemoryState, SegmentOutput
from .gpt2_block import GPT2Weights, StackedLinear, gpt2_block
from .memory import feature_map, read_memory, write_memory

__all__ = ["DiagonalExecutor", "DiagonalPipeline", "diagonal_stream", "DEFAULT_GROUP"]

DEFAULT_GROUP = 16  # deprecated, unused: the segments per window of the windowed schedule (kept for imports)


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
    parameter changes). Linear weights are stored as [layer, in, out] for `baddbmm`. It also keeps
    the latest released `DiagonalPipeline` (static buffers, captured graph) for the next call.
    """

    def __init__(self, model: ARMTModel):
        _check_model(model)
        self.model, self.cfg = model, model.config
        blocks = model.blocks
        self.n_layers, self.d_model = len(blocks), model.d_model

        def stack(get):
            with torch.no_grad():
                return torch.stack([get(b).detach() for b in blocks]).contiguous()

        # memory projections (nn.Linear stores [out, in])
        self.read_query_w = stack(lambda b: b.W_mq.weight.t())  # [layer, hidden, d_mem]
        self.write_key_w = stack(lambda b: b.W_mk.weight.t())  # [layer, hidden, d_mem]
        self.write_value_w = stack(lambda b: b.W_mv.weight.t())  # [layer, hidden, hidden]
        self.write_gate_w = stack(lambda b: b.W_mb.weight.t())  # [layer, hidden, 1 | heads | hidden]
        self.write_gate_b = stack(lambda b: b.W_mb.bias).unsqueeze(1)  # [layer, 1, ...]
        # the GPT-2 blocks: the shared functional block (gpt2_block.py), one baddbmm per product over the cells
        self.gpt2 = GPT2Weights(model)
        self.linear = StackedLinear(self.gpt2)
        self.fingerprint = _fingerprint(model)
        self._idle: DiagonalPipeline | None = None  # the latest released pipeline (see acquire)

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
        rows = gpt2_block(rows, self.gpt2, layer, B, T, self.linear)
        # write: the memory tokens' block outputs
        mem = rows.reshape(n, B, T, d)[:, :, T - M:].reshape(n, B * M, d)
        key = feature_map(torch.bmm(mem, self.write_key_w[layer]).reshape(n * B, M, -1),
                          cfg.n_heads, cfg.nu, cfg.normalize_features)
        value = torch.bmm(mem, self.write_value_w[layer]).reshape(n * B, M, d)
        gate = torch.sigmoid(torch.baddbmm(self.write_gate_b[layer], mem, self.write_gate_w[layer])).reshape(n * B, M, -1)
        kw = dict(correction=cfg.correction, eps=cfg.eps, use_denom=cfg.use_denom, gamma_eps=cfg.gamma_eps,
                  delta_rule=cfg.delta_rule)
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

    # ------------------------------------------------------------------ embedding, head
    def _embed(self, ids: Tensor) -> Tensor:
        """One segment's ids [batch, S] -> [batch, S+M, hidden]: tokens, then the memory tokens, plus positions."""
        model = self.model
        B, S = ids.shape
        M = self.cfg.num_mem_tokens
        tok = model.backbone.get_input_embeddings()(ids)  # [batch, S, hidden]
        mem = model.memory.to(tok.dtype).expand(B, M, self.d_model)
        pos = model.backbone.transformer.wpe(torch.arange(S + M, device=ids.device))
        return torch.cat([tok, mem], dim=1) + pos.to(tok.dtype)

    def head(self, hidden: Tensor, S: int) -> Tensor:
        """Last-layer output [batch, tokens, hidden] -> logits of the S text positions [batch, S, vocab]."""
        bb = self.model.backbone
        return bb.lm_head(bb.transformer.ln_f(hidden[:, :S]))

    # ------------------------------------------------------------------ pipelines (cached, one idle at a time)
    def acquire(self, batch: int, graph: bool, emulate: bool) -> "DiagonalPipeline":
        """A pipeline for `batch` rows: the idle cached one if its key matches, else a new one.

        The key holds what a captured graph bakes in: batch, graph/emulate, memory ablation and the
        autocast setting. A pipeline in use by another live iteration is never handed out twice.
        """
        key = (batch, graph, emulate, self.model._slot.ablate_read, _autocast_key(self.model.memory.device))
        idle = self._idle
        if idle is not None and idle.key == key:
            self._idle = None  # taken: a second live iteration builds its own
            return idle
        return DiagonalPipeline(self, key, batch, graph=graph, emulate=emulate)

    def release(self, pipe: "DiagonalPipeline") -> None:
        """Keep `pipe` (its buffers and captured graph) for the next call; only the latest released is kept."""
        self._idle = pipe


class DiagonalPipeline:
    """The continuous diagonal pipeline of one batch size over static buffers (module docstring).

    `run(ids, n, fresh)` drives diagonals 0 .. n+L-2 over n full segments. Every diagonal goes
    through `advance(lo, hi, first_last)` on the buffers; a steady diagonal (all L layers, not the
    first segment's) goes through `replay()`: the captured CUDA graph of `advance(0, L-1, False)`
    (graph=True on CUDA), or that call eagerly (graph=False, or emulate=True).
    """

    def __init__(self, ex: DiagonalExecutor, key: tuple, batch: int, *, graph: bool, emulate: bool):
        model = ex.model
        dev = model.memory.device
        dtype = model.backbone.get_input_embeddings().weight.dtype
        S, M, L = ex.cfg.segment_size, ex.cfg.num_mem_tokens, ex.n_layers
        state = model.init_state(batch, dev)
        self.ex, self.key, self.graph_mode, self.emulate = ex, key, graph, emulate
        self.graph: torch.cuda.CUDAGraph | None = None
        # normal (not inference) tensors, so in-place updates work whether a call runs under
        # torch.inference_mode() or torch.no_grad(), and a cached pipeline serves both
        with torch.inference_mode(False), torch.no_grad():
            self.ids = torch.zeros(batch, S, dtype=torch.long, device=dev)
            self.hidden = torch.zeros(L, batch, S + M, ex.d_model, dtype=dtype, device=dev)
            self.last = torch.zeros(batch, S + M, ex.d_model, dtype=dtype, device=dev)
            self.assoc = torch.zeros(L, batch, *state.assoc[0].shape[1:], dtype=STATE_DTYPE, device=dev)
            self.normalizer = torch.zeros(L, batch, *state.normalizer[0].shape[1:], dtype=STATE_DTYPE, device=dev)

    def load(self, state: MemoryState) -> None:
        """Copy a per-layer state (batch 1 or `batch`) into the stacked state buffers."""
        for layer, (a, z) in enumerate(zip(state.assoc, state.normalizer)):
            self.assoc[layer].copy_(a.expand_as(self.assoc[layer]))
            self.normalizer[layer].copy_(z.expand_as(self.normalizer[layer]))

    def advance(self, lo: int, hi: int, first_last: bool) -> None:
        """One diagonal on the buffers: layers lo..hi (row 0 embedded from `ids` when lo == 0), then
        the new A, z into rows lo..hi, block outputs shifted up one row, the last layer's into `last`."""
        ex, L = self.ex, self.ex.n_layers
        if lo == 0:
            self.hidden[0].copy_(ex._embed(self.ids))
        rows = slice(lo, hi + 1)
        out, new_A, new_z = ex.step(self.hidden[rows], lo, hi, first_last, self.assoc[rows], self.normalizer[rows])
        self.assoc[rows].copy_(new_A)
        self.normalizer[rows].copy_(new_z)
        top = min(hi, L - 2)  # the highest active layer that feeds another layer
        if top >= lo:
            self.hidden[lo + 1:top + 2].copy_(out[:top - lo + 1])
        if hi == L - 1:
            self.last.copy_(out[-1])

    def replay(self) -> None:
        """One steady diagonal: the captured graph (captured on first use), or `advance` eagerly."""
        if not self.graph_mode or self.emulate:
            self.advance(0, self.ex.n_layers - 1, False)
            return
        if self.graph is None:
            self._capture()
        self.graph.replay()

    def _capture(self) -> None:
        """Warm up on the shared side stream (as fast.GraphedStepper does), capture one steady diagonal,
        and put the buffers back (the warm-up runs advanced the live pipeline). Synchronises the device
        once (torch.cuda.graph does); later calls that get this pipeline from the cache replay at once."""
        from .fast import _side_stream

        steady = (0, self.ex.n_layers - 1, False)
        buffers = (self.ids, self.hidden, self.last, self.assoc, self.normalizer)
        saved = [b.clone() for b in buffers]
        side = _side_stream(self.ids.device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.advance(*steady)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.advance(*steady)
        for b, v in zip(buffers, saved):
            b.copy_(v)
        self.graph = graph

    def run(self, ids: Tensor, n: int, fresh: bool) -> Iterator[tuple[int, int, int]]:
        """Diagonals t = 0 .. n+L-2 over the n full segments of ids [batch, >= n*S]; yields (t, lo, hi)
        after each, when the buffers hold its results (`last` is segment t-L+1's when hi == L-1).

        fresh: segment 0 starts the stream (its cells do not read; their write has v-bar 0, gamma 1).
        """
        L, S = self.ex.n_layers, self.ex.cfg.segment_size
        for t in range(n + L - 1):
            lo, hi = max(0, t - n + 1), min(L - 1, t)
            first_last = fresh and t < L  # segment 0 is the last active cell
            if lo == 0:
                self.ids.copy_(ids[:, t * S:(t + 1) * S], non_blocking=True)
            if lo == 0 and hi == L - 1 and not first_last:
                self.replay()
            else:
                self.advance(lo, hi, first_last)
            yield t, lo, hi


def _autocast_key(device: torch.device) -> tuple:
    kind = device.type
    if not torch.is_autocast_enabled(kind):
        return (kind, False)
    return (kind, True, torch.get_autocast_dtype(kind))


def _fingerprint(model: ARMTModel) -> tuple:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


_EXECUTORS: "weakref.WeakKeyDictionary[ARMTModel, DiagonalExecutor]" = weakref.WeakKeyDictionary()


def _executor(model: ARMTModel) -> DiagonalExecutor:
    """The cached executor of `model`, rebuilt when any parameter was replaced or changed in place."""
    ex = _EXECUTORS.get(model)
    if ex is None or ex.fingerprint != _fingerprint(model):
        ex = _EXECUTORS[model] = DiagonalExecutor(model)
    return ex


def _check_graph(graph, emulate, device: torch.device) -> bool:
    """Resolve `graph` (None: CUDA or not) and check it against `emulate` and the device."""
    for name, value in (("graph", graph), ("emulate", emulate)):
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool{' or None' if name == 'graph' else ''}, got {value!r}")
    if emulate:
        if graph is False:
            raise ValueError("emulate=True runs the graph path's static step eagerly, but graph=False was passed; "
                             "pass graph=True (or leave it None) with emulate=True, or drop emulate")
        return True
    if graph is None:
        return device.type == "cuda"
    if graph and device.type != "cuda":
        raise ValueError(f"graph=True captures a CUDA graph and needs the model on a CUDA device, it is on {device}; "
                         "pass graph=False, or emulate=True to run the same static-buffer step eagerly (tests)")
    return graph


def diagonal_stream(model: ARMTModel, ids: Tensor, *, group: int | None = None, state: MemoryState | None = None,
                    attention_mask: Tensor | None = None, states: bool = False, graph: bool | None = None,
                    emulate: bool = False) -> Iterator[SegmentOutput]:
    """`model.stream([ids])` computed by anti-diagonals of the layer x segment grid (module docstring).

    One continuous pipeline over the stream: the L-1 fill diagonals run at its start and the L-1
    drain diagonals at its end only; in between, one diagonal (all L layers) per segment.

    Args:
        model: a GPT-2 ARMTModel in eval mode with wrap_pos=False. Call under `torch.no_grad()` or
            `torch.inference_mode()`.
        ids: token ids [batch, seq] (or [seq]).
        group: deprecated and ignored (it was the segments per window; the pipeline no longer has
            windows, and memory is flat in the stream length: one segment is embedded per diagonal).
        state: memory to start from (default: empty).
        attention_mask: only None or all ones (no padding) is supported.
        states: if True every SegmentOutput carries the memory after its segment, as `model.stream`
            does (keeps up to L diagonals of per-layer states alive: one state-sized copy per diagonal).
            If False (default) only the last full segment (and a trailing partial one) carries it; the
            others have None.
        graph: replay one captured CUDA graph for every steady diagonal (default: True on CUDA,
            False elsewhere). The graph is captured on the first steady diagonal and cached with the
            pipeline for later calls of the same batch size, autocast setting and memory ablation.
        emulate: with graph (True or None), run the would-be-captured static-buffer step eagerly
            instead (any device): for testing the graph path's buffer logic without a GPU.

    Yields:
        SegmentOutput per segment, in order: logits [batch, segment_tokens, vocab], state, index, ids.
        Logits and states are ordinary tensors (never views of the pipeline's static buffers), also
        with graph=True: the logits are computed outside the graph from its last-layer buffer.

    Raises:
        ValueError: a non-GPT-2 backbone, wrap_pos=True, training mode, grad enabled, a padding mask,
            a bad group, graph=True off CUDA, or emulate=True with graph=False.
    """
    if torch.is_grad_enabled():
        raise ValueError("diagonal_stream is inference-only, but grad is enabled; call it under torch.no_grad() "
                         "or torch.inference_mode(), or use model.stream(..., grad=True) for gradients")
    _check_model(model)  # every call: the executor is cached, but mode and config may have changed
    ex = _executor(model)
    if group is not None:
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group must be a positive int (segments per window), got {group!r}; it is deprecated "
                             "and ignored anyway: drop it")
        warnings.warn("diagonal_stream(group=...) is deprecated and ignored: the diagonal pipeline is continuous "
                      "over the whole stream (no windows) and embeds one segment per diagonal; drop the argument",
                      DeprecationWarning, stacklevel=2)
    use_graph = _check_graph(graph, emulate, model.memory.device)
    ids = model._check_ids(torch.as_tensor(ids, device=model.memory.device))
    if attention_mask is not None:
        mask = model._check_mask(torch.as_tensor(attention_mask, device=ids.device), ids)
        if not bool(mask.all()):
            raise ValueError("diagonal_stream does not support padding: attention_mask has zeros; pass None or all "
                             "ones, or use model.stream / model.forward for padded batches")
    if state is not None and not isinstance(state, MemoryState):
        raise TypeError(f"state must be a MemoryState or None, got {type(state).__name__}")
    return _run(model, ex, ids, state, states, use_graph, emulate)


def _run(model: ARMTModel, ex: DiagonalExecutor, ids: Tensor, state: MemoryState | None, keep_states: bool,
         graph: bool, emulate: bool) -> Iterator[SegmentOutput]:
    """The full segments through one pipeline (logits from `last` after each diagonal where hi == L-1;
    per-layer states cloned from the buffers as they are written, if kept), then a trailing partial
    segment through `model.step`. The pipeline goes back to the executor's cache when the iteration ends."""
    B, total = ids.shape
    S, L = model.config.segment_size, ex.n_layers
    n_full = total // S
    last = state
    if n_full:
        start = model.init_state(B, ids.device) if state is None else model._sync_device(state, ids.device)
        done = start.segments
        with torch.no_grad():
            pipe = ex.acquire(B, graph, emulate)
        try:
            with torch.no_grad():
                pipe.load(start)
            diagonals = pipe.run(ids, n_full, fresh=done == 0)
            pending: dict[int, list] = {}  # segment -> per-layer (A, z) after it, while keep_states
            while True:
                with torch.no_grad():  # never across a yield
                    item = next(diagonals, None)
                    if item is None:
                        break
                    t, lo, hi = item
                    if keep_states:  # one copy of the rows just written; each row is one cell's new state
                        new_A, new_z = pipe.assoc[lo:hi + 1].clone(), pipe.normalizer[lo:hi + 1].clone()
                        for i in range(hi - lo + 1):
                            pending.setdefault(t - lo - i, [None] * L)[lo + i] = (new_A[i], new_z[i])
                    if hi != L - 1:
                        continue
                    seg = t - L + 1
                    logits = ex.head(pipe.last, S)
                    index = done + seg
                    if keep_states:
                        per_layer = pending.pop(seg)
                        st = MemoryState(tuple(a for a, _ in per_layer), tuple(z for _, z in per_layer), index + 1)
                    elif seg == n_full - 1:
                        st = MemoryState(tuple(pipe.assoc.clone().unbind(0)), tuple(pipe.normalizer.clone().unbind(0)),
                                         index + 1)
                    else:
                        st = None
                last = st
                yield SegmentOutput(logits, st, index, ids[:, seg * S:(seg + 1) * S])
        finally:
            ex.release(pipe)
    if total > n_full * S:
        with torch.no_grad():
            out = model.step(ids[:, n_full * S:], last, segment=(0 if state is None else state.segments) + n_full)
        yield out
