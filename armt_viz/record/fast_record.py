"""GPU recording fast path: the segment step AND the recorder's statistics replay as one CUDA graph.

The eager recorder moves dozens of small tensors to the host every segment, which costs more than
the step itself on a GPU. Here the per-segment statistics (summary scalars and, at level "writes",
the write events) are computed on the device inside the captured graph, copied asynchronously into
pinned host buffers once per chunk, and handed to the same chunk writer as the eager path on the
writer thread. Same store, same schema, same values (tested against the eager recorder on a GPU).

Used by `record(..., fast=True)` (the default) when the model is on CUDA, wrap_pos is off, there are no
probes and the level is "summary" or "writes"; otherwise the eager path runs. `fast="compile"` also
captures the `torch.compile`d memory math (fewer kernels; a one-off compile of ~15 s).
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.armt import MemoryState
from ..model.fast import GraphedStepper
from .stats import segment_statistics, unpack

__all__ = ["graph_record_eligible", "run_graphed"]


def graph_record_eligible(model, rec) -> bool:
    return (model.memory.device.type == "cuda" and not model.config.wrap_pos and not rec.probes
            and rec.rank <= 1)


def run_graphed(rec, chunks, state: MemoryState | None, seg_index: int, bar, kf_rows=()) -> tuple:
    """Record full segments through the graph; returns (state, next segment index, pending rows, pending
    keyframe rows, leftover ids). A trailing partial segment is left to the caller's eager loop.

    Per segment the host only replays the graph and enqueues one device-to-device copy of the packed
    statistics into a ring of `chunk_segments` rows; nothing waits for the GPU. Per chunk: one
    asynchronous copy of the ring into pinned memory (two buffers, so the next chunk can fill the ring
    while the writer thread unpacks and writes the last one), a device snapshot of the state for resume.
    Token ids go to the device once per block of segments."""
    from .recorder import _Capture
    model, rc, S = rec.model, rec.rc, rec.S
    dev = model.memory.device
    cuda = dev.type == "cuda"  # else the graphs are emulated (tests on machines without a GPU)
    caps = {True: _Capture(rec.rank), False: _Capture(rec.rank)}

    def extra(out, stepper, first):  # computed inside the captured graph
        return segment_statistics(caps[first].data, out, stepper.A, stepper.ids, mem=rec.M, heads=rec.H,
                                  writes=rec.rank >= 1)

    stepper = ring = None
    pinned: list[torch.Tensor] = []
    which = 0
    host_tokens: list[np.ndarray] = []
    kf_rows = list(kf_rows)
    buf = None
    for chunk in chunks:
        c = torch.as_tensor(chunk)
        c = c.unsqueeze(0) if c.ndim == 1 else c
        buf = c if buf is None else torch.cat([buf, c], 1)
        while buf.shape[1] >= S:
            n = min(buf.shape[1] // S, rc.chunk_segments)
            block, buf = buf[:, :n * S], buf[:, n * S:]
            if cuda and block.device.type == "cpu":
                block_dev = block.pin_memory().to(dev, non_blocking=True)
            else:  # ids already on the device (or an emulated graph): no pinning
                block_dev = block.to(dev)
            block_np = block.cpu().numpy().astype(np.int32)
            for j in range(n):
                if stepper is None:
                    stepper = _make_stepper(model, block.shape[0], caps, extra, compile_memory=rec.fast == "compile",
                                            emulate=not cuda)
                    if state is not None:  # a restored memory (resume, replay, initial_state)
                        stepper.load_state(state)
                    layout = _layout(stepper)
                    P = layout[-1][3]
                    ring = torch.empty((rc.chunk_segments, P), dtype=torch.float32, device=dev)
                    pinned = [torch.empty((rc.chunk_segments, P), dtype=torch.float32, pin_memory=cuda) for _ in range(2)]
                stepper.step(block_dev[:, j * S:(j + 1) * S], seg_index)
                ring[len(host_tokens)].copy_(stepper.last_packed())
                host_tokens.append(block_np[:, j * S:(j + 1) * S])
                state = MemoryState(tuple(stepper.A), tuple(stepper.Z), stepper.segments)
                if (seg_index + 1) % rc.keyframe_every == 0:
                    kf_rows.append(rec._keyframe_row(state, seg_index))
                seg_index += 1
                bar.update(1)
                if seg_index % rc.chunk_segments == 0 or len(host_tokens) == rc.chunk_segments:
                    _hand_over(rec, ring, pinned[which], host_tokens, seg_index, layout, kf_rows, _snapshot(state))
                    which ^= 1
                    host_tokens, kf_rows = [], []
    rows = []
    if host_tokens:  # an incomplete chunk: the caller's loop appends the eager tail and flushes
        rec.flusher.wait()
        n = len(host_tokens)
        pinned[which][:n].copy_(ring[:n])
        rows = _host_rows(rec, pinned[which][:n].numpy(), layout, host_tokens, seg_index)
        rec._check_rows_finite(rows, seg_index - len(rows))
    leftover = buf if buf is not None and buf.shape[1] else None
    if state is not None:
        state = _snapshot(state)
    return state, seg_index, rows, kf_rows, leftover


def _snapshot(state: MemoryState) -> MemoryState:
    return MemoryState(tuple(a.clone() for a in state.assoc), tuple(z.clone() for z in state.normalizer), state.segments)


def _layout(stepper) -> list:
    layouts = list(stepper.layouts.values())
    assert all(lay == layouts[0] for lay in layouts), "first and later segments must pack the same statistics"
    return layouts[0]


def _hand_over(rec, ring, pinned, host_tokens, seg_end, layout, kf_rows, state) -> None:
    """Queue the chunk's device-to-host copy and give the writer thread the rest."""
    n = len(host_tokens)
    # `pinned` was last read by the flush before the one in flight, which ended when that one was submitted
    pinned[:n].copy_(ring[:n], non_blocking=True)
    done = None
    if ring.is_cuda:
        done = torch.cuda.Event()
        done.record()

    def finish():
        if done is not None:
            done.synchronize()
        rows = _host_rows(rec, pinned[:n].numpy(), layout, host_tokens, seg_end)
        rec._check_rows_finite(rows, seg_end - n)
        rec._flush(rows, kf_rows, state, [])

    rec.flusher.submit(finish)


def _make_stepper(model, B, caps, extra, compile_memory=False, emulate=False):
    # each graph's capture fills its own capture dict, whose tensors the graph then updates in place
    return GraphedStepper(model, B, extra=extra, compile_memory=compile_memory, emulate=emulate,
                          hooks={first: caps[first].hooks(model) for first in (True, False)})


def _host_rows(rec, flat: np.ndarray, layout, host_tokens, seg_end):
    n = len(host_tokens)
    seg0 = seg_end - n
    rows = []
    for i in range(n):
        row = {k: v.copy() for k, v in unpack(flat[i], layout).items()}
        for k in ("write_key", "write_delta"):
            if k in row:
                row[k] = row[k].astype(rec.sdtype)
        row.update(tokens=host_tokens[i], segment=seg0 + i, segment_start=(seg0 + i) * rec.S,
                   segment_length=rec.S)
        rows.append(row)
    return rows
