"""The stale-key study: plan the independent runs, run them (dask cluster or this process), summarise.

Question: can an associative memory track mutable state without accumulating stale keys, and where does it
fail? Per specimen (a model or checkpoint), the study runs the mutable-state stream with several key counts and
seeds, as trained and with gamma / the delta rule switched off on the same weights, and measures:

* recall accuracy vs updates per key, vs live keys, vs stream position (Wilson 95 % CIs; chance = a uniform
  guess over the value set, from the ledger);
* the surviving stale mass (origin view; the per-write view beside it), the asked fact's old-version residual
  and crosstalk at the memory each query reads, over the same axes;
* a log-linear fit of accuracy vs updates per key and the updates per key until it halves (bootstrap CI);
* the causal test (`runs.causal_test`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import xarray as xr

from . import stats as st
from .runs import study_run

__all__ = ["plan", "stale_keys_study", "summarise", "rebuild_report", "SMALL", "MEDIUM", "FULL"]

log = logging.getLogger(__name__)

# settings: key counts swept, tokens per run (the model's own key count gets `tokens_main`), seeds, causal horizon
# tokens_long: one stream per specimen, run without recording, for recall by stream position (with memory, and
# ablated over at most ABLATED_LONG tokens)
SMALL = dict(n_keys=(2,), tokens=1000, tokens_main=1000, seeds=(0,), horizon=48, variants=True, tokens_long=4096)
# a CPU-sized run long enough for the demo model's recall to degrade (5-13 min on 2 CPU cores)
MEDIUM = dict(n_keys=(2,), tokens=4000, tokens_main=12000, seeds=(0,), horizon=256, variants=True,
              tokens_long=65_536)
# the reported study: two seeds; the own-key-count run over 2,048 segments (the length of the training streams),
# 2 and 8 keys over 1,024 segments (up to ~500 updates per key), and one 1M-token stream per specimen
FULL = dict(n_keys=(2, 8, 64), tokens=16_384, tokens_main=32_768, seeds=(0, 1), horizon=256, variants=True,
            tokens_long=1_000_000)
ABLATED_LONG = 65_536
VARIANTS = {"as trained": {}, "gamma off": {"correction": False}, "no delta rule": {"delta_rule": False}}


def plan(specimens: dict[str, str], settings: dict) -> list[dict]:
    """The independent runs: per specimen, the model's own key count as trained (long, with the causal test) and
    with each flag switched, plus other key counts as trained (updates per key and live keys vary with them)."""
    from ..evaluate import model_stream_config
    from .runs import load_variant

    specs = []
    for name, model in specimens.items():
        loaded = load_variant(model)  # once: its own key count and its flags
        own, config = int(model_stream_config(loaded).n_keys), loaded.config
        for seed in settings["seeds"]:
            for variant, flags in VARIANTS.items():
                if variant != "as trained" and not settings.get("variants", True):
                    continue
                if flags and all(getattr(config, k) == v for k, v in flags.items()):
                    continue  # the model already runs this way (e.g. gamma off on the no-gamma specimen)
                specs.append(dict(specimen=name, model=model, variant=variant, flags=flags, n_keys=own, seed=seed,
                                  tokens=settings["tokens_main"] if variant == "as trained" else settings["tokens"],
                                  causal=variant == "as trained", horizon=settings["horizon"]))
            for k in settings["n_keys"]:
                if k != own:
                    specs.append(dict(specimen=name, model=model, variant="as trained", flags={}, n_keys=int(k),
                                      seed=seed, tokens=settings["tokens"], causal=False, horizon=0))
        if settings.get("tokens_long"):
            for ablate in (False, True):
                specs.append(dict(kind="long", specimen=name, model=model, seed=0, ablate=ablate,
                                  tokens=min(settings["tokens_long"], ABLATED_LONG) if ablate else settings["tokens_long"]))
    # longest first, so a cluster's workers finish together
    return sorted(specs, key=lambda s: -s["tokens"] * (3 if s.get("causal") else 1) / (6 if s.get("kind") == "long" else 1))


def _run_all(specs: list[dict], scheduler: str | None, progress: bool) -> list[xr.Dataset]:
    from tqdm.auto import tqdm

    if scheduler:
        from dask.distributed import Client, as_completed
        with Client(scheduler) as client:
            futures = client.map(study_run, specs, pure=False)
            index = {f.key: i for i, f in enumerate(futures)}
            out = [None] * len(specs)
            for fut in tqdm(as_completed(futures), total=len(futures), disable=not progress, desc="study runs"):
                out[index[fut.key]] = fut.result()
            return out
    return [study_run(s) for s in tqdm(specs, disable=not progress, desc="study runs")]


def _queries(results: list[xr.Dataset]) -> xr.Dataset:
    """All queries of all runs along `row`, with run labels as coords."""
    parts = []
    for i, r in enumerate(results):
        q = r[[v for v in r.data_vars if "query" in r[v].dims]]
        n = q.sizes["query"]
        q = q.rename({"query": "row"}).assign_coords(
            run=("row", np.full(n, i)), specimen=("row", np.full(n, r.attrs["specimen"], dtype=object)),
            variant=("row", np.full(n, r.attrs["variant"], dtype=object)),
            n_keys=("row", np.full(n, int(r.attrs["n_keys_stream"]))),
            seed=("row", np.full(n, int(r.attrs["seed"]))))
        parts.append(q)
    return xr.concat(parts, dim="row") if parts else xr.Dataset()


def _curves(q: xr.Dataset, segment_size: int) -> xr.Dataset:
    """Binned accuracy (+CI, chance) and metric means per (series, axis, bin)."""
    rows = []
    series = [(s, v) for s, v in dict.fromkeys(zip(q["specimen"].values, q["variant"].values))]
    for spec, var in series:
        sel = (q["specimen"].values == spec) & (q["variant"].values == var)
        sub = q.isel(row=np.flatnonzero(sel))
        axes = {
            "updates per key": (sub["updates"].values, st.log_edges(max(1, int(sub["updates"].max())))),
            "live keys": (sub["live"].values, st.log_edges(max(1, int(sub["live"].max())))),
            "stream position (tokens)": (sub["token"].values.astype(float),
                                         np.unique(np.round(np.geomspace(segment_size, max(segment_size * 2, float(sub["token"].max()) + 1), 14)))),
        }
        for axis, (x, edges) in axes.items():
            b = st.binned(x, sub["correct"].values, edges, extra={
                "chance": sub["chance_correct"].values, "stale_rate": sub["stale_answer"].values.astype(float),
                "chance_stale": sub["chance_stale"].values, "stale_mass_origin": sub["stale_mass_origin"].values,
                "stale_mass_write": sub["stale_mass_write"].values, "residual": sub["residual"].values,
                "crosstalk": sub["crosstalk"].values})
            for i in range(len(b["acc"])):
                if b["n"][i] == 0:
                    continue
                rows.append(dict(curve_specimen=spec, curve_variant=var, curve_axis=axis,
                                 **{f"curve_{k}": float(v[i]) for k, v in b.items()}))
    if not rows:
        return xr.Dataset()
    cols = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    return xr.Dataset({k: ("curve", v.astype(object) if v.dtype.kind in "UO" else v) for k, v in cols.items()})


def _positions(longs: list[xr.Dataset]) -> xr.Dataset:
    """The long runs' recall by stream position along `pos_row` (pos_specimen, pos_arm label each row)."""
    parts = []
    for r in longs:
        n = r.sizes["pos"]
        parts.append(r.rename({"pos": "pos_row"}).assign(
            pos_specimen=("pos_row", np.full(n, r.attrs["specimen"], dtype=object)),
            pos_arm=("pos_row", np.full(n, r.attrs["arm"], dtype=object)),
            pos_tokens=("pos_row", np.full(n, int(r.attrs["tokens"])))))
    if not parts:
        return xr.Dataset()
    out = xr.concat(parts, dim="pos_row")
    out.attrs = {}
    return out


