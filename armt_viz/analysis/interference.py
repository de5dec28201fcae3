"""Interference between writes: key overlap, retrieval signal-to-noise, the correction (gamma) distribution.

A linear associative memory retrieves cleanly when the feature vectors of different keys are near orthogonal
(ARMT paper arXiv 2407.04841 §3; DPFP, Schlag et al. 2021). These metrics measure how far a trace is from that:

* `key_overlap`: Gram (or cosine) matrix of the write-key features phi(W_mk m) of chosen write events;
* `retrieval_snr`: for each recall, the read-out of the writes holding the asked version (signal) against the
  read-out of all other writes (noise), from the exact decomposition of `attribute_read`;
* `correction_distribution`: histogram of the normalizer correction gamma = clip(1 - (z.k+eps)/(|k|^2+eps), 0, 1),
  which is 1 for a key the memory has never seen and 0 for a key already fully in z (ARMT_SPEC.md §1.5).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ._common import as_numpy, check_trace, config_of, feature_map, named, per_run
from .attribution import _probe_fact, probe_read, write_terms
from .staleness import _facts_for, _layer_list, _probe_list, compute_all

__all__ = ["key_overlap", "retrieval_snr", "correction_distribution"]


@per_run
def key_overlap(ds: xr.Dataset, *, layer: int = 0, sample: int = 0, segments=None, cosine: bool = True) -> xr.DataArray:
    """Overlap of the write-key features of the write events of `segments` (default: the last 16 segments).

        gram[w, w'] = phi_w . phi_w'            (cosine=False; units 1)
        cos[w, w']  = phi_w . phi_w' / (|phi_w| |phi_w'|)   (cosine=True; 0 for a zero feature vector)

    phi covers all heads (block layout), so the dot product is the sum of the per-head ones. Dims (write,
    other_write) with coords write_segment/mem_token and other_segment/other_mem_token.
    """
    check_trace(ds, ("write_key",), "key_overlap")
    config = config_of(ds)
    n_seg = ds.sizes["segment"]
    segs = np.arange(max(0, n_seg - 16), n_seg) if segments is None else np.atleast_1d(np.asarray(segments))
    key = as_numpy(ds["write_key"].isel(sample=sample, layer=layer, segment=segs)
                   .transpose("segment", "mem_token", "key_dim"))
    n_mem = key.shape[1]
    phi = feature_map(key.reshape(-1, key.shape[-1]), config.n_heads, config.nu, config.normalize_features)
    gram = phi @ phi.T
    if cosine:
        norm = np.linalg.norm(phi, axis=-1)
        denom = np.outer(norm, norm)
        gram = np.divide(gram, denom, out=np.zeros_like(gram), where=denom > 0)
    seg_index = as_numpy(ds["segment"])[segs] if "segment" in ds.variables else segs
    w_seg, w_mem = np.repeat(seg_index, n_mem), np.tile(np.arange(n_mem), len(segs))
    da = xr.DataArray(gram, dims=("write", "other_write"), coords={
        "write": np.arange(len(w_seg)), "other_write": np.arange(len(w_seg)),
        "write_segment": ("write", w_seg), "mem_token": ("write", w_mem),
        "other_segment": ("other_write", w_seg), "other_mem_token": ("other_write", w_mem),
    })
    if cosine:
        return named(da, "key_cosine", "cosine similarity of write-key features", "1", layer=layer, sample=sample)
    return named(da, "key_gram", "dot product of write-key features phi_w.phi_w'", "1", layer=layer, sample=sample)


@per_run
def retrieval_snr(ds: xr.Dataset, *, layer=None, probes=None, ledger=None) -> xr.DataArray:
    """Signal-to-noise ratio of each recall (dims probe, layer; units 1):

        snr = |r_current| / |r - r_current|,     r_current = sum_{w current} c_w

    with c_w the exact vector contributions of `attribute_read` and "current" the writes whose segment holds the
    version of the asked fact valid at the query (ledger rule, `armt_viz.analysis.staleness`). r is the
    recorded read-out, so the noise also holds the storage rounding of the write events. NaN for probes not on a
    query or whose asked fact is not in memory (no current write); inf for a noiseless read.
    """
    check_trace(ds, ("write_key", "write_delta", "read_out"), "retrieval_snr")
    config = config_of(ds)
    facts = _facts_for(ds, ledger)
    probes, layers = _probe_list(ds, probes), _layer_list(ds, layer)
    out = np.full((len(probes), len(layers)), np.nan)
    lazy, slots = [], []
    for i, p in enumerate(probes):
        for j, l in enumerate(layers):
            read = probe_read(ds, int(p), int(l))
            fact, version = _probe_fact(facts, read)
            if fact < 0:
                continue
            cur, _ = facts.status_segments(read.sample, fact, version, read.segment)
            if len(cur):
                lazy.append(write_terms(ds, read, cur, "vector", config).sum(("segment", "mem_token")))
                slots.append((i, j, read.read_out))
    for (i, j, r), signal in zip(slots, compute_all(lazy)):
        noise = np.linalg.norm(r - signal)
        out[i, j] = np.linalg.norm(signal) / noise if noise > 0 else np.inf
    da = xr.DataArray(out, dims=("probe", "layer"), coords={"probe": probes, "layer": layers})
    return named(da, "retrieval_snr", "recall signal-to-noise |r_current|/|r - r_current|", "1")


@per_run
def correction_distribution(ds: xr.Dataset, *, bins: int = 20, include_first: bool = False) -> xr.DataArray:
    """Histogram of the correction gamma of every write event, per layer (dims layer, correction; units count).

    Counts over (sample, segment, mem_token, head) in `bins` equal bins of [0, 1] (coordinate: bin centres;
    attrs bin_edges). The first segment's gamma is 1 by definition (ARMT_SPEC.md §1.5) and is left out unless
    `include_first`. Lazy traces are reduced chunk by chunk (dask.array.histogram).
    """
    check_trace(ds, ("write_correction",), "correction_distribution")
    gamma = ds["write_correction"]
    if not include_first:
        gamma = gamma.isel(segment=slice(1, None))
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = []
    for l in range(gamma.sizes["layer"]):
        x = gamma.isel(layer=l).data
        if hasattr(x, "dask"):
            import dask.array as dsa
            counts, _ = dsa.histogram(x.ravel(), bins=edges)
        else:
            counts, _ = np.histogram(np.asarray(x).ravel(), bins=edges)
        rows.append(counts)
    values = compute_all(rows) if rows else []
    da = xr.DataArray(np.stack(values) if values else np.zeros((0, bins), np.int64), dims=("layer", "correction"),
                      coords={"layer": np.arange(len(values)), "correction": (edges[:-1] + edges[1:]) / 2})
    return named(da, "correction_count", "write events per correction (gamma) bin", "count",
                 bin_edges=edges.tolist(), include_first=int(include_first))
