"""The stale-key study (armt_viz.study): statistics, one tiny end-to-end run, and the --small CLI run offline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from armt_viz.study import stats as st

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
EXTERNAL = re.compile(r"""<(?:script|link|img|iframe|source|embed|object)\b[^>]*?(?:src|href|data)\s*=\s*["']?(?:https?:)?//""",
                      re.IGNORECASE)


def test_wilson_matches_the_closed_form():
    lo, hi = st.wilson(5, 10)
    assert (float(lo), float(hi)) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # textbook values
    lo, hi = st.wilson(0, 10)
    assert float(lo) == 0.0 and float(hi) == pytest.approx(0.2775, abs=1e-4)
    assert np.isnan(st.wilson(0, 0)[0])


def test_loglinear_fit_and_halving_point_recover_a_known_decline():
    rng = np.random.default_rng(0)
    u = rng.integers(1, 401, 20000)
    p = np.clip(0.9 - 0.3 * np.log10(u), 0, 1)
    y = rng.random(len(u)) < p
    a, b = st.loglinear_fit(u, y)
    assert a == pytest.approx(0.9, abs=0.02) and b == pytest.approx(-0.3, abs=0.02)
    assert st.halving_point(0.9, -0.3) == pytest.approx(10 ** 1.5)  # 0.9 - 0.3 log10(u) = 0.45
    assert st.halving_point(0.9, 0.1) == np.inf  # no decline: never halves
    assert st.halving_point(0.12, -0.001) == np.inf  # nearly flat: 1e60 updates is "never", not a number
    assert st.halving_point(0.9, -0.9 / 8) == pytest.approx(1e4)  # at the cap: still a number
    assert st.pi_llm_halving() == pytest.approx(np.sqrt(1200))
    lo, hi = st.halving_ci(u[:3000], y[:3000], n_boot=50)
    assert lo < 10 ** 1.5 < hi


def test_binned_counts_and_means():
    b = st.binned([1, 1, 2, 5, 9], [True, False, True, True, False], [1, 2, 4, 8, 16], extra={"m": [1, 3, 5, 7, 9]})
    np.testing.assert_array_equal(b["n"], [2, 1, 1, 1])
    np.testing.assert_allclose(b["acc"], [0.5, 1, 1, 0])
    np.testing.assert_allclose(b["m"], [2, 5, 7, 9])


def _external_loads(html: str) -> list[str]:
    """Tags that would load something from another host (the inlined plotly.js text itself is not a load)."""
    no_scripts = re.sub(r"<script[^>]*>.*?</script>", "<script></script>", html, flags=re.S | re.I)
    return EXTERNAL.findall(html[:0] + no_scripts) + re.findall(r"""<script[^>]+src\s*=\s*["']?https?:""", html, re.I)


@pytest.mark.slow
def test_tiny_study_writes_every_number_and_an_offline_report(tmp_path):
    import torch

    from armt_viz.study import stale_keys_study

    assert torch.is_grad_enabled()
    d = stale_keys_study("demo", tmp_path, small=True, png=False, progress=False,
                         settings=dict(tokens=160, tokens_main=240, horizon=12, n_keys=(2,)))
    assert torch.is_grad_enabled(), "the study switched the caller's grad mode off"
    stored = xr.open_zarr(tmp_path / "study.zarr", consolidated=False).load()
    # the findings recompute from the raw queries in the zarr
    base = stored.isel(row=np.flatnonzero((stored["variant"].values == "as trained")
                                          & (stored["n_keys"].values == stored["n_keys"].values.max())))
    claims = list(stored["finding_claim"].values.astype(str))
    assert any("surviving stale mass" in c for c in claims) and any("causal test" in c for c in claims)
    i = next(j for j, c in enumerate(claims) if "recall accuracy at 1-3" in c)
    all_trained = stored.isel(row=np.flatnonzero(stored["variant"].values == "as trained"))
    sel = (all_trained["updates"].values >= 1) & (all_trained["updates"].values < 4)
    assert float(stored["finding_value"].values[i]) == pytest.approx(all_trained["correct"].values[sel].mean())
    assert base.sizes["row"] > 0
    assert set(np.unique(stored["variant"].values.astype(str))) == {"as trained", "gamma off", "no delta rule"}
    assert np.all((stored["curve_lo"].values <= stored["curve_acc"].values + 1e-12)
                  & (stored["curve_acc"].values <= stored["curve_hi"].values + 1e-12))
    assert np.all(stored["curve_chance"].values > 0)
    html = (tmp_path / "report.html").read_text()
    assert html.index("Findings") < html.index('class="fig"')  # the table opens the report
    assert "Answer" in html and "updates per key until accuracy halves" in html
    assert _external_loads(html) == []
    assert len(re.findall(r'class="fig"', html)) >= 6
    assert d.sizes["finding"] == stored.sizes["finding"]


def test_external_load_scan_can_fail():
    assert _external_loads('<script src="https://cdn.plot.ly/plotly.js"></script>')
    assert _external_loads('<link href="//fonts.example.com/x.css" rel="stylesheet">')
    assert not _external_loads('<script>var u = "https://example.com";</script>')


@pytest.mark.slow
@pytest.mark.ui
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium (make setup)")
def test_small_cli_run_writes_a_report_that_opens_offline(tmp_path):
    """The acceptance command itself, then Chromium opens report.html with every non-file request recorded."""
    out = tmp_path / "study"
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "armt_viz.cli", "study", "stale-keys", "--model", "demo",
                           "--out", str(out), "--small"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "accuracy_vs_updates.png" in pngs and "causal_test.png" in pngs
    assert all((out / "figures" / p).stat().st_size > 5000 for p in pngs)
    requests = _open_offline_in_chromium(out / "report.html")
    external = [u for u in requests if not u.startswith(("file:", "data:", "blob:", "about:"))]
    assert external == []
    assert any(u.startswith("file:") for u in requests)  # the recorder saw the page itself


def _open_offline_in_chromium(report) -> list[str]:
    """Open ``report`` in headless Chromium with every non-file request aborted; returns the requested URLs.
    Runs on its own thread: Playwright's sync API refuses a thread where an asyncio loop is marked running, which
    an earlier test of the same worker (nbclient's notebook runs) can leave behind on the main thread."""
    import threading

    from playwright.sync_api import sync_playwright

    requests: list[str] = []
    errors: list[BaseException] = []

    def run():
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                            args=["--no-sandbox", "--disable-gpu"])
                try:
                    page = browser.new_page()
                    page.on("request", lambda r: requests.append(r.url))
                    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                               else route.abort())
                    page.goto(report.as_uri(), wait_until="load")
                    page.wait_for_function("document.querySelectorAll('.main-svg').length >= 6", timeout=60_000)
                finally:
                    browser.close()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(180)
    assert not t.is_alive(), "Chromium did not finish opening the report within 180 s"
    if errors:
        raise errors[0]
    return requests
