"""Export the dashboard's current selection as exact data: a zipped zarr store (DESIGN.md §6).

PEERS.md (d) 4: "transfer or export only the slice I need, at full resolution". The subset is an
``xarray.DataTree`` with three groups, each following the trace schema's names, dims and attrs:

    /timeline   per-segment scalars of the selected layer over the visible segment range (full resolution)
    /segment    the selected segment and layer: write events and the memory (A, z) after the write
    /fact       the selected fact's ledger rows and probes

Root attrs repeat the trace's provenance attrs plus ``selection`` (JSON: trace, layer, segment, fact, range).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import numpy as np
import xarray as xr

from . import data as _data

__all__ = ["selection_subset", "export_zip"]


def selection_subset(ds: xr.Dataset, *, segment: int, layer: int, fact: int | None = None,
                     x_range: tuple[float, float] | None = None, sample: int = 0,
                     trace_name: str | None = None) -> xr.DataTree:
    """The selection as a small DataTree (see the module docstring); everything is loaded into memory."""
    n = _data.n_segments(ds)
    lo, hi = (0, n - 1) if x_range is None else (max(int(np.floor(x_range[0])), 0),
                                                 min(int(np.ceil(x_range[1])), n - 1))
    names = [v for v in (*_data.SCALAR_VARS, "segment_loss") if v in ds]
    timeline = ds[names].isel(sample=[sample], segment=slice(lo, hi + 1))
    timeline = timeline.isel(layer=[layer]) if "layer" in timeline.dims else timeline
    timeline = timeline.drop_vars([c for c in timeline.coords if c not in ("segment", "segment_start")])
    seg_names = [v for v in ("write_key", "write_delta", "write_gate", "write_correction", "write_prev_value_norm",
                             "segment_loss") if v in ds]
    seg = ds[seg_names].isel(sample=[sample], segment=[segment])
    seg = seg.isel(layer=[layer]) if "layer" in seg.dims else seg
    seg = seg.drop_vars([c for c in seg.coords if c not in ("segment", "segment_start")])
    try:
        a, z, how = _data.memory_matrix(ds, segment, layer, sample)
        seg["assoc_matrix"] = a.drop_vars(list(a.coords)).expand_dims(sample=1, segment=1, layer=1).transpose(
            "sample", "segment", "layer", "key_feature", "hidden")
        if z is not None:
            seg["normalizer"] = z.drop_vars(list(z.coords)).expand_dims(sample=1, segment=1, layer=1).transpose(
                "sample", "segment", "layer", "key_feature")
        seg.attrs["memory"] = how
    except _data.MemoryUnavailable as exc:
        seg.attrs["memory"] = f"not available: {exc}"
    seg = seg.assign_coords(layer=[layer])
    timeline = timeline.assign_coords(layer=[layer]) if "layer" in timeline.dims else timeline
    groups = {"/timeline": timeline.load(), "/segment": seg.load()}
    if fact is not None and "ledger_fact_id" in ds:
        ledger_vars = [v for v in ds.data_vars if str(v).startswith("ledger_")]
        rows = np.flatnonzero(np.asarray(ds["ledger_fact_id"].values) == fact)
        fact_ds = ds[ledger_vars].isel(event=rows).load()
        if "probe" in ds.dims and "probe_prediction" in ds:
            probes = _data.probe_frame(ds, _data.ledger_frame(ds))
            idx = probes.loc[probes["fact_id"] == fact, "probe"].to_numpy()
            probe_vars = [v for v in ("read_out", "read_denominator", "probe_prediction") if v in ds]
            p = ds[probe_vars].isel(probe=idx)
            p = p.isel(layer=[layer]) if "layer" in p.dims else p
            fact_ds = xr.merge([fact_ds, p.load()], compat="override")
        groups["/fact"] = fact_ds
    tree = xr.DataTree.from_dict({k: _clean(v) for k, v in groups.items()})
    keep = {k: v for k, v in ds.attrs.items() if isinstance(v, (str, int, float))}
    tree.attrs.update(keep)
    tree.attrs["selection"] = json.dumps({"trace": trace_name, "sample": sample, "layer": int(layer),
                                          "segment": int(segment), "fact": None if fact is None else int(fact),
                                          "segment_range": [lo, hi]})
    return tree


def _clean(ds: xr.Dataset) -> xr.Dataset:
    """Drop storage-level attrs (``_FillValue``, ``coordinates``...) and encodings left by the source store, so the
    subset is written with its own (xarray would refuse a ``_FillValue`` attr that is not a number)."""
    ds = ds.copy()
    ds.attrs = {}
    for var in ds.variables.values():
        var.attrs = {k: v for k, v in var.attrs.items() if not k.startswith("_") and k != "coordinates"}
        var.encoding = {}
    return ds


def export_zip(tree: xr.DataTree, name: str = "selection.zarr") -> io.BytesIO:
    """Write ``tree`` as a zarr v3 store and zip it; returns the zip file (rewound) in memory."""
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="armt_export_") as tmp:
        store = os.path.join(tmp, name)
        tree.to_zarr(store, mode="w", zarr_format=3, consolidated=False)
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for folder, _, files in os.walk(store):
                for f in files:
                    full = os.path.join(folder, f)
                    zf.write(full, os.path.relpath(full, tmp))
    buf.seek(0)
    return buf
