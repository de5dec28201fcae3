"""One independent run of the stale-key study: a model (with flags) on one mutable-state stream.

`stream_run(spec)` records the model over a stream at level "writes" with a probe on every answer token, and
returns a small Dataset: one row per query (correct, updates per key, live keys, answer class and its chance,
the surviving stale mass and per-write stale mass of the memory the query reads, the asked fact's old-version
residual and crosstalk) and one row per segment (stale mass, both views). With `spec["causal"]` it also runs the
causal test (`causal_test`). `long_run(spec)` runs one long stream (up to 1M tokens) without recording and
returns recall by stream position, with or without memory. `study_run(spec)` dispatches on `spec["kind"]`.
Specs and results are plain picklable objects, so runs map onto a dask cluster.
"""

from __future__ import annotations

import dataclasses
import tempfile

import numpy as np
import xarray as xr

__all__ = ["stream_run", "long_run", "study_run", "load_variant", "causal_test", "query_table", "POSITION_EDGES"]

# stream-position bins of a long run, in segments (the last bin ends past the stream)
POSITION_EDGES = (0, 16, 64, 256, 1024, 4096, 16384, 65536)


def load_variant(model_spec: str, flags: dict | None = None):
    """The model of `model_spec` ('demo' or a save_pretrained folder) with ARMTConfig flags replaced in place
    (same weights): e.g. {"correction": False} or {"delta_rule": False}."""
    from ..record.run import load_model

    model = load_model(model_spec, "stream")
    if flags:
        cfg = dataclasses.replace(model.config, **flags)
        model.config = cfg
        for block in model.blocks:
            block.cfg = cfg
    return model.eval()


