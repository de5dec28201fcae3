"""GPU fast path: the segment step captured once as a CUDA graph and replayed per segment.

The official implementation is launch-bound on a GPU (one segment at a time, dozens of small
kernels per layer). A CUDA graph replays the whole step -- reads, blocks, writes -- with one
launch. Inputs and the memory state live in static buffers; after each replay the new state is
copied into the input buffers for the next segment. Two graphs are captured: the first segment
(no read, v-bar = 0, gamma = 1) and every later one. A final partial segment runs eagerly.

Exactness: the graph runs the same kernels as the eager step on the same buffers, so results
match the eager path (tested to 1e-5 in float32). Requires wrap_pos=False (the fast path passes
no mask and no position ids, so the backbone's own causal path is used).
"""

from __future__ import annotations

import torch

from .armt import ARMTModel, MemoryState, SegmentOutput

__all__ = ["GraphedStepper", "fast_stream"]


class GraphedStepper:
    def __init__(self, model: ARMTModel, batch_size: int = 1, extra=None, capture=(True, False)):
        """extra(out, stepper, first) -> dict of tensors computed inside the graph after the step
        (the recorder's per-segment statistics); returned by `step` as static buffers."""
        if model.config.wrap_pos:
            raise ValueError("the CUDA-graph fast path needs wrap_pos=False; use model.stream for wrap_pos models")
        dev = model.memory.device
        if dev.type != "cuda":
            raise ValueError(f"the CUDA-graph fast path needs the model on a CUDA device, it is on {dev}")
        self.model, self.B, self.extra = model, batch_size, extra
        S = model.config.segment_size
        self.ids = torch.zeros(batch_size, S, dtype=torch.long, device=dev)
        z = model.init_state(batch_size, dev)
        self.A = [a.expand(batch_size, *a.shape[1:]).clone() for a in z.assoc]
        self.Z = [n.expand(batch_size, *n.shape[1:]).clone() for n in z.normalizer]
        self.graphs, self.outs, self.extras = {}, {}, {}
        for first in capture:
            self._capture(first)

    def capture_more(self, first: bool) -> None:
        self._capture(first)

    def _run(self, first: bool):
        st = MemoryState(tuple(self.A), tuple(self.Z), 0 if first else 1)
        out = self.model.step(self.ids, st, explicit_mask=False)
        return out, (self.extra(out, self, first) if self.extra else {})

    @torch.no_grad()
    def _capture(self, first: bool):
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(2):
                self._run(first)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out, extra = self._run(first)
        self.graphs[first], self.outs[first], self.extras[first] = g, out, extra

    @torch.no_grad()
    def step(self, ids: torch.Tensor, segments_done: int) -> SegmentOutput:
        first = segments_done == 0
        self.ids.copy_(ids)
        self.graphs[first].replay()
        out = self.outs[first]
        for a, a_new in zip(self.A, out.state.assoc):
            a.copy_(a_new)
        for z, z_new in zip(self.Z, out.state.normalizer):
            z.copy_(z_new)
        state = MemoryState(tuple(self.A), tuple(self.Z), segments_done + 1)
        return SegmentOutput(out.logits, state, segments_done, ids)

    def last_extra(self, segments_done: int) -> dict:
        """The `extra` tensors of the latest replay (static buffers: copy before the next step)."""
        return self.extras[segments_done == 0]

    def load_state(self, state: MemoryState):
        for a, src in zip(self.A, state.assoc):
            a.copy_(src.expand_as(a))
        for z, src in zip(self.Z, state.normalizer):
            z.copy_(src.expand_as(z))


@torch.no_grad()
def fast_stream(model: ARMTModel, ids: torch.Tensor, stepper: GraphedStepper | None = None):
    """Like `model.stream([ids])` but full segments replay a CUDA graph. Yields SegmentOutputs whose
    logits/state are views of static buffers, valid until the next segment (copy what you keep)."""
    stepper = stepper or GraphedStepper(model, ids.shape[0])
    S = model.config.segment_size
    n_full = ids.shape[1] // S
    state = None
    for i in range(n_full):
        out = stepper.step(ids[:, i * S:(i + 1) * S], i)
        state = out.state
        yield out
    if ids.shape[1] % S:
        yield model.step(ids[:, n_full * S:], state, segment=n_full)
