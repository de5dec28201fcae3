"""Memoised loaders shared by every session of the dashboard (``pn.cache``, STYLE.md rule 21).

Keys are cheap and hashable: the trace's real path (already confined to the root by ``paths.resolve_trace``),
a ``stamp`` that changes whenever the store commits more segments (so a trace being written is never served
stale), and small ints. Never a Dataset. Every loader returns a small in-memory object (a series, one segment's
writes, a table); the lazily opened Dataset itself is cached too, so sessions share one open store.
Returned objects are shared between sessions and must not be mutated.
"""

from __future__ import annotations

import logging
import atexit
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pandas as pd
import panel as pn
import xarray as xr

from .. import data as _data
from ...trace.confine import MissingChunkError
from ..paths import is_trace_dir

__all__ = ["stamp_of", "open_dataset", "read_direct", "load_scalars", "load_series", "load_layer_series",
           "load_ledger", "load_probes", "load_chance",
           "load_fact_table", "load_memory", "load_writes", "load_attribution", "load_attribution_inputs",
           "load_stale_mass", "attribution_async", "chance_async", "warm", "stale_mass_async", "stale_progress"]


def stamp_of(path: str) -> int:
    """Changes when the store commits (mtime of the commit marker, else of the store's root metadata)."""
    for name in ("armt_commit.json", "zarr.json", ".zgroup"):
        try:
            return os.stat(os.path.join(path, name)).st_mtime_ns
        except OSError:
            continue
    return 0


@pn.cache(max_items=8)
def open_dataset(path: str, stamp: int) -> xr.Dataset:
    """The trace at ``path`` opened lazily (``armt_viz.trace.open_trace``: validated, committed prefix only)."""
    if not is_trace_dir(path):
        raise FileNotFoundError(f"no trace store at {os.path.basename(path)!r}")
    from armt_viz.trace import open_trace

    # confined and budget-checked (trace/confine.py); in a server, the scan of the (untrusted) folder runs in a
    # worker process with a time limit, so a hostile trace costs this process nothing
    listing = scan_isolated(path) if open_in_background() or ISOLATE_SCAN else None
    ds = open_trace(path, listing=listing)
    # 1-D arrays (coordinates, probe positions, the ledger) are small but stored in many tiny chunks (keyframes
    # one per chunk): read them once here, so no later selection pays a dask round trip per chunk
    names = [name for name, var in ds.variables.items()
             if var.ndim == 1 and var.chunks is not None and var.size <= 5_000_000 and name not in ds.dims]
    small = read_direct(path, ds, names)
    with _LOCK:
        _OPENED[(path, stamp)] = None
        while len(_OPENED) > 64:
            _OPENED.pop(next(iter(_OPENED)))
    return ds.assign({k: v for k, v in small.items() if k in ds.data_vars}).assign_coords(
        {k: v for k, v in small.items() if k in ds.coords})


def read_direct(path: str, ds: xr.Dataset, names: list[str]) -> dict[str, xr.Variable]:
    """Variables ``names`` of the trace read whole, straight from zarr (one concurrent read per array instead of a
    dask task per chunk: 11 per-segment scalars of a 1M-token trace in 0.3 s instead of 1-2 s), trimmed to the
    committed sizes ``ds`` shows. Falls back to dask for anything zarr cannot give."""
    out: dict[str, xr.Variable] = {}
    try:
        import zarr

        # through the trace's confined store only (never a fresh look at the folder)
        group = zarr.open_group(ds.encoding["armt_store"], mode="r", use_consolidated=False, zarr_format=3)
    except Exception:
        group = None
    for name in names:
        var = ds.variables[name]
        try:
            data = group[name][tuple(slice(0, ds.sizes[d]) for d in var.dims)]
            if data.shape != var.shape or data.dtype.kind != np.dtype(var.dtype).kind:
                raise ValueError("layout differs")
            out[name] = xr.Variable(var.dims, data, attrs=var.attrs)
        except MissingChunkError:
            raise
        except Exception:
            out[name] = var.load()
    return out


@pn.cache(max_items=8)
def load_scalars(path: str, stamp: int, sample: int) -> xr.Dataset:
    """Every per-segment scalar of one sample, read in one pass (a few MB even for a 10M-token trace)."""
    ds = open_dataset(path, stamp)
    names = [n for n in (*_data.SCALAR_VARS, "segment_loss") if n in ds]
    return _data.scalar_table(ds.assign(read_direct(path, ds, names)), sample)


