"""Stale keys: how much of a recall, and of the memory, comes from superseded fact versions (DESIGN.md §4).

Which writes are stale is decided from the task ledger by the rule of `armt_viz.analysis._ledger`: the write
events of a segment (every memory token, every layer) carry all the fact versions that segment holds, and a
version is superseded at the first segment holding the next version of its fact (a rewrite or a delete).

* Recall shares (`recall_shares`, `stale_share`): relative to the fact the probe asks about. A write is
  *current* when its segment holds the version valid at the query, *stale* when it holds an earlier version
  of that fact and not the current one, *other* otherwise.
* Stale mass (`stale_mass`): memory-wide, no query. At time S (after segment S's write) the superseded writes
  are those of segments t <= S that hold a version superseded by a segment <= S (rule="any", the DESIGN.md
  wording "segments holding superseded versions"), or whose versions are *all* superseded (rule="all", a
  lower bound that ignores segments still holding something current). Segments holding no version (filler,
  queries) are never superseded.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from ._common import as_numpy, check_trace, config_of, feature_map, head_mask, named, per_run
from ._ledger import STATUS, Facts, facts_of, ledger_of
from .attribution import _probe_fact, probe_read, write_terms

__all__ = ["recall_shares", "stale_share", "stale_mass", "compute_all"]


def compute_all(arrays: Sequence) -> list:
    """Compute many (possibly lazy) arrays in one dask pass (on the active distributed client, if any)."""
    lazy = [i for i, a in enumerate(arrays) if getattr(a, "chunks", None) is not None]
    out = [np.asarray(a.values if hasattr(a, "values") else a) if getattr(a, "chunks", None) is None else None
           for a in arrays]
    if lazy:
        import dask
        done = dask.compute(*[arrays[i] for i in lazy])
        for i, v in zip(lazy, done):
            out[i] = np.asarray(v.values if hasattr(v, "values") else v)
    return out


def _facts_for(ds, ledger) -> Facts:
    if isinstance(ledger, Facts):
        return ledger
    led = ledger_of(ds, ledger, required=True)
    size = led.attrs.get("segment_size")
    if size is not None and int(size) != config_of(ds).segment_size:
        raise ValueError(
            f"the ledger counts segments of {int(size)} tokens but the trace's model uses segment_size="
            f"{config_of(ds).segment_size}; generate the task with the model's segment size"
        )
    return facts_of(led)


def _probe_list(ds, probes) -> np.ndarray:
    n = ds.sizes.get("probe", 0)
    return np.arange(n) if probes is None else np.atleast_1d(np.asarray(probes, dtype=np.int64))


def _layer_list(ds, layer) -> np.ndarray:
    return np.arange(ds.sizes["layer"]) if layer is None else np.atleast_1d(np.asarray(layer, dtype=np.int64))


@per_run
def recall_shares(ds: xr.Dataset, *, layer=None, probes=None, ledger=None) -> xr.DataArray:
    """Fractions of each recall's read-out from current, stale and other writes (dims probe, layer, status).

        current = sum_{w current} a_w / |r|,   stale = sum_{w stale} a_w / |r|,   other = 1 - current - stale

    with a_w the exact shares of `attribute_read` and the status of a write relative to the fact the probe asks
    about (module docstring). Only the few segments holding versions of that fact are read, so this is cheap on
    long traces. `other` is the remainder (it absorbs the storage rounding of the write events). NaN for probes
    that are not on a query (no fact) or whose read is zero. Units: 1 (fraction of |r|).
    """
    check_trace(ds, ("write_key", "write_delta", "read_out", "probe_sample", "probe_segment"), "recall_shares")
    config = config_of(ds)
    facts = _facts_for(ds, ledger)
    probes, layers = _probe_list(ds, probes), _layer_list(ds, layer)
    lazy, slots = [], []
    out = np.full((len(probes), len(layers), len(STATUS)), np.nan)
    for i, p in enumerate(probes):
        for j, l in enumerate(layers):
            read = probe_read(ds, int(p), int(l))
            fact, version = _probe_fact(facts, read)
            if fact < 0 or read.norm == 0:
                continue
            cur, stale = facts.status_segments(read.sample, fact, version, read.segment)
            for k, segs in enumerate((cur, stale)):
                if len(segs):
                    lazy.append(write_terms(ds, read, segs, "share", config).sum())
                    slots.append((i, j, k, read.norm))
                else:
                    out[i, j, k] = 0.0
    for (i, j, k, norm), value in zip(slots, compute_all(lazy)):
        out[i, j, k] = float(value) / norm
    out[..., 2] = 1.0 - out[..., 0] - out[..., 1]
    da = xr.DataArray(out, dims=("probe", "layer", "status"),
                      coords={"probe": probes, "layer": layers, "status": list(STATUS)})
    return named(da, "recall_share", "fraction of the recall's read-out by write status", "1")


@per_run
def stale_share(ds: xr.Dataset, *, layer=None, probes=None, ledger=None) -> xr.DataArray:
    """Stale share of each recall: sum_{w stale} a_w / |r| (dims probe, layer; units 1). See `recall_shares`."""
    out = recall_shares(ds, layer=layer, probes=probes, ledger=ledger).sel(status="stale", drop=True)
    return named(out, "stale_share", "share of the recall's read-out from superseded versions of its fact", "1")


# ------------------------------------------------------------------------------------------------ stale mass
# The norms use the rank structure of the writes instead of dense per-segment matrices. Rows r are write events
# (phi_r, u_r) added in order to a carried matrix C (per head: the diagonal block of A). After row m,
#     |C + sum_{r<=m} phi_r (x) u_r|_F^2 = |C|^2 + 2 sum_{r<=m} phi_r.C.u_r + sum_{r,r'<=m} (phi_r.phi_r')(u_r.u_r')
# so a chunk of R rows costs two R x R Gram matrices and one R x F x hidden product, never R dense matrices.
_ROWS = 64  # rows per Gram chunk (larger chunks pay for multi-threaded BLAS start-up on tiny products)


def _phi_rows(key: np.ndarray, config) -> np.ndarray:
    return feature_map(key, config.n_heads, config.nu, config.normalize_features)


def _row_norms(carry: np.ndarray, phi: np.ndarray, u: np.ndarray, heads: int) -> tuple[np.ndarray, np.ndarray]:
    """carry [F, hidden] (block-diagonal), rows phi [R, F], u [R, hidden] -> (|A|_F^2 after each row, new carry)."""
    F, D = carry.shape
    fh, dh = F // heads, D // heads
    out = np.empty(len(phi))
    C = carry.copy()
    for c0 in range(0, len(phi), _ROWS):
        gram, cross = 0.0, 0.0
        blocks = []
        for h in range(heads):
            ph, uh = phi[c0:c0 + _ROWS, h * fh:(h + 1) * fh], u[c0:c0 + _ROWS, h * dh:(h + 1) * dh]
            ch = C[h * fh:(h + 1) * fh, h * dh:(h + 1) * dh]
            gram = gram + (ph @ ph.T) * (uh @ uh.T)
            cross = cross + ((ph @ ch) * uh).sum(1)
            blocks.append((h, ph, uh))
        base = float((C * C).sum())
        pairs = np.cumsum(2 * np.tril(gram, -1).sum(1) + np.diag(gram))
        out[c0:c0 + _ROWS] = np.maximum(base + 2 * np.cumsum(cross) + pairs, 0.0)
        for h, ph, uh in blocks:
            C[h * fh:(h + 1) * fh, h * dh:(h + 1) * dh] += ph.T @ uh
    return out, C


def _norms_at(labels: np.ndarray, sq: np.ndarray, base: float, n_out: int) -> np.ndarray:
    """|A| after the last row with label <= S, for S = 0..n_out-1 (rows sorted by label; `base` before any row)."""
    last = np.searchsorted(labels, np.arange(n_out), side="right") - 1
    return np.sqrt(np.where(last >= 0, sq[np.maximum(last, 0)], base))


def _rows(key, delta, config):
    """Write events [..., mem_token, key_dim] / [..., mem_token, hidden] -> rows phi [R, F], u [R, hidden]."""
    phi = _phi_rows(np.asarray(key).reshape(-1, key.shape[-1]), config)
    return phi, np.asarray(delta, dtype=np.float64).reshape(-1, delta.shape[-1])


def _block_sum(phi: np.ndarray, u: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (phi.T @ u) * mask


_LOOKAHEAD = 8  # blocks that pass 1 may run ahead of pass 2


class _Box:
    """A block of a dask array handed to a task unevaluated: the task reads it itself (`_load`), so no block data
    waits in worker memory between tasks (dask would otherwise load every block as soon as it is ready). Only the
    block's own tasks are kept (a culled low-level graph, a few kB), not the whole array's graph."""

    __slots__ = ("graph", "keys")

    def __init__(self, array):
        from dask.core import flatten
        self.keys = array.__dask_keys__()
        self.graph = dict(array.__dask_graph__().cull(set(flatten(self.keys))))


def _load(x):
    if not isinstance(x, _Box):
        return x
    import dask
    from dask.array.core import concatenate3
    return np.asarray(concatenate3(dask.get(x.graph, x.keys)))


def _add(a, b):
    return a + b


def _block_totals(key, delta, gkey, gdelta, gsample, n_samples, config, mask, gate=None):
    """Pass 1 of a block: per (sample, layer), the sum of its own writes and of the writes that become stale in it.
    `gate` only orders the task (after an earlier block's pass 2)."""
    key, delta, gkey, gdelta = _load(key), _load(delta), _load(gkey), _load(gdelta)
    L = key.shape[2]
    own = np.zeros((n_samples, L) + mask.shape)
    stale = np.zeros_like(own)
    for s in range(n_samples):
        for layer in range(L):
            own[s, layer] = _block_sum(*_rows(key[s, :, layer], delta[s, :, layer], config), mask)
            if gkey is not None and (gsample == s).any():
                sel = gsample == s
                stale[s, layer] = _block_sum(*_rows(gkey[sel, layer], gdelta[sel, layer], config), mask)
    return own, stale


def _block_norms(own0, stale0, key, delta, gkey, gdelta, gsample, grel, config, mask):
    """Pass 2 of a block: |A_S|_F and |M_S|_F for every segment S of the block -> [2, sample, n, layer]."""
    key, delta, gkey, gdelta = _load(key), _load(delta), _load(gkey), _load(gdelta)
    n_samples, n, L = own0.shape[0], key.shape[1], key.shape[2]
    M = key.shape[3]
    out = np.zeros((2, n_samples, n, L))
    own_labels = np.repeat(np.arange(n), M)
    for s in range(n_samples):
        sel = np.flatnonzero(gsample == s) if gkey is not None else np.zeros(0, np.int64)
        for layer in range(L):
            phi, u = _rows(key[s, :, layer], delta[s, :, layer], config)
            sq, _ = _row_norms(own0[s, layer], phi, u, config.n_heads)
            out[0, s, :, layer] = _norms_at(own_labels, sq, float((own0[s, layer] ** 2).sum()), n)
            base = float((stale0[s, layer] ** 2).sum())
            if len(sel):
                phi, u = _rows(gkey[sel, layer], gdelta[sel, layer], config)
                sq, _ = _row_norms(stale0[s, layer], phi, u, config.n_heads)
                out[1, s, :, layer] = _norms_at(np.repeat(grel[sel], M), sq, base, n)
            else:
                out[1, s, :, layer] = np.sqrt(base)
    return out


@per_run
def stale_mass(
    ds: xr.Dataset,
    *,
    rule: str = "any",
    normalize: bool = True,
    ledger=None,
    block_segments: int | None = None,
    method: str = "write",
    progress=None,
) -> xr.DataArray:
    """Superseded mass of the memory over time, per sample and layer (dims sample, segment, layer).

    method="origin": the surviving stale mass, exact under the delta rule (`armt_viz.analysis.origin.
    origin_stale_mass`: the part of A that superseded versions' values still contribute after erasure).
    method="write" (default, the per-write view below): the literal sum of what superseded writes added; it
    ignores the delta rule's erasure, so it reports stale mass for a memory that holds no trace of an old value.

        stale_mass(S) = | sum_{w superseded at S} phi_w (x) u_w |_F  /  | A_S |_F,    A_S = sum_{w: segment <= S} phi_w (x) u_w

    Which writes are superseded at S: module docstring (`rule` "any" or "all"). Both norms are computed from
    the stored write events (float64 arithmetic), so numerator and denominator are consistent. `normalize=False`
    returns the numerator |.|_F alone. Units: 1. NaN where A_S = 0. `progress` (method="origin" only): True (tqdm)
    or callable(done, total), computing eagerly (`origin_stale_mass`).

    Work runs in blocks of `block_segments` segments (default: 256, more on long traces, rounded to the trace's
    zarr chunks) as a dask graph of two passes: block sums carried as a prefix, then per-segment norms from the
    carry (rank-M Gram algebra, no dense per-segment matrices). Each task reads its own block, and the sums may
    run at most 8 blocks ahead of the norms, so worker memory stays bounded however long the trace; the result
    is lazy on a dask-backed trace.
    """
    if method == "origin":
        from .origin import origin_stale_mass
        kw = {} if block_segments is None else {"block_segments": block_segments}
        return origin_stale_mass(ds, rule=rule, normalize=normalize, ledger=ledger, progress=progress, **kw)
    if method != "write":
        raise ValueError(f"method must be 'write' (per-write view) or 'origin' (exact under the delta rule), got {method!r}")
    if progress not in (None, False):
        raise ValueError("progress= is supported with method='origin' only (the per-write view is one dask pass)")
    check_trace(ds, ("write_key", "write_delta"), "stale_mass")
    import dask
    import dask.array as dsa

    config = config_of(ds)
    facts = _facts_for(ds, ledger)
    key = ds["write_key"].transpose("sample", "segment", "layer", "mem_token", "key_dim")
    delta = ds["write_delta"].transpose("sample", "segment", "layer", "mem_token", "hidden")
    lazy = key.chunks is not None
    n_samples, n_seg, n_layer = key.sizes["sample"], key.sizes["segment"], key.sizes["layer"]
    hidden = delta.sizes["hidden"]
    mask = head_mask(config, hidden)
    seg_index = as_numpy(ds["segment"]) if "segment" in ds.variables else np.arange(n_seg)
    if not np.array_equal(seg_index, np.arange(n_seg)):
        raise ValueError("stale_mass needs the whole trace from segment 0 (A_S sums every earlier write)")
    block = block_segments or _default_block(key, n_seg)

    s_idx, t_idx, tau = facts.stale_time(rule)
    keep = (tau < n_seg) & (t_idx < n_seg) & (s_idx < n_samples)
    s_idx, t_idx, tau = s_idx[keep], t_idx[keep], tau[keep]
    order = np.lexsort((t_idx, tau))
    s_idx, t_idx, tau = s_idx[order], t_idx[order], tau[order]
    kdata, ddata = key.data, delta.data
    box = _Box if lazy else (lambda x: x)
    shared_config, shared_mask = dask.delayed(config), dask.delayed(mask)  # one graph key each, not one per task
    zero = np.zeros((n_samples, n_layer) + mask.shape)
    pieces, norms_of, carry_own, carry_stale = [], [], zero, zero
    for b0 in range(0, n_seg, block):
        b1 = min(n_seg, b0 + block)
        lo, hi = np.searchsorted(tau, b0), np.searchsorted(tau, b1)
        if hi > lo:
            gs, gt = s_idx[lo:hi], t_idx[lo:hi]
            gkey = box(kdata.vindex[gs, gt] if lazy else kdata[gs, gt])
            gdelta = box(ddata.vindex[gs, gt] if lazy else ddata[gs, gt])
            grel = dask.delayed(tau[lo:hi] - b0)  # embedded once, used by both passes
            gs = dask.delayed(gs)
        else:
            gs = grel = gkey = gdelta = None
        kb, db = box(kdata[:, b0:b1]), box(ddata[:, b0:b1])
        # pass 1 of this block may start only when pass 2 is within _LOOKAHEAD blocks: bounded worker memory
        gate = norms_of[-_LOOKAHEAD] if len(norms_of) >= _LOOKAHEAD else None
        norms = dask.delayed(_block_norms, pure=False)(carry_own, carry_stale, kb, db, gkey, gdelta, gs, grel,
                                                       shared_config, shared_mask)
        norms_of.append(norms)
        pieces.append(dsa.from_delayed(norms, shape=(2, n_samples, b1 - b0, n_layer), dtype=np.float64))
        totals = dask.delayed(_block_totals, pure=False, nout=2)(kb, db, gkey, gdelta, gs, n_samples,
                                                                 shared_config, shared_mask, gate)
        carry_own = dask.delayed(_add, pure=False)(carry_own, totals[0])
        carry_stale = dask.delayed(_add, pure=False)(carry_stale, totals[1])
    norms = dsa.concatenate(pieces, axis=2) if pieces else dsa.zeros((2, n_samples, 0, n_layer))
    value = norms[1] / norms[0] if normalize else norms[1]
    if not lazy:
        value = value.compute()
    coords = {"segment": seg_index, "layer": np.arange(n_layer)}
    if "sample" in ds.coords:
        coords["sample"] = ds["sample"].values
    da = xr.DataArray(value, dims=("sample", "segment", "layer"), coords=coords)
    if normalize:
        return named(da, "stale_mass", "superseded fraction of the association matrix |sum_superseded phi u|_F/|A|_F",
                     "1", rule=rule)
    return named(da, "stale_assoc_norm", "Frobenius norm of the superseded writes' sum |sum_superseded phi u|_F",
                 "1", rule=rule)


def _default_block(key: xr.DataArray, n_segments: int) -> int:
    """~256 segments per block, more on long traces (at most ~512 blocks), whole zarr chunks when lazy."""
    target = max(256, -(-n_segments // 512))
    if key.chunks is None:
        return target
    chunk = max(key.chunksizes["segment"])
    return max(chunk, (target // chunk) * chunk)
