"""The stale-key study's report: plotly figures, one self-contained offline HTML page, the same figures as PNG.

The HTML inlines plotly.js once (no CDN, no request leaves the machine) and opens with the findings table
(claim, number, 95 % CI, n, command) and the answer to the study's question in plain sentences. PNGs are
screenshots of the report's own figures by headless Chromium through Playwright (no kaleido here); when that is
not available the PNGs are skipped with a warning and the HTML still has every figure.
"""

from __future__ import annotations

import html
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from ..viz.style import PALETTE, finish
from . import stats as st

__all__ = ["study_figures", "answer_text", "write_report", "CHROMIUM"]

log = logging.getLogger(__name__)
CHROMIUM = "/usr/bin/chromium"


def _series(d: xr.Dataset):
    return list(dict.fromkeys(zip(d["specimen"].values.astype(str), d["variant"].values.astype(str))))


def _curve(d: xr.Dataset, spec, var, axis):
    c = d[[v for v in d.data_vars if d[v].dims == ("curve",)]]
    m = (c["curve_specimen"].values.astype(str) == spec) & (c["curve_variant"].values.astype(str) == var) & \
        (c["curve_axis"].values.astype(str) == axis)
    c = c.isel(curve=np.flatnonzero(m))
    keep = ("curve_specimen", "curve_variant", "curve_axis")
    return c.rename({v: v[len("curve_"):] for v in c.data_vars if v.startswith("curve_") and v not in keep})


def _acc_figure(d: xr.Dataset, axis: str, title: str, *, log_x: bool = True, fit: bool = False) -> go.Figure:
    fig = go.Figure()
    chance_drawn = False
    for i, (spec, var) in enumerate(_series(d)):
        c = _curve(d, spec, var, axis)
        if c.sizes["curve"] == 0:
            continue
        x = np.sqrt(c["bin_lo"].values * np.maximum(c["bin_hi"].values - 1, c["bin_lo"].values)) if log_x \
            else (c["bin_lo"].values + c["bin_hi"].values) / 2
        color = PALETTE[i % len(PALETTE)]
        acc = c["acc"].values
        fig.add_trace(go.Scatter(
            x=x, y=acc, mode="lines+markers", name=f"{spec} · {var}", line_color=color,
            error_y=dict(type="data", symmetric=False, array=c["hi"].values - acc, arrayminus=acc - c["lo"].values),
            customdata=np.stack([c["n"].values, c["bin_lo"].values, c["bin_hi"].values], 1),
            hovertemplate="%{customdata[1]:.0f}-%{customdata[2]:.0f}: acc %{y:.3f} (n=%{customdata[0]:.0f})<extra></extra>"))
        if not chance_drawn:
            fig.add_trace(go.Scatter(x=x, y=c["chance"].values, mode="lines", name="chance (uniform guess)",
                                     line=dict(color="#7F7F7F", dash="dot")))
            chance_drawn = True
        if fit and var == "as trained":
            fi = np.flatnonzero((d["fit_specimen"].values.astype(str) == spec) & (d["fit_variant"].values.astype(str) == var))
            if len(fi):
                a, b = float(d["fit_a"].values[fi[0]]), float(d["fit_b"].values[fi[0]])
                if np.isfinite(a):
                    u = np.geomspace(1, max(float(x.max()), 2), 50)
                    fig.add_trace(go.Scatter(x=u, y=a + b * np.log10(u), mode="lines", line=dict(color=color, dash="dash"),
                                             name=f"{spec}: fit a + b log10(u), halves at {st.halving_point(a, b):.3g}"))
                    lo_u, hi_u = st.PI_LLM_RANGE
                    y3 = a + b * np.log10(lo_u)
                    uu = np.geomspace(lo_u, hi_u, 30)
                    fig.add_trace(go.Scatter(x=uu, y=y3 * (1 - np.log10(uu / lo_u) / np.log10(hi_u / lo_u)), mode="lines",
                                             line=dict(color="#B8B8B8", dash="longdash"),
                                             name="PI-LLM shape (log-linear to 0 at 400; arXiv 2506.08184)"))
    fig.update_xaxes(title_text=axis, type="log" if log_x else "linear")
    fig.update_yaxes(title_text="recall accuracy (exact match)", range=[-0.02, 1.02])
    return _below(finish(fig, title=title, height=500,
                         subtitle="95 % Wilson intervals; chance = a uniform guess over the value set"))


