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

__all__ = ["memory_at", "dpfp_np", "features_np"]


def dpfp_np(x: np.ndarray, nu: int = 3) -> np.ndarray:
    xp = np.concatenate([np.maximum(x, 0), np.maximum(-x, 0)], axis=-1)
    return np.concatenate([xp * np.roll(xp, j, axis=-1) for j in range(1, nu + 1)], axis=-1)


def features_np(key: np.ndarray, cfg: dict) -> np.ndarray:
    """Pre-feature keys [..., d_mem] -> features [..., heads, key_feature/heads] (float64)."""
    H = cfg.get("n_heads", 1)
    k = np.asarray(key, dtype=np.float64)
    k = k.reshape(*k.shape[:-1], H, k.shape[-1] // H)
    phi = dpfp_np(k, cfg.get("nu", 3))
    if cfg.get("normalize_features", False):
        phi = phi / np.maximum(np.linalg.norm(phi, axis=-1, keepdims=True), 1e-12)
    return phi


def _block_outer(phi: np.ndarray, delta: np.ndarray, heads: int) -> np.ndarray:
    """sum over leading event axes of phi (x) delta, block-diagonal over heads.

    phi [n, sample, heads, Fh], delta [n, sample, hidden] -> [sample, heads*Fh, hidden]."""
    n, B, H, Fh = phi.shape
    D = delta.shape[-1]
    Dh = D // H
    d = delta.reshape(n, B, H, Dh)
    blocks = np.einsum("nbhf,nbhd->bhfd", phi, d)
    out = np.zeros((B, H * Fh, D))
    for h in range(H):
        out[:, h * Fh:(h + 1) * Fh, h * Dh:(h + 1) * Dh] = blocks[:, h]
    return out


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
        A = A + _block_outer(phi, delta.reshape(n, *delta.shape[2:]).astype(np.float64), H)
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
