"""Shared helpers of the analysis layer: the DPFP feature map in numpy, config access, labelled results.

The analysis layer never imports torch (DESIGN.md §1): a stored trace must open and be analysed on a laptop
or a dashboard server without a model. So the feature map of ARMT_SPEC.md §1.2 (`armt_viz.model.memory.dpfp`,
`feature_map`) is re-implemented here in numpy; tests check both agree.

Dimension names follow `armt_viz.trace.schema` (`sample`, `segment`, `layer`, `mem_token`, `key_dim`,
`key_feature`, `hidden`, `head`, `probe`); results add `write` (one write event: a segment's memory token).
"""

from __future__ import annotations

import functools
import json
from typing import Any, Callable

import numpy as np
import xarray as xr

from ..config import ARMTConfig
from ..trace.features import dpfp, feature_map  # the package's one numpy DPFP (re-exported)

__all__ = ["dpfp", "feature_map", "config_of", "named", "head_mask", "as_numpy", "segment_positions",
           "check_trace", "core_single_chunk", "per_run"]

def head_mask(config: ARMTConfig, hidden: int) -> np.ndarray:
    """[key_feature, hidden] 0/1 mask of the block-diagonal layout of A over heads (all ones for one head)."""
    heads = config.n_heads
    f_head, d_head = config.d_key // heads, hidden // heads
    mask = np.zeros((config.d_key, hidden))
    for h in range(heads):
        mask[h * f_head:(h + 1) * f_head, h * d_head:(h + 1) * d_head] = 1.0
    return mask


def config_of(ds: xr.Dataset) -> ARMTConfig:
    """The ARMTConfig stored in the trace attrs (`armt_config`, JSON)."""
    raw = ds.attrs.get("armt_config")
    if raw is None:
        raise ValueError(
            "this Dataset has no 'armt_config' attribute, so it is not an armt_viz trace; "
            "open traces with av.open_trace(path) or record them with av.record(...)"
        )
    return ARMTConfig.from_json(raw) if isinstance(raw, str) else ARMTConfig.from_dict(dict(raw))


def check_trace(ds: Any, needs: tuple[str, ...] = (), what: str = "this analysis") -> xr.Dataset:
    """Raise a clear error unless `ds` is an armt_viz trace holding the variables `needs`."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{what} takes an xarray.Dataset trace, got {type(ds).__name__}")
    config_of(ds)
    missing = [n for n in needs if n not in ds.variables]
    if missing:
        raise ValueError(
            f"{what} needs the trace variable(s) {missing}, which this trace lacks; "
            f"record at level='writes' (write events) with probes=... (read variables). "
            f"Present: {sorted(ds.data_vars)[:12]}{' ...' if len(ds.data_vars) > 12 else ''}"
        )
    return ds


def named(data: xr.DataArray, name: str, long_name: str, units: str, **attrs: Any) -> xr.DataArray:
    """Return `data` renamed with CF attrs (plots label their axes from long_name and units)."""
    out = data.rename(name)
    out.attrs = {"long_name": long_name, "units": units, **attrs}
    return out


def as_numpy(x: Any) -> np.ndarray:
    """Values of a (possibly dask-backed) DataArray/Variable as numpy."""
    return np.asarray(x.values if hasattr(x, "values") else x)


def segment_positions(ds: xr.Dataset, below: int) -> slice:
    """Positions along `segment` of every segment index < `below`; they must be 0..below-1 in order.

    Exact attribution needs every write before the read, so a trace that starts late (sliced) is refused.
    """
    seg = as_numpy(ds["segment"]) if "segment" in ds.coords or "segment" in ds.variables else None
    n = int(below)
    if seg is None:
        return slice(0, n)
    if n > len(seg) or (n > 0 and not np.array_equal(seg[:n], np.arange(n))):
        have = f"{seg[0]}..{seg[-1]}" if len(seg) else "none"
        raise ValueError(
            f"need the write events of segments 0..{n - 1}, but this trace holds segments {have}; "
            "attribute on the whole trace (do not slice away earlier segments)"
        )
    return slice(0, n)


def core_single_chunk(da: xr.DataArray, dims: tuple[str, ...]) -> xr.DataArray:
    """Rechunk the core dims of a dask-backed array to one chunk (apply_ufunc's requirement)."""
    if da.chunks is None:
        return da
    return da.chunk({d: -1 for d in dims if d in da.dims})


def json_attr(attrs: dict, key: str, default: Any = None) -> Any:
    raw = attrs.get(key, default)
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def per_run(fn: Callable) -> Callable:
    """Let an analysis of one trace take many runs combined along `run` (av.open_traces, DESIGN.md §7):
    it is applied to each run and the results are concatenated along `run` (outer join)."""

    @functools.wraps(fn)
    def wrapper(ds, *args, **kwargs):
        if isinstance(ds, xr.Dataset) and "run" in ds.dims:
            runs = ds["run"].values if "run" in ds.coords else np.arange(ds.sizes["run"])
            outs = [fn(ds.isel(run=i), *args, **kwargs) for i in range(ds.sizes["run"])]
            outs = [o.drop_vars("run", errors="ignore") for o in outs]
            return xr.concat(outs, dim="run", join="outer", combine_attrs="drop_conflicts",
                             coords="different", compat="equals").assign_coords(run=runs)
        return fn(ds, *args, **kwargs)

    return wrapper
