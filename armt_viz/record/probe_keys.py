"""Key probing: ask the model about every live key from the memory stored at chosen segments.

`probe_keys(model, ds, at_segments)` is the model-side half of the stale-answer analysis (DESIGN.md §4, issue 5):
for every chosen segment S and every key the ledger says is live after S, it restores the memory after S's write
exactly (`restore_state`: `memory_at` -> `MemoryState.from_flat`), runs the model on a query segment in the task's
format, reads the greedy answer and appends the results to the trace. `armt_viz.analysis.answer_status(ds,
source="key_probe")` then classifies the answers as current / stale / other / wrong.

Query format: the AR and stream tasks ask `k GEN` (key digits, little-endian base 16, then GEN) and answer V value
digits, or V copies of NONE for an absent value (stream). The query is run as segment S+1 with writes off; the
memory tokens of a segment sit after its input tokens, so causal attention makes this the same computation as
`ARMTModel.generate` (official semantics, ARMT_SPEC.md §1.10).

Added variables (dim `key_probe`, one row per (segment, sample, key)):
    key_probe_segment   memory after this segment's write          key_probe_sample    sample
    key_probe_fact      key (fact id)                               key_probe_version   version live after S
    key_probe_expected  value code live after S (-1: absent)        key_probe_answer    decoded answer code
                                                                    (-1: NONE, -2: malformed)
    key_probe_tokens    (key_probe, answer_position) greedy tokens
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import xarray as xr

from ..analysis import facts_of, json_attr, ledger_of
from ..model.armt import ARMTModel, MemoryState
from .replay import restore_state

__all__ = ["probe_keys"]

_MALFORMED = -2
_ATTRS = {
    "key_probe_segment": ("segment whose memory (after its write) answered the query", "1"),
    "key_probe_sample": ("sample of the probed key", "1"),
    "key_probe_fact": ("probed key (fact id)", "1"),
    "key_probe_version": ("version of the key live after the segment", "1"),
    "key_probe_expected": ("value code live after the segment (-1 absent)", "1"),
    "key_probe_answer": ("decoded greedy answer (-1 NONE, -2 malformed)", "1"),
    "key_probe_tokens": ("greedy answer tokens", "1"),
}


def _task_format(ledger: xr.Dataset) -> tuple[int, int, int, int]:
    params = json_attr(ledger.attrs, "params", {}) or {}
    special = json_attr(ledger.attrs, "special_tokens", {}) or {}
    if not isinstance(params, dict) or "key_size" not in params or "GEN" not in special:
        raise ValueError(
            "probe_keys supports the AR and stream tasks (query `k GEN`), whose ledger attrs give params.key_size, "
            f"params.value_size and special_tokens.GEN; this ledger's task is {ledger.attrs.get('task')!r}"
        )
    return int(params["key_size"]), int(params["value_size"]), int(special["GEN"]), int(special.get("NONE", -1))


def _live_keys(facts, sample: int, segment: int, include_absent: bool):
    """(fact, version, value) of every key whose latest version at the end of `segment` is a write
    (and deleted keys too with include_absent)."""
    m = (facts.ver_sample == sample) & (facts.ver_segment <= segment)
    idx = np.flatnonzero(m)
    if len(idx) == 0:
        return np.zeros((0, 3), np.int64)
    # versions are sorted by (sample, fact, version): the last row per fact is the live one
    fact = facts.ver_fact[idx]
    last = idx[np.r_[fact[1:] != fact[:-1], True]]
    keep = last if include_absent else last[facts.ver_value[last] >= 0]
    return np.stack([facts.ver_fact[keep], facts.ver_version[keep], facts.ver_value[keep]], 1)


def _decode(tokens: np.ndarray, none_token: int) -> np.ndarray:
    """[n, V] answer tokens -> value codes (base-16 little-endian), -1 for all-NONE, -2 otherwise."""
    digits_ok = (tokens >= 0) & (tokens < 16)
    codes = (np.where(digits_ok, tokens, 0) * 16 ** np.arange(tokens.shape[1], dtype=np.int64)).sum(1)
    out = np.where(digits_ok.all(1), codes, _MALFORMED)
    return np.where((tokens == none_token).all(1), -1, out)


@torch.no_grad()
def _greedy(model: ARMTModel, state: MemoryState, ids: torch.Tensor, n_new: int) -> torch.Tensor:
    out = []
    for _ in range(n_new):
        logits = model.step(ids, state, write=False).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        ids = torch.cat([ids, nxt], 1)
    return torch.cat(out, 1)


def _state_for(model: ARMTModel, full: MemoryState, sample: int, n: int) -> MemoryState:
    """The memory of one sample, repeated for a batch of n queries."""
    A = tuple(a[sample:sample + 1].expand(n, *a.shape[1:]).contiguous() for a in full.assoc)
    Z = tuple(z[sample:sample + 1].expand(n, *z.shape[1:]).contiguous() for z in full.normalizer)
    return MemoryState(A, Z, full.segments)


def probe_keys(model: ARMTModel, ds: xr.Dataset, at_segments, *, ledger: xr.Dataset | None = None,
               samples=None, include_absent: bool = False, batch_size: int = 256, write: bool = True) -> xr.Dataset:
    """Replay `k GEN` for every live key after each segment of `at_segments`; return `ds` with key_probe_* added.

    Args:
        model: the ARMTModel that produced the trace (same config).
        ds: a trace from which memory_at can rebuild the memory (level "writes"/"full", or keyframes at
            `at_segments`), holding the task ledger (or pass `ledger=`).
        at_segments: segment indices S; the memory after S's write answers.
        samples: samples to probe (default all).
        include_absent: also ask about deleted keys (expected answer: NONE).
        batch_size: queries per forward pass.
        write: also store the new variables in the trace's zarr store, when `ds` was opened from one.
    """
    if not isinstance(model, ARMTModel):
        raise TypeError(f"probe_keys: model must be an armt_viz.ARMTModel, got {type(model).__name__}")
    led = ledger_of(ds, ledger, required=True)
    K, V, gen, none = _task_format(led)
    facts = facts_of(led)
    n_seg = ds.sizes["segment"]
    segments = np.atleast_1d(np.asarray(at_segments, dtype=np.int64))
    bad = segments[(segments < 0) | (segments >= n_seg)]
    if len(bad):
        raise IndexError(f"probe_keys: at_segments {bad.tolist()} outside the trace's segments [0, {n_seg})")
    samples = np.arange(ds.sizes["sample"]) if samples is None else np.atleast_1d(np.asarray(samples))
    device = model.memory.device
    rows, answers = [], []
    was_training = model.training
    model.eval()
    try:
        for S in segments:
            full = restore_state(model, ds, int(S))
            for s in samples:
                live = _live_keys(facts, int(s), int(S), include_absent)
                for b0 in range(0, len(live), batch_size):
                    chunk = live[b0:b0 + batch_size]
                    digits = (chunk[:, :1] // 16 ** np.arange(K, dtype=np.int64)) % 16
                    ids = torch.as_tensor(np.concatenate([digits, np.full((len(chunk), 1), gen)], 1), device=device)
                    tokens = _greedy(model, _state_for(model, full, int(s), len(chunk)), ids, V).cpu().numpy()
                    answers.append(tokens)
                    rows.append(np.column_stack([np.full(len(chunk), S), np.full(len(chunk), s), chunk]))
    finally:
        model.train(was_training)
    table = np.concatenate(rows) if rows else np.zeros((0, 5), np.int64)
    tokens = np.concatenate(answers) if answers else np.zeros((0, V), np.int64)
    data = {
        "key_probe_segment": table[:, 0], "key_probe_sample": table[:, 1], "key_probe_fact": table[:, 2],
        "key_probe_version": table[:, 3], "key_probe_expected": table[:, 4],
        "key_probe_answer": _decode(tokens, none), "key_probe_tokens": tokens.astype(np.int32),
    }
    new = {name: xr.Variable(("key_probe",) if v.ndim == 1 else ("key_probe", "answer_position"),
                             np.asarray(v, dtype=np.int32 if name == "key_probe_tokens" else np.int64),
                             attrs={"long_name": _ATTRS[name][0], "units": _ATTRS[name][1]})
           for name, v in data.items()}
    source = ds.encoding.get("source")
    if write and source and Path(source).exists():
        _write_to_store(Path(source), new)
    return ds.assign(new)


def _write_to_store(path: Path, variables: dict[str, xr.Variable]) -> None:
    """Store the key_probe_* arrays (replacing earlier ones) in the trace's zarr store; open_trace reads them."""
    import zarr
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    for name, var in variables.items():
        if name in group:
            del group[name]
        arr = group.create_array(name=name, shape=var.shape, dtype=var.dtype, dimension_names=var.dims,
                                 chunks=tuple(max(1, s) for s in var.shape), attributes=dict(var.attrs),
                                 fill_value=-1, config={"write_empty_chunks": True})
        if var.size:
            arr[...] = var.values
