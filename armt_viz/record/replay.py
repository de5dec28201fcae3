"""Counterfactual replay: restore the memory stored in a trace and run on, optionally edited.

`replay(model, ds, from_segment, tokens=None, edits=...)` rebuilds the memory after segment
`from_segment - 1` exactly (`memory_at`), applies edits to it, and records the run from
`from_segment` on (by default over the trace's own tokens) into a new trace.

Edits act on the memory at the restore point, using the algebra of DESIGN.md §4:
    {"op": "delete", "segment": s, "layer": l, "mem_token": j}   A -= phi_w (x) u_w ; z -= gamma_w phi_w
    {"op": "scale",  "segment": s, "layer": l, "mem_token": j, "factor": f}   the write counts f times
    {"op": "inject", "layer": l, "key": k[d_mem], "delta": u[hidden], "gamma": g}   a new write
    {"op": "assoc",  "layer": l, "delta": D[key_feature, hidden] or [sample, key_feature, hidden]}   A += D
      (any dense edit of A, e.g. removing the surviving part of superseded versions, `memory_by_origin`)
`mem_token` may be omitted to edit every memory token of the segment. Probe positions are absolute stream
positions by default (``positions="absolute"``; see ``replay``). Later writes that read
the edited memory (through v-bar) are not re-derived before `from_segment`; from there on the
run is recomputed, so the edit propagates exactly through everything the model does next.
"""

from __future__ import annotations

import json

import numpy as np
import torch

from ..model.armt import MemoryState
from ..trace.features import block_outer
from ..trace.reconstruct import features_np, memory_at
from .recorder import record

__all__ = ["replay", "restore_state"]


def restore_state(model, ds, segment: int, edits=None) -> MemoryState:
    """The MemoryState after `segment` (segment=-1: empty memory), with edits applied."""
    cfg = json.loads(ds.attrs["armt_config"])
    if segment < 0:
        st = model.init_state(ds.sizes["sample"])
        A = [st.flat_assoc(l).expand(ds.sizes["sample"], -1, -1).double().numpy() for l in range(model.n_layers)]
        Z = [st.flat_normalizer(l).expand(ds.sizes["sample"], -1).double().numpy() for l in range(model.n_layers)]
    else:
        A, Z = [], []
        for l in range(model.n_layers):
            a, z = memory_at(ds, segment, l)
            A.append(a.values.copy())
            Z.append(z.values.copy())
    for e in edits or []:
        op, l = e.get("op"), int(e["layer"])
        if op in ("delete", "scale"):
            s = int(e["segment"])
            if s > segment:
                raise ValueError(f"edit {e}: segment {s} is not before the restore point (segment {segment})")
            if "write_key" not in ds:
                raise ValueError("delete/scale edits need a trace recorded at level 'writes' or 'full'")
            j = e.get("mem_token")
            sel = dict(segment=s, layer=l) if j is None else dict(segment=s, layer=l, mem_token=[int(j)])
            key = ds["write_key"].isel(**sel).transpose("mem_token", "sample", "key_dim").values
            delta = ds["write_delta"].isel(**sel).transpose("mem_token", "sample", "hidden").values.astype(np.float64)
            gamma = ds["write_correction"].isel(**sel).transpose("mem_token", "sample", "head").values.astype(np.float64)
            factor = 0.0 if op == "delete" else float(e["factor"])
            w = factor - 1.0
        elif op == "assoc":
            d = np.asarray(e["delta"], dtype=np.float64)
            if d.shape not in (A[l].shape, A[l].shape[1:]):
                raise ValueError(f"edit {{'op': 'assoc'}}: delta has shape {d.shape}; expected {A[l].shape[1:]} "
                                 f"(key_feature, hidden) or {A[l].shape} (sample, key_feature, hidden)")
            A[l] = A[l] + d
            continue
        elif op == "inject":
            key = np.broadcast_to(np.asarray(e["key"], np.float64), (1, ds.sizes["sample"], cfg["d_mem"]))
            delta = np.broadcast_to(np.asarray(e["delta"], np.float64), (1, ds.sizes["sample"], ds.sizes["hidden"]))
            gamma = np.full((1, ds.sizes["sample"], cfg.get("n_heads", 1)), float(e.get("gamma", 1.0)))
            w = 1.0
        else:
            raise ValueError(f"unknown edit op {op!r}; expected 'delete', 'scale', 'inject' or 'assoc'")
        phi = features_np(key, cfg)
        A[l] = A[l] + w * block_outer(phi, delta, cfg.get("n_heads", 1))
        if cfg.get("use_denom", True):
            Z[l] = Z[l] + w * np.einsum("nbh,nbhf->bhf", gamma, phi).reshape(Z[l].shape)
    dev = model.memory.device
    return MemoryState.from_flat([torch.from_numpy(a).float().to(dev) for a in A],
                                 [torch.from_numpy(z).float().to(dev) for z in Z],
                                 segments=segment + 1, heads=cfg.get("n_heads", 1))


