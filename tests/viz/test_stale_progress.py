"""The timeline's stale-mass overlay: computed on a background thread with real progress, through the cache
kept beside the trace (armt_viz.analysis.stale_cache), and equal to the analysis function."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from synthetic import make_trace, write_store

pytest.importorskip("panel")


def test_overlay_runs_in_the_background_with_progress_and_reads_back_from_the_cache(tmp_path, monkeypatch):
    from armt_viz.analysis import stale_mass
    from armt_viz.analysis.stale_cache import CACHE_FILE, clear_memory_cache
    from armt_viz.trace import open_trace
    from armt_viz.viz.dashboard import loaders
    from armt_viz.viz.dashboard.views import _stale_note

    path = str(write_store(make_trace(level="writes", n_segments=40), tmp_path / "t.zarr"))
    stamp = loaders.stamp_of(path)
    monkeypatch.setattr(loaders, "BACKGROUND", True)
    clear_memory_cache()
    seen, finished = [], threading.Event()

    def on_progress():
        seen.append(loaders.stale_progress(path, stamp))
        if seen[-1] is None:
            finished.set()
    key = (path, stamp, 1, 0)
    first = loaders.stale_mass_async(key, on_progress, every_s=0.0)
    if first is None:  # still running: wait for its end
        assert finished.wait(60)
    series, note = loaders.stale_mass_async(key, on_progress)
    assert note is None
    assert (40, 40) in seen  # the scan reported how far it was (one block here)
    assert (tmp_path / "t.zarr" / CACHE_FILE).is_file()
    from armt_viz.trace.guard import check_removable
    check_removable(tmp_path / "t.zarr")  # the cache file does not make the store look foreign to the recorder
    direct = stale_mass(open_trace(path), method="origin").isel(sample=0, layer=1).values
    np.testing.assert_allclose(series.values, direct, rtol=1e-10, equal_nan=True)
    assert np.nanmax(direct) > 0
    # another layer comes from the cache at once (the scan computed every layer)
    clear_memory_cache()
    other, _ = loaders.stale_mass_async((path, stamp, 0, 0), on_progress)
    np.testing.assert_allclose(other.values, stale_mass(open_trace(path), method="origin").isel(sample=0, layer=0)
                               .values, rtol=1e-10, equal_nan=True)
    assert _stale_note((10, 40)) == "computing the stale mass: 10 / 40 segments (25 %)…"
    assert "computing" in _stale_note(None)
