"""Dashboard latency on a 1M-token trace: first render and segment update, vs a naive baseline (issue 6).

    python bench/bench_dashboard.py [--tokens 1048576] [--repeats 15] [--no-browser] [--cache runs/bench]
    python bench/bench_dashboard.py --plotly-bundles 8     # page loads: plotly.js cartesian vs full bundle

The trace is a synthetic zarr store that follows the trace schema exactly (level ``writes``; 4 layers, hidden 128,
4 memory tokens, d_mem 32, 32-token segments, keyframes every 64 segments, write events in float16, chunks of 512
segments like the recorder's), with the mutable-state stream's real ledger (``armt_viz.tasks.stream``) and a probe at
every query. The real recorder is not used: on this 2-core machine it records ~150 tokens/s at level ``writes``
with probes, so 1M tokens would take hours. The store is cached under ``--cache`` (git-ignored ``runs/``).

Measured side by side in one run (median of ``--repeats``; in-process = build every figure and serialize it to
the JSON plotly receives, which is what a session costs the server):

* first render, cold: a new session with empty caches (open the store, load series, ledger, probes, 6 figures);
* first render, warm: a new session when another session already loaded the trace (shared ``pn.cache``);
* segment update: move Segment to a new segment (memory reconstructed from keyframe + writes, 6 figures);
* naive baseline: the same views shipping the full, un-aggregated series (one point per segment) and rebuilding
  A from every write since segment 0 instead of the nearest keyframe;
* in the browser (headless chromium, if present; the page shows the timeline and the two memory views, the other
  views sit in tabs): page load to three rendered plots, and Segment typed -> both memory views redrawn.

* control change (issue 15): each control (layer, fact, zoom, tab, segment) set, and the figures of the views that
  show it rebuilt and serialized (the worst of the repeats); as in a served session, the recall attribution of
  the Facts view runs in the background (its panel says "Attributing N recalls…" until it is done), measured
  separately as "fact attribution, background";
* stale-mass overlay, cold: the checkbox switched on with empty caches (stale mass computed, timeline redrawn).

Acceptance: first render <= 2 s warm, <= 4 s cold; segment update <= 300 ms (median, in-process); every control
change <= 500 ms; stale overlay <= 3 s cold.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # as `armt-viz serve` runs
    os.environ.setdefault(_var, "1")

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEG, LAYERS, MEM, D_MEM, HIDDEN, NU = 32, 4, 4, 32, 128, 3
FEAT = 2 * NU * D_MEM
KEYFRAME_EVERY, CHUNK = 64, 512
TARGET_FIRST_S, TARGET_UPDATE_S = 2.0, 0.300
TARGET_COLD_S, TARGET_CONTROL_S, TARGET_STALE_S = 4.0, 0.500, 3.0  # issue 15


# ---------------------------------------------------------------------------------------------- the store
def _dpfp(k: np.ndarray) -> np.ndarray:
    x = np.concatenate([np.maximum(k, 0), np.maximum(-k, 0)], axis=-1)
    return np.concatenate([x * np.roll(x, j, axis=-1) for j in range(1, NU + 1)], axis=-1)


def build_store(path: Path, n_tokens: int, seed: int = 0) -> Path:
    """Write the synthetic 1M-token trace (chunk by chunk, flat memory) with a commit marker."""
    import zarr
    from zarr.codecs import ZstdCodec

    from armt_viz.config import ARMTConfig
    from armt_viz.tasks.stream import StreamConfig, make_stream
    from armt_viz.trace.schema import SCHEMA, SCHEMA_VERSION

    meta = {"tokens": n_tokens, "seed": seed, "shape": [SEG, LAYERS, MEM, D_MEM, HIDDEN], "version": 2}
    if (path / "armt_commit.json").exists() and (path / "bench_meta.json").exists():
        if json.loads((path / "bench_meta.json").read_text()) == meta:
            return path
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_seg = n_tokens // SEG
    stream = make_stream(StreamConfig(n_keys=64, segment_size=SEG, seed=seed), n_seg * SEG)
    led = stream.ledger
    config = ARMTConfig(num_mem_tokens=MEM, d_mem=D_MEM, segment_size=SEG)
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    g.attrs.update({"schema_version": SCHEMA_VERSION, "armt_config": config.to_json(), "title": path.name,
                    "record_config": json.dumps({"level": "writes", "keyframe_every": KEYFRAME_EVERY,
                                                 "chunk_segments": CHUNK, "storage_dtype": "float16"})})
    n_kf = n_seg // KEYFRAME_EVERY
    sizes = {"sample": 1, "segment": n_seg, "layer": LAYERS, "mem_token": MEM, "key_dim": D_MEM, "hidden": HIDDEN,
             "head": 1, "keyframe": n_kf, "key_feature": FEAT, "rank": 16, "position": SEG}
    roles = led["role"].values
    p_tok = (led["token"].values[roles == "answer"] - 1).astype(np.int64)
    sizes["probe"] = p_tok.size

    def create(name, data=None, dtype=None):
        spec = SCHEMA[name]
        shape = tuple(sizes[d] for d in spec.dims)
        dtype = dtype or ("float16" if spec.dtype == "storage" else spec.dtype)
        chunks = tuple(CHUNK if d == "segment" else (1 if d == "keyframe" else s) for d, s in zip(spec.dims, shape))
        arr = g.create_array(name=name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=spec.dims,
                             attributes={"long_name": spec.long_name, "units": spec.units},
                             compressors=[ZstdCodec(level=3)])
        if data is not None:
            arr[...] = np.asarray(data).astype(dtype)
        return arr

    create("segment", np.arange(n_seg))
    create("segment_start", np.arange(n_seg) * SEG)
    create("segment_length", np.full(n_seg, SEG))
    create("tokens", stream.input_ids.reshape(1, n_seg, SEG))
    t = np.arange(n_seg)
    create("segment_loss", (2 + 0.3 * np.cos(t / 500) + rng.normal(0, 0.05, n_seg))[None])
    arrays = {n: create(n) for n in ("assoc_norm", "normalizer_norm", "read_out_norm_mean", "read_out_norm_max",
                                     "read_denominator_mean", "write_gate_mean", "correction_mean", "correction_min",
                                     "prev_value_norm_mean", "write_delta_norm", "write_key", "write_delta",
                                     "write_gate", "write_correction", "write_prev_value_norm")}
    kf = {n: create(n) for n in ("keyframe_assoc", "keyframe_normalizer", "spectrum", "effective_rank")}
    create("keyframe", np.arange(n_kf))
    create("keyframe_segment", np.arange(n_kf) * KEYFRAME_EVERY + KEYFRAME_EVERY - 1)
    carry_a = np.zeros((LAYERS, FEAT, HIDDEN))
    carry_z = np.zeros((LAYERS, FEAT))
    for c0 in range(0, n_seg, CHUNK):
        c1 = min(c0 + CHUNK, n_seg)
        n = c1 - c0
        key = rng.normal(size=(n, LAYERS, MEM, D_MEM)).astype(np.float16)
        gate = rng.uniform(0.05, 0.95, size=(n, LAYERS, MEM)).astype(np.float32)
        corr = rng.uniform(0.2, 1.0, size=(n, LAYERS, MEM, 1)).astype(np.float32)
        delta = (gate[..., None] * 0.1 * rng.normal(size=(n, LAYERS, MEM, HIDDEN))).astype(np.float16)
        phi = _dpfp(key.astype(np.float32))
        seg_a = np.einsum("slmf,slmh->slfh", phi, delta.astype(np.float32))
        seg_z = np.einsum("slm,slmf->slf", corr[..., 0], phi)
        cum_a = np.cumsum(seg_a, axis=0, dtype=np.float64) + carry_a
        cum_z = np.cumsum(seg_z, axis=0, dtype=np.float64) + carry_z
        carry_a, carry_z = cum_a[-1], cum_z[-1]
        sl = slice(c0, c1)
        arrays["write_key"][0:1, sl] = key[None]
        arrays["write_delta"][0:1, sl] = delta[None]
        arrays["write_gate"][0:1, sl] = gate[None]
        arrays["write_correction"][0:1, sl] = corr[None]
        arrays["write_prev_value_norm"][0:1, sl] = rng.uniform(0, 2, size=(1, n, LAYERS, MEM)).astype(np.float32)
        norms = {
            "assoc_norm": np.linalg.norm(cum_a, axis=(-2, -1)), "normalizer_norm": np.linalg.norm(cum_z, axis=-1),
            "write_delta_norm": np.linalg.norm(seg_a, axis=(-2, -1)), "write_gate_mean": gate.mean(-1),
            "correction_mean": corr[..., 0].mean(-1), "correction_min": corr[..., 0].min(-1),
            "read_out_norm_mean": 1 + 0.3 * rng.normal(size=(n, LAYERS)) ** 2,
            "read_out_norm_max": 2 + 0.3 * rng.normal(size=(n, LAYERS)) ** 2,
            "read_denominator_mean": 3 + rng.uniform(size=(n, LAYERS)),
            "prev_value_norm_mean": rng.uniform(size=(n, LAYERS)),
        }
        if c0 <= 700_000 // SEG < c1:  # one single-segment spike the timeline must keep
            norms["write_delta_norm"][700_000 // SEG - c0, 1] *= 80
        for name, value in norms.items():
            arrays[name][0:1, sl] = value[None].astype(np.float32)
        local = np.arange(n)[(np.arange(c0, c1) + 1) % KEYFRAME_EVERY == 0]
        for i in local:
            k = (c0 + i) // KEYFRAME_EVERY
            kf["keyframe_assoc"][0:1, k] = cum_a[i][None].astype(np.float32)
            kf["keyframe_normalizer"][0:1, k] = cum_z[i][None].astype(np.float32)
            sv = np.linalg.svd(cum_a[i], compute_uv=False)[:, :16]
            kf["spectrum"][0:1, k] = sv[None].astype(np.float32)
            p = sv / sv.sum(-1, keepdims=True)
            kf["effective_rank"][0:1, k] = np.exp(-(p * np.log(p)).sum(-1))[None].astype(np.float32)
    # probes at every query's GEN token; predictions mostly correct, some stale or wrong
    truth = stream.input_ids[p_tok + 1]
    u = rng.uniform(size=p_tok.size)
    stale = led["stale_values"].values[roles == "query", 0]
    pred = np.where(u < 0.75, truth, np.where((u < 0.9) & (stale >= 0), stale % 16, rng.integers(0, 16, p_tok.size)))
    create("probe_sample", np.zeros(p_tok.size))
    create("probe_token", p_tok)
    create("probe_segment", p_tok // SEG)
    create("probe_position", p_tok % SEG)
    create("probe_prediction", pred)
    create("read_query", np.abs(rng.normal(size=(p_tok.size, LAYERS, FEAT))).astype(np.float32))
    create("read_out", rng.normal(size=(p_tok.size, LAYERS, HIDDEN)).astype(np.float32))
    create("read_denominator", (1 + np.abs(rng.normal(size=(p_tok.size, LAYERS, 1)))).astype(np.float32))
    for name in ("role", "fact_id", "version", "token", "segment", "valid_from", "valid_to", "value",
                 "expected_answer", "sample", "n_tokens"):
        values = led[name].values
        if name == "role":
            arr = g.create_array(name=f"ledger_{name}", shape=values.shape, dtype=str, dimension_names=("event",))
            arr[...] = values.astype(str)
        else:
            arr = g.create_array(name=f"ledger_{name}", shape=values.shape, dtype="int64",
                                 dimension_names=("event",), compressors=[ZstdCodec(level=3)])
            arr[...] = values
    (path / "armt_commit.json").write_text(json.dumps({"sizes": {"segment": n_seg, "keyframe": n_kf},
                                                       "state_file": None, "complete": True,
                                                       "schema_version": SCHEMA_VERSION}))
    (path / "bench_meta.json").write_text(json.dumps(meta))
    print(f"built {path} ({n_seg:,} segments, {p_tok.size:,} probes, {led.sizes['event']:,} ledger events) "
          f"in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


# ---------------------------------------------------------------------------------------------- in-process
def _serialize(app) -> int:
    return sum(len(v.pane.object.to_json()) for v in app.views.values())


def first_render(root: Path, name: str, cold: bool) -> tuple[float, int]:
    import panel as pn

    from armt_viz.viz.dashboard import build_app, loaders

    loaders.BACKGROUND = True  # as in a served session: recall attribution is computed after the first render
    if cold:
        pn.state.clear_caches()
    t0 = time.perf_counter()
    app = build_app(str(root), trace=name, sync_url=False)
    size = _serialize(app)
    return time.perf_counter() - t0, size


def segment_updates(root: Path, name: str, segments) -> list[float]:
    from armt_viz.viz.dashboard import build_app

    app = build_app(str(root), trace=name, sync_url=False)
    out = []
    for s in segments:
        t0 = time.perf_counter()
        app.store.segment = int(s)
        _serialize(app)
        out.append(time.perf_counter() - t0)
    return out


# every control of the page and the views it redraws (their figures are rebuilt and serialized)
_CONTROLS = {"layer": ("timeline", "assoc", "writes", "fact", "compare"), "fact": ("timeline", "fact", "stale"),
             "x_range": ("timeline", "layers"), "tab": (), "segment": ("timeline", "assoc", "writes", "fact",
                                                                        "stale", "layers")}


def control_changes(root: Path, name: str, repeats: int, seed: int = 1) -> dict[str, list[float]]:
    """Seconds from setting each control to the redrawn, serialized figures of the views that show it."""
    from armt_viz.viz.dashboard import build_app, loaders

    loaders.BACKGROUND = True  # as served: recall attribution runs on the background thread after the redraw
    app = build_app(str(root), trace=name, sync_url=False)
    st = app.store
    rng = np.random.default_rng(seed)
    n_seg, n_layer = st.n_segments, st.param.layer.bounds[1] + 1
    facts = [v for v in st._fact.options.values() if v >= 0]
    out: dict[str, list[float]] = {k: [] for k in _CONTROLS}
    for i in range(repeats):
        lo = float(rng.integers(0, n_seg - 2000))
        values = {"layer": (st.layer + 1) % n_layer, "fact": int(rng.choice(facts)) if facts else -1,
                  "x_range": (lo, lo + 1000.0) if i % 2 == 0 else None, "tab": ("memory", "facts", "layers")[i % 3],
                  "segment": int(rng.integers(0, n_seg))}
        for control, views in _CONTROLS.items():
            t0 = time.perf_counter()
            setattr(st, control, values[control])
            for v in views:
                if app.views[v].pane.object is not None:
                    app.views[v].pane.object.to_json()
            out[control].append(time.perf_counter() - t0)
    return out


def fact_attribution(root: Path, name: str, repeats: int, seed: int = 2) -> list[float]:
    """Seconds until the Facts view's recall attribution (12 recalls over all earlier writes) is complete for a
    fact not computed before (the part of a fact or layer change that runs in the background)."""
    from armt_viz.viz.dashboard import loaders

    path = str((root / name).resolve())
    stamp = loaders.stamp_of(path)
    led = loaders.load_ledger(path, stamp)
    facts = np.unique(led.loc[(led["fact_id"] >= 0) & (led["sample"] == 0), "fact_id"].to_numpy())
    rng = np.random.default_rng(seed)
    out = []
    for fact in rng.choice(facts, size=repeats, replace=False):
        t0 = time.perf_counter()
        loaders.load_attribution(path, stamp, int(fact), 1, 12, 0)
        out.append(time.perf_counter() - t0)
    return out


def stale_overlay(root: Path, name: str) -> float:
    """Seconds to switch the stale-mass row on, cold (empty caches): computed, drawn and serialized."""
    import panel as pn

    from armt_viz.viz.dashboard import build_app

    app = build_app(str(root), trace=name, sync_url=False)
    pn.state.clear_caches()
    t0 = time.perf_counter()
    app.store.show_stale_mass = True
    app.views["timeline"].pane.object.to_json()
    return time.perf_counter() - t0


def naive_first_render(root: Path, name: str) -> tuple[float, int]:
    """The views with every series shipped whole (no aggregation)."""
    import panel as pn

    from armt_viz.viz.dashboard import build_app, views

    pn.state.clear_caches()
    saved = views.TimelineView.param.n_pixels.default, views.TimelineView.param.n_pixels.bounds
    t0 = time.perf_counter()
    views.TimelineView.param.n_pixels.bounds = (1, None)
    views.TimelineView.param.n_pixels.default = 10**9  # one point per segment
    try:
        app = build_app(str(root), trace=name, sync_url=False)
        app.views["timeline"].n_pixels = 10**9
        app.views["layers"].pane.object = _naive_layers(app)
        size = _serialize(app)
    finally:
        views.TimelineView.param.n_pixels.default, views.TimelineView.param.n_pixels.bounds = saved
    return time.perf_counter() - t0, size


def _naive_layers(app):
    from armt_viz.viz.dashboard import loaders
    from armt_viz.viz.figures_timeline import layer_comparison_figure

    st = app.store
    series = {n: loaders.load_layer_series(st.path, st.stamp, n, 0) for n in app.views["layers"].names}
    return layer_comparison_figure(series, n_pixels=10**9, segment=st.segment)


def naive_memory(ds, segment: int, layer: int) -> float:
    """A after ``segment`` summed from every write since segment 0 (no keyframes)."""
    from armt_viz.trace.reconstruct import features_np

    cfg = json.loads(ds.attrs["armt_config"])
    t0 = time.perf_counter()
    key = ds["write_key"].isel(sample=0, layer=layer, segment=slice(0, segment + 1)).values
    delta = ds["write_delta"].isel(sample=0, layer=layer, segment=slice(0, segment + 1)).values
    phi = features_np(key, cfg)[..., 0, :]
    np.einsum("smf,smh->fh", phi, delta.astype(np.float64))
    return time.perf_counter() - t0


def keyframe_memory(ds, segment: int, layer: int) -> float:
    from armt_viz.trace import memory_at

    t0 = time.perf_counter()
    memory_at(ds, segment=segment, layer=layer)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- browser
def browser_times(root: Path, name: str, repeats: int) -> dict[str, float] | None:
    if not os.path.exists("/usr/bin/chromium"):
        return None
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        return None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "armt_viz.cli", "serve", "--trace-root", str(root), "--port",
                             str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/?trace={name}"
    try:
        _wait_for_port(port)
        loads, updates = [], []
        with sync_playwright() as p:
            b = _launch_chromium(p)
            context = b.new_context(viewport={"width": 1440, "height": 2600})  # one cache: a returning user
            for i in range(max(3, repeats // 3) + 1):
                page = context.new_page()
                t0 = time.perf_counter()
                page.goto(url)
                expect(page.locator(".js-plotly-plot").nth(2)).to_be_visible(timeout=120_000)
                expect(page.locator(".gtitle", has_text="Association matrix · segment")).to_have_count(1)
                if i:  # the first load warms the server process (imports) and the browser cache
                    loads.append(time.perf_counter() - t0)
                box = page.get_by_label("Segment", exact=True)
                for s in np.random.default_rng(i).integers(0, 30_000, 3):
                    t0 = time.perf_counter()
                    box.fill(str(int(s)))
                    box.press("Enter")
                    expect(page.locator(".gtitle", has_text=f"Association matrix · segment {int(s)} ·")
                           ).to_have_count(1, timeout=30_000)
                    expect(page.locator(".gtitle", has_text=f"Write events · segment {int(s)} ·")
                           ).to_have_count(1, timeout=30_000)
                    updates.append(time.perf_counter() - t0)
                page.close()
            b.close()
        return {"load": statistics.median(loads), "update": statistics.median(updates)}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _page_load(context, url: str) -> float:
    """Seconds from navigation to the three plots of the first screen (timeline, memory views) rendered."""
    from playwright.sync_api import expect

    page = context.new_page()
    try:
        t0 = time.perf_counter()
        page.goto(url)
        expect(page.locator(".js-plotly-plot").nth(2)).to_be_visible(timeout=120_000)
        expect(page.locator(".gtitle", has_text="Association matrix · segment")).to_have_count(1, timeout=120_000)
        return time.perf_counter() - t0
    finally:
        page.close()


def plotly_bundle_times(root: Path, name: str, loads: int) -> dict[str, dict[str, list[float]]] | None:
    """Page loads with plotly.js's cartesian bundle vs Panel's full one, side by side on one server process.

    The dashboard is served in this process (``run_serve(threaded=True)``); before each page load the server is
    switched between the bundles (``use_cartesian_plotly`` / ``use_full_plotly``, read when a page is rendered),
    in the order ABBA ABBA ... so drift in machine load hits both alike. ``returning``: one browser context per
    bundle (HTTP and code caches kept, as bench's ``browser: page load``), after one discarded warm-up load each;
    ``first visit``: a fresh context (empty caches) per load.
    """
    if not os.path.exists("/usr/bin/chromium"):
        return None
    from playwright.sync_api import sync_playwright

    from armt_viz.viz.dashboard import resources
    from armt_viz.viz.serve import run_serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = run_serve(str(root), port=port, threaded=True)
    url = f"http://127.0.0.1:{port}/?trace={name}"
    switch = {"cartesian": resources.use_cartesian_plotly, "full": resources.use_full_plotly}
    out = {kind: {"returning": [], "first visit": []} for kind in switch}
    try:
        _wait_for_port(port)
        with sync_playwright() as p:
            b = _launch_chromium(p)
            viewport = {"width": 1440, "height": 2600}
            contexts = {kind: b.new_context(viewport=viewport) for kind in switch}
            for kind in switch:  # warm-up: server imports, trace caches, the browser cache of each context
                switch[kind]()
                _page_load(contexts[kind], url)
            order = [k for i in range(loads) for k in (("cartesian", "full") if i % 2 == 0 else ("full", "cartesian"))]
            for kind in order:
                switch[kind]()
                out[kind]["returning"].append(_page_load(contexts[kind], url))
                fresh = b.new_context(viewport=viewport)
                try:
                    out[kind]["first visit"].append(_page_load(fresh, url))
                finally:
                    fresh.close()
            b.close()
    finally:
        resources.use_full_plotly()
        server.stop()
    return out


def compare_plotly_bundles(root: Path, name: str, loads: int) -> int:
    times = plotly_bundle_times(root, name, loads)
    if times is None:
        print("no /usr/bin/chromium: nothing measured")
        return 1
    load = os.getloadavg()
    print(f"\nplotly.js bundle, page load to 3 plots (s), {loads} loads each, ABBA order on one server process; "
          f"machine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    for visit in ("returning", "first visit"):
        full, cart = times["full"][visit], times["cartesian"][visit]
        print(f"{visit:12s} full      median {statistics.median(full):.3f}  min {min(full):.3f}  "
              f"all {' '.join(f'{t:.2f}' for t in full)}")
        print(f"{visit:12s} cartesian median {statistics.median(cart):.3f}  min {min(cart):.3f}  "
              f"all {' '.join(f'{t:.2f}' for t in cart)}")
        print(f"{visit:12s} gain (median full - cartesian) {statistics.median(full) - statistics.median(cart):+.3f} s")
    return 0


# ---------------------------------------------------------------------------------------------- main

def _wait_for_port(port: int, tries: int = 300) -> None:
    for _ in range(tries):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.2)


def _launch_chromium(p):
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
    return p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=args)

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1_048_576)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cache", default=str(REPO / "runs" / "bench"))
    ap.add_argument("--no-browser", action="store_true")
    ap.add_argument("--no-stale", action="store_true", help="skip the cold stale-mass overlay (slow without a cache)")
    ap.add_argument("--plotly-bundles", type=int, default=0, metavar="LOADS",
                    help="only compare page loads with plotly.js's cartesian and full bundles, LOADS each")
    args = ap.parse_args(argv)

    root = Path(args.cache)
    name = f"dashboard_{args.tokens}tok.zarr"
    build_store(root / name, args.tokens)
    if args.plotly_bundles:
        return compare_plotly_bundles(root, name, args.plotly_bundles)
    from armt_viz.viz.dashboard import loaders

    path = str((root / name).resolve())
    ds = loaders.open_dataset(path, loaders.stamp_of(path))  # as the dashboard opens it
    n_seg = ds.sizes["segment"]
    rng = np.random.default_rng(0)
    r = args.repeats

    cold = [first_render(root, name, cold=True) for _ in range(max(3, r // 3))]
    warm = [first_render(root, name, cold=False) for _ in range(r)]
    naive = [naive_first_render(root, name) for _ in range(max(3, r // 3))]
    updates = segment_updates(root, name, rng.integers(0, n_seg, r))
    segs = rng.integers(n_seg // 2, n_seg, r)
    mem_kf = [keyframe_memory(ds, int(s), 1) for s in segs]
    mem_naive = [naive_memory(ds, int(s), 1) for s in segs[: max(3, r // 3)]]
    med = statistics.median
    controls = control_changes(root, name, max(3, r // 3))
    stale_cold = stale_overlay(root, name) if not args.no_stale else None
    rows = [
        ("first render, cold session (s)", med(t for t, _ in cold), med(t for t, _ in naive), TARGET_COLD_S),
        ("first render, warm cache (s)", med(t for t, _ in warm), None, TARGET_FIRST_S),
        ("segment update, 6 views (s)", med(updates), None, TARGET_UPDATE_S),
        ("memory A at a segment (s)", med(mem_kf), med(mem_naive), None),
        ("JSON sent for 6 views (MB)", med(s for _, s in cold) / 1e6, med(s for _, s in naive) / 1e6, None),
    ]
    rows += [(f"control change: {k} (s, max)", max(v), None, TARGET_CONTROL_S) for k, v in controls.items()]
    rows.append(("fact attribution, background (s)", med(fact_attribution(root, name, max(3, r // 3))), None,
                 None))
    if stale_cold is not None:
        rows.append(("stale-mass overlay, cold (s)", stale_cold, None, TARGET_STALE_S))
    if not args.no_browser:
        bt = browser_times(root, name, r)
        if bt:
            rows += [("browser: page load to 3 plots (s)", bt["load"], None, None),
                     ("browser: Segment typed -> redrawn (s)", bt["update"], None, None)]
    load = os.getloadavg()[0]
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load:.1f} during the run"
          + (" (other jobs were running: times are inflated)" if load > (os.cpu_count() or 1) else ""))
    print(f"dashboard on a {args.tokens:,}-token trace ({n_seg:,} segments, {ds.sizes['probe']:,} probes, "
          f"{ds.sizes['event']:,} ledger events, {LAYERS} layers); median of {r} (cold/naive: {max(3, r // 3)})")
    print(f"{'metric':40s} {'armt_viz':>10s} {'naive':>10s} {'naive/ours':>11s} {'target':>8s}  ok")
    for label, ours, base, target in rows:
        ratio = f"{base / ours:10.1f}x" if base else f"{'':>11s}"
        ok = "" if target is None else ("yes" if ours <= target else "NO")
        print(f"{label:40s} {ours:10.3f} {base if base is not None else float('nan'):10.3f} {ratio} "
              f"{target if target else float('nan'):8.2f}  {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
