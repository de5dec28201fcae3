"""Open traces lazily (dask), validated and trimmed to the last committed chunk."""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from .schema import SCHEMA, SCHEMA_VERSION
from .confine import ConfinedStore, StoreListing, TraceLimits, default_limits, scan_committed
from .store import COMMIT_FILE, TraceStoreError, bf16_decode

__all__ = ["open_trace", "open_traces", "validate_trace"]

_COORDS = ("segment", "keyframe", "keyframe_segment", "segment_start", "probe_sample", "probe_token",
           "probe_segment", "probe_position")


def open_trace(path, *, validate: bool = True, limits: TraceLimits | None = None,
               listing: StoreListing | None = None) -> xr.Dataset:
    """Open a trace store lazily. Only committed rows are visible, so a store being written
    (or killed mid-write) opens as a consistent prefix.

    The store is untrusted input (``trace.confine``): before zarr reads anything, its files are listed once and
    checked (nothing may resolve outside the folder, no special files), every array's declared shape and chunks
    are checked against ``limits`` (default ``confine.default_limits()``), and every chunk the commit marker
    covers must exist (stores that record ``dense_chunks``). Later reads go through the same listing, and a
    chunk that vanished raises ``MissingChunkError`` naming the array and the segments.

    ``listing``: the result of ``confine.scan_store`` made elsewhere (the dashboard scans in a worker process
    with a time limit); its committed sizes are used.

    Raises:
        FileNotFoundError, TraceStoreError, TraceConfinementError, TraceBudgetError, MissingChunkError.
    """
    import dask.array as da
    import zarr
    limits = limits or default_limits()
    if listing is None:
        listing = scan_committed(path, limits)
    sizes = listing.sizes
    try:
        with warnings.catch_warnings():  # our commit marker and resume state live inside the store folder
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            store = ConfinedStore(path, listing=listing, limits=limits)
            g = zarr.open_group(store, mode="r", use_consolidated=False, zarr_format=3)
            # only the arrays a trace is made of (schema, ledger, key probes) are read: anything else in the
            # folder costs nothing
            arrays = [(name, arr) for name, arr in g.arrays() if name in listing.arrays
                      and (name in SCHEMA or name.startswith(("ledger_", "key_probe")))]
    except Exception as exc:
        raise TraceStoreError(f"{_name(path)!r}: zarr metadata is unreadable ({type(exc).__name__}: {exc}); "
                              "the store is corrupted") from exc
    version = g.attrs.get("schema_version")
    if version is None:
        raise TraceStoreError(f"{str(path)!r} has no schema_version attribute; it was not written by armt_viz")
    if isinstance(version, bool) or not isinstance(version, int):
        raise TraceStoreError(f"{str(path)!r}: schema_version must be an int, got {version!r}; the store's "
                              "root zarr.json is corrupted or was not written by armt_viz")
    if version > SCHEMA_VERSION:
        raise TraceStoreError(
            f"{str(path)!r} uses trace schema version {version}, newer than this armt_viz supports ({SCHEMA_VERSION}); "
            "upgrade armt_viz to read it"
        )
    variables, coords = {}, {}
    # dask names its arrays by hashing the zarr array object unless given a name (~5 ms per array, most of the
    # time of opening a small trace); one random name per open is unique, and never shared by two opens of a store
    # whose content changed in between. Nothing is read here: the arrays are read when computed.
    opened = uuid.uuid4().hex
    for name, arr in arrays:
        dims = tuple(arr.metadata.dimension_names or ())
        if len(dims) != arr.ndim:
            raise TraceStoreError(f"{str(path)!r}: array {name!r} has no dimension names; not an armt_viz trace")
        for ax, d in enumerate(dims):
            if d in sizes and arr.shape[ax] < sizes[d]:
                raise TraceStoreError(
                    f"{str(path)!r}: array {name!r} holds {arr.shape[ax]} rows along {d!r}, but {COMMIT_FILE} says "
                    f"{sizes[d]} were committed; the store is damaged (files removed or replaced?). "
                    "Record it again")
        idx = tuple(slice(0, sizes[d]) if d in sizes else slice(None) for d in dims)
        if dims == (name,) and name not in SCHEMA:  # xarray would build (read) an index from it
            raise TraceStoreError(f"{str(path)!r}: array {name!r} is named like its dimension, which only the "
                                  "schema's coordinates are; the store was not written by armt_viz")
        if dims == (name,):  # a dimension coordinate: xarray builds an index from it anyway
            x = np.asarray(arr[idx])  # one zarr read, not a dask graph per chunk
        else:
            # from_zarr's from_array with the meta given: it would read an empty slice of every array for it
            x = da.from_array(arr, chunks=arr.chunks, name=f"armt-{name}-{opened}",
                              meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))
            if arr.attrs.get("armt_encoding") == "bfloat16":
                x = x.map_blocks(bf16_decode, dtype=np.float32)
            x = x[idx]
        var = xr.Variable(dims, x, attrs=dict(arr.attrs))
        (coords if name in _COORDS else variables)[name] = var
    try:
        ds = xr.Dataset(variables, coords=coords, attrs=dict(g.attrs))
    except ValueError as exc:  # e.g. two arrays disagree on a dimension's size
        problems = [f"{n}: dims {v.dims}, schema says {SCHEMA[n].dims}" for n, v in {**variables, **coords}.items()
                    if n in SCHEMA and not n.startswith("ledger_") and tuple(v.dims) != SCHEMA[n].dims]
        raise TraceStoreError(
            f"{str(path)!r}: the arrays do not form one dataset ({exc})"
            + ("; " + "; ".join(problems) if problems else "")
            + "; the store is damaged or was not written by armt_viz. Record it again") from exc
    ds.attrs["committed_segments"] = sizes.get("segment", 0)
    ds.attrs["complete"] = int(listing.complete)
    ds.encoding["source"] = str(Path(path))
    ds.encoding["armt_store"] = store  # the confined zarr store (read_direct and friends read through it)
    if listing.missing:
        ds.attrs["missing_chunks"] = len(listing.missing)
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
    # give index-less dims an integer index so runs of different lengths (ledger events, probes) outer-join
    dss = [d.assign_coords({k: np.arange(d.sizes[k]) for k in d.dims if k not in d.indexes}) for d in dss]
    fill = {}
    for k, v in {**dss[0].data_vars, **dss[0].coords}.items():
        kind = np.dtype(v.dtype).kind
        fill[k] = "" if kind in "UOT" else (-1 if kind in "iu" else (False if kind == "b" else np.nan))
    out = xr.concat(dss, dim=dim, join="outer", combine_attrs="drop_conflicts", coords="different",
                    compat="equals", data_vars="all", fill_value=fill)
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
        kind = np.dtype(v.dtype).kind
        want = "f" if spec.dtype in ("float32", "storage") else ("i" if spec.dtype.startswith("int") else None)
        if want == "f" and kind != "f":
            problems.append(f"{name}: dtype {v.dtype}, schema says a float ({spec.dtype})")
        elif want == "i" and kind not in "iu":
            problems.append(f"{name}: dtype {v.dtype}, schema says an integer ({spec.dtype})")
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


def _name(path) -> str:
    """The store's folder name (messages may reach a web page: no absolute server paths)."""
    return Path(str(path)).name


def _config(ds) -> dict:
    return json.loads(ds.attrs["armt_config"])


def as_numpy(x) -> np.ndarray:
    return np.asarray(x.values if hasattr(x, "values") else x)
