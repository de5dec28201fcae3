"""How full is the memory: spectrum and effective rank of A, and the paper's capacity estimate n·EM(n).

* `memory_spectrum`: singular values of the association matrix A (key_feature x hidden, block-diagonal over
  heads) at keyframes, at every segment of a `full` trace, or at chosen segments (reconstructed with
  `armt_viz.trace.memory_at`).
* `effective_rank`: exp(H(p)) with p = sigma / sum(sigma) (Roy & Vetterli 2007), the definition the recorder
  uses for its `effective_rank` summary variable.
* `capacity`: the memory-capacity estimator of the ARMT paper (arXiv 2407.04841; ARMT_SPEC.md §3.6): the
  expected number of correctly stored pairs n·EM(n) as a function of the number of pairs n; the capacity is
  read off as its maximum.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import xarray as xr

from ._common import check_trace, core_single_chunk, named, per_run

__all__ = ["memory_spectrum", "effective_rank", "capacity"]


def _singular_values(a: np.ndarray) -> np.ndarray:
    return np.linalg.svd(np.asarray(a, dtype=np.float64), compute_uv=False)


@per_run
def memory_spectrum(ds: xr.Dataset, *, sample: int = 0, layer=None, segments=None, rank: int | None = None) -> xr.DataArray:
    """Singular values of A, largest first (dims segment, layer, rank; units 1).

    Source: `segments=None` uses the keyframes (`keyframe_assoc`, labelled by `keyframe_segment`), or every
    segment of a "full" trace when it has no keyframes. Explicit `segments` read `assoc_matrix` when present,
    else reconstruct A with `armt_viz.trace.memory_at`. `rank` keeps the leading singular values.
    """
    check_trace(ds, (), "memory_spectrum")
    layers = np.arange(ds.sizes["layer"]) if layer is None else np.atleast_1d(np.asarray(layer))
    if segments is None and "keyframe_assoc" in ds.variables and ds.sizes.get("keyframe", 0) > 0:
        a = ds["keyframe_assoc"].isel(sample=sample, layer=layers)
        seg = np.asarray(ds["keyframe_segment"].values)
        a = a.rename({"keyframe": "segment"}).drop_vars([c for c in a.coords if c not in ("layer",)], errors="ignore")
        a = a.assign_coords(segment=seg)
    elif "assoc_matrix" in ds.variables:
        a = ds["assoc_matrix"].isel(sample=sample, layer=layers)
        if segments is not None:
            a = a.sel(segment=np.atleast_1d(np.asarray(segments)))
    elif segments is not None:
        from .. import trace  # the lead's reconstruction (no torch)
        mats = [[np.asarray(trace.memory_at(ds, segment=int(s), layer=int(l))[0])[sample] for l in layers]
                for s in np.atleast_1d(segments)]
        a = xr.DataArray(np.asarray(mats), dims=("segment", "layer", "key_feature", "hidden"),
                         coords={"segment": np.atleast_1d(segments)})
    else:
        raise ValueError("memory_spectrum: the trace has no keyframes and no assoc_matrix; pass segments=[...]")
    a = core_single_chunk(a, ("key_feature", "hidden"))
    k = min(a.sizes["key_feature"], a.sizes["hidden"])
    sv = xr.apply_ufunc(_singular_values, a, input_core_dims=[["key_feature", "hidden"]],
                        output_core_dims=[["rank"]], dask="parallelized", output_dtypes=[np.float64],
                        dask_gufunc_kwargs={"output_sizes": {"rank": k}})
    sv = sv.assign_coords(layer=layers, rank=np.arange(k)).transpose("segment", "layer", "rank")
    if rank is not None:
        sv = sv.isel(rank=slice(0, rank))
    return named(sv, "singular_value", "singular value of the association matrix A", "1", sample=sample)


def effective_rank(spectrum: xr.DataArray | xr.Dataset, **kwargs) -> xr.DataArray:
    """exp(-sum_i p_i log p_i), p_i = sigma_i / sum_j sigma_j, over `rank` (units 1; 0 for A = 0).

    Takes a spectrum from `memory_spectrum`, or a trace (then `memory_spectrum(ds, **kwargs)` first).
    """
    if isinstance(spectrum, xr.Dataset):
        spectrum = memory_spectrum(spectrum, **kwargs)
    total = spectrum.sum("rank")
    p = spectrum / total.where(total > 0)
    entropy = -(p * np.log(p.where(p > 0))).sum("rank")
    out = xr.where(total > 0, np.exp(entropy), 0.0)
    return named(out, "effective_rank", "effective rank exp(H(sigma/sum sigma)) of A", "1")


def capacity(exact_match: xr.DataArray | Mapping[int, float], *, dim: str = "n_pairs") -> xr.DataArray:
    """n·EM(n): the expected number of correctly stored pairs (units pair), over dim `n_pairs`.

    `exact_match` is EM per number of pairs n (a DataArray with coordinate `dim`, or a mapping n -> EM).
    attrs: `capacity` = max_n n·EM(n) and `argmax_n_pairs`, the paper's capacity read-out.
    """
    if isinstance(exact_match, Mapping):
        n = np.array(sorted(exact_match), dtype=np.int64)
        exact_match = xr.DataArray([float(exact_match[k]) for k in n], dims=(dim,), coords={dim: n})
    if dim not in exact_match.dims:
        raise ValueError(f"capacity: exact_match needs a {dim!r} dimension (number of pairs), got dims {exact_match.dims}")
    em = exact_match
    if ((em < 0) | (em > 1)).any():
        raise ValueError("capacity: exact_match values must lie in [0, 1]")
    out = em[dim] * em
    best = out.argmax(dim)
    attrs = {}
    if out.ndim == 1:
        attrs = {"capacity": float(out.max()), "argmax_n_pairs": int(out[dim][int(best)])}
    return named(out, "capacity", "expected number of correctly stored pairs n*EM(n)", "pair", **attrs)