def _below(fig: go.Figure) -> go.Figure:
    """Legend under the plot (long series names would cover the title)."""
    fig.update_layout(legend=dict(orientation="h", x=0, xanchor="left", y=-0.22, yanchor="top"),
                      margin=dict(b=140))
    return fig


def _metric_figure(d: xr.Dataset, axis: str, metrics: dict[str, str], title: str, subtitle: str) -> go.Figure:
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    for i, (spec, var) in enumerate(_series(d)):
        c = _curve(d, spec, var, axis)
        if c.sizes["curve"] == 0:
            continue
        x = np.sqrt(c["bin_lo"].values * np.maximum(c["bin_hi"].values - 1, c["bin_lo"].values))
        for j, (m, label) in enumerate(metrics.items()):
            fig.add_trace(go.Scatter(x=x, y=c[m].values, mode="lines+markers", name=f"{spec} · {var}: {label}",
                                     line=dict(color=PALETTE[i % len(PALETTE)], dash=dashes[j % len(dashes)])))
    fig.update_xaxes(title_text=axis, type="log")
    fig.update_yaxes(title_text="fraction (units 1)")
    return _below(finish(fig, title=title, height=500, subtitle=subtitle))


def _long_figure(d: xr.Dataset) -> go.Figure:
    """Recall by stream position over one long stream per specimen, with memory (solid) and ablated (dotted)."""
    fig = go.Figure()
    if "pos_specimen" in d:
        chance_drawn = False
        for i, spec in enumerate(dict.fromkeys(d["pos_specimen"].values.astype(str))):
            for arm, dash in (("memory", "solid"), ("ablated", "dot")):
                m = np.flatnonzero((d["pos_specimen"].values.astype(str) == spec) & (d["pos_arm"].values.astype(str) == arm))
                if not len(m):
                    continue
                lo_, hi_ = d["pos_lo"].values[m].astype(float), d["pos_hi"].values[m].astype(float)
                x = np.sqrt(np.maximum(lo_, 1) * hi_)
                acc = d["pos_acc"].values[m].astype(float)
                fig.add_trace(go.Scatter(
                    x=x, y=acc, mode="lines+markers", name=f"{spec} · {'memory' if arm == 'memory' else 'memory ablated'}",
                    line=dict(color=PALETTE[i % len(PALETTE)], dash=dash),
                    error_y=dict(type="data", symmetric=False, array=d["pos_ci_hi"].values[m] - acc,
                                 arrayminus=acc - d["pos_ci_lo"].values[m]),
                    customdata=np.stack([lo_, hi_, d["pos_n"].values[m].astype(float)], 1),
                    hovertemplate="segments %{customdata[0]:,.0f}-%{customdata[1]:,.0f}: acc %{y:.3f} "
                                  "(n=%{customdata[2]:,.0f})<extra></extra>"))
                if not chance_drawn:
                    fig.add_trace(go.Scatter(x=x, y=d["pos_chance"].values[m], mode="lines", name="chance (uniform guess)",
                                             line=dict(color="#7F7F7F", dash="dash")))
                    chance_drawn = True
    fig.update_xaxes(title_text="stream position (segments, log)", type="log")
    fig.update_yaxes(title_text="recall accuracy (exact match)", range=[-0.02, 1.02])
    return _below(finish(fig, title="Recall along one long stream", height=500,
                         subtitle="one stream per specimen, no recording; memory ablated: the same model with the "
                                  "memory read switched off (it still gets NONE answers right); 95 % Wilson intervals"))


def _causal_figure(d: xr.Dataset) -> go.Figure:
    fig = go.Figure()
    if "causal_arm" in d:
        for spec in dict.fromkeys(d["causal_specimen"].values.astype(str)):
            m = np.flatnonzero(d["causal_specimen"].values.astype(str) == spec)
            arms = d["causal_arm"].values.astype(str)[m]
            acc, lo, hi = (d[v].values[m].astype(float) for v in ("causal_acc", "causal_lo", "causal_hi"))
            fig.add_trace(go.Bar(x=[f"{a} (run {r})" for a, r in zip(arms, d["causal_run"].values[m])], y=acc, name=spec,
                                 error_y=dict(type="data", symmetric=False, array=hi - acc, arrayminus=acc - lo)))
    fig.update_yaxes(title_text="recall accuracy after the edit", range=[0, 1.05])
    return finish(fig, title="Causal test: remove the surviving stale part, or a random part of equal norm", height=420,
                  subtitle="replay from the degraded segment over the next segments; 95 % Wilson intervals")


