"""Open traces lazily (dask), validated and trimmed to the last committed chunk."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from .schema import SCHEMA, SCHEMA_VERSION
from .store import TraceStoreError, read_commit

__all__ = ["open_trace", "open_traces", "validate_trace"]

_COORDS = ("segment", "keyframe", "keyframe_segment", "segment_start", "probe_sample", "probe_token",
           "probe_segment", "probe_position")


def open_trace(path, *, validate: bool = True) -> xr.Dataset:
    """Open a trace store lazily. Only committed rows are visible, so a store being written
    (or killed mid-write) opens as a consistent prefix."""
    import dask.array as da
    import zarr
    commit = read_commit(path)
    sizes = commit["sizes"]
    try:
        with warnings.catch_warnings():  # our commit marker and resume state live inside the store folder
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            g = zarr.open_group(str(path), mode="r", use_consolidated=False)
            arrays = list(g.arrays())
    except Exception as exc:
        raise TraceStoreError(f"{str(path)!r}: zarr metadata is unreadable ({type(exc).__name__}: {exc}); the store is corrupted") from exc
    version = g.attrs.get("schema_version")
    if version is None:
        raise TraceStoreError(f"{str(path)!r} has no schema_version attribute; it was not written by armt_viz")
    if int(version) > SCHEMA_VERSION:
        raise TraceStoreError(
            f"{str(path)!r} uses trace schema version {version}, newer than this armt_viz supports ({SCHEMA_VERSION}); "
            "upgrade armt_viz to read it"
        )
    variables, coords = {}, {}
    for name, arr in arrays:
        dims = tuple(arr.metadata.dimension_names or ())
        if len(dims) != arr.ndim:
            raise TraceStoreError(f"{str(path)!r}: array {name!r} has no dimension names; not an armt_viz trace")
        x = da.from_zarr(arr)
        idx = tuple(slice(0, sizes[d]) if d in sizes else slice(None) for d in dims)
        x = x[idx]
        var = xr.Variable(dims, x, attrs=dict(arr.attrs))
        (coords if name in _COORDS else variables)[name] = var
    ds = xr.Dataset(variables, coords=coords, attrs=dict(g.attrs))
    ds.attrs["committed_segments"] = sizes.get("segment", 0)
    ds.attrs["complete"] = int(bool(commit.get("complete")))
    ds.encoding["source"] = str(Path(path))
    if validate:
        validate_trace(ds)
    return ds


def open_traces(paths, *, dim: str = "run") -> xr.Dataset:
    """Open many traces and combine them along a new `run` dimension (outer join on segment)."""
    paths = list(paths)
    if not paths:
        raise ValueError("open_traces needs at least one path")
    dss = [open_trace(p) for p in paths]
    keep = [k for k in dss[0].data_vars if all(k in d for d in dss)]
    dss = [d[keep] for d in dss]
    out = xr.concat(dss, dim=dim, join="outer", combine_attrs="drop_conflicts", coords="minimal", compat="override")
    return out.assign_coords({dim: [str(p) for p in paths]})


def validate_trace(ds: xr.Dataset) -> xr.Dataset:
    """Check variables against the schema table (dims and level); raise ValueError naming each problem."""
    problems = []
    for name, v in {**ds.data_vars, **ds.coords}.items():
        spec = SCHEMA.get(name)
        if spec is None or name.startswith("ledger_"):
            continue
        if tuple(v.dims) != spec.dims:
            problems.append(f"{name}: dims {tuple(v.dims)}, schema says {spec.dims}")
    for key in ("armt_config", "record_config"):
        if key not in ds.attrs:
            problems.append(f"attribute {key!r} missing")
        else:
            try:
                json.loads(ds.attrs[key])
            except Exception:
                problems.append(f"attribute {key!r} is not JSON")
    if problems:
        raise ValueError("trace does not follow the armt_viz schema:\n  " + "\n  ".join(problems))
    return ds


def _config(ds) -> dict:
    return json.loads(ds.attrs["armt_config"])


def as_numpy(x) -> np.ndarray:
    return np.asarray(x.values if hasattr(x, "values") else x)
