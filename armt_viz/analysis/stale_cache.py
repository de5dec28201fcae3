"""A derived-data cache of the origin stale mass beside a trace store (issue 15: the dashboard's overlay).

`origin_stale_mass` scans every segment; on a long trace that takes minutes. This module keeps its per-segment
norms (|superseded|_F, |superseded + other|_F, |A|_F for every sample, segment, layer: every `rule` and
`normalize` follows from them) in one file inside the store, `armt_derived_origin_stale.npz`, beside the commit
marker, together with the scan's state after the last cached segment. So:

* a finished trace is scanned once; later reads take milliseconds;
* a trace still being recorded (its committed prefix grows) only scans the newly committed segments, resumed
  from the stored state (without per-channel gating; with it, the scan restarts from segment 0);
* the file is refused and rebuilt when it does not belong to this trace: it carries a fingerprint of the
  metric's version, the model and record configs, the ledger and the first segment's writes, and the number of
  segments it covers must not exceed the committed count (a store recorded again from scratch);
* nothing is written where it may not be: `write=False`, or a store the process cannot write (read-only mount,
  permissions) keeps the result in an in-process cache only (keyed the same way), with one log line.

The file holds plain arrays (no pickles) and is replaced atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

import numpy as np
import xarray as xr

from ._common import as_numpy, config_of
from .origin import (_NEEDS, _check_rule, _check_whole, _facts, _fast_ok, _progress, origin_stale_da,
                     segment_schedule, stale_norms_blocks, stale_value)

__all__ = ["CACHE_FILE", "METRIC_VERSION", "cached_origin_norms", "cached_origin_stale_mass", "clear_memory_cache"]

log = logging.getLogger(__name__)

CACHE_FILE = "armt_derived_origin_stale.npz"
METRIC_VERSION = "origin-stale-norms/2"
_STATE = ("A", "z", "pools", "K", "V", "ta", "tb", "src", "oth_used")
_memory: dict[tuple[str, str], dict] = {}
_lock = threading.Lock()


def clear_memory_cache() -> None:
    """Forget every in-process cached result (tests, or to free memory)."""
    with _lock:
        _memory.clear()
        _fp_memo.clear()


_fp_memo: dict[int, tuple] = {}  # id(Dataset) -> (weakref to it, fingerprint): one hash per opened trace


def fingerprint(ds: xr.Dataset) -> str:
    """`_fingerprint` of `ds`, computed once per Dataset object (the dashboard keeps one per committed state)."""
    import weakref
    hit = _fp_memo.get(id(ds))
    if hit is not None and hit[0]() is ds:
        return hit[1]
    fp = _fingerprint(ds)
    try:
        _fp_memo[id(ds)] = (weakref.ref(ds), fp)
    except TypeError:  # not weak-referenceable: no memo
        pass
    if len(_fp_memo) > 64:
        _fp_memo.pop(next(iter(_fp_memo)))
    return fp


def _fingerprint(ds: xr.Dataset) -> str:
    """What the cached norms depend on besides the segment count: metric version, model and record configs, the
    ledger, the trace's shape and its first segment's write events (a store recorded again differs there)."""
    h = hashlib.sha256(METRIC_VERSION.encode())
    for attr in ("armt_config", "record_config", "schema_version"):
        h.update(json.dumps(ds.attrs.get(attr), sort_keys=True, default=str).encode())
    for dim in ("sample", "layer", "mem_token", "hidden", "key_dim"):
        h.update(f"{dim}={ds.sizes.get(dim)}".encode())
    for name in sorted(n for n in ds.variables if str(n).startswith("ledger_")):
        h.update(str(name).encode())
        h.update(np.ascontiguousarray(as_numpy(ds[name])).astype(str).tobytes()
                 if ds[name].dtype.kind in "OUS" else np.ascontiguousarray(as_numpy(ds[name])).tobytes())
    if ds.sizes.get("segment", 0):
        for name in ("write_key", "write_delta"):
            h.update(np.ascontiguousarray(as_numpy(ds[name].isel(segment=0))).tobytes())
    return h.hexdigest()


def _read_file(path: Path, fp: str, limit_bytes: int) -> dict | None:
    f = path / CACHE_FILE
    if not f.is_file():
        return None
    if f.stat().st_size > limit_bytes:
        log.warning("stale-mass cache %s is larger than this trace's norms and scan state can be (%d > %d bytes): "
                    "ignored and rebuilt", f, f.stat().st_size, limit_bytes)
        return None
    try:
        with np.load(f, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("fingerprint") != fp or meta.get("version") != METRIC_VERSION:
                log.info("stale-mass cache %s belongs to another trace or metric version: rebuilding", f)
                return None
            entry = {"norms": z["norms"], "n": int(meta["n"]), "states": None}
            if meta.get("has_state"):
                entry["states"] = [{k: z[f"s{s}_{k}"] for k in _STATE} | {"segments": int(meta["n"])}
                                   for s in range(entry["norms"].shape[1])]
            return entry
    except (OSError, ValueError, KeyError) as exc:
        log.warning("stale-mass cache %s is unreadable (%s): rebuilding", f, exc)
        return None


def _write_file(path: Path, fp: str, entry: dict) -> bool:
    arrays = {"norms": entry["norms"]}
    states = entry.get("states")
    if states is not None:
        for s, st in enumerate(states):
            arrays.update({f"s{s}_{k}": st[k] for k in _STATE})
    meta = {"version": METRIC_VERSION, "fingerprint": fp, "n": entry["n"], "has_state": states is not None}
    arrays["meta"] = np.asarray(json.dumps(meta))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".armt_derived_", suffix=".npz", dir=path)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path / CACHE_FILE)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return True
    except OSError as exc:
        log.warning("cannot write the stale-mass cache into %s (%s); keeping it in memory only", path, exc)
        return False


def _state_of(scan) -> dict:
    return {k: getattr(scan, k) for k in _STATE} | {"segments": scan.segments}


def _scan_of(state: dict, config, n_layers: int, hidden: int):
    from ._stale_scan import StaleScan
    scan = StaleScan(config, n_layers, hidden)
    for k in _STATE:
        setattr(scan, k, np.array(state[k]))
    scan.segments = int(state["segments"])
    return scan


def cached_origin_norms(ds: xr.Dataset, path=None, *, ledger=None, progress=None, write: bool = True,
                        block_segments: int = 512) -> np.ndarray:
    """[3, sample, segment, layer] norms of `origin_stale_mass` (|superseded|, |superseded + other|, |A|),
    from the cache when it covers the trace, else computed for the segments it lacks (module docstring).

    Args:
        ds: the trace (as `av.open_trace(path)` gives it: the committed prefix).
        path: the trace store's folder (the cache file lives in it); None caches in memory only.
        progress: None, True (tqdm) or callable(done, total) with counts of segments still to scan.
        write: False never writes the cache file (in-memory only).
    """
    check = _NEEDS
    from ._common import check_trace
    check_trace(ds, check, "the stale-mass cache")
    _check_whole(ds)
    config = config_of(ds)
    n_samples, n_seg, n_layer, hidden = (ds.sizes["sample"], ds.sizes["segment"], ds.sizes["layer"],
                                         ds.sizes["hidden"])
    fp = fingerprint(ds)
    root = None if path is None else Path(path).resolve()
    key = (str(root), fp)
    with _lock:
        entry = _memory.get(key)
    if (entry is None or entry["n"] < n_seg) and root is not None:
        # twice what norms (3 float64 per sample, segment, layer) and the scan state (A, pools and at most one
        # live key and value per write event, per layer) can take
        writes = n_seg * ds.sizes["mem_token"]
        cells = 3 * n_seg + config.d_key * (3 * hidden + 64 + writes) + hidden * writes
        limit = 16 * n_samples * n_layer * cells + (1 << 20)
        on_disk = _read_file(root, fp, limit)
        if on_disk is not None and (entry is None or on_disk["n"] > entry["n"]):
            entry = on_disk
    if entry is not None and entry["norms"].shape != (3, n_samples, entry["n"], n_layer):
        log.warning("stale-mass cache for %s has shape %s, expected (3, %d, %d, %d): rebuilding", root,
                    entry["norms"].shape, n_samples, entry["n"], n_layer)
        entry = None
    if entry is not None and entry["n"] > n_seg:
        log.info("stale-mass cache covers %d segments but the trace commits %d: rebuilding", entry["n"], n_seg)
        entry = None
    if entry is not None and entry["n"] == n_seg:
        report = _progress(progress, 0)
        report(None)
        return entry["norms"]
    fast = _fast_ok(config)
    start = entry["n"] if entry is not None and (entry["states"] is not None and fast) else 0
    facts = _facts(ds, ledger, required=True)
    norms = np.zeros((3, n_samples, n_seg, n_layer))
    if start:
        norms[:, :, :start] = entry["norms"][:, :, :start]
    report = _progress(progress, n_samples * (n_seg - start))
    states, done = [], 0
    for s in range(n_samples):
        schedule = segment_schedule(facts, s, n_seg)
        carry = _scan_of(entry["states"][s], config, n_layer, hidden) if start else None
        for b0, b1, out, carry in stale_norms_blocks(ds, s, schedule, start=start, carry=carry,
                                                     block_segments=block_segments):
            norms[:, s, b0:b1] = out
            done += b1 - b0
            report(done)
        states.append(_state_of(carry) if fast and carry is not None else None)
    report(None)
    entry = {"norms": norms, "n": n_seg, "states": states if fast and all(x is not None for x in states) else None}
    with _lock:
        _memory[key] = entry
    if root is not None and write and n_seg:
        if os.access(root, os.W_OK):
            _write_file(root, fp, entry)
        else:
            log.info("the trace folder %s is not writable: the stale-mass cache stays in memory", root)
    return norms


def cached_origin_stale_mass(ds: xr.Dataset, path=None, *, rule: str = "any", normalize: bool = True,
                             ledger=None, progress=None, write: bool = True) -> xr.DataArray:
    """`origin_stale_mass(ds, rule=, normalize=)` (same values, eager) through the cache of `cached_origin_norms`."""
    _check_rule(rule)
    norms = cached_origin_norms(ds, path, ledger=ledger, progress=progress, write=write)
    return origin_stale_da(ds, stale_value(norms, rule, normalize), rule, normalize)
