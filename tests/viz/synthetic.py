"""Synthetic, schema-conformant traces for the viz and UI tests (no model, no torch).

``make_trace`` builds an ``xarray.Dataset`` that follows ``armt_viz.trace.schema.SCHEMA`` exactly (names, dims,
dtypes, long_name/units) at level summary, writes or full, from a real mutable-state stream
(``armt_viz.tasks.stream``) so the ledger (``ledger_*`` along ``event``) and the token stream agree. The memory is
self-consistent: with DPFP features phi of the write keys and deltas u, ``A_S = sum_{w <= S} phi_w (x) u_w`` and
``z_S = sum gamma_w phi_w``; keyframes (every ``keyframe_every`` segments) and the ``full`` level's
``assoc_matrix`` hold exactly those sums, so any correct ``memory_at`` reproduces them.

Probes sit at every query's GEN token (the token that predicts the answer's first token); predictions are the
true next token, an older value of the key (stale), or a wrong digit, in fixed proportions.

``write_store(ds, path)`` writes a store ``armt_viz.trace.open_trace`` opens (zarr v3 + commit marker).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import xarray as xr

from armt_viz.trace.schema import OPTIONAL, SCHEMA, SCHEMA_VERSION, variables_for

NU = 3  # DPFP order


def dpfp(keys: np.ndarray) -> np.ndarray:
    """DPFP feature map over the last axis (d -> 2 * NU * d), heads=1 (ARMT_SPEC.md: relu([k, -k]) products)."""
    x = np.concatenate([np.maximum(keys, 0), np.maximum(-keys, 0)], axis=-1)
    return np.concatenate([x * np.roll(x, j, axis=-1) for j in range(1, NU + 1)], axis=-1)


def _dtype(spec_dtype: str, storage: str) -> str:
    return storage if spec_dtype == "storage" else spec_dtype


def make_trace(*, n_segments: int = 48, n_layers: int = 2, n_mem: int = 4, key_dim: int = 4, hidden: int = 16,
               segment_size: int = 32, n_keys: int = 6, keyframe_every: int = 16, level: str = "writes",
               probes: bool = True, ledger: bool = True, seed: int = 0, storage_dtype: str = "float32",
               spike: tuple[int, int] | None = (29, 1)) -> xr.Dataset:
    """A synthetic trace; ``spike=(segment, layer)`` puts a single-segment spike in ``write_delta_norm``."""
    from armt_viz.tasks.stream import StreamConfig, make_stream

    rng = np.random.default_rng(seed)
    stream = make_stream(StreamConfig(n_keys=n_keys, segment_size=segment_size, seed=seed),
                         n_segments * segment_size)
    tokens = stream.input_ids.reshape(1, n_segments, segment_size).astype(np.int32)
    led = stream.ledger
    n_feat = 2 * NU * key_dim
    shape_s = (1, n_segments, n_layers)

    # write events and the exact memory they build
    write_key = rng.normal(size=(1, n_segments, n_layers, n_mem, key_dim)).astype(np.float32)
    write_gate = rng.uniform(0.05, 0.95, size=(1, n_segments, n_layers, n_mem)).astype(np.float32)
    write_corr = rng.uniform(0.2, 1.0, size=(1, n_segments, n_layers, n_mem, 1)).astype(np.float32)
    values = rng.normal(size=(1, n_segments, n_layers, n_mem, hidden)).astype(np.float32)
    write_delta = (write_gate[..., None] * values).astype(np.float32)
    phi = dpfp(write_key.astype(np.float64))                                   # (1, S, L, mem, feat)
    seg_a = np.einsum("bslmf,bslmh->bslfh", phi, write_delta.astype(np.float64))  # per-segment update of A
    seg_z = np.einsum("bslm,bslmf->bslf", write_corr[..., 0].astype(np.float64), phi)
    assoc = np.cumsum(seg_a, axis=1)                                           # (1, S, L, feat, hidden)
    normalizer = np.cumsum(seg_z, axis=1)

    t = np.arange(n_segments)
    smooth = 1.0 + 0.5 * np.sin(t / 7.0)[None, :, None] + 0.1 * np.arange(n_layers)[None, None, :]
    delta_norm = np.linalg.norm(seg_a, axis=(-2, -1)).astype(np.float32)
    if spike is not None and spike[0] < n_segments and spike[1] < n_layers:
        delta_norm[0, spike[0], spike[1]] = 50.0 * float(delta_norm.max())
    data: dict[str, np.ndarray] = {
        "segment_start": t.astype(np.int64) * segment_size,
        "segment_length": np.full(n_segments, segment_size, np.int32),
        "tokens": tokens,
        "segment_loss": (2.0 + 0.3 * np.cos(t / 5.0) + rng.normal(0, 0.05, n_segments))[None].astype(np.float32),
        "assoc_norm": np.linalg.norm(assoc, axis=(-2, -1)).astype(np.float32),
        "normalizer_norm": np.linalg.norm(normalizer, axis=-1).astype(np.float32),
        "read_out_norm_mean": (smooth + rng.normal(0, 0.05, shape_s)).astype(np.float32),
        "read_out_norm_max": (2 * smooth + rng.normal(0, 0.05, shape_s)).astype(np.float32),
        "read_denominator_mean": (3 + smooth).astype(np.float32),
        "write_gate_mean": write_gate.mean(-1),
        "correction_mean": write_corr[..., 0].mean(-1),
        "correction_min": write_corr[..., 0].min(-1),
        "prev_value_norm_mean": (0.5 * smooth).astype(np.float32),
        "write_delta_norm": delta_norm,
    }
    kf_seg = np.arange(keyframe_every - 1, n_segments, keyframe_every, dtype=np.int64)
    kf_a = assoc[:, kf_seg].astype(np.float32)
    sv = np.linalg.svd(kf_a.astype(np.float64), compute_uv=False)              # (1, K, L, rank)
    p = sv / sv.sum(-1, keepdims=True)
    data.update({
        "keyframe_segment": kf_seg,
        "keyframe_assoc": kf_a,
        "keyframe_normalizer": normalizer[:, kf_seg].astype(np.float32),
        "spectrum": sv.astype(np.float32),
        "effective_rank": np.exp(-(p * np.log(np.where(p > 0, p, 1))).sum(-1)).astype(np.float32),
        "write_key": write_key, "write_delta": write_delta, "write_gate": write_gate,
        "write_correction": write_corr,
        "write_prev_value_norm": np.linalg.norm(values - write_delta, axis=-1).astype(np.float32),
        "assoc_matrix": assoc.astype(np.float32), "normalizer": normalizer.astype(np.float32),
        "mem_hidden": rng.normal(size=(1, n_segments, n_layers, n_mem, hidden)).astype(np.float32),
    })

    # probes at each query's GEN token
    flat = stream.input_ids
    if probes:
        roles = led["role"].values
        answer_tok = led["token"].values[roles == "answer"]
        p_tok = (answer_tok - 1).astype(np.int64)
        n_p = p_tok.size
        truth = flat[p_tok + 1]
        u = rng.uniform(size=n_p)
        pred = np.where(u < 0.7, truth, rng.integers(0, 16, n_p))
        # stale answers: the first value token of a superseded version of the queried fact
        q_rows = np.flatnonzero(roles == "query")
        stale_vals = led["stale_values"].values[q_rows, 0]
        has_stale = (stale_vals >= 0) & (u >= 0.7) & (u < 0.9)
        pred = np.where(has_stale, stale_vals % 16, pred)
        # reads consistent with the memory: a probe in segment t reads A, z after segment t-1
        p_seg = p_tok // segment_size
        query = np.abs(rng.normal(size=(n_p, n_layers, n_feat)))
        prev_a = np.where((p_seg > 0)[:, None, None, None], assoc[0, np.maximum(p_seg - 1, 0)], 0.0)
        prev_z = np.where((p_seg > 0)[:, None, None], normalizer[0, np.maximum(p_seg - 1, 0)], 0.0)
        den = np.einsum("plf,plf->pl", prev_z, query) + 1e-5                      # (probe, layer)
        read_out = np.einsum("plfh,plf->plh", prev_a, query) / den[..., None]
        data.update({
            "probe_sample": np.zeros(n_p, np.int64), "probe_token": p_tok, "probe_segment": p_seg,
            "probe_position": p_tok % segment_size,
            "read_query": query.astype(np.float32),
            "read_out": read_out.astype(np.float32),
            "read_denominator": den[..., None].astype(np.float32),
            "probe_prediction": pred.astype(np.int32),
        })
    wanted = variables_for(level, probes=probes)
    variables, coords = {}, {}
    for name, spec in wanted.items():
        if name in ("segment", "keyframe") or (name in OPTIONAL and name not in data):
            continue
        arr = np.asarray(data[name]).astype(_dtype(spec.dtype, storage_dtype))
        target = coords if name in ("segment_start", "keyframe_segment", "probe_sample", "probe_token",
                                    "probe_segment", "probe_position") else variables
        target[name] = xr.Variable(spec.dims, arr, attrs={"long_name": spec.long_name, "units": spec.units})
    coords["segment"] = xr.Variable(("segment",), t.astype(np.int64),
                                    attrs={"long_name": "segment index", "units": "1"})
    coords["keyframe"] = xr.Variable(("keyframe",), np.arange(kf_seg.size, dtype=np.int64),
                                     attrs={"long_name": "keyframe index", "units": "1"})
    if ledger:
        for name in ("role", "fact_id", "version", "token", "segment", "valid_from", "valid_to", "value",
                     "expected_answer", "sample", "n_tokens"):
            v = led[name]
            variables[f"ledger_{name}"] = xr.Variable(("event",), v.values, attrs=dict(v.attrs))
    from armt_viz.config import ARMTConfig

    cfg = ARMTConfig(num_mem_tokens=n_mem, d_mem=key_dim, segment_size=segment_size).to_json()
    attrs = {"title": f"synthetic__stream__{level}", "schema_version": SCHEMA_VERSION,
             "armt_config": cfg, "record_config": json.dumps({"level": level,
                                                                          "keyframe_every": keyframe_every}),
             "task": "stream", "armt_viz_version": "test"}
    return xr.Dataset(variables, coords=coords, attrs=attrs)


def stack_samples(*traces: xr.Dataset) -> xr.Dataset:
    """``traces`` (same sizes, one sample each) as samples 0, 1, ... of one trace: per-sample variables stacked
    along ``sample``, ledger events and probes appended, with ``ledger_sample`` and ``probe_sample`` renumbered."""
    first = traces[0]
    along = {dim: [n for n in [*first.data_vars, *first.coords] if dim in first[n].dims and "sample" not in
                   first[n].dims] for dim in ("event", "probe")}
    per_sample = [n for n in first.data_vars if "sample" in first[n].dims]
    parts = []
    for i, ds in enumerate(traces):
        ds = ds.copy()
        if "ledger_sample" in ds:
            ds["ledger_sample"] = ds["ledger_sample"].copy(data=np.full(ds.sizes["event"], i, ds["ledger_sample"].dtype))
        if "probe_sample" in ds.coords:
            ds = ds.assign_coords(probe_sample=ds["probe_sample"].copy(data=np.full(ds.sizes["probe"], i, np.int64)))
        parts.append(ds)
    out = xr.concat([p[per_sample] for p in parts], dim="sample", coords="minimal", compat="override")
    for dim, names in along.items():
        if names:
            out = out.merge(xr.concat([p[names] for p in parts], dim=dim, coords="minimal", compat="override"))
    out.attrs = dict(first.attrs)
    return out


def write_store(ds: xr.Dataset, path: str | Path, *, chunk_segments: int = 16) -> Path:
    """Write ``ds`` as a committed zarr v3 trace store (the commit marker ``open_trace`` reads)."""
    path = Path(path)
    encoding = {}
    for name, var in {**ds.data_vars, **ds.coords}.items():
        if "segment" in var.dims:
            encoding[name] = {"chunks": tuple(chunk_segments if d == "segment" else s
                                              for d, s in zip(var.dims, var.shape))}
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
    sizes = {"segment": int(ds.sizes.get("segment", 0)), "keyframe": int(ds.sizes.get("keyframe", 0))}
    (path / "armt_commit.json").write_text(json.dumps({"sizes": sizes, "state_file": None, "complete": True,
                                                        "schema_version": SCHEMA_VERSION}))
    return path


def make_root(base: Path) -> dict[str, Path]:
    """``base/root`` with two traces and escape attempts; ``base/outside`` holds a trace that must stay hidden.

    root/run_writes.zarr, root/nested/run_summary.zarr   traces (listed)
    root/alias.zarr -> root/run_writes.zarr              symlink inside the root (listed, opens)
    root/link_out.zarr -> outside/secret.zarr            symlink escaping the root (neither listed nor opened)
    root/linked_dir -> outside                           folder outside the root (not searched)
    """
    import os

    root, outside = base / "root", base / "outside"
    write_store(make_trace(level="summary", seed=3, n_segments=16), outside / "secret.zarr")
    write_store(make_trace(level="summary", seed=1, n_segments=40), root / "nested" / "run_summary.zarr")
    write_store(make_trace(level="writes"), root / "run_writes.zarr")  # the most recent: opened first
    (root / "notes").mkdir()
    os.symlink(outside / "secret.zarr", root / "link_out.zarr")
    os.symlink(outside, root / "linked_dir")
    os.symlink(root / "run_writes.zarr", root / "alias.zarr")
    return {"root": root, "outside": outside, "secret": outside / "secret.zarr"}


def reference_memory(ds: xr.Dataset, segment: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """Oracle: A and z after ``segment`` summed from the write events (sample 0)."""
    k = ds["write_key"].isel(sample=0, layer=layer, segment=slice(0, segment + 1)).values.astype(np.float64)
    u = ds["write_delta"].isel(sample=0, layer=layer, segment=slice(0, segment + 1)).values.astype(np.float64)
    g = ds["write_correction"].isel(sample=0, layer=layer, segment=slice(0, segment + 1)).values[..., 0]
    phi = dpfp(k)
    return np.einsum("smf,smh->fh", phi, u), np.einsum("sm,smf->f", g, phi)


assert set(SCHEMA) >= {"write_key", "tokens"}  # the schema this factory follows
