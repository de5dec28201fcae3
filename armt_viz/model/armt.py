"""ARMTModel: an HF causal LM with an associative memory in every block (ARMT_SPEC.md §1).

Per segment, per layer l (§1.5): every position reads A^T phi(q)/(z.phi(q)+eps) from the
memory written by earlier segments and adds it to the block input; the block runs; the
outputs at the M appended memory tokens are written back with the delta rule.

Memory is explicit: `MemoryState` (A and z of every layer, and how many segments were
written) goes into a segment step and a new one comes out.

One segment loop: `ARMTModel.run_segments`. `forward` and `generate` feed it the official
split of a whole input, `stream` the re-cut chunks of a stream; `fast.fast_stream`, training
(`train.py`) and the recorder (`record/`) run `stream`/`run_segments` with a faster
`SegmentStep` (`steps.py`: the HF step, the lean CPU step, the CUDA-graph step, a compiled
step; `steps.pick_step` chooses one and says why). The one batched variant is diagonal
batching (`diagonal.diagonal_stream`): it computes many segments per call along the
anti-diagonals of the layer x segment grid, so it cannot be a step of this loop. The blocks of the backbone are
wrapped in place by `AssociativeBlock`; they see the memory only while `step` runs
(through a context slot that is cleared on exit), so the wrapped backbone keeps working
as a plain LM outside a step.

State dtype: A and z are always float32, whatever the weights or autocast do; reads
are cast back to the hidden-state dtype before the residual add.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ARMTConfig
from ..hooks import HookPoint, MemoryHooks, hooks_scope
from .backbones import BackboneAdapter, adapter_for, extend_positions, get_attr_path
from .memory import EAGER_KERNELS, Kernels

__all__ = ["ARMTModel", "MemoryState", "SegmentOutput", "ARMTOutput", "split_segments"]

STATE_DTYPE = torch.float32


@dataclass(frozen=True)
class MemoryState:
    """Recurrent memory of all layers after `segments` segments.

    assoc[l]:      [batch, heads, key_feature, hidden/heads]   (A, read as A^T phi(q))
    normalizer[l]: [batch, heads, key_feature]                 (z)
    The empty state has batch 1 and broadcasts on the first write.
    """

    assoc: tuple[Tensor, ...]
    normalizer: tuple[Tensor, ...]
    segments: int = 0

    @property
    def first(self) -> bool:
        return self.segments == 0

    @property
    def n_layers(self) -> int:
        return len(self.assoc)

    def detach(self) -> "MemoryState":
        return MemoryState(tuple(a.detach() for a in self.assoc), tuple(z.detach() for z in self.normalizer), self.segments)

    def clone(self) -> "MemoryState":
        """A copy that owns its tensors (e.g. of a CUDA graph's static buffers, which the next replay overwrites)."""
        return MemoryState(tuple(a.clone() for a in self.assoc), tuple(z.clone() for z in self.normalizer), self.segments)

    def to(self, device) -> "MemoryState":
        return MemoryState(tuple(a.to(device) for a in self.assoc), tuple(z.to(device) for z in self.normalizer), self.segments)

    def flat_assoc(self, layer: int) -> Tensor:
        """A of one layer as [batch, key_feature_total, hidden] (block-diagonal over heads)."""
        a = self.assoc[layer]
        B, H, Fh, Dh = a.shape
        if H == 1:
            return a[:, 0]
        out = a.new_zeros(B, H * Fh, H * Dh)
        for h in range(H):
            out[:, h * Fh:(h + 1) * Fh, h * Dh:(h + 1) * Dh] = a[:, h]
        return out

    def flat_normalizer(self, layer: int) -> Tensor:
        z = self.normalizer[layer]
        return z.reshape(z.shape[0], -1)

    @classmethod
    def from_flat(cls, assoc: list[Tensor], normalizer: list[Tensor], segments: int, heads: int = 1) -> "MemoryState":
        """Inverse of flat_assoc/flat_normalizer: [batch, F, D] per layer -> per-head blocks."""
        A, Z = [], []
        for a, z in zip(assoc, normalizer):
            B, Ft, Dt = a.shape
            Fh, Dh = Ft // heads, Dt // heads
            A.append(torch.stack([a[:, h * Fh:(h + 1) * Fh, h * Dh:(h + 1) * Dh] for h in range(heads)], 1).to(STATE_DTYPE))
            Z.append(z.reshape(B, heads, Fh).to(STATE_DTYPE))
        return cls(tuple(A), tuple(Z), segments)


@dataclass
class SegmentOutput:
    logits: Tensor  # [batch, segment_tokens, vocab] (memory positions dropped)
    state: MemoryState  # memory after this segment's write
    segment: int  # index of this segment in the stream (0-based)
    input_ids: Tensor | None = None  # [batch, segment_tokens]
    # statistics a step computed inside itself (GraphedStepper's `extra`, one flat float32 buffer; a static
    # buffer on CUDA: copy before the next step), with the layout to unpack them; None for other steps
    packed: Tensor | None = None
    layout: list | None = None


@dataclass
class ARMTOutput:
    logits: Tensor  # [batch, seq, vocab]
    loss: Tensor | None = None
    state: MemoryState | None = None
    ce_loss: Tensor | None = None

    def __getitem__(self, k):
        return getattr(self, k)


@dataclass
class _StepContext:
    state: MemoryState
    read: bool
    write: bool
    new_assoc: list = field(default_factory=list)
    new_normalizer: list = field(default_factory=list)


class _Slot:
    """Shared by the model and its blocks: the context of the step in progress, or None."""

    __slots__ = ("ctx", "ablate_read", "kernels", "lean")

    def __init__(self):
        self.ctx: _StepContext | None = None
        self.ablate_read = False
        self.kernels: Kernels = EAGER_KERNELS
        self.lean = None  # a lean.LeanStep while `use_lean` is active


class AssociativeBlock(nn.Module):
    """One wrapped decoder block: read -> block -> write (official `AssociativeLayerWrapper`).

    Parameter names match the official code (W_mq, W_mk, W_mv, W_mb, layer) so checkpoints map 1:1.
    """

    def __init__(self, layer: nn.Module, d_model: int, config: ARMTConfig, index: int, slot: _Slot):
        super().__init__()
        self.W_mq = nn.Linear(d_model, config.d_mem, bias=False)
        self.W_mk = nn.Linear(d_model, config.d_mem, bias=False)
        self.W_mv = nn.Linear(d_model, d_model, bias=False)
        nn.init.zeros_(self.W_mv.weight)  # a fresh ARMT equals its backbone (§1.12)
        self.W_mb = nn.Linear(d_model, d_model if config.gating else config.n_heads, bias=True)
        self.layer = layer
        self.index = index
        self.cfg = config
        self.memory = MemoryHooks(index)
        object.__setattr__(self, "_slot", slot)  # not a submodule

    def __getattr__(self, name):  # HF loops may read attributes of the original block
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get("layer")
            if inner is None or name.startswith("__"):
                raise
            return getattr(inner, name)

    def forward(self, hidden_states, *args, **kwargs):
        ctx = self._slot.ctx
        if ctx is None:
            return self.layer(hidden_states, *args, **kwargs)
        cfg, i, hk, kn = self.cfg, self.index, self.memory, self._slot.kernels
        A, z = ctx.state.assoc[i], ctx.state.normalizer[i]
        h = hidden_states
        if ctx.read and not ctx.state.first and not self._slot.ablate_read:
            q = hk.hook_read_query(kn.feature_map(self.W_mq(h), cfg.n_heads, cfg.nu, cfg.normalize_features))
            r, den = kn.read_memory(q, A, z, cfg.eps, cfg.use_denom)
            hk.hook_read_denominator(den)
            h = h + hk.hook_read_out(r).to(h.dtype)
        out = self.layer(h, *args, **kwargs)
        if ctx.write:
            M = cfg.num_mem_tokens
            hs = out[0] if isinstance(out, tuple) else out
            if hk.active("hook_mem_input"):
                hk.hook_mem_input(h[:, -M:])
            m = hk.hook_mem_output(hs[:, -M:])
            k = kn.feature_map(hk.hook_write_key(self.W_mk(m)), cfg.n_heads, cfg.nu, cfg.normalize_features)
            v = hk.hook_write_value(self.W_mv(m))
            beta = hk.hook_write_gate(torch.sigmoid(self.W_mb(m)))
            res = kn.write_memory(
                k, v, beta, A, z, first=ctx.state.first, correction=cfg.correction,
                eps=cfg.eps, use_denom=cfg.use_denom, gamma_eps=cfg.gamma_eps, delta_rule=cfg.delta_rule,
            )
            hk.hook_write_prev_value(res.prev_value)
            hk.hook_correction(res.correction)
            hk.hook_write_delta(res.delta)
            ctx.new_assoc.append(hk.hook_assoc_matrix(res.assoc))
            ctx.new_normalizer.append(hk.hook_normalizer(res.normalizer))
        return out


def split_segments(x: Tensor, segment_size: int, alignment: str = "left") -> list[Tensor]:
    """Cut [batch, seq, ...] along seq as the official wrapper does (ARMT_SPEC §1.3)."""
    L = x.shape[1]
    if alignment == "left":
        return [x[:, s:s + segment_size] for s in range(0, L, segment_size)]
    if alignment == "right":
        starts = list(range(L, 0, -segment_size))[::-1]
        return [x[:, max(s - segment_size, 0):s] for s in starts]
    if alignment == "center":
        return list(torch.chunk(x, math.ceil(L / segment_size), dim=1))
    raise ValueError(f"segment_alignment must be left/right/center, got {alignment!r}")


class ARMTModel(nn.Module):
    """An HF causal LM with associative memory (see module docstring).

    Build with `ARMTModel.from_backbone(hf_model, ARMTConfig(...))`, `from_official(...)`
    or `from_pretrained(dir)`.
    """

    def __init__(self, backbone: nn.Module, config: ARMTConfig, *, _init_memory: bool = True):
        super().__init__()
        if not isinstance(config, ARMTConfig):
            raise TypeError(f"config must be an armt_viz.ARMTConfig, got {type(config).__name__}")
        self.config = config
        self.adapter: BackboneAdapter = adapter_for(backbone, config.layers_attr)
        self.backbone = backbone
        emb = backbone.get_input_embeddings()
        d = emb.weight.shape[1]
        if d % config.n_heads:
            raise ValueError(f"hidden size {d} must be divisible by n_heads={config.n_heads}")
        self.d_model = d
        self._slot = _Slot()
        blocks = get_attr_path(backbone, self.adapter.layers_attr)
        for i in range(len(blocks)):
            blk = blocks[i]
            if isinstance(blk, AssociativeBlock):
                raise ValueError("this backbone is already wrapped by an ARMTModel; build from a fresh HF model")
            blocks[i] = AssociativeBlock(blk, d, config, i, self._slot)
        self.blocks = list(blocks)  # plain list: no duplicate state_dict keys
        self.memory = nn.Parameter(torch.randn(config.num_mem_tokens, d, device=emb.weight.device) * emb.weight.detach().std())
        self.mem_position = extend_positions(backbone, self.adapter, config.num_mem_tokens) if config.wrap_pos else None

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_backbone(cls, backbone: nn.Module, config: ARMTConfig) -> "ARMTModel":
        return cls(backbone, config)

    @classmethod
    def from_official(cls, path, backbone, config: ARMTConfig | None = None, **kw) -> "ARMTModel":
        from .checkpoints import load_official
        return load_official(cls, path, backbone, config, **kw)

    @classmethod
    def from_pretrained(cls, directory) -> "ARMTModel":
        from .checkpoints import load_pretrained
        return load_pretrained(cls, directory)

    def save_pretrained(self, directory) -> None:
        from .checkpoints import save_pretrained
        save_pretrained(self, directory)

    # ----------------------------------------------------------------- introspection
    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    @property
    def vocab_size(self) -> int:
        return self.backbone.get_input_embeddings().weight.shape[0]

    def hook_points(self) -> dict[str, HookPoint]:
        return {p.name: p for b in self.blocks for p in b.memory.points()}

    def hooks(self, hooks):
        """Context manager: attach `[(names, fn), ...]` to hook points; removed on exit."""
        return hooks_scope(self.hook_points(), hooks)

    @contextlib.contextmanager
    def ablate_memory(self):
        """Disable every memory read (writes still happen) inside the block."""
        self._slot.ablate_read = True
        try:
            yield
        finally:
            self._slot.ablate_read = False

    @contextlib.contextmanager
    def memory_kernels(self, kernels: Kernels | None):
        """Run the memory math with `kernels` (e.g. `memory.compiled_kernels()`) inside the block;
        None keeps the current ones. The fast paths use it while capturing a CUDA graph."""
        old = self._slot.kernels
        self._slot.kernels = kernels or old
        try:
            yield
        finally:
            self._slot.kernels = old

    def init_state(self, batch_size: int = 1, device=None) -> MemoryState:
        cfg = self.config
        device = device or self.memory.device
        Fh = 2 * cfg.nu * cfg.d_mem // cfg.n_heads
        Dh = self.d_model // cfg.n_heads
        A = tuple(torch.zeros(1, cfg.n_heads, Fh, Dh, dtype=STATE_DTYPE, device=device) for _ in self.blocks)
        Z = tuple(torch.zeros(1, cfg.n_heads, Fh, dtype=STATE_DTYPE, device=device) for _ in self.blocks)
        return MemoryState(A, Z, 0)

    # ----------------------------------------------------------------- input checks
    def _check_ids(self, input_ids: Tensor) -> Tensor:
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a torch.Tensor of integer token ids, got {type(input_ids).__name__}; wrap with torch.as_tensor(...)")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
            raise TypeError(f"input_ids must have an integer dtype (torch.long), got {input_ids.dtype}; convert with .long() if they are whole numbers")
        if input_ids.ndim == 1:
            input_ids = input_ids.unsqueeze(0)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be [batch, seq] (or [seq]), got shape {tuple(input_ids.shape)}; "
                             "reshape to one row of token ids per sample")
        if input_ids.numel() == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}); pass at least one token")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(
                f"token ids must lie in [0, {self.vocab_size}) for this model's vocabulary, got min {lo}, max {hi}; "
                "encode the text with this model's tokenizer (padding with a valid id, not -100/-1), or use a model "
                "whose vocabulary covers these ids")
        return input_ids.long()

    def _check_mask(self, attention_mask: Tensor | None, input_ids: Tensor) -> Tensor | None:
        if attention_mask is None:
            return None
        if not isinstance(attention_mask, Tensor):
            raise TypeError(f"attention_mask must be a torch.Tensor of 0/1 per token (or None), got "
                            f"{type(attention_mask).__name__}; wrap with torch.as_tensor(...)")
        if attention_mask.ndim == 1:
            attention_mask = attention_mask.unsqueeze(0)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids {tuple(input_ids.shape)}; "
                "pass one 0/1 entry per token, or None"
            )
        if attention_mask.numel() and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (token), got other values "
                             f"(min {attention_mask.min().item()}, max {attention_mask.max().item()}); "
                             "pass one 0/1 entry per token, e.g. (ids != pad_id).long()")
        return attention_mask

    # ----------------------------------------------------------------- the segment step
    def _embed_segment(self, ids: Tensor) -> Tensor:
        emb = self.backbone.get_input_embeddings()(ids)
        mem = self.memory.to(emb.dtype).unsqueeze(0).expand(ids.shape[0], -1, -1)
        return torch.cat([emb, mem], dim=1)

    @contextlib.contextmanager
    def _in_step(self, ctx: _StepContext):
        self._slot.ctx = ctx
        try:
            yield
        finally:
            self._slot.ctx = None

    def step(self, input_ids: Tensor, state: MemoryState | None = None, attention_mask: Tensor | None = None,
             *, write: bool = True, segment: int | None = None, explicit_mask: bool = True) -> SegmentOutput:
        """Run one segment: read from `state`, write into a new state. `input_ids` is [batch, <=S].

        explicit_mask=False (fast paths only, wrap_pos=False, no padding) lets the backbone use its
        own causal path without a mask tensor: same result, no host synchronisation."""
        B, L = input_ids.shape
        M = self.config.num_mem_tokens
        state = state if state is not None else self.init_state(B, input_ids.device)
        state = self._sync_device(state, input_ids.device)
        seg = state.segments if segment is None else segment
        if self._slot.lean is not None and attention_mask is None and write and not torch.is_grad_enabled() \
                and not self.training and not torch.is_autocast_enabled("cpu"):
            return self._slot.lean(input_ids, state, seg)
        x = self._embed_segment(input_ids)
        # Always pass an explicit mask (the official wrapper does too): with mask=None, transformers 5
        # reads non-monotonic position_ids (wrap_pos) as packed sequences and cuts memory off the text.
        am = None
        if explicit_mask or attention_mask is not None or self.mem_position is not None:
            if attention_mask is None:
                attention_mask = torch.ones(B, L, dtype=torch.long, device=input_ids.device)
            am = torch.cat([attention_mask, attention_mask.new_ones(B, M)], dim=1)
        pos = None
        if self.mem_position is not None:
            dev = input_ids.device
            pos = torch.cat([torch.arange(L, device=dev), torch.arange(self.mem_position, self.mem_position + M, device=dev)])
            pos = pos.unsqueeze(0).expand(B, -1)
        ctx = _StepContext(state, read=True, write=write)
        with self._in_step(ctx):
            out = self.backbone(inputs_embeds=x, attention_mask=am, position_ids=pos, use_cache=False)
        logits = out.logits[:, :L]
        new_state = MemoryState(tuple(ctx.new_assoc), tuple(ctx.new_normalizer), state.segments + 1) if write else state
        return SegmentOutput(logits, new_state, seg, input_ids)

    @staticmethod
    def _sync_device(state: MemoryState, device) -> MemoryState:
        if state.assoc and state.assoc[0].device != torch.device(device):
            return state.to(device)
        return state

    def run_segments(self, segments: Iterable[tuple[Tensor, Tensor | None]], state: MemoryState | None = None, *,
                     grad: bool = True, step=None) -> Iterator[SegmentOutput]:
        """THE segment loop: every consumer (forward, stream, generate, fast_stream, training, the recorder)
        goes through it.

        segments: (ids [batch, <=S], padding mask [batch, <=S] or None) per segment, in order.
        state: memory to start from (default: empty); segment indices continue from `state.segments`.
        grad: True runs in the caller's grad mode and passes the state on with its autograd graph (BPTT);
            False runs each step under no_grad and passes on a detached state. Grad mode is switched per step,
            never across a yield: a suspended generator must not leave the caller's code under no_grad.
        step: a SegmentStep (`steps.pick_step` chooses one; `LeanStep`, `GraphedStepper`, a compiled step) that
            runs every segment it accepts (`step.why_not(model, state, ids)` is None, no padding mask); the
            others, e.g. the partial tail of a graph step, run `model.step`.
        """
        seg_index = state.segments if state is not None else 0
        grad_mode = contextlib.nullcontext if grad else torch.no_grad
        for seg_ids, seg_mask in segments:
            with grad_mode():
                if step is not None and seg_mask is None and step.why_not(self, state, seg_ids) is None:
                    out = step(seg_ids, state, seg_index)
                else:
                    out = self.step(seg_ids, state, seg_mask, segment=seg_index)
            state, seg_index = (out.state if grad else out.state.detach()), seg_index + 1
            yield out

    def _split(self, ids: Tensor, mask: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
        """The segments of a whole input, cut as the official wrapper does (ARMT_SPEC §1.3, alignment)."""
        S, align = self.config.segment_size, self.config.segment_alignment
        id_segs = split_segments(ids, S, align)
        mask_segs = split_segments(mask, S, align) if mask is not None else [None] * len(id_segs)
        return list(zip(id_segs, mask_segs))

    def _recut(self, chunks: Iterable) -> Iterator[tuple[Tensor, None]]:
        """Token chunks ([batch, n] or [n]) re-cut into segments of `segment_size` (left alignment; the final
        partial segment is flushed at the end)."""
        S = self.config.segment_size
        buf: Tensor | None = None
        for chunk in chunks:
            c = self._check_ids(torch.as_tensor(chunk, device=self.memory.device))
            if buf is not None and c.shape[0] != buf.shape[0]:
                raise ValueError(f"stream: a chunk has batch {c.shape[0]}, the earlier chunks {buf.shape[0]}; "
                                 "every chunk must hold the same samples ([batch, n] with one batch size)")
            buf = c if buf is None else torch.cat([buf, c], dim=1)
            while buf.shape[1] >= S:
                seg, buf = buf[:, :S], buf[:, S:]
                yield seg, None
        if buf is not None and buf.shape[1] > 0:
            yield buf, None

    def explain_executor(self, attention_mask: Tensor | None = None, input_ids: Tensor | None = None) -> str:
        """Which segment step `model(input_ids)` (with this mask, under the current grad/autocast mode) would run,
        and why (`steps.default_step`; `steps.explain` explains `pick_step` for other runs). On CUDA the choice
        depends on the input's batch size and length: pass it."""
        from .steps import default_step
        return default_step(self, attention_mask, grad=True, build=False, input_ids=input_ids).reason

    def _default_step(self, mask: Tensor | None, grad: bool, ids: Tensor | None = None, purpose: str = "forward"):
        """The step `forward`/`stream` run when none is given (`steps.default_step`); None for the HF step."""
        from .steps import HFStep, default_step
        step = default_step(self, mask, grad, input_ids=ids, purpose=purpose).step
        return None if isinstance(step, HFStep) else step

    # ----------------------------------------------------------------- public runs
    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                labels_mask: Tensor | None = None, state: MemoryState | None = None) -> ARMTOutput:
        """Whole-sequence forward (starts from empty memory unless `state` is given); HF-style output.

        Loss as the official wrapper: concatenated segment logits, global shift, positions where
        labels_mask[:, :-1] is True, mean cross-entropy (ARMT_SPEC §1.7).
        """
        ids = self._check_ids(input_ids)
        mask = self._check_mask(attention_mask, ids)
        logits, last = [], state
        step = self._default_step(mask, grad=True, ids=ids)  # lean CPU step / CUDA graph where exact (steps.default_step)
        static = getattr(step, "static_outputs", False)  # a replayed graph overwrites its outputs at the next segment
        for out in self.run_segments(self._split(ids, mask), state, grad=True, step=step):
            logits.append(out.logits.clone() if static else out.logits)
            last = out.state
        if static and last is not None:
            last = last.clone()
        logits_t = torch.cat(logits, dim=1)
        loss = None
        if labels is not None:
            loss = lm_loss(logits_t, labels, labels_mask)
        return ARMTOutput(logits=logits_t, loss=loss, state=last, ce_loss=loss)

    def stream(self, chunks: Iterable, state: MemoryState | None = None, *, grad: bool = False,
               step=None) -> Iterator[SegmentOutput]:
        """Segment-at-a-time over an iterable of token chunks ([batch, n] or [n] tensors/arrays).

        Chunks are re-cut into segments of `segment_size` (left alignment; the final partial
        segment is flushed at the end). Only one segment's activations are alive at a time,
        so memory stays flat however long the stream is. `step`: a SegmentStep for the segments it
        accepts (see `run_segments`; `steps.pick_step(model, ...)` picks the fastest that applies); left out,
        `steps.default_step` picks (the lean CPU step where exact, else the HF step; on CUDA the HF step, see there).
        """
        if step is None:
            step = self._default_step(None, grad=grad, purpose="stream")
        return self.run_segments(self._recut(chunks), state, grad=grad, step=step)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, **gen_kwargs) -> Tensor:
        """Official semantics (§1.10): write all but the last segment, then HF-generate on the last
        segment without memory tokens, reading the frozen memory at every layer and step.
        Returns only the newly generated tokens."""
        ids = self._check_ids(input_ids)
        mask = self._check_mask(attention_mask, ids)
        segments = self._split(ids, mask)
        state = self.init_state(ids.shape[0], ids.device)
        # the written segments through the default step (the lean step on the CPU, where exact); purpose "stream":
        # each segment's state is taken as it comes, and on CUDA the HF step runs (as for model.stream)
        step = self._default_step(mask, grad=False, purpose="stream")
        for out in self.run_segments(segments[:-1], state, grad=False, step=step):
            state = out.state
        last, last_mask = segments[-1]
        if last_mask is None:
            last_mask = torch.ones_like(last)
        emb = self.backbone.get_input_embeddings()(last)
        with self._in_step(_StepContext(state, read=True, write=False)):
            return self.backbone.generate(inputs_embeds=emb, attention_mask=last_mask, **gen_kwargs)


def lm_loss(logits: Tensor, labels: Tensor, labels_mask: Tensor | None = None) -> Tensor:
    """Official loss: shift globally; keep labels_mask[:, :-1] positions; mean CE."""
    flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    flat_labels = labels[:, 1:].reshape(-1)
    if labels_mask is not None:
        keep = labels_mask[:, :-1].reshape(-1).bool()
        flat_logits, flat_labels = flat_logits[keep], flat_labels[keep]
    return F.cross_entropy(flat_logits.float(), flat_labels)
