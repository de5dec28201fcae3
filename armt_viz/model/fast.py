"""GPU fast path: the segment step captured once as a CUDA graph and replayed per segment.

The official implementation is launch-bound on a GPU (one segment at a time, dozens of small
kernels per layer). A CUDA graph replays the whole step -- reads, blocks, writes -- with one
launch. Inputs and the memory state live in static buffers; the last kernels of the graph copy the
new state into the input buffers for the next segment. Two graphs are captured: the first segment
(no read, v-bar = 0, gamma = 1) and every later one. Which one a step replays follows the memory in the
buffers (`reset`: empty; `load_state`: a restored memory, first only if it is empty), never the segment
index a caller reports. `GraphedStepper` is a SegmentStep (steps.py): `ARMTModel.run_segments` gives it
every full segment and runs a partial one through `model.step`.

Exactness: the graph runs the same kernels as the eager step on the same buffers, so results
match the eager path (tested to 1e-5 in float32). With `compile_memory=True` the graph holds the
`torch.compile`d memory math instead (fused kernels; equal to rounding, also tested). Requires wrap_pos=False (the fast path passes
no mask and no position ids, so the backbone's own causal path is used).
"""

from __future__ import annotations

import functools

import torch

from .armt import ARMTModel, MemoryState, SegmentOutput
from .memory import compiled_kernels

__all__ = ["GraphedStepper", "fast_stream", "pack"]


class GraphedStepper:
    static_outputs = True  # each replay overwrites the outputs (logits, state) it returned before

    def __init__(self, model: ARMTModel, batch_size: int = 1, extra=None, capture=(True, False),
                 compile_memory: bool = False, emulate: bool = False, hooks: dict | None = None):
        """extra(out, stepper, first) -> dict of float32 tensors computed inside the graph after the step
        (the recorder's per-segment statistics). The graph packs them into one flat buffer (`packed`), so a
        caller moves a whole segment's statistics with a single copy.

        compile_memory: capture `torch.compile`d memory math (fewer, fused kernels; compiles once per
        process and shape, ~15 s on an H100) instead of the eager functions.
        emulate: no graph; each `step` runs the same function eagerly into the same static buffers. For
            testing the buffer logic (and the recorder's graph path) on a machine without a GPU.
        hooks: {first: [(names, fn), ...]} hook pairs live while that graph is captured (emulated: at every
            step), e.g. the recorder's observers whose tensors `extra` reduces.
        """
        if model.config.wrap_pos:
            raise ValueError("the CUDA-graph fast path needs wrap_pos=False; use model.stream for wrap_pos models")
        dev = model.memory.device
        if dev.type != "cuda" and not emulate:
            raise ValueError(f"the CUDA-graph fast path needs the model on a CUDA device, it is on {dev}")
        self.model, self.B, self.extra, self.emulate = model, batch_size, extra, emulate
        self.hooks = hooks or {}
        self.kernels = compiled_kernels() if compile_memory else None
        S = model.config.segment_size
        self.ids = torch.zeros(batch_size, S, dtype=torch.long, device=dev)
        z = model.init_state(batch_size, dev)
        self.A = [a.expand(batch_size, *a.shape[1:]).clone() for a in z.assoc]
        self.Z = [n.expand(batch_size, *n.shape[1:]).clone() for n in z.normalizer]
        self.graphs, self.outs, self.extras, self.packed, self.layouts = {}, {}, {}, {}, {}
        self.fresh, self.segments, self.last_first = True, 0, True  # the buffers hold the empty memory
        for first in capture:
            self._capture(first)

    @staticmethod
    def why_not(model: ARMTModel, state: MemoryState | None = None, ids: torch.Tensor | None = None) -> str | None:
        """None if a GraphedStepper can run `model` (and, when given, segment `ids` now), else why not.
        Only full segments replay the graph; a partial tail is left to the HF step."""
        if model.config.wrap_pos:
            return "wrap_pos=True (the graph step passes no position ids; use model.stream)"
        if model.training:
            return "the model is in training mode (dropout would be captured); call model.eval() first"
        if ids is not None:
            if ids.shape[1] != model.config.segment_size:
                return f"a partial segment ({ids.shape[1]} of {model.config.segment_size} tokens) has no graph"
            if torch.is_grad_enabled():
                return "autograd is on, and the graph step computes no gradients"
        return None

    def __call__(self, ids: torch.Tensor, state: MemoryState | None, segment: int) -> SegmentOutput:
        """The SegmentStep contract: one full segment from `state` (None: an empty memory). A state this stepper
        returned last continues in place; any other is copied into the buffers first."""
        if ids.shape[0] != self.B:
            raise ValueError(f"this GraphedStepper was captured for batch {self.B}, got a segment of batch "
                             f"{ids.shape[0]}; build one per batch size")
        if state is None:
            self.reset()
        elif not self.holds(state):
            self.load_state(state)
        return self.step(ids, segment)

    def holds(self, state: MemoryState) -> bool:
        """Whether `state` is the memory in this stepper's buffers (the state its last step returned)."""
        return state.segments == self.segments and all(
            a.data_ptr() == b.data_ptr() for a, b in zip(state.assoc + state.normalizer, self.A + self.Z))

    def _run(self, first: bool):
        st = MemoryState(tuple(self.A), tuple(self.Z), 0 if first else 1)
        with self.model.hooks(self.hooks.get(first, [])), self.model.memory_kernels(self.kernels):
            out = self.model.step(self.ids, st, explicit_mask=False)
        packed = pack(self.extra(out, self, first)) if self.extra else (None, [])
        # the new state goes into the input buffers inside the graph, after everything that reads the old one
        for a, a_new in zip(self.A, out.state.assoc):
            a.copy_(a_new)
        for z, z_new in zip(self.Z, out.state.normalizer):
            z.copy_(z_new)
        return out, packed

    @torch.no_grad()
    def _capture(self, first: bool):
        saved = [t.clone() for t in self.A + self.Z]  # the warm-up runs advance the state; put it back
        if self.emulate:
            out, packed = self._run(first)
            g = None
        else:
            s = _side_stream(self.ids.device)
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                for _ in range(2):
                    self._run(first)
            torch.cuda.current_stream().wait_stream(s)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                out, packed = self._run(first)
        for t, v in zip(self.A + self.Z, saved):
            t.copy_(v)
        self._keep(first, g, out, packed)

    def _keep(self, first, g, out, packed):
        flat, layout = packed
        self.graphs[first], self.outs[first], self.packed[first], self.layouts[first] = g, out, flat, layout
        self.extras[first] = {k: flat[a:b].view(shape) for k, shape, a, b in layout}  # views of the packed buffer

    @torch.no_grad()
    def reset(self) -> None:
        """Start a fresh memory: the next `step` runs the first-segment graph (no read, v-bar 0, gamma 1)."""
        for t in self.A + self.Z:
            t.zero_()
        self.fresh, self.segments = True, 0

    @torch.no_grad()
    def load_state(self, state: MemoryState) -> None:
        """Continue from `state`: its memory goes into the buffers, and the next `step` is its segment
        `state.segments` (the first-segment graph only when `state` is the empty memory, segments == 0)."""
        for a, src in zip(self.A, state.assoc):
            a.copy_(src.expand_as(a))
        for z, src in zip(self.Z, state.normalizer):
            z.copy_(src.expand_as(z))
        self.fresh, self.segments = state.first, state.segments

    @torch.no_grad()
    def step(self, ids: torch.Tensor, segment: int | None = None) -> SegmentOutput:
        """One full segment from the memory in the buffers (after `reset` or `load_state`, or the previous step).

        Whether it is a first segment follows the memory the buffers hold, never `segment`: a stream that
        continues a restored memory (replay, record(initial_state=...)) numbers its segments from anything.
        segment: the index reported in the output (default: the memory's segment count)."""
        first = self.fresh
        self.ids.copy_(ids, non_blocking=True)
        if self.emulate:
            self._keep(first, None, *self._run(first))
        else:
            self.graphs[first].replay()
        self.fresh = False
        self.segments += 1
        seg = self.segments - 1 if segment is None else segment
        state = MemoryState(tuple(self.A), tuple(self.Z), self.segments)
        self.last_first = first
        return SegmentOutput(self.outs[first].logits, state, seg, ids, self.packed[first], self.layouts[first])

    def last_extra(self) -> dict:
        """The `extra` tensors of the latest replay (views of static buffers: copy before the next step)."""
        return self.extras[self.last_first]

    def last_packed(self) -> torch.Tensor | None:
        """All `extra` tensors of the latest replay as one flat float32 buffer (static: copy before the next step)."""
        return self.packed[self.last_first]