def _example_figure(results, d: xr.Dataset | None = None) -> go.Figure | None:
    from ..viz.figures_origin import write_vs_origin_figure

    if not results and d is not None and "example_write_share" in d:  # from a stored summary
        results = [d.assign_attrs(example_norm=d.attrs["example_norm"], example_probe=d.attrs["example_probe"],
                                  analysis_layer=d.attrs["analysis_layer"])]
    for r in results or []:
        if "example_write_share" in r:
            w = xr.DataArray(r["example_write_share"].values, dims=("write",), coords={
                "write_segment": ("write", r["example_write_segment"].values),
                "status": ("write", r["example_write_status"].values.astype(object))},
                attrs=dict(read_out_norm=float(r.attrs["example_norm"])))
            o = xr.DataArray(r["example_origin_share"].values, dims=("write",), coords={
                "write_segment": ("write", r["example_write_segment"].values),
                "status": ("write", r["example_origin_status"].values.astype(object))},
                attrs=dict(read_out_norm=float(r.attrs["example_norm"]), probe=int(r.attrs["example_probe"]),
                           layer=int(r.attrs["analysis_layer"])))
            return _below(write_vs_origin_figure(w, o, height=600))
    return None


def study_figures(d: xr.Dataset, results=None) -> dict[str, go.Figure]:
    """The report's figures by file stem."""
    figs = {
        "accuracy_vs_updates": _acc_figure(d, "updates per key", "Recall vs updates per key", fit=True),
        "accuracy_vs_live_keys": _acc_figure(d, "live keys", "Recall vs live keys"),
        "accuracy_vs_position": _acc_figure(d, "stream position (tokens)", "Recall vs stream position"),
        "accuracy_along_long_stream": _long_figure(d),
        "stale_mass_vs_position": _metric_figure(
            d, "stream position (tokens)", {"stale_mass_origin": "surviving (origin)", "stale_mass_write": "per-write sum"},
            "Stale mass of the memory a query reads", "origin view: what superseded values still contribute; "
            "per-write view: the sum of what superseded writes added (ignores the delta rule's erasure)"),
        "residual_vs_updates": _metric_figure(
            d, "updates per key", {"residual": "old-version residual", "crosstalk": "crosstalk (other keys)"},
            "What a read at the asked fact's keys gets from elsewhere", "shares of the read's norm (origin view)"),
        "causal_test": _causal_figure(d),
    }
    ex = _example_figure(results, d)
    if ex is not None:
        figs["one_read_two_views"] = ex
    return figs


def _fmt(v: float) -> str:
    if not np.isfinite(v):
        return "inf" if v == np.inf else "n/a"
    return f"{v:.3g}"


