"""GPU recording fast path: the segment step AND the recorder's statistics replay as one CUDA graph.

The eager recorder moves dozens of small tensors to the host every segment, which costs more than
the step itself on a GPU. Here the per-segment statistics (summary scalars and, at level "writes",
the write events) are computed on the device inside the captured graph, copied asynchronously into
pinned host buffers after each replay, and handed to the same chunk writer as the eager path once
per chunk. Same store, same schema, same values (tested against the eager recorder on a GPU).

Used by `record(..., fast="auto")` when the model is on CUDA, wrap_pos is off, there are no probes
and the level is "summary" or "writes"; otherwise the eager path runs.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.armt import MemoryState
from ..model.fast import GraphedStepper
from .stats import segment_statistics

__all__ = ["graph_record_eligible", "run_graphed"]


def graph_record_eligible(model, rec) -> bool:
    return (model.memory.device.type == "cuda" and not model.config.wrap_pos and not rec.probes
            and rec.rank <= 1)


def run_graphed(rec, chunks, state: MemoryState | None, seg_index: int, bar, kf_rows=()) -> tuple:
    """Record full segments through the graph; returns (state, next segment index, pending rows, pending
    keyframe rows, leftover ids). A trailing partial segment is left to the caller's eager loop."""
    from .recorder import _Capture
    model, rc, S = rec.model, rec.rc, rec.S
    caps = {True: _Capture(rec.rank), False: _Capture(rec.rank)}
    def extra(out, stepper, first):  # computed inside the captured graph
        return segment_statistics(caps[first].data, out, stepper.A, stepper.ids, mem=rec.M, heads=rec.H,
                                  writes=rec.rank >= 1)

    stepper = None
    pinned: dict[str, torch.Tensor] = {}
    host_tokens: list[np.ndarray] = []
    rows, kf_rows = [], list(kf_rows)
    buf = None
    leftover = None
    for chunk in chunks:
        c = torch.as_tensor(chunk)
        c = c.unsqueeze(0) if c.ndim == 1 else c
        buf = c if buf is None else torch.cat([buf, c], 1)
        while buf.shape[1] >= S:
            seg_ids, buf = buf[:, :S], buf[:, S:]
            if stepper is None:
                stepper = _make_stepper(model, seg_ids.shape[0], caps, extra)
                if state is not None:
                    stepper.load_state(state)
            stepper.step(seg_ids.to(model.memory.device, non_blocking=True), seg_index)
            ex = stepper.last_extra(seg_index)
            i = len(host_tokens)
            for k, t in ex.items():
                if k not in pinned:
                    pinned[k] = torch.empty((rc.chunk_segments,) + tuple(t.shape), dtype=torch.float32, pin_memory=True)
                pinned[k][i].copy_(t, non_blocking=True)
            host_tokens.append(seg_ids.numpy().astype(np.int32))
            state = MemoryState(tuple(stepper.A), tuple(stepper.Z), seg_index + 1)
            if (seg_index + 1) % rc.keyframe_every == 0:
                kf_rows.append(rec._keyframe_row(state, seg_index))
            seg_index += 1
            bar.update(1)
            if seg_index % rc.chunk_segments == 0:
                rows = _host_rows(rec, pinned, host_tokens, seg_index)
                rec._check_rows_finite(rows, seg_index - len(rows))
                rec._flush(rows, kf_rows, state)
                rows, kf_rows, host_tokens = [], [], []
    if host_tokens:
        rows = _host_rows(rec, pinned, host_tokens, seg_index)
        rec._check_rows_finite(rows, seg_index - len(rows))
    if buf is not None and buf.shape[1]:
        leftover = buf
    if state is not None:
        state = MemoryState(tuple(a.clone() for a in state.assoc), tuple(z.clone() for z in state.normalizer), state.segments)
    return state, seg_index, rows, kf_rows, leftover


def _make_stepper(model, B, caps, extra):
    # hooks must be live while the graphs are captured: each graph's capture fills its own capture dict
    with model.hooks(caps[True].hooks(model)):
        stepper = GraphedStepper(model, B, extra=extra, capture=(True,))
    with model.hooks(caps[False].hooks(model)):
        stepper.capture_more(False)
    return stepper


def _host_rows(rec, pinned, host_tokens, seg_end):
    torch.cuda.synchronize()
    n = len(host_tokens)
    seg0 = seg_end - n
    rows = []
    for i in range(n):
        row = {k: v[i].numpy().copy() for k, v in pinned.items()}
        for k in ("write_key", "write_delta"):
            if k in row:
                row[k] = row[k].astype(rec.sdtype)
        row.update(tokens=host_tokens[i], segment=seg0 + i, segment_start=(seg0 + i) * rec.S,
                   segment_length=rec.S)
        rows.append(row)
    return rows