def load_series(path: str, stamp: int, name: str, layer: int | None, sample: int) -> xr.DataArray:
    return _data.series(load_scalars(path, stamp, sample), name, layer)


def load_layer_series(path: str, stamp: int, name: str, sample: int) -> xr.DataArray:
    return _data.layer_series(load_scalars(path, stamp, sample), name)


@pn.cache(max_items=8)
def load_ledger(path: str, stamp: int) -> pd.DataFrame | None:
    return _data.ledger_frame(open_dataset(path, stamp))


@pn.cache(max_items=8)
def load_probes(path: str, stamp: int) -> pd.DataFrame:
    return _data.probe_frame(open_dataset(path, stamp), load_ledger(path, stamp))


@pn.cache(max_items=8)
def load_chance(path: str, stamp: int) -> pd.DataFrame | None:
    """``data.probe_chance``: per probe, the chance of each outcome for a uniform guess (None: no ledger/probes)."""
    return _data.probe_chance(open_dataset(path, stamp))


@pn.cache(max_items=8)
def load_fact_table(path: str, stamp: int, sample: int) -> pd.DataFrame:
    """``data.fact_table`` of one sample (fact ids are per sample)."""
    return _data.fact_table(load_ledger(path, stamp), sample)


@pn.cache(max_items=64)
def load_memory(path: str, stamp: int, segment: int, layer: int, sample: int):
    """``(A, z, how)`` or ``(None, None, message)`` when the trace cannot give the memory."""
    try:
        return _data.memory_matrix(open_dataset(path, stamp), segment, layer, sample)
    except _data.MemoryUnavailable as exc:
        return None, None, str(exc)


@pn.cache(max_items=64)
def load_writes(path: str, stamp: int, segment: int, layer: int, sample: int):
    """``(writes, None)`` or ``(None, message)``."""
    try:
        return _data.segment_writes(open_dataset(path, stamp), segment, layer, sample), None
    except _data.MemoryUnavailable as exc:
        return None, str(exc)


@pn.cache(max_items=2)
def load_attribution_inputs(path: str, stamp: int, layer: int):
    """One layer's write events and probe reads in memory, and the prepared ledger (see data.attribution_inputs)."""
    return _data.attribution_inputs(open_dataset(path, stamp), layer)


@pn.cache(max_items=32)
def load_attribution(path: str, stamp: int, fact: int, layer: int, max_recalls: int, sample: int = 0):
    """``(frame, message)`` of ``data.recall_attribution`` for the recalls of ``fact`` (in ``sample``) at ``layer``."""
    ds = open_dataset(path, stamp)
    recalls = _data.fact_recalls(load_probes(path, stamp), fact, sample)
    if _data.trace_level(ds) == "summary" or recalls.empty or "read_query" not in ds:
        return _data.recall_attribution(ds, recalls, layer, max_recalls)
    sub, facts = load_attribution_inputs(path, stamp, layer)
    return _data.recall_attribution(sub, recalls, 0, max_recalls, ledger=facts)


def load_stale_mass(path: str, stamp: int, layer: int, sample: int, progress=None):
    """``(series, None)`` of the stale mass of layer ``layer``, or ``(None, message)``. Every layer is computed
    at once and cached beside the trace (``armt_viz.analysis.stale_cache``: a later call, another layer or a
    restarted server reads it back in milliseconds; a growing trace scans only its new segments)."""
    return _data.stale_mass_series(open_dataset(path, stamp), layer, sample, path=path, progress=progress)


_STALE_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="armt-stale-mass")
_STALE_PROGRESS: dict[tuple, tuple[int, int]] = {}  # (path, stamp) -> (segments scanned, to scan)
_STALE_PENDING: dict[tuple, Future] = {}


def stale_progress(path: str, stamp: int) -> tuple[int, int] | None:
    """``(scanned, total)`` segments of a stale-mass computation running for this trace, or None."""
    with _LOCK:
        return _STALE_PROGRESS.get((path, stamp))


