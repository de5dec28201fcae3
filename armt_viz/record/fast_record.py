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

__all__ = ["graph_record_eligible", "run_graphed"]


def graph_record_eligible(model, rec) -> bool:
    return (model.memory.device.type == "cuda" and not model.config.wrap_pos and not rec.probes
            and rec.rank <= 1)


def _device_stats(rec, cap_data: dict, out, stepper: GraphedStepper, first: bool) -> dict:
    model, M, H = rec.model, rec.M, rec.H
    L = model.n_layers
    B, S = out.logits.shape[:2]
    f32 = lambda x: x.float()  # noqa: E731
    stats = {}
    A_new = [a for a in out.state.assoc]
    stats["assoc_norm"] = torch.stack([a.flatten(1).norm(dim=1) for a in A_new], 1)
    stats["normalizer_norm"] = torch.stack([z.flatten(1).norm(dim=1) for z in out.state.normalizer], 1)
    stats["write_delta_norm"] = torch.stack([(a - p).flatten(1).norm(dim=1) for a, p in zip(A_new, stepper.A)], 1)
    zeros = torch.zeros(B, L, device=out.logits.device)
    if first:
        for k in ("read_out_norm_mean", "read_out_norm_max", "read_denominator_mean"):
            stats[k] = zeros
    else:
        rn = [f32(cap_data[("hook_read_out", l)][:, :S]).norm(dim=-1) for l in range(L)]
        stats["read_out_norm_mean"] = torch.stack([r.mean(1) for r in rn], 1)
        stats["read_out_norm_max"] = torch.stack([r.amax(1) for r in rn], 1)
        stats["read_denominator_mean"] = torch.stack(
            [f32(cap_data[("hook_read_denominator", l)][:, :S]).mean((1, 2)) for l in range(L)], 1)
    g = torch.stack([f32(cap_data[("hook_write_gate", l)]).mean(-1) for l in range(L)], 1)  # [B, L, M]
    c = torch.stack([f32(cap_data[("hook_correction", l)]).expand(B, M, H) for l in range(L)], 1)
    pv = torch.stack([f32(cap_data[("hook_write_prev_value", l)]).norm(dim=-1).expand(B, M) for l in range(L)], 1)
    stats.update(write_gate_mean=g.mean(-1), correction_mean=c.mean((2, 3)), correction_min=c.amin((2, 3)),
                 prev_value_norm_mean=pv.mean(-1))
    ids = stepper.ids
    lg = out.logits[:, :-1].float()
    stats["segment_loss"] = torch.nn.functional.cross_entropy(
        lg.reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1), reduction="none").reshape(B, S - 1).mean(1)
    if rec.rank >= 1:
        stats["write_key"] = torch.stack([f32(cap_data[("hook_write_key", l)]) for l in range(L)], 1)
        stats["write_delta"] = torch.stack([f32(cap_data[("hook_write_delta", l)]).expand(B, M, -1) for l in range(L)], 1)
        stats.update(write_gate=g, write_correction=c, write_prev_value_norm=pv)
    return stats


def run_graphed(rec, chunks, state: MemoryState | None, seg_index: int, bar, kf_rows=()) -> tuple:
    """Record full segments through the graph; returns (state, next segment index, pending rows, pending
    keyframe rows). A trailing partial segment is returned unprocessed to the caller (as leftover ids)."""
    from .recorder import _Capture
    model, rc, S = rec.model, rec.rc, rec.S
    caps = {True: _Capture(rec.rank), False: _Capture(rec.rank)}
    current = {"first": True}

    def extra(out, stepper, first):
        return _device_stats(rec, caps[first].data, out, stepper, first)

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
                stepper = _make_stepper(model, seg_ids.shape[0], caps, extra, current)
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


def _make_stepper(model, B, caps, extra, current):
    # hooks must be live while the graphs are captured: each graph's capture fills its own capture dict
    with model.hooks(caps[True].hooks(model)):
        first_only = GraphedStepper(model, B, extra=extra, capture=(True,))
    with model.hooks(caps[False].hooks(model)):
        first_only.capture_more(False)
    return first_only


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