def _stream(model, n_keys: int | None, seed: int, n_tokens: int):
    from ..evaluate import model_stream_config
    from ..tasks.ledger import concat_ledgers
    from ..tasks.stream import stream_chunks

    over = {"seed": seed, "segment_size": model.config.segment_size}
    if n_keys is not None:
        over["n_keys"] = n_keys
    cfg = model_stream_config(model, **over)
    S = cfg.segment_size
    n = max(S, (n_tokens // S) * S)
    chunks = list(stream_chunks(cfg, n))
    ids = np.concatenate([c.input_ids for c in chunks])
    ledger = concat_ledgers([c.ledger for c in chunks]) if len(chunks) > 1 else chunks[0].ledger
    return cfg, ids, ledger


def query_table(ledger: xr.Dataset, value_size: int) -> dict[str, np.ndarray]:
    """Per query (ledger answer rows): token of the first answer token, fact, updates (versions of the key written
    before the query, deletes included), live keys (keys holding a value at the query), expected value, the values
    the key held before (for the stale class) and the number of distinct values a guess chooses from."""
    from ..analysis import facts_of

    facts = facts_of(ledger)
    role = np.asarray(ledger["role"].values).astype(str)
    ans = np.flatnonzero(role == "answer")
    tok = ledger["token"].values[ans].astype(np.int64)
    fact = ledger["fact_id"].values[ans].astype(np.int64)
    version = ledger["version"].values[ans].astype(np.int64)
    expected = ledger["expected_answer"].values[ans].astype(np.int64)
    # live keys at each query token: versions that are writes, valid at the token
    w = facts.ver_kind == "write"
    start = facts.ver_token[w]
    end = np.where(facts.ver_valid_to[w] >= 0, facts.ver_valid_to[w], np.iinfo(np.int64).max)
    live = (np.searchsorted(np.sort(start), tok, side="right") - np.searchsorted(np.sort(end), tok, side="right"))
    stale_sets = []
    for t, f, e in zip(tok, fact, expected):
        vi = facts.versions_of(0, int(f)) if f >= 0 else np.zeros(0, np.int64)
        vals = facts.ver_value[vi][facts.ver_token[vi] < t]
        stale_sets.append(sorted(set(int(v) for v in vals) - {int(e), -1}))
    n_values = 16 ** value_size + (1 if (expected < 0).any() or (facts.ver_kind == "delete").any() else 0)
    return {"token": tok, "fact": fact, "updates": version + 1, "live": live.astype(np.int64),
            "expected": expected, "stale_sets": stale_sets, "n_values": n_values}


def _decode(pred_digits: np.ndarray, none_token: int) -> int:
    """Little-endian base-16 digits -> value code; -1 for an all-NONE answer; -2 for anything else."""
    if (pred_digits == none_token).all():
        return -1
    if (pred_digits < 16).all():
        return int(sum(int(d) * 16 ** j for j, d in enumerate(pred_digits)))
    return -2


def study_run(spec: dict) -> xr.Dataset:
    """One study cell: `long_run` for spec["kind"] == "long", else `stream_run`."""
    return long_run(spec) if spec.get("kind") == "long" else stream_run(spec)


def long_run(spec: dict) -> xr.Dataset:
    """Recall by stream position over one long stream (spec: model, flags, seed, tokens, ablate), the model's own
    stream format, no recording: `evaluate.stream_queries` (the model's one segment loop, flat memory).

    Returns variables over dim `pos` (bins of POSITION_EDGES segments): pos_lo, pos_hi (segments), pos_acc with
    Wilson 95 % CI (pos_ci_lo, pos_ci_hi), pos_n queries, pos_chance (a uniform guess over the value set and
    NONE) and pos_none (share of NONE answers: an ablated model gets those right); attrs label the run."""
    import torch

    from ..evaluate import model_stream_config, stream_queries
    from .stats import binned

    with torch.no_grad():
        model = load_variant(spec["model"], spec.get("flags"))
        cfg = model_stream_config(model, seed=int(spec.get("seed", 0)), segment_size=model.config.segment_size)
        S = cfg.segment_size
        n_tok = max(S, int(spec["tokens"]) // S * S)
        q = stream_queries(model, cfg, n_tok, ablate_memory=bool(spec.get("ablate")))
    n_seg = n_tok // S
    edges = [e for e in POSITION_EDGES if e < n_seg] + [n_seg]
    ok = q["correct"].values.astype(bool)
    b = binned(q["segment"].values, ok, edges, extra={"none": q["expected_answer"].values < 0})
    nb = len(edges) - 1
    n_values = 16 ** cfg.value_size + 1
    return xr.Dataset(
        {"pos_lo": ("pos", np.asarray(edges[:-1], np.int64)), "pos_hi": ("pos", np.asarray(edges[1:], np.int64)),
         "pos_acc": ("pos", b["acc"]), "pos_ci_lo": ("pos", b["lo"]), "pos_ci_hi": ("pos", b["hi"]),
         "pos_n": ("pos", b["n"].astype(np.int64)), "pos_chance": ("pos", np.full(nb, 1.0 / n_values)),
         "pos_none": ("pos", np.where(b["n"] > 0, b["none"], 0.0))},
        attrs={"kind": "long", "specimen": str(spec["specimen"]), "arm": "ablated" if spec.get("ablate") else "memory",
               "seed": int(spec.get("seed", 0)), "tokens": n_tok, "segment_size": S,
               "overall": float(ok.mean()) if len(ok) else float("nan"), "n_queries": int(len(ok))})


def stream_run(spec: dict) -> xr.Dataset:
    """Run one study cell. spec: model, flags, n_keys, seed, tokens, layer (analysis layer, -1 = last), causal,
    horizon (causal test segments), label fields copied into attrs. Runs under no_grad; the caller's grad mode is
    left as it was (the in-process scheduler runs this in the caller's thread: a notebook, a test). A run whose
    memory overflows (non-finite A) returns an empty Dataset with attrs kind="failed", error and failed_segment,
    so one diverging variant does not sink the study: the findings report it."""
    import re

    import torch

    try:
        with torch.no_grad():
            return _stream_run(spec)
    except FloatingPointError as exc:  # e.g. no delta rule on weights trained with it: A overflows float32
        m = re.search(r"at segment (\d+)", str(exc))
        return xr.Dataset(attrs={**{k: (v if isinstance(v, (int, float, str)) else str(v))
                                    for k, v in spec.items() if k != "flags"},
                                 "flags": str(spec.get("flags") or {}), "kind": "failed", "error": str(exc),
                                 "failed_segment": int(m.group(1)) if m else -1})


def _stream_run(spec: dict) -> xr.Dataset:
    import torch

    from ..analysis import origin as O
    from ..analysis.staleness import stale_mass
    from ..record.recorder import record
    from ..tasks.stream import NONE

    model = load_variant(spec["model"], spec.get("flags"))
    cfg, ids, ledger = _stream(model, spec.get("n_keys"), int(spec.get("seed", 0)), int(spec["tokens"]))
    S, V = cfg.segment_size, cfg.value_size
    q = query_table(ledger, V)
    probes = [(0, int(t) - 1 + j) for t in q["token"] for j in range(V + 1)]
    with tempfile.TemporaryDirectory(prefix="armt_study_") as tmp:
        ds = record(model, torch.as_tensor(ids[None, :].astype(np.int64)), store=f"{tmp}/run.zarr", level="writes",
                    probes=probes, ledger=ledger, progress=False, storage_dtype="float32")
        ds = ds.load()
    pred = ds["probe_prediction"].values.reshape(len(q["token"]), V + 1)
    truth = np.stack([ids[q["token"] + j] for j in range(V + 1)], 1)
    correct = (pred == truth).all(1)
    value = np.array([_decode(p[:V], NONE) for p in pred])
    stale = np.array([v in s for v, s in zip(value, q["stale_sets"])]) & ~correct
    n_stale = np.array([len(s) for s in q["stale_sets"]])
    n_seg = ds.sizes["segment"]
    layers = ds.sizes["layer"]
    layer = int(spec.get("layer", -1)) % layers
    sm_origin = stale_mass(ds, method="origin").values[0]  # [segment, layer]
    sm_write = stale_mass(ds, method="write").values[0]
    qseg = q["token"] // S
    read_seg = np.maximum(qseg - 1, 0)  # a query reads the memory after the previous segment
    fr = O.fact_residual(ds, layer, at=np.unique(read_seg))
    fid = {int(f): i for i, f in enumerate(fr["fact_id"].values)}
    sid = {int(s): i for i, s in enumerate(fr["segment"].values)}
    res = np.array([fr["residual"].values[fid[f], sid[s]] if f in fid else np.nan for f, s in zip(q["fact"], read_seg)])
    xt = np.array([fr["crosstalk"].values[fid[f], sid[s]] if f in fid else np.nan for f, s in zip(q["fact"], read_seg)])
    out = xr.Dataset(
        {
            "correct": ("query", correct), "stale_answer": ("query", stale),
            "token": ("query", q["token"]), "segment": ("query", qseg), "updates": ("query", q["updates"]),
            "live": ("query", q["live"]), "expected": ("query", q["expected"]), "answered": ("query", value),
            "chance_correct": ("query", np.full(len(correct), 1.0 / q["n_values"])),
            "chance_stale": ("query", n_stale / q["n_values"]),
            "stale_mass_origin": ("query", np.nanmean(sm_origin[read_seg], axis=1) if n_seg else np.zeros(0)),
            "stale_mass_write": ("query", np.nanmean(sm_write[read_seg], axis=1) if n_seg else np.zeros(0)),
            "residual": ("query", res), "crosstalk": ("query", xt),
            "seg_stale_origin": (("seg", "layer"), sm_origin), "seg_stale_write": (("seg", "layer"), sm_write),
        },
        coords={"seg": np.arange(n_seg), "layer": np.arange(layers)},
        attrs={k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in spec.items() if k != "flags"}
        | {"flags": str(spec.get("flags") or {}), "segment_size": S, "n_values": q["n_values"],
           "analysis_layer": layer, "n_keys_stream": cfg.n_keys},
    )
    if spec.get("causal"):
        for extra in (_example(ds, q, V, layer),
                      causal_test(model, ds, out, int(spec.get("horizon", 64)), seed=int(spec.get("seed", 0)))):
            attrs = {**out.attrs, **extra.attrs}
            out = out.merge(extra)
            out.attrs = attrs
    return out


def _example(ds: xr.Dataset, q: dict, V: int, layer: int) -> xr.Dataset:
    """Per-write and per-origin shares of one late read of a rewritten key (the report's two-views figure)."""
    from ..analysis.attribution import attribute_read

    cand = np.flatnonzero((q["updates"] >= 2) & (q["token"] >= ds.attrs.get("segment_size", 1)))
    if not len(cand):
        return xr.Dataset()
    best = None
    for i in cand[-5:]:  # of the last few, the read whose per-write view has the largest stale terms
        probe = int(i) * (V + 1)  # the probe at the GEN token, which predicts the first answer digit
        w = attribute_read(ds, probe, layer)
        stale = float(np.abs(w.values[w["status"].values == "stale"]).sum()) if "status" in w.coords else 0.0
        if best is None or stale > best[0]:
            best = (stale, probe, w)
    _, probe, w = best
    o = attribute_read(ds, probe, layer, by="origin")
    status = w["status"].values.astype(str) if "status" in w.coords else np.full(w.sizes["write"], "other")
    return xr.Dataset({
        "example_write_share": ("example_write", w.values), "example_origin_share": ("example_write", o.values),
        "example_write_segment": ("example_write", w["write_segment"].values),
        "example_write_status": ("example_write", status),
        "example_origin_status": ("example_write", o["status"].values.astype(str))},
        attrs={"example_probe": probe, "example_norm": float(o.attrs["read_out_norm"])})


def _degraded_segment(run: xr.Dataset, n_seg: int) -> tuple[int, bool]:
    """The first segment (after the first quarter of the stream) where the rolling accuracy of the last quarter's
    worth of queries falls below the midpoint of the early accuracy and chance; else 3/4 of the stream."""
    ok = run["correct"].values.astype(float)
    seg = run["segment"].values
    n = len(ok)
    if n < 8:
        return max(1, int(0.75 * n_seg)), False
    w = max(4, n // 8)
    early = ok[: n // 4].mean()
    chance = float(run["chance_correct"].values.mean())
    roll = np.convolve(ok, np.ones(w) / w, mode="valid")  # roll[i] = mean of ok[i:i+w]
    cut = (early + chance) / 2
    for i in range(n // 4, len(roll)):
        if roll[i] < cut:
            return int(seg[i + w - 1]), True
    return max(1, int(0.75 * n_seg)), False


def causal_test(model, ds: xr.Dataset, run: xr.Dataset, horizon: int, *, seed: int = 0) -> xr.Dataset:
    """At a degraded segment S*, remove from every layer's A the surviving part of all superseded versions
    (`memory_by_origin(...)["superseded"]`), or a random matrix of the same Frobenius norm (the control; Gaussian,
    masked to the head blocks), or nothing; replay the next `horizon` segments and score the queries there.

    Returns `causal_*` variables over dim `arm` (none / stale removed / random removed): accuracy, Wilson CI,
    count, and attrs causal_segment, causal_degraded (whether S* is a real drop or the 3/4 fallback)."""
    from ..analysis import origin as O
    from ..analysis import config_of, head_mask
    from ..record.replay import replay
    from .stats import wilson

    n_seg = ds.sizes["segment"]
    S = int(run.attrs["segment_size"])
    s_star, degraded = _degraded_segment(run, n_seg)
    s_star = int(min(max(s_star, 1), n_seg - 2))
    end = min(n_seg, s_star + 1 + horizon)
    tok = run["token"].values
    mine = np.flatnonzero((tok >= (s_star + 1) * S) & (tok < end * S))
    V = int(round(np.log(run.attrs["n_values"]) / np.log(16))) if run.attrs["n_values"] >= 16 else 1
    config = config_of(ds)
    rng = np.random.default_rng(seed)
    edits_stale, edits_rand = [], []
    mask = head_mask(config, ds.sizes["hidden"])
    for layer in range(ds.sizes["layer"]):
        sup = O.memory_by_origin(ds, s_star, layer).sel(status="superseded").values
        rnd = rng.normal(size=sup.shape) * mask
        rnd *= np.linalg.norm(sup) / max(np.linalg.norm(rnd), 1e-30)
        edits_stale.append({"op": "assoc", "layer": layer, "delta": -sup})
        edits_rand.append({"op": "assoc", "layer": layer, "delta": -rnd})
    ids = ds["tokens"].isel(sample=0, segment=slice(s_star + 1, end)).values.reshape(-1)
    ids = ids[ids >= 0].astype(np.int64)
    base = (s_star + 1) * S
    import torch
    # positions counted from the replay's first token (positions="relative" below)
    probes = [(0, int(t) - base - 1 + j) for t in tok[mine] for j in range(V + 1)]
    truth = np.stack([ids[tok[mine] - base + j] for j in range(V + 1)], 1) if len(mine) else np.zeros((0, V + 1))
    acc, lo, hi, n = [], [], [], []
    for edits in ([], edits_stale, edits_rand):
        if len(mine):
            rep = replay(model, ds, s_star + 1, tokens=torch.as_tensor(ids[None]), edits=edits, level="summary",
                         probes=probes, positions="relative")
            pred = rep["probe_prediction"].values.reshape(len(mine), V + 1)
            ok = (pred == truth).all(1)
        else:
            ok = np.zeros(0, bool)
        k = int(ok.sum())
        l_, h_ = wilson(k, len(ok))
        acc.append(k / len(ok) if len(ok) else np.nan)
        lo.append(float(l_))
        hi.append(float(h_))
        n.append(len(ok))
    arms = ["none", "stale removed", "random removed"]
    out = xr.Dataset({"causal_acc": ("arm", acc), "causal_lo": ("arm", lo), "causal_hi": ("arm", hi),
                      "causal_n": ("arm", n)}, coords={"arm": arms})
    out.attrs.update(causal_segment=s_star, causal_degraded=int(degraded), causal_horizon=end - s_star - 1,
                     causal_removed_norm=float(np.sqrt(sum(np.linalg.norm(e["delta"]) ** 2 for e in edits_stale))))
    return out