def stale_mass_async(key: tuple, on_progress, every_s: float = 1.0) -> tuple | None:
    """``load_stale_mass(*key)`` (key = (path, stamp, layer, sample)) if it is ready, else None after starting it
    on a background thread (one per trace: it computes every layer); ``on_progress()`` is called from that thread
    at most every ``every_s`` seconds while it runs (``stale_progress`` says how far) and once when it ends.
    Inline without a server session."""
    in_session = pn.state.curdoc is not None and pn.state.curdoc.session_context is not None
    if not (in_session if BACKGROUND is None else BACKGROUND):
        return load_stale_mass(*key)
    import time

    trace, last = key[:2], [0.0]

    def tick(done, total):
        with _LOCK:
            _STALE_PROGRESS[trace] = (done, total)
        now = time.monotonic()
        if now - last[0] >= every_s:
            last[0] = now
            on_progress()

    def work():
        try:
            return load_stale_mass(*key, progress=tick)
        finally:
            with _LOCK:
                _STALE_PROGRESS.pop(trace, None)

    with _LOCK:
        future = _STALE_PENDING.get(trace)
        if future is None:
            future = _STALE_PENDING[trace] = _STALE_POOL.submit(work)
            while len(_STALE_PENDING) > 16:
                _STALE_PENDING.pop(next(iter(_STALE_PENDING)))
    if future.done():
        if future.exception() is not None:
            with _LOCK:
                _STALE_PENDING.pop(trace, None)  # try again on the next request
            return None, f"Stale mass failed: {type(future.exception()).__name__}: {future.exception()}"
        # this trace's scan finished: every layer is in the stale-mass cache, read back in milliseconds
        return load_stale_mass(*key)
    future.add_done_callback(lambda _f: on_progress())
    return None


# ---------------------------------------------------------------------------------------------- background work
_log = logging.getLogger(__name__)
_POOL = ThreadPoolExecutor(max_workers=1, thread_name_prefix="armt-attribution")
BACKGROUND: bool | None = None  # None: in the background only inside a server session
_DONE: dict[tuple, tuple] = {}
_PENDING: dict[tuple, Future] = {}
_LOCK = threading.Lock()


def _attribute(key: tuple) -> tuple:
    """``load_attribution(*key)``, or ``(None, message)`` when it raises: the failure is logged with its traceback
    and shown in the view, never left pending (a pending failure redrew the view forever)."""
    try:
        return load_attribution(*key)
    except Exception as exc:  # any failure of the analysis becomes a message in the view
        path, _stamp, fact, layer = key[:4]
        _log.exception("attribution of fact %s at layer %s in %s failed", fact, layer, path)
        return None, f"Attribution failed ({type(exc).__name__}: {exc}); see the server log for the traceback."


def attribution_async(key: tuple, on_done) -> tuple | None:
    """The attribution for ``key = (path, stamp, fact, layer, max_recalls, sample)`` if it is ready, else None after
    scheduling it on a background thread; ``on_done()`` is called (from that thread) once, when it finishes.

    The result is ``(frame, message)``; a failure is ``(None, "Attribution failed ...")`` (logged), kept like a
    result, so a view that redraws on ``on_done`` gets it on that redraw and schedules nothing more.
    Without a server session (tests, notebooks) the work runs inline and the result is returned at once.
    """
    with _LOCK:
        if key in _DONE:
            return _DONE[key]
    in_session = pn.state.curdoc is not None and pn.state.curdoc.session_context is not None
    if not (in_session if BACKGROUND is None else BACKGROUND):
        result = _attribute(key)
        with _LOCK:
            _DONE[key] = result
        return result

    def work():
        result = _attribute(key)
        with _LOCK:
            _DONE[key] = result
            if len(_DONE) > 64:
                _DONE.pop(next(iter(_DONE)))
            _PENDING.pop(key, None)
        return result

    with _LOCK:
        if key in _DONE:  # finished since the first look
            return _DONE[key]
        future = _PENDING.get(key)
        if future is None:
            future = _PENDING[key] = _POOL.submit(work)
    future.add_done_callback(lambda _f: on_done())
    return None


def chance_async(path: str, stamp: int, on_done) -> tuple[bool, object]:
    """``(ready, chance)``: ``load_chance`` if it is cached or computable now (outside a server session); in a
    session, a first call schedules it on the background thread and returns ``(False, None)``, calling
    ``on_done()`` when it is ready (the chance baseline of a 1M-token trace takes a second or two)."""
    key = ("chance", path, stamp)
    with _LOCK:
        if key in _DONE:
            return True, _DONE[key]
    in_session = pn.state.curdoc is not None and pn.state.curdoc.session_context is not None
    if not (in_session if BACKGROUND is None else BACKGROUND):
        result = load_chance(path, stamp)
        with _LOCK:
            _DONE[key] = result
        return True, result

    def work():
        result = load_chance(path, stamp)
        with _LOCK:
            _DONE[key] = result
            _PENDING.pop(key, None)
        return result

    with _LOCK:
        future = _PENDING.get(key)
        if future is None:
            future = _PENDING[key] = _POOL.submit(work)
    future.add_done_callback(lambda _f: on_done())
    return False, None