def _position_rows(d: xr.Dataset, spec: str):
    """(lo, hi, acc, ci_lo, ci_hi, n, ablated acc or NaN) per stream-position bin of `spec`'s long run."""
    if "pos_specimen" not in d:
        return []
    sp = d["pos_specimen"].values.astype(str) == spec
    arm = d["pos_arm"].values.astype(str)
    mem, abl = np.flatnonzero(sp & (arm == "memory")), np.flatnonzero(sp & (arm == "ablated"))
    ablated = {int(d["pos_lo"].values[i]): float(d["pos_acc"].values[i]) for i in abl}
    return [(int(d["pos_lo"].values[i]), int(d["pos_hi"].values[i]), float(d["pos_acc"].values[i]),
             float(d["pos_ci_lo"].values[i]), float(d["pos_ci_hi"].values[i]), int(d["pos_n"].values[i]),
             ablated.get(int(d["pos_lo"].values[i]), np.nan)) for i in mem]


def summarise(results: list[xr.Dataset], *, command: str = "") -> xr.Dataset:
    """Every number of the study in one Dataset: queries (dim row), curves (dim curve), per-segment stale mass
    (dim seg_row), fits (dim series), causal arms (dim causal_row), recall by stream position of the long runs
    (dim pos_row) and the findings table (dim finding)."""
    longs = [r for r in results if r.attrs.get("kind") == "long"]
    failed = [r.attrs for r in results if r.attrs.get("kind") == "failed"]
    results = [r for r in results if r.attrs.get("kind") not in ("long", "failed")]
    q = _queries(results)
    S = int(results[0].attrs["segment_size"])
    curves = _curves(q, S)
    # fits per series over all its queries with updates >= 1
    fit_rows = []
    for spec, var in dict.fromkeys(zip(q["specimen"].values, q["variant"].values)):
        sel = (q["specimen"].values == spec) & (q["variant"].values == var) & (q["updates"].values >= 1)
        u, y = q["updates"].values[sel], q["correct"].values[sel]
        a, b = st.loglinear_fit(u, y)
        half = st.halving_point(a, b)
        lo, hi = st.halving_ci(u, y) if np.isfinite(a) else (np.nan, np.nan)
        fit_rows.append((spec, var, a, b, half, lo, hi, len(u)))
    fits = xr.Dataset({
        "fit_specimen": ("series", np.array([r[0] for r in fit_rows], dtype=object)),
        "fit_variant": ("series", np.array([r[1] for r in fit_rows], dtype=object)),
        "fit_a": ("series", np.array([r[2] for r in fit_rows])), "fit_b": ("series", np.array([r[3] for r in fit_rows])),
        "halving_updates": ("series", np.array([r[4] for r in fit_rows])),
        "halving_lo": ("series", np.array([r[5] for r in fit_rows])),
        "halving_hi": ("series", np.array([r[6] for r in fit_rows])),
        "fit_n": ("series", np.array([r[7] for r in fit_rows])),
    })
    seg_rows = []
    for i, r in enumerate(results):
        n = r.sizes["seg"]
        seg_rows.append(xr.Dataset({
            "seg_run": ("seg_row", np.full(n, i)), "seg_index": ("seg_row", r["seg"].values),
            "seg_specimen": ("seg_row", np.full(n, r.attrs["specimen"], dtype=object)),
            "seg_variant": ("seg_row", np.full(n, r.attrs["variant"], dtype=object)),
            "seg_stale_origin": ("seg_row", np.nanmean(r["seg_stale_origin"].values, axis=1)),
            "seg_stale_write": ("seg_row", np.nanmean(r["seg_stale_write"].values, axis=1))}))
    segs = xr.concat(seg_rows, dim="seg_row")
    causal_rows = []
    for i, r in enumerate(results):
        if "causal_acc" not in r:
            continue
        for j, arm in enumerate(r["arm"].values):
            causal_rows.append(dict(causal_run=i, causal_specimen=r.attrs["specimen"], causal_arm=str(arm),
                                    causal_acc=float(r["causal_acc"].values[j]), causal_lo=float(r["causal_lo"].values[j]),
                                    causal_hi=float(r["causal_hi"].values[j]), causal_n=int(r["causal_n"].values[j]),
                                    causal_segment=int(r.attrs["causal_segment"]),
                                    causal_degraded=int(r.attrs["causal_degraded"])))
    causal = xr.Dataset({k: ("causal_row", np.array([c[k] for c in causal_rows], dtype=object if isinstance(causal_rows[0][k], str) else None))
                         for k in (causal_rows[0] if causal_rows else {})})
    out = xr.merge([q, curves, fits, segs, causal, _positions(longs)], compat="override", join="outer")
    for r in results:  # the report's one-read figure, so a report can be rebuilt from study.zarr alone
        if "example_write_share" in r:
            out = out.merge(r[[v for v in r.data_vars if v.startswith("example_")]])
            out.attrs.update({k: r.attrs[k] for k in ("example_norm", "example_probe", "analysis_layer")})
            break
    findings = _findings(out, command, failed)
    out = out.merge(findings)
    out.attrs.update(segment_size=S, command=command, n_runs=len(results) + len(longs) + len(failed), created=time.strftime("%Y-%m-%d %H:%M:%S"))
    return out


