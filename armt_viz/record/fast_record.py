"""GPU recording source: the segment step AND the recorder's statistics replay as one CUDA graph.

The eager recorder moves dozens of small tensors to the host every segment, which costs more than
the step itself on a GPU. Here the per-segment statistics (summary scalars, the segment's token ids and,
at level "writes", the write events) are computed on the device inside the captured graph
(`GraphedStepper(extra=...)`), so every full segment's row is one packed float32 vector. `GraphRows`
copies it into a device ring of `chunk_segments` rows; at each flush the recorder hands the chunk's
rows back and gets a function that, on the writer thread, waits for one asynchronous copy of the ring
into pinned host memory and unpacks the rows. Same store, same schema, same values (tested against the
eager recorder with emulated graphs on the CPU, and on a GPU in tests/gpu).

With a half-precision storage dtype the write events are rounded on the device, inside the graph (`to_storage`:
round to nearest even, as the host encoders `trace.store.bf16_encode` and numpy's float16 cast), and ride in the
packed float32 row as pairs of 16-bit patterns: half the bytes to copy to the host, and no encoding on the
writer thread (at 262k tokens of GPT-2 it spent a quarter of its time there).

The recorder (recorder.py) owns the one loop over segments (`model.stream` with the step this module
builds), keyframes, the finite check, flushes and commits; this module only turns a graph step's
packed statistics into rows. It never imports the recorder.

Used by `record(..., fast=True)` (the default) when the model is on CUDA, the graph step applies
(`GraphedStepper.why_not`), there are no probes and the level is "summary" or "writes"; otherwise the
eager rows. `fast="compile"` also captures the `torch.compile`d memory math (a one-off compile of ~15 s).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..model.fast import GraphedStepper
from .stats import Capture, segment_statistics, unpack

__all__ = ["graph_record_why_not", "GraphRows", "PackedRow", "to_storage"]

_EXACT_FLOAT_IDS = 2 ** 24  # token ids ride in the packed float32 statistics: exact below 2**24
_EVENTS = ("write_key", "write_delta")
_HALF = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}


def to_storage(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`x` rounded to the 16-bit `dtype` (round to nearest even), its bit patterns in pairs viewed as one flat
    float32 tensor (padded with a zero pattern to an even count), so they ride in the packed float32 row
    unchanged: every later step (`pack`, the ring, the host copy) copies bits and computes nothing."""
    bits = x.to(dtype).reshape(-1).view(torch.int16)
    if bits.numel() % 2:
        bits = torch.cat([bits, bits.new_zeros(1)])
    return bits.view(torch.float32)


def graph_record_why_not(model, *, level_rank: int, probes: bool, emulate: bool = False) -> str | None:
    """None if the graph recorder can run, else why not (one sentence)."""
    if model.memory.device.type != "cuda" and not emulate:
        return f"the graph recorder needs a CUDA device, the model is on {model.memory.device}"
    if probes:
        return "probes read single positions of the hooked tensors, which the graph does not keep"
    if level_rank > 1:
        return "level 'full' keeps every memory and memory-token state, which the graph does not pack"
    if model.vocab_size > _EXACT_FLOAT_IDS:
        return f"a vocabulary of {model.vocab_size} ids does not fit the packed float32 statistics exactly"
    return GraphedStepper.why_not(model)


@dataclass
class PackedRow:
    """A segment's row still on the device: slot `slot` of the ring, unpacked at the flush."""

    slot: int
    segment: int
    length: int


