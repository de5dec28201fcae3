"""Analysis throughput in-process vs on a LocalCluster, and worker memory on a long trace (issue 5).

    python bench/bench_analysis.py [--segments 20000] [--long-segments 625000] [--workers 2] [--out FILE]

Builds synthetic zarr traces that follow the trace schema (shapes of the tiny GPT-2 ARMT: 2 layers, hidden 64,
4 memory tokens, d_mem 16, 16-token segments; float16 write events; the stream task's ledger with 3 events
per segment), then measures, side by side in one run:

* attribution throughput: write events attributed per second by `attribute_read` for a batch of probes;
* stale-mass throughput: segments per second of `stale_mass` (every segment, every layer);
* both in-process (dask threaded scheduler) and on a LocalCluster of process workers, printed as ratios;
* the peak RSS of each worker (sampled with psutil) while `stale_mass` runs over the long trace (`--long-segments` x 16 tokens;
  625000 segments = 10M tokens), next to the short trace's, to show that worker memory does not grow with length;
* the origin stale mass (`stale_mass(method="origin")`, issue 15's stale overlay) on the short trace, or on a
  recorded trace given with `--origin-trace PATH` (e.g. the demo model's stream at level writes): cold (every
  layer scanned, as the dashboard does) vs read back from the cache beside the trace (`analysis.stale_cache`),
  vs the per-write metric, plus an incremental update after the last 10 % of segments were committed; and the
  cold time extrapolated linearly to `--extrapolate-tokens` (the scan's cost per segment is constant once the
  live-version count has settled: an extrapolation, not a measurement).

The synthetic write events are random (the memory math does not care), so these are throughput and memory
figures, not a statement about a trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEG, LAYERS, MEM, D_MEM, HIDDEN = 16, 2, 4, 16, 64


def build_store(path: Path, n_segments: int, *, chunk: int = 1024, n_probes: int = 8, seed: int = 0) -> dict:
    """Write a schema-conforming synthetic trace of `n_segments` segments; return its size facts."""
    import dask.array as dsa
    import xarray as xr

    from armt_viz.config import ARMTConfig, RecordConfig
    from armt_viz.tasks.stream import StreamConfig, make_stream
    from armt_viz.trace.schema import SCHEMA, SCHEMA_VERSION

    t0 = time.perf_counter()
    config = ARMTConfig(num_mem_tokens=MEM, d_mem=D_MEM, segment_size=SEG)
    rs = dsa.random.RandomState(seed)
    chunks = (1, chunk, LAYERS, MEM)
    key = rs.normal(size=(1, n_segments, LAYERS, MEM, D_MEM), chunks=chunks + (D_MEM,)).astype(np.float16)
    delta = (0.1 * rs.normal(size=(1, n_segments, LAYERS, MEM, HIDDEN), chunks=chunks + (HIDDEN,))).astype(np.float16)
    gamma = rs.uniform(size=(1, n_segments, LAYERS, MEM, 1), chunks=chunks + (1,)).astype(np.float32)
    gate = rs.uniform(0.2, 1.0, size=(1, n_segments, LAYERS, MEM), chunks=chunks).astype(np.float32)
    rng = np.random.default_rng(seed)
    probe_segment = np.sort(rng.integers(int(n_segments * 0.9), n_segments, n_probes))
    stream = make_stream(StreamConfig(n_keys=64, key_size=2, value_size=1, segment_size=SEG, events_per_segment=3,
                                      seed=seed, chunk_segments=8192), n_tokens=SEG * n_segments)

    def var(name, data):
        s = SCHEMA[name]
        return xr.Variable(s.dims, data, attrs={"long_name": s.long_name, "units": s.units})

    ds = xr.Dataset(
        {
            "write_key": var("write_key", key), "write_delta": var("write_delta", delta),
            "write_correction": var("write_correction", gamma), "write_gate": var("write_gate", gate),
            "read_query": var("read_query", rng.uniform(size=(n_probes, LAYERS, config.d_key)).astype(np.float32)),
            "read_out": var("read_out", rng.normal(size=(n_probes, LAYERS, HIDDEN)).astype(np.float32)),
            "read_denominator": var("read_denominator", np.ones((n_probes, LAYERS, 1), np.float32)),
            **{f"ledger_{k}": v.variable for k, v in stream.ledger.data_vars.items()},
        },
        coords={
            "segment": var("segment", np.arange(n_segments)),
            "probe_sample": var("probe_sample", np.zeros(n_probes, np.int64)),
            "probe_segment": var("probe_segment", probe_segment),
            "probe_token": var("probe_token", probe_segment * SEG + 1),
        },
        attrs={"armt_config": config.to_json(), "schema_version": SCHEMA_VERSION,
               "record_config": RecordConfig(level="writes", chunk_segments=chunk, storage_dtype="float16").to_json(),
               "ledger_attrs": json.dumps({k: str(v) for k, v in stream.ledger.attrs.items()})},
    )
    ds["ledger_role"] = ds["ledger_role"].astype(str)  # fixed-width strings: no object arrays through dask
    ds.to_zarr(path, mode="w", consolidated=False)
    size = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return {"segments": n_segments, "tokens": n_segments * SEG, "bytes_on_disk": size,
            "ledger_events": int(stream.ledger.sizes["event"]), "build_s": round(time.perf_counter() - t0, 1)}


def _open(path):
    import xarray as xr
    return xr.open_zarr(path, consolidated=False)


def _attribute_batch(ds) -> tuple[float, int]:
    import dask
    import armt_viz.analysis  # noqa: F401  (registers ds.armt, which parses the ledger once per Dataset)
    n_writes = int(ds["probe_segment"].values.sum()) * MEM * LAYERS
    t0 = time.perf_counter()
    dask.compute(*[ds.armt.attribute_read(p, layer).sum() for p in range(ds.sizes["probe"]) for layer in range(LAYERS)])
    return time.perf_counter() - t0, n_writes


def _stale_mass(ds) -> float:
    from armt_viz.analysis import stale_mass
    t0 = time.perf_counter()
    stale_mass(ds).compute()
    return time.perf_counter() - t0


class _RssSampler:
    """Polls the resident memory of some processes (psutil) in a thread; keeps the maximum of each.

    (ru_maxrss is no use for the workers: Linux carries the parent's high-water mark into spawned children.)
    """

    def __init__(self, pids: list[int], every: float = 0.1):
        import threading

        import psutil
        self.procs = [psutil.Process(p) for p in pids]
        self.peak = [p.memory_info().rss for p in self.procs]
        self.every, self._stop = every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for i, p in enumerate(self.procs):
                try:
                    self.peak[i] = max(self.peak[i], p.memory_info().rss)
                except Exception:  # a worker restarted or exited
                    pass
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peaks_mb(self) -> list[float]:
        return [round(b / 2 ** 20, 1) for b in self.peak]


def _worker_pids(client) -> list[int]:
    return sorted(client.run(os.getpid).values())


def measure_throughput(path, workers: int) -> dict:
    from armt_viz.distributed import cluster
    ds = _open(path)
    n_seg = ds.sizes["segment"]
    _attribute_batch(ds)  # warm caches (zarr metadata, imports)
    a_here, n_writes = _attribute_batch(ds)
    m_here = _stale_mass(ds)
    with cluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit="2GiB") as client:
        _attribute_batch(ds)
        pids = _worker_pids(client)
        with _RssSampler(pids) as rss:
            idle = rss.peaks_mb()
            a_there, _ = _attribute_batch(ds)
            m_there = _stale_mass(ds)
    return {
        "writes_attributed_per_s": {"in_process": n_writes / a_here, "cluster": n_writes / a_there},
        "stale_mass_segments_per_s": {"in_process": n_seg / m_here, "cluster": n_seg / m_there},
        "ratio_cluster_over_in_process": {"attribution": a_here / a_there, "stale_mass": m_here / m_there},
        "worker_rss_mb": {"idle": idle, "peak": rss.peaks_mb()},
    }


def measure_long(path, workers: int, probes: int) -> dict:
    from armt_viz.distributed import cluster
    ds = _open(path)
    if probes:
        ds = ds.isel(probe=slice(0, probes))
    with cluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit="2GiB") as client:
        pids = _worker_pids(client)
        with _RssSampler(pids) as rss, _RssSampler([os.getpid()]) as me:
            idle = rss.peaks_mb()
            seconds = _stale_mass(ds)
            mass_peak = rss.peaks_mb()
            attribution_s, n_writes = _attribute_batch(ds)
    return {"stale_mass_s": seconds, "stale_mass_segments_per_s": ds.sizes["segment"] / seconds,
            "attribution_s": attribution_s, "writes_attributed": n_writes,
            "writes_attributed_per_s": n_writes / attribution_s,
            "worker_rss_mb": {"idle": idle, "peak_stale_mass": mass_peak, "peak_all": rss.peaks_mb()},
            "client_rss_peak_mb": me.peaks_mb()[0]}


def measure_origin(path, extrapolate_tokens: int = 1 << 20) -> dict:
    """Origin stale mass cold / cached / incremental vs the per-write metric on the trace at `path` (one thread)."""
    import dask

    from armt_viz.analysis import stale_cache
    from armt_viz.analysis import stale_mass
    from armt_viz.analysis._common import config_of

    def reopen():
        try:
            from armt_viz.trace import open_trace
            return open_trace(path)
        except Exception:  # the synthetic stores carry no commit marker
            return _open(path)
    ds = reopen()
    n, layers = ds.sizes["segment"], ds.sizes["layer"]
    seg_tokens = config_of(ds).segment_size
    cache_file = Path(path) / stale_cache.CACHE_FILE
    with dask.config.set(scheduler="synchronous"):
        t0 = time.perf_counter()
        stale_mass(ds, method="write").compute()
        write_s = time.perf_counter() - t0
        cache_file.unlink(missing_ok=True)
        stale_cache.clear_memory_cache()
        ticks = []
        t0 = time.perf_counter()
        stale_cache.cached_origin_norms(ds, path, progress=lambda d, t: ticks.append(d))
        cold_s = time.perf_counter() - t0
        stale_cache.clear_memory_cache()
        t0 = time.perf_counter()  # as a fresh process: open the trace, fingerprint it, read the cache file
        stale_cache.cached_origin_stale_mass(reopen(), path).isel(layer=0).values
        disk_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        stale_cache.cached_origin_stale_mass(ds, path).isel(layer=0).values
        memory_s = time.perf_counter() - t0
        # a growing trace: 90 % cached, then the rest committed
        cache_file.unlink(missing_ok=True)
        stale_cache.clear_memory_cache()
        stale_cache.cached_origin_norms(ds.isel(segment=slice(0, int(0.9 * n))), path)
        stale_cache.clear_memory_cache()
        t0 = time.perf_counter()
        stale_cache.cached_origin_norms(ds, path)
        incremental_s = time.perf_counter() - t0
    per_segment = cold_s / n
    target_segments = extrapolate_tokens // seg_tokens
    return {"trace": str(path), "segments": n, "layers": layers, "tokens": n * seg_tokens,
            "write_metric_s": round(write_s, 3), "origin_cold_s": round(cold_s, 3),
            "origin_cold_ms_per_segment_all_layers": round(1e3 * per_segment, 3),
            "origin_cached_from_disk_s": round(disk_s, 4), "origin_cached_in_memory_s": round(memory_s, 4),
            "origin_incremental_last_10pct_s": round(incremental_s, 3), "progress_calls": len(ticks),
            "cache_file_mb": round(cache_file.stat().st_size / 2 ** 20, 2) if cache_file.exists() else None,
            "extrapolated": {"tokens": extrapolate_tokens, "segments": target_segments,
                             "origin_cold_s": round(per_segment * target_segments, 1),
                             "write_metric_s": round(write_s / n * target_segments, 1),
                             "note": "linear extrapolation from this trace, not a measurement"}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, default=20_000, help="segments of the throughput trace")
    p.add_argument("--long-segments", type=int, default=625_000, help="segments of the long trace (0: skip)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--long-probes", type=int, default=2, help="probes attributed on the long trace (x 2 layers)")
    p.add_argument("--dir", default=None, help="where to build the stores (default: a temp dir, removed)")
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    p.add_argument("--origin-trace", default=None, help="a recorded writes-level trace for the origin stale-mass "
                   "row (default: the short synthetic trace)")
    p.add_argument("--origin-only", action="store_true", help="only the origin stale-mass row")
    p.add_argument("--extrapolate-tokens", type=int, default=1 << 20, help="tokens to extrapolate the origin row to")
    args = p.parse_args(argv)
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_analysis_"))
    root.mkdir(parents=True, exist_ok=True)
    result: dict = {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}
    try:
        short = root / f"short_{args.segments}.zarr"
        if args.origin_trace is None and not short.exists():
            result["short_trace"] = build_store(short, args.segments)
        result["origin_stale_mass"] = measure_origin(args.origin_trace or short, args.extrapolate_tokens)
        if args.origin_only:
            print(json.dumps(result, indent=1))
            return 0
        if not short.exists():
            result["short_trace"] = build_store(short, args.segments)
        result["throughput"] = measure_throughput(short, args.workers)
        print(json.dumps(result, indent=1), flush=True)
        if args.long_segments:
            long = root / f"long_{args.long_segments}.zarr"
            if not long.exists():
                result["long_trace"] = build_store(long, args.long_segments)
            result["long"] = measure_long(long, args.workers, args.long_probes)
        print(json.dumps(result, indent=1))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":  # process workers re-import __main__ (ENV.md §6, D1)
    raise SystemExit(main())