OPEN_TIMEOUT_S = float(os.environ.get("ARMT_VIZ_OPEN_TIMEOUT", "30"))  # a session gives up waiting after this
ISOLATE_SCAN = False  # True: scan in the worker process even outside a server session (run_serve's warm-up)
_SCAN_POOL = None
_SCAN_LOCK = threading.Lock()


def _scan_pool():
    global _SCAN_POOL
    with _SCAN_LOCK:
        if _SCAN_POOL is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            from ..._process import exit_with_parent

            # the worker ends with this process, also when it is killed (no atexit): else each hard-killed server
            # left its scan worker (~135 MB) running
            _SCAN_POOL = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=exit_with_parent)
            atexit.register(_SCAN_POOL.shutdown, wait=False, cancel_futures=True)
        return _SCAN_POOL


def start_scan_worker() -> None:
    """Start the scan worker process now (a server calls this at start, so the first visitor does not wait)."""
    _scan_pool().submit(os.getpid)


def scan_isolated(path: str, timeout: float | None = None):
    """``confine.scan_committed(path)`` in the worker process; after ``timeout`` (default ``OPEN_TIMEOUT_S``) the
    worker is killed (a new one starts for the next scan) and ``TimeoutError`` says so."""
    from concurrent.futures import TimeoutError as FutureTimeout

    from armt_viz.trace.confine import default_limits, scan_committed

    global _SCAN_POOL
    pool = _scan_pool()
    future = pool.submit(scan_committed, path, default_limits())
    try:
        return future.result(timeout=OPEN_TIMEOUT_S if timeout is None else timeout)
    except FutureTimeout:
        with _SCAN_LOCK:
            if _SCAN_POOL is pool:
                _SCAN_POOL = None
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)
        raise TimeoutError(f"checking the trace {os.path.basename(path)!r} took longer than "
                           f"{OPEN_TIMEOUT_S if timeout is None else timeout:g} s (a very large or hostile store, or "
                           "a slow disk); it was not opened") from None
_OPEN_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="armt-open")
_OPENED: dict[tuple, None] = {}  # (path, stamp) of datasets open in the cache (most recent last)


def open_in_background() -> bool:
    """Whether trace opening runs off the event loop: inside a server session (unless ``BACKGROUND`` says)."""
    in_session = pn.state.curdoc is not None and pn.state.curdoc.session_context is not None
    return in_session if BACKGROUND is None else BACKGROUND


def is_open(path: str, stamp: int) -> bool:
    """Whether ``open_dataset(path, stamp)`` is cached (then opening is instant)."""
    with _LOCK:
        return (path, stamp) in _OPENED


def open_async(path: str, stamp: int, done) -> Future:
    """Open the trace on a worker thread; ``done(dataset_or_exception)`` is called from that thread."""

    def work():
        try:
            result = open_dataset(path, stamp)
        except BaseException as exc:  # noqa: BLE001 (MemoryError included: reported, the server keeps serving)
            result = exc
        done(result)

    return _OPEN_POOL.submit(work)


def warm(root: str, names: list[str] | None = None, *, sample: int = 0) -> None:
    """Load what a first render of ``names`` (default: the most recently committed trace under ``root``) needs,
    so the first browser session on a fresh server is as fast as later ones. Errors are logged, not raised."""
    import logging

    from ..paths import list_traces, resolve_trace

    log = logging.getLogger(__name__)
    try:
        if names is None:
            listed = list_traces(root)
            names = sorted(listed, key=lambda n: stamp_of(os.path.join(os.path.realpath(root), n)))[-1:]
        for name in names:
            path = str(resolve_trace(root, name))
            stamp = stamp_of(path)
            open_dataset(path, stamp)
            load_scalars(path, stamp, sample)
            load_fact_table(path, stamp, sample)
            load_probes(path, stamp)
            chance = load_chance(path, stamp)
            with _LOCK:
                _DONE[("chance", path, stamp)] = chance
            log.info("warmed %s", name)
    except Exception as exc:  # warming is best effort
        log.warning("could not warm the trace cache: %s", exc)
