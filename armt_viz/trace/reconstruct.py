"""Exact reconstruction of the memory at any segment from keyframes and write events.

    A_S = A_K + sum_{K < segment(w) <= S} phi(k_w) (x) u_w
    z_S = z_K + sum_{K < segment(w) <= S} gamma_w phi(k_w)

with K the latest keyframe at or before S (or the empty memory). phi is DPFP, recomputed
here in numpy (float64) from the stored pre-feature keys, so this module needs no torch.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from .features import block_outer, dpfp, feature_map

__all__ = ["memory_at", "dpfp_np", "features_np"]


def dpfp_np(x: np.ndarray, nu: int = 3) -> np.ndarray:
    """`features.dpfp` (kept under its old name)."""
    return dpfp(x, nu)


def features_np(key: np.ndarray, cfg: dict) -> np.ndarray:
    """Pre-feature keys [..., d_mem] -> features [..., heads, key_feature/heads] (float64) for a trace's config."""
    return feature_map(key, cfg.get("n_heads", 1), cfg.get("nu", 3), cfg.get("normalize_features", False),
                       per_head=True)


def memory_at(ds: xr.Dataset, segment: int, layer: int) -> tuple[xr.DataArray, xr.DataArray]:
    """(A, z) of `layer` after `segment`'s write, exactly; dims (sample, key_feature, hidden) / (sample, key_feature)."""
    n_seg = ds.sizes.get("segment", 0)
    if not 0 <= segment < n_seg:
        raise IndexError(f"segment {segment} is outside the trace's committed segments [0, {n_seg})")
    if not 0 <= layer < ds.sizes.get("layer", 0):
        raise IndexError(f"layer {layer} is outside [0, {ds.sizes.get('layer', 0)})")
    cfg = json.loads(ds.attrs["armt_config"])
    if "assoc_matrix" in ds:
        A = ds["assoc_matrix"].isel(segment=segment, layer=layer).values.astype(np.float64)
        z = ds["normalizer"].isel(segment=segment, layer=layer).values.astype(np.float64)
        return _wrap(A, z, segment, layer)
    kf_seg = ds["keyframe_segment"].values if "keyframe_segment" in ds.coords or "keyframe_segment" in ds else np.array([], int)
    usable = np.nonzero(kf_seg <= segment)[0]
    if usable.size:
        ki = int(usable[np.argmax(kf_seg[usable])])
        start = int(kf_seg[ki]) + 1
        A = ds["keyframe_assoc"].isel(keyframe=ki, layer=layer).values.astype(np.float64)
        z = ds["keyframe_normalizer"].isel(keyframe=ki, layer=layer).values.astype(np.float64)
    else:
        start = 0
        B = ds.sizes["sample"]
        H = cfg.get("n_heads", 1)
        Ft = 2 * cfg.get("nu", 3) * cfg["d_mem"]
        A = np.zeros((B, Ft, ds.sizes["hidden"]))
        z = np.zeros((B, Ft))
    if start <= segment:
        if "write_key" not in ds:
            raise ValueError(
                f"memory_at(segment={segment}) needs the write events after keyframe segment {start - 1}, but this "
                "trace was recorded at level 'summary'; record with level='writes' (or pick a keyframe segment: "
                f"{kf_seg.tolist()[:10]})"
            )
        H = cfg.get("n_heads", 1)
        sl = dict(segment=slice(start, segment + 1), layer=layer)
        key = ds["write_key"].isel(**sl).transpose("segment", "mem_token", "sample", "key_dim").values
        delta = ds["write_delta"].isel(**sl).transpose("segment", "mem_token", "sample", "hidden").values
        gamma = ds["write_correction"].isel(**sl).transpose("segment", "mem_token", "sample", "head").values
        n = key.shape[0] * key.shape[1]
        phi = features_np(key.reshape(n, *key.shape[2:]), cfg)  # [n, sample, heads, Fh]
        A = A + block_outer(phi, delta.reshape(n, *delta.shape[2:]).astype(np.float64), H)
        if cfg.get("use_denom", True):
            g = gamma.reshape(n, *gamma.shape[2:]).astype(np.float64)
            z = z + np.einsum("nbh,nbhf->bhf", g, phi).reshape(z.shape)
    return _wrap(A, z, segment, layer)


def _wrap(A, z, segment, layer):
    attrs = dict(segment=segment, layer=layer)
    Ad = xr.DataArray(A, dims=("sample", "key_feature", "hidden"), name="assoc_matrix",
                      attrs={"long_name": "association matrix A after the segment's write", "units": "1", **attrs})
    zd = xr.DataArray(z, dims=("sample", "key_feature"), name="normalizer",
                      attrs={"long_name": "normalizer z after the segment's write", "units": "1", **attrs})
    return Ad, zd
