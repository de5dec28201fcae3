"""`record`: run an ARMT over a token stream and write its memory into a trace store.

The recorder attaches observers to the memory hook points (hooks.py) for the duration
of the run, drives the model's one segment loop (`ARMTModel.run_segments`, through `model.stream`)
with the step it picks (the CUDA-graph step with in-graph statistics, `fast_record.GraphRows`; else the lean CPU step
or the HF step, `steps.pick_step`), reduces what it sees to the schema's variables
(trace/schema.py) and appends them to the zarr store one chunk of segments at a time
(trace/store.py), committing after each chunk together with the exact memory state, so a
killed run resumes where it stopped and the result equals an uninterrupted run. RAM stays
flat: nothing but the current chunk is held. This loop alone owns keyframes, chunking, the
finite check (one check on the host rows of either step, before a chunk is written) and commits.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
import xarray as xr

from ..config import RecordConfig
from ..model.armt import ARMTModel, MemoryState
from ..model.steps import pick_step
from ..trace.io import open_trace
from ..trace.schema import LEVEL_RANK, variables_for
from ..training_range import trained_range, warn_if_beyond
from ..trace.store import TraceWriter, bf16_encode
from .fast_record import GraphRows, graph_record_why_not
from . import guard as _guard
from .flusher import BackgroundFlusher
from .stats import Capture, segment_statistics, singular_values, to_host

__all__ = ["record", "RecordInput", "auto_keyframe_every"]

_log = logging.getLogger(__name__)
# tests set this to route CPU recordings through the graph recorder with emulated graphs (no GPU needed)
_EMULATE_GRAPH = False

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": np.float32}


@dataclass
class RecordInput:
    """A token source: a [batch, seq] tensor/array, or an iterable of [batch, n] chunks, plus an optional ledger."""

    chunks: Iterable
    batch: int | None = None
    total_tokens: int | None = None
    ledger: xr.Dataset | None = None
    description: str = "tokens"


def _as_input(inputs, ledger) -> RecordInput:
    if isinstance(inputs, RecordInput):
        return inputs
    desc = type(inputs).__name__
    if ledger is None and hasattr(inputs, "ledger") and hasattr(inputs, "input_ids"):
        ledger, inputs = inputs.ledger, inputs.input_ids
    if isinstance(inputs, (torch.Tensor, np.ndarray, list)):
        t = torch.as_tensor(np.asarray(inputs) if isinstance(inputs, list) else inputs)
        if t.ndim == 1:
            t = t.unsqueeze(0)
        if t.ndim != 2:
            raise ValueError(f"record: token input must be [batch, seq] or [seq], got shape {tuple(t.shape)}")
        return RecordInput([t], t.shape[0], t.shape[1], ledger, f"tensor {tuple(t.shape)}")
    if isinstance(inputs, (str, bytes)):
        raise TypeError(f"record: expected token ids (tensor/array [batch, seq]) or an iterable of chunks, got {desc}; "
                        "tokenize the text first (e.g. with the model's tokenizer) and pass the ids")
    if isinstance(inputs, Iterable):
        return RecordInput(inputs, None, None, ledger, f"stream ({desc})")
    raise TypeError(f"record: expected token ids (tensor/array [batch, seq]) or an iterable of chunks, got {desc}")


def _skip_tokens(chunks: Iterable, n: int):
    """Drop the first n tokens (along seq) of a chunk stream (resume)."""
    for c in chunks:
        c = torch.as_tensor(c)
        c = c.unsqueeze(0) if c.ndim == 1 else c
        if n >= c.shape[1]:
            n -= c.shape[1]
            continue
        yield c[:, n:]
        n = 0


def _provenance(model: ARMTModel, rc: RecordConfig, inp: RecordInput, seed, description) -> dict[str, Any]:
    import transformers
    import zarr
    import armt_viz
    return {
        "armt_config": model.config.to_json(),
        "backbone_config": json.dumps(model.backbone.config.to_dict(), sort_keys=True, default=str),
        "record_config": rc.to_json(),
        "checkpoint_sha256": getattr(model, "checkpoint_sha256", "") or "",
        "input_description": description or inp.description,
        "seed": -1 if seed is None else int(seed),
        "versions": json.dumps({"armt_viz": armt_viz.__version__, "torch": torch.__version__,
                                "transformers": transformers.__version__, "xarray": xr.__version__,
                                "zarr": zarr.__version__, "python": platform.python_version()}),
        "segment_size": model.config.segment_size,
        "trained_range": _range_attr(model),
    }


def _range_attr(model: ARMTModel) -> str:
    """The model's declared training range as JSON ('' when none), so views can flag runs past it."""
    rng = trained_range(model)
    return json.dumps(rng.to_dict(), sort_keys=True) if rng is not None else ""