def answer_text(d: xr.Dataset) -> str:
    """The answer to the study's question, in plain sentences built from the findings."""
    claims = list(d["finding_claim"].values.astype(str))
    val = dict(zip(claims, d["finding_value"].values.astype(float)))
    lo = dict(zip(claims, d["finding_lo"].values.astype(float)))
    hi = dict(zip(claims, d["finding_hi"].values.astype(float)))

    def get(prefix):
        k = next((c for c in claims if c.startswith(prefix)), None)
        return (val[k], lo[k], hi[k]) if k else (np.nan, np.nan, np.nan)

    out = []
    for spec in dict.fromkeys(d["specimen"].values.astype(str)):
        a1 = get(f"{spec}: recall accuracy at 1-3")
        hi_k = next((c for c in claims if c.startswith(f"{spec}: recall accuracy at >=")), "")
        a2 = get(hi_k) if hi_k else (np.nan,) * 3
        half = get(f"{spec}: updates per key until")
        so = get(f"{spec}: surviving stale mass at queries")
        sw = get(f"{spec}: stale mass at queries, per-write")
        res = get(f"{spec}: old-version residual")
        xt = get(f"{spec}: crosstalk")
        g = get(f"{spec}: recall accuracy with gamma off")
        nd = get(f"{spec}: recall accuracy with no delta rule")
        c0, cs, cr = (get(f"{spec}: causal test, recall after the degraded segment, {a}")
                      for a in ("none", "stale removed", "random removed"))
        top = int(np.nanmax(d["updates"].values)) if d.sizes.get("row") else 0
        fit = (f"the log-linear fit halves at {_fmt(half[0])} updates per key (CI {_fmt(half[1])}-{_fmt(half[2])})"
               if np.isfinite(half[0]) else f"the log-linear fit does not halve within the measured range (up to "
               f"{top} updates per key)")
        s = [f"<b>{html.escape(spec)}</b>: recall is {_fmt(a1[0])} (95 % CI {_fmt(a1[1])}-{_fmt(a1[2])}) at 1-3 "
             f"updates per key and {_fmt(a2[0])} ({_fmt(a2[1])}-{_fmt(a2[2])}) {html.escape(hi_k.split('accuracy at ')[-1]) if hi_k else ''}; "
             f"{fit}; a decline of PI-LLM's shape (log-linear from 3 to 0 at 400 updates) halves at "
             f"{st.pi_llm_halving():.0f}."]
        longs = [c for c in claims if c.startswith(f"{spec}: recall at segments ")]
        if longs:
            parts = []
            for c in longs:
                span = c.split("recall at segments ")[1].split(" of one")[0]
                abl = c.split("memory ablated: ")[1].rstrip(")")
                parts.append(f"{_fmt(val[c])} (CI {_fmt(lo[c])}-{_fmt(hi[c])}) at segments {span} "
                             f"(memory ablated: {abl})")
            tokens = longs[0].split("of one ")[1].split("-token")[0]
            s.append(f"Along one {tokens}-token stream, recall is " + " and ".join(parts) + ".")
        s.append(f"The surviving stale mass (origin view: what superseded values still contribute after every "
                 f"erasure) is {_fmt(so[0])} of the memory a query reads, where the naive per-write sum reports "
                 f"{_fmt(sw[0])}. At "
                 f"the asked fact's own keys, old versions contribute {_fmt(res[0])} of the read and other keys "
                 f"{_fmt(xt[0])}.")
        flips = [f"{what} gives recall {_fmt(v[0])}" for what, v in (("switching gamma off", g),
                                                                      ("removing the delta rule", nd))
                 if np.isfinite(v[0])]  # a flag the specimen already runs with is not run again
        if flips:
            s.append("On the same weights, " + " and ".join(flips) + ".")
        for c in claims:
            if c.startswith(f"{spec}: with ") and "overflowed" in c:
                s.append(html.escape(c.split(": ", 1)[1].replace(" (value)", f" {_fmt(val[c])}")) + ".")
        if np.isfinite(cs[0]):
            helps = cs[1] > c0[2]
            ctrl = cr[1] > c0[2]
            verdict = ("removing the surviving stale part recovers recall and the random control does not, so stale "
                       "residue is a cause of the failure" if helps and not ctrl else
                       "removing the surviving stale part does not recover recall beyond the unedited run's CI "
                       "(neither does the control), so stale residue is not what breaks recall here"
                       if not helps else "both edits change recall, so the test does not isolate stale residue")
            degraded = bool(np.nanmax(d["causal_degraded"].values.astype(float))) if "causal_degraded" in d else False
            at = ("at the segment where recall had degraded" if degraded else
                  "recall did not degrade in this run, so at 3/4 of the stream (the fallback)")
            s.append(f"Causal test ({at}): recall over the next segments is {_fmt(c0[0])} unedited, {_fmt(cs[0])} "
                     f"with the stale part removed and {_fmt(cr[0])} with a random part of equal norm removed: "
                     f"{verdict}.")
        causal = np.isfinite(cs[0]) and cs[1] > c0[2] and not cr[1] > c0[2]
        if causal:
            s.append("Where it fails: the erasure is incomplete, and what survives of superseded values is what breaks "
                     f"recall (the causal test), even though other keys contribute more to a read at the fact's keys "
                     f"({_fmt(xt[0])} vs {_fmt(res[0])})." if xt[0] > res[0] else
                     "Where it fails: the erasure is incomplete, and what survives of superseded values is what "
                     "breaks recall (the causal test).")
        else:
            where = "crosstalk from other keys" if (np.isfinite(xt[0]) and np.isfinite(res[0]) and xt[0] > res[0]) \
                else "residue of old versions"
            s.append(f"Where it would fail: the larger contamination at a fact's keys is {where}; the causal test "
                     "does not single out stale residue here.")
        out.append(" ".join(s))
    return "<p>" + "</p><p>".join(out) + "</p>"


