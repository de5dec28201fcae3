"""The dashboard's browser resources (armt_viz/viz/dashboard/resources.py): the vendored plotly.js cartesian bundle.

A Panel upgrade that changes the plotly.js version its Plotly pane expects must fail here, not mix versions in the
browser. The browser side (the served page loads this bundle, registers every trace type, clean console) is in
tests/ui/test_dashboard_ui.py.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest

pytest.importorskip("panel")

from armt_viz.viz import data as _data  # noqa: E402
from armt_viz.viz import figures as F  # noqa: E402
from armt_viz.viz.dashboard import resources as R  # noqa: E402

VENDOR = Path(R.__file__).parent / "vendor"


@pytest.fixture(autouse=True)
def _full_plotly_around_each_test():
    """`use_cartesian_plotly` swaps a class attribute of Panel's Plotly model, process-wide; an in-process server
    started by an earlier test in this worker (serve.py calls it) may have left it swapped."""
    R.use_full_plotly()
    yield
    R.use_full_plotly()

BUNDLE = Path(R.__file__).parent / R.CARTESIAN_BUNDLE


def test_vendored_plotly_is_the_version_panel_expects():
    vendored, expected = R.vendored_plotly_version(), R.panel_plotly_version()
    assert vendored == expected, (
        f"vendored plotly.js cartesian bundle v{vendored} != v{expected} expected by Panel's Plotly pane: "
        f"update {R.CARTESIAN_BUNDLE} (see {VENDOR / 'README.md'})")
    assert BUNDLE.name == f"plotly-cartesian-{expected}.min.js"


def test_bundle_is_small_licensed_and_packaged(repo_root):
    assert BUNDLE.stat().st_size < 1_500_000
    readme = (VENDOR / "README.md").read_text(encoding="utf-8")
    assert "MIT" in readme and f"plotly.js-cartesian-dist-min@{R.vendored_plotly_version()}" in readme
    assert "MIT License" in (VENDOR / "LICENSE.plotly.txt").read_text(encoding="utf-8")
    patterns = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "armt_viz"]
    package = repo_root / "armt_viz"
    for path in VENDOR.iterdir():
        rel = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(rel, p) for p in patterns), f"{rel} is not in package-data"


def test_a_foreign_file_has_no_version(tmp_path):
    (tmp_path / "x.js").write_text("/** plotly.js v3.1.0 (the full bundle) */")
    with pytest.raises(ValueError, match="cartesian bundle header"):
        R.vendored_plotly_version(tmp_path / "x.js")


def _served_plotly() -> list[str]:
    from panel.models.plotly import PlotlyPlot

    return list(PlotlyPlot.__javascript__)


def test_use_cartesian_plotly_swaps_the_script_and_back(monkeypatch):
    monkeypatch.delenv(R.PLOTLY_BUNDLE_ENV, raising=False)
    full = _served_plotly()
    assert len(full) == 1 and full[0].endswith(f"plotly-{R.panel_plotly_version()}.min.js")
    try:
        assert R.use_cartesian_plotly() and R.use_cartesian_plotly()  # idempotent
        served = _served_plotly()
        assert len(served) == 1 and served[0].endswith(R.CARTESIAN_BUNDLE)
        assert "/PlotlyCartesianBundle/__javascript__/" in served[0]
    finally:
        R.use_full_plotly()
    assert _served_plotly() == full


def test_full_plotly_on_request_or_on_a_version_mismatch(monkeypatch):
    full = _served_plotly()
    monkeypatch.setenv(R.PLOTLY_BUNDLE_ENV, "full")
    assert not R.use_cartesian_plotly() and _served_plotly() == full
    monkeypatch.setenv(R.PLOTLY_BUNDLE_ENV, "cartesian")
    monkeypatch.setattr("panel.models.plotly.PLOTLY_VERSION", "9.9.9")
    with pytest.warns(RuntimeWarning, match="expects v9.9.9"):
        assert not R.use_cartesian_plotly()
    assert _served_plotly() == full
    monkeypatch.setenv(R.PLOTLY_BUNDLE_ENV, "tiny")
    with pytest.raises(ValueError, match="'cartesian' or 'full'"):
        R.use_cartesian_plotly()


def test_figure_builders_emit_only_bundled_trace_types(trace_writes, trace_full, trace_summary):
    # every trace a builder writes as a dict literal ...
    viz = Path(F.__file__).parent
    written = {m for path in viz.glob("figures*.py")
               for m in re.findall(r'dict\(type="(\w+)"', path.read_text(encoding="utf-8"))}
    assert written and written <= R.FIGURE_TRACE_TYPES, written - R.FIGURE_TRACE_TYPES
    # ... and every trace of every figure, drawn from writes-, full- and summary-level traces
    figures = []
    for ds in (trace_writes, trace_full, trace_summary):
        fact = int(_data.probe_counts(_data.probe_frame(ds, _data.ledger_frame(ds))).index[0])
        figures += [F.timeline(ds, layer=1, segment=5, fact=fact), F.layer_comparison(ds, segment=5),
                    F.association_matrix(ds, 5, 1), F.write_events(ds, 5, 1),
                    F.fact_lifecycle(ds, fact, 1, segment=5), F.stale_answers(ds, segment=5, fact=fact)]
    stale, _ = _data.stale_mass_series(trace_writes, 1)
    figures.append(F.timeline_figure({"assoc_norm": _data.series(trace_writes, "assoc_norm", 1)}, stale_mass=stale))
    used = {t.type for fig in figures for t in fig.data}
    assert used <= R.FIGURE_TRACE_TYPES, used - R.FIGURE_TRACE_TYPES
    assert used == R.FIGURE_TRACE_TYPES  # the set is not stale either