def record(model: ARMTModel, inputs, store=None, level: str = "summary", keyframe_every: int | str = "auto",
           probes=None, resume: bool = False, *, chunk_segments: int | None = None, storage_dtype: str = "float32",
           ledger: xr.Dataset | None = None, progress: bool = True, description: str | None = None, seed=None,
           spectrum_rank: int = 16, initial_state: MemoryState | None = None,
           check_finite: bool = True, fast: bool | str = True) -> xr.Dataset:
    """Record `model` over `inputs` into a trace (DESIGN.md §4).

    Args:
        inputs: token ids [batch, seq] (tensor/array), an iterable of [batch, n] chunks (a stream,
            consumed lazily), or a task object with `.input_ids` and `.ledger`.
        store: zarr path; None records into a temporary store and returns the loaded Dataset.
        level: "summary" | "writes" | "full".
        keyframe_every: segments between stored (A, z) keyframes; "auto" (the default) is 64, or, for a
            memory so large that keyframes every 64 segments would cost more than 64 bytes/token, the
            smallest power of two that keeps them within 16 bytes/token, at most 2048 (GPT-2 137M,
            segment 512: 2048).
        probes: [(sample, token_index), ...] whose read query/out/denominator are kept per layer.
        resume: continue a killed recording from its last committed chunk (same inputs and settings).
        storage_dtype: dtype of write events on disk ("float32" exact; "float16"/"bfloat16" half the bytes).
        ledger: task ledger (xarray, dim `event`) stored as `ledger_*` variables.
        fast: on CUDA, replay the step and the statistics as a CUDA graph when possible (same values);
            "compile" also fuses the memory math with torch.compile (equal to rounding; ~15 s to compile).
            On the CPU, run the lean step (`armt_viz.model.lean`: oneDNN products over prepacked weights, fused
            elementwise work; equal to rounding) when the model allows it. False: the HF-wrapped step.
        check_finite: stop with a FloatingPointError naming the segment and layer where a NaN/Inf first
            appears in the memory-token activations, the memory (A, z), the read-outs or the logits
            (the committed prefix stays intact). The check reuses the per-segment norms, so it is cheap.
    Returns the trace, lazily opened from the store (or loaded, with store=None).
    """
    if not isinstance(model, ARMTModel):
        raise TypeError(f"record: model must be an armt_viz.ARMTModel, got {type(model).__name__}")
    if fast not in (True, False, "compile"):
        raise ValueError(f"record: fast must be True, False or 'compile', got {fast!r}")
    if keyframe_every == "auto":
        keyframe_every = auto_keyframe_every(model)
    inp = _peek_batch(_as_input(inputs, ledger))
    batch = inp.batch or 1
    if level in LEVEL_RANK and storage_dtype in _NP_DTYPES:
        _check_chunking(model, level, storage_dtype, batch, chunk_segments)
    rc = RecordConfig(level=level, keyframe_every=keyframe_every,
                      chunk_segments=chunk_segments or _auto_chunk(model, level, storage_dtype, batch),
                      storage_dtype=storage_dtype, spectrum_rank=spectrum_rank)
    if inp.total_tokens:  # a run past the model's declared range (task.json "trained_range") is flagged
        warn_if_beyond(model, inp.total_tokens // model.config.segment_size)
    if inp.ledger is not None and "segment_size" in inp.ledger.attrs \
            and int(inp.ledger.attrs["segment_size"]) != model.config.segment_size:
        raise ValueError(
            f"record: the ledger was made for segment_size={inp.ledger.attrs['segment_size']} but the model cuts "
            f"segments of {model.config.segment_size} tokens, so the ledger's segments would not line up with the "
            "trace; generate the task with segment_size=model.config.segment_size")
    tmp = None
    if store is None:
        tmp = tempfile.mkdtemp(prefix="armt_trace_")
        path = Path(tmp) / "trace.zarr"
    else:
        path = Path(store)
    rec = None
    try:
        rec = _Recording(model, rc, inp, path, probes, resume, progress, seed, description, initial_state,
                         check_finite=check_finite)
        rec.fast = fast
        try:
            rec.run()
        finally:
            rec.writer.close()  # the store's writer lock
        ds = open_trace(path)
        if tmp is not None:
            ds = ds.load()
        return ds
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _keyframe_bytes(model: ARMTModel) -> int:
    cfg = model.config
    return 4 * model.n_layers * cfg.d_key * (model.d_model + 1)  # (A, z) of every layer, float32


def auto_keyframe_every(model: ARMTModel) -> int:
    """64 segments between keyframes, unless that costs more than 64 bytes/token; then the smallest power
    of two that keeps keyframes within 16 bytes/token, at most 2048 (so rebuilding A from the nearest
    keyframe stays cheap). The bytes of a summary trace are otherwise almost all keyframes: 430
    bytes/token for GPT-2 137M at 64."""
    per_token = _keyframe_bytes(model) / model.config.segment_size
    if per_token / 64 <= 64:
        return 64
    return int(min(2048, 2 ** math.ceil(math.log2(per_token / 16))))


def _largest_segment_bytes(model: ARMTModel, level: str, storage_dtype: str, batch: int) -> int:
    """Decompressed bytes of one segment of the largest per-segment variable at `level`, for `batch` samples."""
    cfg, L, d = model.config, model.n_layers, model.d_model
    item = 2 if storage_dtype != "float32" else 4
    big = 4 * cfg.segment_size  # tokens
    if level in ("writes", "full"):
        big = max(big, item * L * cfg.num_mem_tokens * d)  # write_delta
    if level == "full":
        big = max(big, 4 * L * cfg.d_key * d)  # assoc_matrix
    return big * max(int(batch), 1)


def _chunk_cap(model: ARMTModel, level: str, storage_dtype: str, batch: int) -> int:
    """Most segments per chunk whose largest chunk stays within half the reader's max_chunk_bytes (a store the
    reader refuses to open must never be written)."""
    from ..trace.confine import TraceLimits

    return max(1, TraceLimits().max_chunk_bytes // 2 // _largest_segment_bytes(model, level, storage_dtype, batch))


def _check_chunking(model: ARMTModel, level: str, storage_dtype: str, batch: int, chunk_segments) -> None:
    """Refuse, before anything is written, a recording whose chunks the reader would refuse to open."""
    from ..trace.confine import TraceLimits

    one = _largest_segment_bytes(model, level, storage_dtype, batch)
    limit = TraceLimits().max_chunk_bytes
    if one > limit:
        raise ValueError(f"record: one segment of {batch} samples at level {level!r} is {one:,} bytes, more than a "
                         f"trace may hold per chunk ({limit:,}); expected fewer samples per call: record the streams in "
                         f"batches of at most {max(1, batch * limit // one)} samples, or use a lower level or "
                         "storage_dtype='bfloat16'")
    cap = _chunk_cap(model, level, storage_dtype, batch)
    if chunk_segments is not None and int(chunk_segments) > cap:
        raise ValueError(f"record: chunk_segments={chunk_segments} makes chunks of {int(chunk_segments) * one:,} bytes "
                         f"at level {level!r} with {batch} sample(s), more than a trace may hold per chunk; expected at "
                         f"most {cap} segments per chunk; pass chunk_segments<={cap} or leave it out (automatic)")


def _auto_chunk(model: ARMTModel, level: str, storage_dtype: str, batch: int = 1) -> int:
    """Segments per chunk/commit: about 4 MB of per-segment data per chunk (all `batch` samples), and at least the
    size of the resume state saved with each commit, between 16 and 512 segments; fewer where the largest chunk
    would pass the reader's limit (`_chunk_cap`: e.g. 32 streams of GPT-2 write events at 64 segments made
    755 MB chunks, which open_trace refuses).

    Bigger chunks amortise zarr's per-append cost; smaller ones lose less on a crash."""
    cfg, L, d = model.config, model.n_layers, model.d_model
    b = 4 * L * 12 + 4 * cfg.segment_size
    item = 2 if storage_dtype != "float32" else 4
    if level in ("writes", "full"):
        b += L * cfg.num_mem_tokens * (item * (cfg.d_mem + d) + 12)
    if level == "full":
        b += L * (4 * cfg.d_key * (d + 1) + item * cfg.num_mem_tokens * d)
    b *= max(int(batch), 1)
    n = 2 ** int(np.log2(max(int(4e6 // max(b, 1)), 1)))
    # each commit also saves the memory state for resume: keep that below the chunk's own data
    n = max(n, 2 ** math.ceil(math.log2(max(batch * _keyframe_bytes(model) / b, 1))))
    n = min(512, max(16, n))
    cap = _chunk_cap(model, level, storage_dtype, batch)
    return int(min(n, 2 ** int(math.log2(cap))))


def _peek_batch(inp: RecordInput) -> RecordInput:
    """Fill in the batch size of a stream input from its first chunk (put back)."""
    if inp.batch is not None:
        return inp
    it = iter(inp.chunks)
    first = next(it, None)
    if first is None:
        return inp
    c = torch.as_tensor(first)
    inp.batch = int(c.shape[0]) if c.ndim == 2 else 1
    inp.chunks = itertools.chain([first], it)
    return inp


class _Recording:
    def __init__(self, model, rc, inp, path, probes, resume, progress, seed, description, initial_state,
                 check_finite: bool = True):
        self.model, self.rc, self.inp, self.path = model, rc, inp, path
        self.progress, self.initial_state, self.check_finite = progress, initial_state, check_finite
        self.rank = LEVEL_RANK[rc.level]
        self.S = model.config.segment_size
        self.M = model.config.num_mem_tokens
        self.H = model.config.n_heads
        self.sdtype = _NP_DTYPES[rc.storage_dtype]
        self.probes = self._parse_probes(probes)
        self._probe_buf: list = []
        self._probe_index: dict[int, list] = {}
        for i, (smp, tok) in enumerate(self.probes):
            self._probe_index.setdefault(tok // self.S, []).append((i, smp, tok % self.S))
        self.vars = variables_for(rc.level, probes=bool(self.probes))
        attrs = _provenance(model, rc, inp, seed, description)
        self.inp, guarded = _guard.provenance(model, self.inp, self.S)  # weights hash, input fingerprint
        attrs.update(guarded)
        self.writer = TraceWriter(path, attrs=attrs, chunk_segments=rc.chunk_segments, resume=resume)
        self.start_segment = self.writer.sizes["segment"]

    def _parse_probes(self, probes):
        if not probes:
            return []
        out = []
        for p in probes:
            try:
                s, t = (int(p[0]), int(p[1])) if not isinstance(p, (int, np.integer)) else (0, int(p))
            except Exception as exc:
                raise ValueError(f"probes must be (sample, token) pairs, got {p!r}") from exc
            if s < 0 or t < 0:
                raise ValueError(f"probe {p!r}: sample and token must be non-negative")
            out.append((s, t))
        return out

    # ------------------------------------------------------------------ run
    def run(self):
        model, rc = self.model, self.rc
        was_training = model.training
        model.eval()
        state = self.initial_state
        if self.writer.resume_state is not None:
            state = _state_from_npz(self.writer.resume_state, model.memory.device)
        elif self.start_segment:
            raise RuntimeError("store has committed segments but no resume state; it cannot be resumed")
        chunks = self.inp.chunks
        if self.start_segment:
            chunks = _guard.skip_tokens(chunks, self.start_segment * self.S, segment_size=self.S,
                                        store_name=self.path.name)
        first_chunk = self.start_segment == 0
        if first_chunk:
            self._write_static()
        pending_kf = []
        if first_chunk and state is not None:
            # a replay starts from restored memory: keep it as keyframe "-1" so memory_at stays exact
            pending_kf.append(self._keyframe_row(state, -1))
        cap = Capture(self.rank)
        total = None if self.inp.total_tokens is None else math.ceil(self.inp.total_tokens / self.S)
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=self.start_segment, unit="seg", desc="record", disable=not self.progress,
                   mininterval=0.5)
        rows: list = []
        kf_rows: list[dict] = pending_kf
        seg_index = self.start_segment
        self.flusher = BackgroundFlusher(background=model.memory.device.type == "cuda")
        self.graph_rows = None
        try:
            with model.hooks(cap.hooks(model)), torch.no_grad():
                step, chunks = self._pick_step(chunks)
                # THE loop: one segment at a time through the model's one segment loop, whatever the step
                for out in model.stream(chunks, state, step=step):
                    if out.packed is not None:  # the graph step computed the row's statistics inside its graph
                        rows.append(self.graph_rows.row(out, seg_index))
                    else:
                        prev = state if state is not None else model.init_state(out.logits.shape[0], out.logits.device)
                        rows.append(self._segment_row(out, prev, cap, seg_index))
                    state = out.state
                    cap.data.clear()
                    if (seg_index + 1) % rc.keyframe_every == 0:
                        kf_rows.append(self._keyframe_row(state, seg_index))
                    seg_index += 1
                    bar.update(1)
                    if seg_index % rc.chunk_segments == 0:
                        self._submit_flush(rows, kf_rows, state)
                        rows, kf_rows = [], []
                if rows or kf_rows:
                    self._submit_flush(rows, kf_rows, state)
                self.flusher.wait()
                if seg_index == 0:
                    raise ValueError(f"record: the input holds no tokens ({self.inp.description}); expected token "
                                     "ids [batch, seq] with seq >= 1 or a stream yielding at least one token")
                self.writer.commit(_state_to_npz(state) if state is not None else None, complete=True)
        finally:
            self.flusher.close()
            bar.close()
            model.train(was_training)

    def _pick_step(self, chunks):
        """The segment step of this recording (and the chunks to feed it), and why, logged.

        The graph step needs the batch size before the first segment: the first chunk is looked at (and put
        back). Its token blocks go to the device pinned and without a host synchronisation."""
        model = self.model
        why = graph_record_why_not(model, level_rank=self.rank, probes=bool(self.probes),
                                   emulate=_EMULATE_GRAPH) if self.fast else "fast=False"
        if why is None:
            chunks = _device_blocks(chunks, self.rc.chunk_segments * self.S, model.memory.device)
            first = next(chunks, None)
            if first is None:
                return None, []
            self.graph_rows = GraphRows(model, first.shape[0], level_rank=self.rank,
                                        chunk_segments=self.rc.chunk_segments, storage_dtype=self.rc.storage_dtype,
                                        compile_memory=self.fast == "compile", emulate=_EMULATE_GRAPH)
            _log.info("record: the CUDA-graph step with in-graph statistics%s",
                      " (emulated)" if _EMULATE_GRAPH else "")
            return self.graph_rows.step, itertools.chain([first], chunks)
        choice = pick_step(model, fast=bool(self.fast), graph=False)  # the eager rows read the hooks every segment
        _log.info("record: %s (no graph recorder: %s)", choice.reason, why)
        return choice.step, chunks

    def _submit_flush(self, rows: list, kf_rows: list[dict], state: MemoryState) -> None:
        """Hand a finished chunk to the writer thread (rows, keyframe snapshots and `state` must not be
        mutated afterwards; the probe reads gathered so far go with it). Rows still on the device (graph
        step) are copied out asynchronously and unpacked on the writer thread."""
        probes, self._probe_buf = self._probe_buf, []
        host_rows = self.graph_rows.handover(rows) if self.graph_rows is not None else (lambda: rows)
        # the writer thread gets its own copy of the state (a graph step's state is its static buffers)
        self.flusher.submit(self._flush, host_rows, kf_rows, state.clone(), probes)

    # ------------------------------------------------------------------ per segment
    def _segment_row(self, out, prev: MemoryState, cap: Capture, seg: int) -> dict:
        """The host row of one segment run by an eager step (HF or lean), from the hooked tensors."""
        model, d = self.model, cap.data
        ids = out.input_ids
        B, L = out.logits.shape[:2]
        tok = np.full((B, self.S), -1, np.int32)
        tok[:, :L] = ids.cpu().numpy()
        row: dict[str, Any] = to_host(segment_statistics(d, out, prev.assoc, ids, mem=self.M, heads=self.H,
                                                         writes=self.rank >= 1))
        row.update(tokens=tok, segment=seg, segment_start=seg * self.S, segment_length=L)
        if self.rank >= 1:
            row["write_key"] = row["write_key"].astype(self.sdtype)
            row["write_delta"] = row["write_delta"].astype(self.sdtype)
        if self.rank >= 2:
            n = model.n_layers
            row["assoc_matrix"] = np.stack([out.state.flat_assoc(l).expand(B, -1, -1).cpu().numpy() for l in range(n)], 1)
            row["normalizer"] = np.stack([out.state.flat_normalizer(l).expand(B, -1).cpu().numpy() for l in range(n)], 1)
            row["mem_hidden"] = np.stack([d[("hook_mem_output", l)].float().cpu().numpy() for l in range(n)], 1).astype(self.sdtype)
        self._probe_rows(out, d, seg, L)
        return row

    _FINITE_CHECKS = (("read_out_norm_max", "the memory read-out added to its input"),
                      ("write_gate_mean", "the memory-token activations at its output (write gate)"),
                      ("prev_value_norm_mean", "the memory-token activations at its output (write value)"),
                      ("assoc_norm", "its memory matrix A after the write"),
                      ("normalizer_norm", "its memory normalizer z after the write"))

    def _check_rows_finite(self, rows: list[dict]) -> None:
        """Raise at the first segment, and in it the first layer (in forward order), whose statistics are NaN/Inf
        (they are norms, so a single non-finite entry of the tensor shows), or whose logits are. The same check
        for every step's rows (eager or graph), run on the host rows of a chunk before any of it is written."""
        for row in rows:
            where = self._nonfinite_where(row)
            if where is None:
                continue
            bad_params = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
            cause = (f"non-finite weights: {bad_params[:5]}{' ...' if len(bad_params) > 5 else ''}" if bad_params
                     else "the weights are finite, so the activations overflowed (check the input and the weight scale)")
            committed = self.writer._committed
            raise FloatingPointError(
                f"record: NaN/Inf at segment {row['segment']}, {where}. Expected finite activations and memory; "
                f"cause: {cause}. "
                + (f"The store {str(self.path)!r} keeps the {committed} segments committed before it. " if committed
                   else f"Nothing was committed, so no store was created at {str(self.path)!r}. ")
                + "Fix the model (or pass check_finite=False to record the non-finite values anyway)")

    def _nonfinite_where(self, row: dict) -> str | None:
        keys = [key for key, _ in self._FINITE_CHECKS]
        loss = row["segment_loss"] if row["segment_length"] > 1 else np.zeros(1)  # 1 token: no loss (NaN by design)
        logits_ok = not np.asarray(row["nonfinite_logits"]).any()
        if all(np.isfinite(row[k]).all() for k in keys) and np.isfinite(loss).all() and logits_ok:
            return None  # the common case: one pass, no per-layer search
        for l in range(self.model.n_layers):
            for key, what in self._FINITE_CHECKS:
                bad = ~np.isfinite(row[key][:, l])
                if bad.any():
                    return f"layer {l}: {what}, sample(s) {np.flatnonzero(bad).tolist()}"
        return "the output logits (after the last layer)"

    def _probe_rows(self, out, d, seg, L):
        """Gather this segment's probe reads into a buffer (written in bulk at the next commit)."""
        hits = self._probe_index.get(seg) if self.probes else None
        if not hits:
            return
        model = self.model
        idx = torch.tensor([h[1] for h in hits])
        pos = torch.tensor([h[2] for h in hits])
        P, nl = len(hits), model.n_layers
        q = np.zeros((P, nl, 2 * model.config.nu * model.config.d_mem), np.float32)
        r = np.zeros((P, nl, model.d_model), np.float32)
        den = np.full((P, nl, self.H), model.config.eps, np.float32)
        for l in range(nl):
            if ("hook_read_query", l) in d:
                q[:, l] = d[("hook_read_query", l)][idx, pos].float().reshape(P, -1).cpu().numpy()
                r[:, l] = d[("hook_read_out", l)][idx, pos].float().cpu().numpy()
                den[:, l] = d[("hook_read_denominator", l)][idx, pos].float().cpu().numpy()
        pred = out.logits[idx.to(out.logits.device), pos.to(out.logits.device)].argmax(-1).cpu().numpy().astype(np.int32)
        self._probe_buf.append(([h[0] for h in hits], q, r, den, pred))

    def _write_probe_buffer(self, buf: list) -> None:
        if not buf:
            return
        ids = np.concatenate([np.asarray(b[0]) for b in buf])
        g = self.writer.group
        for k, name in enumerate(("read_query", "read_out", "read_denominator", "probe_prediction"), start=1):
            g[name].oindex[ids] = np.concatenate([b[k] for b in buf])

    def _keyframe_row(self, state: MemoryState, seg: int) -> dict:
        """Snapshot (A, z) on the device (no host synchronisation); `_keyframe_host` finishes the row."""
        A = torch.stack([state.flat_assoc(l) for l in range(state.n_layers)], 1)  # [B, layer, F, D]
        z = torch.stack([state.flat_normalizer(l) for l in range(state.n_layers)], 1)
        return {"keyframe_segment": seg, "keyframe_assoc": A, "keyframe_normalizer": z}

    def _keyframe_host(self, row: dict) -> dict:
        """Spectrum and effective rank of a snapshot, and its host copy (runs on the writer thread)."""
        A = row["keyframe_assoc"]
        sv = singular_values(A).cpu()  # [B, layer, min(F, D)], float64, descending
        B, n_layers = A.shape[:2]
        k = self.rc.spectrum_rank
        spec = torch.full((B, n_layers, k), float("nan"), dtype=torch.float64)
        spec[..., :min(k, sv.shape[-1])] = sv[..., :k]
        p = sv / sv.sum(-1, keepdim=True).clamp_min(1e-300)
        ent = -(p * torch.log(p.clamp_min(1e-300))).sum(-1)
        return {"keyframe_segment": row["keyframe_segment"], "keyframe_assoc": A.cpu().numpy().astype(np.float32),
                "keyframe_normalizer": row["keyframe_normalizer"].cpu().numpy().astype(np.float32),
                "spectrum": spec.numpy().astype(np.float32), "effective_rank": torch.exp(ent).numpy().astype(np.float32)}

    # ------------------------------------------------------------------ writing
    def _flush(self, host_rows, kf_rows: list[dict], state: MemoryState, probes: list = ()):
        """Check, write and commit one chunk (on the writer thread, or inline on the CPU). Nothing of a chunk with
        a NaN/Inf is written, so the store keeps the chunks committed before it."""
        w = self.writer
        rows = host_rows()
        if self.check_finite:
            self._check_rows_finite(rows)
        kf_rows = [self._keyframe_host(r) for r in kf_rows]
        if rows:
            data = {}
            bf16 = []
            for name, spec in self.vars.items():
                if spec.append_dim != "segment" or name not in rows[0]:
                    continue
                ax = spec.dims.index("segment")
                vals = [np.asarray(r[name]) for r in rows]
                if spec.dtype == "storage" and self.rc.storage_dtype == "bfloat16":
                    # the graph path's rows come encoded on the device (uint16 bits); an eager row (a partial
                    # last segment) is encoded here, row by row, before rows of both kinds are stacked
                    vals = [v if v.dtype == np.uint16 else bf16_encode(v) for v in vals]
                    bf16.append(name)
                arr = np.stack(vals, axis=ax)
                data[name] = (spec.dims, arr)
            w.append("segment", data)
            for name in bf16:
                if w.group[name].attrs.get("armt_encoding") != "bfloat16":
                    w.group[name].attrs["armt_encoding"] = "bfloat16"
        if kf_rows:
            data = {}
            n0 = w.sizes["keyframe"]
            for name, spec in self.vars.items():
                if spec.append_dim != "keyframe":
                    continue
                if name == "keyframe":
                    data[name] = (spec.dims, np.arange(n0, n0 + len(kf_rows), dtype=np.int64))
                    continue
                ax = spec.dims.index("keyframe")
                data[name] = (spec.dims, np.stack([np.asarray(r[name]) for r in kf_rows], axis=ax))
            w.append("keyframe", data)
        self._write_probe_buffer(probes)
        w.commit(_state_to_npz(state))

    def _write_static(self):
        w = self.writer
        cfg = self.model.config
        if self.probes:
            P = len(self.probes)
            s = np.array([p[0] for p in self.probes], np.int64)
            t = np.array([p[1] for p in self.probes], np.int64)
            w.write_static("probe_sample", ("probe",), s)
            w.write_static("probe_token", ("probe",), t)
            w.write_static("probe_segment", ("probe",), t // self.S)
            w.write_static("probe_position", ("probe",), t % self.S)
            w.write_static("read_query", ("probe", "layer", "key_feature"),
                           np.zeros((P, self.model.n_layers, 2 * cfg.nu * cfg.d_mem), np.float32))
            w.write_static("read_out", ("probe", "layer", "hidden"), np.zeros((P, self.model.n_layers, self.model.d_model), np.float32))
            w.write_static("read_denominator", ("probe", "layer", "head"), np.full((P, self.model.n_layers, self.H), np.nan, np.float32))
            w.write_static("probe_prediction", ("probe",), np.full(P, -1, np.int32))
        if self.inp.ledger is not None:
            for name, v in self.inp.ledger.variables.items():
                vals = np.asarray(v.values)
                if vals.dtype.kind in "UO":
                    vals = vals.astype(str).astype(object)
                    arr = w.group.create_array(name=f"ledger_{name}", shape=vals.shape, dtype=str,
                                               dimension_names=v.dims, chunks=vals.shape or (1,),
                                               config={"write_empty_chunks": True})
                    arr[...] = vals
                    continue
                w.write_static(f"ledger_{name}", tuple(v.dims), vals)
            w.group.attrs["ledger_attrs"] = json.dumps({k: str(v) for k, v in self.inp.ledger.attrs.items()})


def _device_blocks(chunks, block_tokens: int, device):
    """Token chunks gathered on the host into blocks of at least `block_tokens` (the last may be shorter) and sent
    to `device` (pinned, without waiting, on CUDA): one transfer and one id check per block, not per chunk."""
    buf = []
    n = 0
    for c in chunks:
        c = torch.as_tensor(c)
        c = c.unsqueeze(0) if c.ndim == 1 else c
        buf.append(c)
        n += c.shape[1]
        if n >= block_tokens:
            yield _to_device(torch.cat(buf, 1) if len(buf) > 1 else buf[0], device)
            buf, n = [], 0
    if buf:
        yield _to_device(torch.cat(buf, 1) if len(buf) > 1 else buf[0], device)


def _to_device(block: torch.Tensor, device) -> torch.Tensor:
    if block.device.type == "cpu" and torch.device(device).type == "cuda":
        return block.pin_memory().to(device, non_blocking=True)
    return block.to(device)


def _state_to_npz(state: MemoryState) -> dict[str, np.ndarray]:
    out = {"segments": np.array(state.segments)}
    for l, (a, z) in enumerate(zip(state.assoc, state.normalizer)):
        out[f"assoc_{l}"] = a.detach().float().cpu().numpy()
        out[f"normalizer_{l}"] = z.detach().float().cpu().numpy()
    return out


def _state_from_npz(d: dict, device) -> MemoryState:
    n = sum(1 for k in d if k.startswith("assoc_"))
    A = tuple(torch.from_numpy(d[f"assoc_{l}"]).to(device) for l in range(n))
    Z = tuple(torch.from_numpy(d[f"normalizer_{l}"]).to(device) for l in range(n))
    return MemoryState(A, Z, int(d["segments"]))