_CSS = """body{font-family:Inter,'Segoe UI',Roboto,Arial,sans-serif;max-width:1100px;margin:24px auto;color:#202124}
table{border-collapse:collapse;font-size:13px;margin:12px 0}td,th{border:1px solid #DADCE0;padding:4px 8px;text-align:left}
th{background:#F1F3F4}code{background:#F1F3F4;padding:1px 4px}.fig{margin:24px 0}"""


def _table(d: xr.Dataset) -> str:
    rows = ["<tr><th>claim</th><th>number</th><th>95 % CI</th><th>n</th><th>command</th></tr>"]
    for c, v, lo, hi, n, cmd in zip(*(d[k].values for k in ("finding_claim", "finding_value", "finding_lo",
                                                            "finding_hi", "finding_n", "finding_command"))):
        ci = f"{_fmt(float(lo))} - {_fmt(float(hi))}" if np.isfinite(float(lo)) else "-"
        rows.append(f"<tr><td>{html.escape(str(c))}</td><td>{_fmt(float(v))}</td><td>{ci}</td><td>{int(n)}</td>"
                    f"<td><code>{html.escape(str(cmd))}</code></td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def write_report(d: xr.Dataset, out: Path, *, results=None, png: bool = True) -> Path:
    """Write out/report.html (self-contained, offline) and out/figures/<name>.png; returns the HTML path."""
    from plotly.offline import get_plotlyjs

    out = Path(out)
    figs = study_figures(d, results)
    parts = []
    for name, fig in figs.items():
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}",
                          config={"displaylogo": False, "responsive": True})
        parts.append(f'<div class="fig" id="wrap-{name}">{div}</div>')
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>Stale-key study</title><style>{_CSS}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head><body>"
            "<h1>Can an associative memory track mutable state without accumulating stale keys?</h1>"
            f"<h2>Answer</h2>{answer_text(d)}<h2>Findings</h2>{_table(d)}"
            f"<p>Reproduce: <code>{html.escape(str(d.attrs.get('command', '')))}</code> "
            f"({d.attrs.get('n_runs', '?')} runs, {d.attrs.get('seconds', '?')} s). Every number is in "
            "<code>study.zarr</code>. Stale metrics use the origin decomposition (exact under the delta rule); the "
            "per-write view is shown beside it for comparison.</p>"
            + "".join(parts) + "</body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    if png:
        _pngs(path, list(figs), out / "figures")
    return path


def _pngs(report: Path, names: list[str], folder: Path) -> None:
    """Screenshot each figure of the report with headless Chromium (network blocked)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        warnings.warn("PNG figures skipped: playwright is not installed (pip install playwright==1.65.2; "
                      "the HTML report has every figure)", stacklevel=3)
        return
    exe = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not exe:
        warnings.warn(f"PNG figures skipped: no Chromium at {CHROMIUM} (apt-get install chromium)", stacklevel=3)
        return
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import asyncio
        asyncio.get_running_loop()
    except RuntimeError:  # no loop running here: Playwright's sync API may run on this thread
        _shoot(sync_playwright, exe, report, names, folder)
        return
    # inside a running loop (Jupyter): the sync API refuses it, so screenshot from a thread of its own
    import threading

    errors: list[BaseException] = []

    def run():
        try:
            _shoot(sync_playwright, exe, report, names, folder)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=run, name="armt-study-png", daemon=True)
    t.start()
    t.join()
    if errors:
        raise errors[0]


def _shoot(sync_playwright, exe: str, report: Path, names: list[str], folder: Path) -> None:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                       else route.abort())
            page.goto(report.resolve().as_uri(), wait_until="load")
            for name in names:
                el = page.locator(f"#fig-{name}")
                el.wait_for(state="visible", timeout=30_000)
                page.wait_for_function(f"document.querySelector('#fig-{name} .main-svg') !== null", timeout=30_000)
                el.screenshot(path=str(folder / f"{name}.png"))
        finally:
            browser.close()