def pack(stats: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[tuple[str, tuple, int, int]]]:
    """Tensors as one flat float32 tensor plus its layout [(name, shape, start, stop)], so one copy moves them all."""
    layout, i = [], 0
    for k, t in stats.items():
        layout.append((k, tuple(t.shape), i, i + t.numel()))
        i += t.numel()
    return torch.cat([t.reshape(-1).float() for t in stats.values()]), layout


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """One warm-up stream per device for every capture. cuBLAS keeps a workspace (32 MiB on an H100) for each
    stream it ever ran on, so a new stream per capture leaked ~66 MiB of GPU memory per `record` call."""
    return torch.cuda.Stream(device=device)


def fast_stream(model: ARMTModel, ids: torch.Tensor, stepper=None, *, compile_memory: bool = False):
    """Like `model.stream([ids])`, fast: the same loop (`ARMTModel.run_segments`) with the fastest step for the
    device. On CUDA full segments replay a CUDA graph and the yielded SegmentOutputs' logits/state are views of
    static buffers, valid until the next segment (copy what you keep); a GraphedStepper can be reused across
    calls (each call starts from a fresh memory) and `compile_memory` applies when none is given. On the CPU
    every segment runs the lean step (`lean.LeanStep`, which can also be passed as `stepper`); outputs are
    ordinary tensors."""
    if stepper is None:
        if model.memory.device.type == "cpu":
            from .lean import LeanStep
            stepper = LeanStep(model)
        else:
            stepper = GraphedStepper(model, ids.shape[0], compile_memory=compile_memory)
    return model.stream([ids], None, step=stepper)