class GraphRows:
    """The graph step of a recording and its rows (see module docstring).

    step: the GraphedStepper to pass to `model.stream` (it computes the statistics inside its graph).
    row(out, segment): a PackedRow for a graph step's output (its statistics copied into the ring).
    handover(rows): called by the recorder when it flushes `rows` (PackedRows and eager host rows in
        order); queues the ring's copy to the host and returns a function giving the host rows.
    """

    def __init__(self, model, batch: int, *, level_rank: int, chunk_segments: int, storage_dtype: str = "float32",
                 compile_memory: bool = False, emulate: bool = False):
        if storage_dtype not in _HALF:
            raise ValueError(f"storage_dtype must be one of {sorted(_HALF)}, got {storage_dtype!r}")
        self.model, self.rank, self.storage = model, level_rank, storage_dtype
        self.S, M, H = model.config.segment_size, model.config.num_mem_tokens, model.config.n_heads
        caps = {True: Capture(level_rank), False: Capture(level_rank)}
        # write events packed as 16-bit patterns: their shapes. A local the graph's function closes over, never
        # `self`: a cycle through the stepper would keep its CUDA graphs (tens of GB at batch 32) alive after the
        # recording, until Python's cycle collector happened to run
        self.encoded = encoded = {}

        def extra(out, stepper, first):  # computed inside the captured graph
            s = segment_statistics(caps[first].data, out, stepper.A, stepper.ids, mem=M, heads=H,
                                   writes=level_rank >= 1)
            if _HALF[storage_dtype] is not None:
                for k in _EVENTS:
                    if k in s:
                        encoded[k] = tuple(s[k].shape)
                        s[k] = to_storage(s[k], _HALF[storage_dtype])
            s["tokens"] = stepper.ids.float()
            return s
        # each graph's capture fills its own Capture, whose tensors the graph then updates in place
        self.step = GraphedStepper(model, batch, extra=extra, compile_memory=compile_memory, emulate=emulate,
                                   hooks={first: caps[first].hooks(model) for first in (True, False)})
        layouts = list(self.step.layouts.values())
        if any(lay != layouts[0] for lay in layouts):
            raise RuntimeError("the first-segment and later graphs packed different statistics")
        self.layout = layouts[0]
        P = self.layout[-1][3]
        dev = model.memory.device
        self.cuda = dev.type == "cuda"
        self.ring = torch.empty((chunk_segments, P), dtype=torch.float32, device=dev)
        # two host buffers: the next chunk fills the ring while the writer thread unpacks the last one
        self.pinned = [torch.empty((chunk_segments, P), dtype=torch.float32, pin_memory=self.cuda) for _ in range(2)]
        self.which = 0
        self.used = 0  # ring slots filled since the last handover

    def row(self, out, segment: int) -> PackedRow:
        self.ring[self.used].copy_(out.packed)
        self.used += 1
        return PackedRow(self.used - 1, segment, out.logits.shape[1])

    def handover(self, rows: list):
        """Queue the device-to-host copy of the ring's filled slots; the returned function (run on the writer
        thread) waits for it and returns `rows` with every PackedRow replaced by its host row."""
        n, pinned = self.used, self.pinned[self.which]
        self.used, self.which = 0, self.which ^ 1
        if n == 0:
            return lambda: rows
        # `pinned` was last read by the flush before the one in flight, which ended when that one was submitted
        pinned[:n].copy_(self.ring[:n], non_blocking=self.cuda)
        done = None
        if self.cuda:
            done = torch.cuda.Event()
            done.record()

        def host_rows():
            if done is not None:
                done.synchronize()
            flat = pinned[:n].numpy()
            return [self._host_row(flat[r.slot], r) if isinstance(r, PackedRow) else r for r in rows]
        return host_rows

    def _host_row(self, flat: np.ndarray, r: PackedRow) -> dict:
        row = {k: v.copy() for k, v in unpack(flat, self.layout).items()}
        for k, shape in self.encoded.items():  # 16-bit patterns: float16 values, or bfloat16 bits the store keeps
            bits = row[k].reshape(-1).view(np.uint16)[:math.prod(shape)].reshape(shape)
            row[k] = bits.view(np.float16) if self.storage == "float16" else bits
        row.update(tokens=row["tokens"].astype(np.int32), segment=r.segment, segment_start=r.segment * self.S,
                   segment_length=r.length)
        return row