def _fmt(v: float) -> str:
    return "n/a" if not np.isfinite(v) else f"{v:.3f}"


def _acc(sub: xr.Dataset, lo: float, hi: float):
    sel = (sub["updates"].values >= lo) & (sub["updates"].values < hi)
    k, n = int(sub["correct"].values[sel].sum()), int(sel.sum())
    l_, h_ = st.wilson(k, n)
    return (k / n if n else np.nan), float(l_), float(h_), n


def _findings(d: xr.Dataset, command: str, failed: list[dict] = ()) -> xr.Dataset:
    """The findings table: (claim, value, CI low, CI high, n, command) rows; `failed`: attrs of runs whose memory
    overflowed (reported as the segment where it did)."""
    rows = []

    def add(claim, value, lo=np.nan, hi=np.nan, n=0):
        rows.append((claim, float(value), float(lo), float(hi), int(n)))

    for spec in dict.fromkeys(d["specimen"].values):
        base = d.isel(row=np.flatnonzero((d["specimen"].values == spec) & (d["variant"].values == "as trained")))
        top = int(base["updates"].max())
        cut = max(4, int(2 ** np.floor(np.log2(max(top, 1)) - 1)))
        a1 = _acc(base, 1, 4)
        a2 = _acc(base, cut, np.inf)
        add(f"{spec}: recall accuracy at 1-3 updates per key (chance {float(base['chance_correct'].mean()):.3f})",
            a1[0], a1[1], a1[2], a1[3])
        add(f"{spec}: recall accuracy at >= {cut} updates per key", a2[0], a2[1], a2[2], a2[3])
        k = int(base["stale_answer"].sum())
        n = base.sizes["row"]
        lo, hi = st.wilson(k, n)
        add(f"{spec}: stale answers (an older value of the key; chance {float(base['chance_stale'].mean()):.3f})",
            k / max(n, 1), lo, hi, n)
        fi = np.flatnonzero((d["fit_specimen"].values == spec) & (d["fit_variant"].values == "as trained"))
        if len(fi):
            i = fi[0]
            add(f"{spec}: updates per key until accuracy halves (log-linear fit; PI-LLM's 3->400 shape: "
                f"{st.pi_llm_halving():.0f})", d["halving_updates"].values[i], d["halving_lo"].values[i],
                d["halving_hi"].values[i], d["fit_n"].values[i])
        add(f"{spec}: surviving stale mass at queries, origin view (mean)", np.nanmean(base["stale_mass_origin"]),
            n=n)
        add(f"{spec}: stale mass at queries, per-write view (mean; ignores erasure)", np.nanmean(base["stale_mass_write"]),
            n=n)
        add(f"{spec}: old-version residual of the asked fact (mean)", np.nanmean(base["residual"]), n=n)
        add(f"{spec}: crosstalk from other keys at the asked fact's keys (mean)", np.nanmean(base["crosstalk"]), n=n)
        for var in ("gamma off", "no delta rule"):
            sub = d.isel(row=np.flatnonzero((d["specimen"].values == spec) & (d["variant"].values == var)))
            if sub.sizes["row"]:
                k, n = int(sub["correct"].sum()), sub.sizes["row"]
                lo, hi = st.wilson(k, n)
                add(f"{spec}: recall accuracy with {var} (same weights)", k / n, lo, hi, n)
                add(f"{spec}: surviving stale mass with {var} (mean)", np.nanmean(sub["stale_mass_origin"]), n=n)
        rows_ = _position_rows(d, spec)
        for lo_, hi_, acc, cl, ch, n_, abl in ([rows_[0], rows_[-1]] if len(rows_) > 1 else rows_):
            add(f"{spec}: recall at segments {lo_:,}-{hi_:,} of one {int(d['pos_tokens'].max()):,}-token stream "
                f"(memory ablated: {_fmt(abl)})", acc, cl, ch, n_)
        for f in failed:
            if str(f.get("specimen")) == spec:
                add(f"{spec}: with {f.get('variant')} (same weights, {f.get('n_keys_stream', f.get('n_keys'))} keys, seed "
                    f"{f.get('seed')}) the memory overflowed float32 at segment (value)", f.get("failed_segment", -1))
        if "causal_arm" in d:
            ci = np.flatnonzero(d["causal_specimen"].values.astype(str) == spec)
            for arm in ("none", "stale removed", "random removed"):
                j = [i for i in ci if d["causal_arm"].values[i] == arm]
                if not j:
                    continue
                n = np.sum([d["causal_n"].values[i] for i in j]).astype(int)
                k = np.sum([d["causal_acc"].values[i] * d["causal_n"].values[i] for i in j])
                lo, hi = st.wilson(k, n)
                add(f"{spec}: causal test, recall after the degraded segment, {arm}", k / max(n, 1), lo, hi, n)
    return xr.Dataset({
        "finding_claim": ("finding", np.array([r[0] for r in rows], dtype=object)),
        "finding_value": ("finding", np.array([r[1] for r in rows])),
        "finding_lo": ("finding", np.array([r[2] for r in rows])),
        "finding_hi": ("finding", np.array([r[3] for r in rows])),
        "finding_n": ("finding", np.array([r[4] for r in rows])),
        "finding_command": ("finding", np.array([command] * len(rows), dtype=object)),
    })