def replay(model, ds, from_segment: int, tokens=None, edits=None, *, store=None, level=None, probes=None,
           positions: str = "absolute", progress: bool = False, **record_kw):
    """Run the model from `from_segment` on, starting from the trace's memory (edited); returns a new trace.

    Args:
        model: the model that recorded `ds` (same weights; the memory is restored into it).
        ds: a trace (level "writes" or "full" for delete/scale edits).
        from_segment: the first segment to recompute; the memory after `from_segment - 1` is restored exactly.
        tokens: [batch, n] ids to feed instead of the trace's own tokens from `from_segment` on.
        edits: a list of dicts applied to the restored memory (DESIGN.md §4 algebra):
            {"op": "delete", "segment": s, "layer": l, "mem_token": j}
                remove write (s, l, j): A -= phi_w (x) u_w, z -= gamma_w phi_w (s < from_segment);
            {"op": "scale", "segment": s, "layer": l, "mem_token": j, "factor": f}
                the write counts f times (f = 0 is delete, f = 2 doubles it);
            {"op": "inject", "layer": l, "key": k (d_mem floats), "delta": u (hidden floats), "gamma": g}
                add a new write phi(k) (x) u (and g phi(k) to z).
            Omit "mem_token" to edit every memory token of segment s.
        probes: [(sample, token), ...] (or bare token ints for sample 0) whose reads are kept in the new trace.
        positions: how `probes` count tokens. "absolute" (default): positions in the original stream, as in
            `ds.probe_token` (the token of segment `from_segment` that starts the replay is
            `ds.segment_start[from_segment]`); they are shifted to the replayed stream, and a position before the
            replay start raises. "relative": positions counted from the replay's first token.
            The new trace counts its own tokens (and segments) from 0: its `probe_token` is relative, and
            `attrs["replay_token_offset"]` (in its input_description) is the shift to add back.

    Raises:
        IndexError: `from_segment` outside the trace; ValueError: a probe before the replay start, or a bad
        `positions`/edit.
    """
    if not 0 <= from_segment < ds.sizes["segment"] + 1:
        raise IndexError(f"from_segment {from_segment} outside [0, {ds.sizes['segment']}]")
    if positions not in ("absolute", "relative"):
        raise ValueError(f"replay: positions must be 'absolute' or 'relative', got {positions!r}")
    offset = _start_token(ds, from_segment)
    if probes and positions == "absolute":
        probes = _shift_probes(probes, offset, from_segment)
    state = restore_state(model, ds, from_segment - 1, edits)
    if tokens is None:
        tok = ds["tokens"].isel(segment=slice(from_segment, None)).values  # [sample, seg, pos]
        B = tok.shape[0]
        flat = tok.reshape(B, -1)
        keep = flat[0] >= 0
        tokens = torch.as_tensor(flat[:, keep].astype(np.int64))
    level = level or json.loads(ds.attrs["record_config"])["level"]
    return record(model, tokens, store=store, level=level, probes=probes, progress=progress,
                  initial_state=state,
                  description=f"replay from segment {from_segment} with {len(edits or [])} edit(s); "
                              f"replay_token_offset={offset} (add it to probe_token for original positions)",
                  **record_kw)


def _start_token(ds, segment: int) -> int:
    """Stream position of the first token of `segment` (its `segment_start`, else segment x segment_size)."""
    if segment < ds.sizes["segment"] and "segment_start" in ds:
        return int(np.asarray(ds["segment_start"].values)[segment])
    return segment * int(json.loads(ds.attrs["armt_config"])["segment_size"])


def _shift_probes(probes, offset: int, from_segment: int) -> list[tuple[int, int]]:
    out = []
    for p in probes:
        sample, token = (0, int(p)) if isinstance(p, (int, np.integer)) else (int(p[0]), int(p[1]))
        if token < offset:
            raise ValueError(f"replay: probe {p!r} is at absolute token {token}, before the replay start (token "
                             f"{offset}, segment {from_segment}); probe a later token, or pass positions='relative' "
                             "if you counted from the replay start")
        out.append((sample, token - offset))
    return out