def stale_keys_study(model: str | list[str] = "demo", out: str | Path = "runs/study", *, small: bool = False,
                     medium: bool = False, scheduler: str | None = None, specimens: dict[str, str] | None = None,
                     settings: dict | None = None, progress: bool = True, png: bool = True) -> xr.Dataset:
    """Run the stale-key study and write DIR/study.zarr, DIR/report.html (offline) and DIR/figures/*.png.

    Args:
        model: a model spec ('demo', a save_pretrained folder, NAME=FOLDER, or 'specimens' for the five shipped
            stream specimens) or a list of them (each is a specimen).
        specimens: {name: model spec} instead of `model` (e.g. the trained family).
        small: the CI-sized settings (`SMALL`, minutes on 2 CPU cores); medium: `MEDIUM` (a 12k-token stream,
            long enough for the demo model to degrade; ~13 min); else `FULL` (up to 1M tokens per stream).
        settings: override entries of SMALL/FULL.
        scheduler: a dask scheduler address: runs are mapped onto that cluster; None runs them here.
    Returns the summary Dataset (also in study.zarr).
    """
    from .report import write_report

    given = None
    if specimens is None:
        models = [model] if isinstance(model, str) else list(model)
        given = models
        specimens = {}
        for m in models:
            if m == "specimens":  # the shipped family: baseline, no_gamma, gate, half_dmem, no_delta
                from ..assets import SPECIMENS, demo_model_path
                specimens.update({v: str(demo_model_path(f"stream_{v}")) for v in SPECIMENS})
            else:  # "name=path" names a specimen (e.g. baseline=runs/train/stream); a bare spec is its own name
                name, _, path = m.partition("=") if "=" in m else (m, "", m)
                specimens[name] = path
    if not specimens:
        raise ValueError("stale_keys_study needs at least one model; pass model='demo' or a checkpoint folder")
    if small and medium:
        raise ValueError("pass small=True or medium=True, not both")
    cfg = dict(SMALL if small else MEDIUM if medium else FULL)
    cfg.update(settings or {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    command = "armt-viz study stale-keys " + " ".join(f"--model {m}" for m in (given or specimens.values())) + \
        f" --out {out}" + (" --small" if small else " --medium" if medium else "")
    specs = plan(specimens, cfg)
    log.info("stale-key study: %d runs", len(specs))
    t0 = time.time()
    results = _run_all(specs, scheduler, progress)
    summary = summarise(results, command=command)
    summary.attrs["seconds"] = round(time.time() - t0, 1)
    summary.attrs["settings"] = repr(cfg)
    _to_zarr(summary, out / "study.zarr")
    write_report(summary, out, results=results, png=png)
    return summary


def rebuild_report(out: str | Path, *, png: bool = True) -> xr.Dataset:
    """Re-derive the halving points and the findings table of DIR/study.zarr with this version's code, then
    rewrite DIR/study.zarr, DIR/report.html and (png=True) DIR/figures/: a report fix without rerunning the runs.
    Overflow rows (runs whose memory overflowed) are kept as stored. Returns the summary."""
    out = Path(out)
    d = xr.open_zarr(out / "study.zarr").load()
    half = np.array([st.halving_point(a, b) for a, b in zip(d["fit_a"].values, d["fit_b"].values)])
    d["halving_updates"] = ("series", half)
    for v in ("halving_lo", "halving_hi"):  # the cap is monotone, so it commutes with the bootstrap percentiles
        d[v] = ("series", np.where(d[v].values.astype(float) > st.HALVING_CAP, np.inf, d[v].values.astype(float)))
    old = d[[v for v in d.data_vars if d[v].dims == ("finding",)]]
    keep = [i for i, c in enumerate(old["finding_claim"].values.astype(str)) if "overflowed" in c]
    d = d.drop_dims("finding")
    new = _findings(d, str(d.attrs.get("command", "")))
    if keep:
        new = xr.concat([new, old.isel(finding=keep)], dim="finding")
    d = d.merge(new)
    _to_zarr(d, out / "study.zarr")
    from .report import write_report
    write_report(d, out, results=None, png=png)
    return d


def _to_zarr(ds: xr.Dataset, path: Path) -> None:
    enc = ds.copy()
    for name, v in list(enc.variables.items()):
        if v.dtype == object:
            enc[name] = v.astype(str)
    enc.attrs = {k: (v if isinstance(v, (int, float, str)) else str(v)) for k, v in enc.attrs.items()}
    import warnings
    with warnings.catch_warnings():  # fixed-length strings have no zarr v3 spec yet; xarray reads them back
        warnings.filterwarnings("ignore", message=".*does not have a Zarr V3 specification.*")
        enc.to_zarr(path, mode="w", consolidated=False)
