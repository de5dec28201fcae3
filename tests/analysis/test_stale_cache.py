"""The origin stale-mass cache (armt_viz.analysis.stale_cache): same values, read back without scanning,
incremental on a growing trace, refused when it belongs to another trace, never written where it may not be."""

from __future__ import annotations

import numpy as np
import pytest

from armt_viz.analysis import origin as O
from armt_viz.analysis import stale_cache as C
from armt_viz.config import ARMTConfig

from .conftest import build_trace, ledger_from_events

SEG, T = 8, 23
EXACT = 1e-10  # cached vs direct: the same float64 scan, resumed from stored state


def _trace(seed=0, gating=False):
    rng = np.random.default_rng(seed)
    config = ARMTConfig(num_mem_tokens=2, d_mem=4, n_heads=2, segment_size=SEG, gating=gating)
    events = [dict(role="write", segment=t, position=0, fact=int(rng.integers(3)), value=int(rng.integers(9)))
              for t in range(T) if t % 4 != 3]
    ds = build_trace(config, rng.normal(size=(1, T, 2, 2, 4)), rng.normal(size=(1, T, 2, 2, 8)),
                     rng.uniform(0.2, 1, size=(1, T, 2, 2)), ledger=ledger_from_events(events, segment_size=SEG))
    channels = 8 if gating else 2
    gate = np.repeat(ds["write_gate"].values[..., None], channels, axis=-1)
    if gating:
        gate = gate * rng.uniform(0.5, 1, size=gate.shape)
    return ds.assign(write_gate_channel=(("sample", "segment", "layer", "mem_token", "gate_channel"), gate))


@pytest.fixture(autouse=True)
def _fresh():
    C.clear_memory_cache()
    yield
    C.clear_memory_cache()


def _calls(monkeypatch):
    seen = []
    real = C.stale_norms_blocks

    def spy(ds, sample, schedule, **kw):
        seen.append((kw.get("start", 0), ds.sizes["segment"]))
        return real(ds, sample, schedule, **kw)
    monkeypatch.setattr(C, "stale_norms_blocks", spy)
    return seen


@pytest.mark.parametrize("rule", ["any", "all"])
def test_cache_equals_direct_and_reads_back_without_scanning(tmp_path, monkeypatch, rule):
    ds = _trace()
    direct = O.origin_stale_mass(ds, rule=rule)
    seen = _calls(monkeypatch)
    got = C.cached_origin_stale_mass(ds, tmp_path, rule=rule)
    np.testing.assert_allclose(got.values, direct.values, rtol=EXACT, equal_nan=True)
    assert np.nanmax(direct.values) > 0 and (tmp_path / C.CACHE_FILE).is_file() and len(seen) == 1
    C.clear_memory_cache()  # from the file alone
    again = C.cached_origin_stale_mass(ds, tmp_path, rule=rule, normalize=False)
    assert len(seen) == 1
    np.testing.assert_allclose(again.values, O.origin_stale_mass(ds, rule=rule, normalize=False).values,
                               rtol=EXACT, equal_nan=True)


@pytest.mark.parametrize("gating", [False, True], ids=["per-head", "per-channel"])
def test_growing_trace_scans_only_new_segments(tmp_path, monkeypatch, gating):
    ds = _trace(gating=gating)
    seen = _calls(monkeypatch)
    ticks = []
    C.cached_origin_norms(ds.isel(segment=slice(0, 10)), tmp_path, progress=lambda d, n: ticks.append((d, n)))
    C.clear_memory_cache()
    full = C.cached_origin_norms(ds, tmp_path, progress=lambda d, n: ticks.append((d, n)))
    expect = O.origin_stale_mass(ds, normalize=False).values
    np.testing.assert_allclose(full[1], expect, rtol=EXACT, atol=1e-12)
    # per head the scan resumes at segment 10 (13 to scan); per channel it has no stored state and restarts
    assert seen[1][0] == (0 if gating else 10)
    assert ticks[-1] == ((T, T) if gating else (T - 10, T - 10))


def test_a_cache_of_another_trace_is_refused(tmp_path, monkeypatch):
    C.cached_origin_norms(_trace(seed=0), tmp_path)
    C.clear_memory_cache()
    seen = _calls(monkeypatch)
    other = _trace(seed=1)
    got = C.cached_origin_norms(other, tmp_path)
    assert seen == [(0, T)]
    np.testing.assert_allclose(got[1], O.origin_stale_mass(other, normalize=False).values, rtol=EXACT, atol=1e-12)
    # a cache covering more segments than the trace commits (recorded again, shorter) is refused too
    short = other.isel(segment=slice(0, 12))
    got = C.cached_origin_norms(short, tmp_path)
    assert seen[-1] == (0, 12)
    np.testing.assert_allclose(got[1], O.origin_stale_mass(short, normalize=False).values, rtol=EXACT, atol=1e-12)


def test_no_write_where_not_allowed(tmp_path, monkeypatch):
    ds = _trace()
    seen = _calls(monkeypatch)
    C.cached_origin_norms(ds, tmp_path, write=False)
    assert not (tmp_path / C.CACHE_FILE).exists()
    monkeypatch.setattr(C.os, "access", lambda p, mode: False)  # a read-only store
    C.clear_memory_cache()
    C.cached_origin_norms(ds, tmp_path)
    assert not (tmp_path / C.CACHE_FILE).exists()
    C.cached_origin_norms(ds, tmp_path)  # in-process cache
    assert len(seen) == 2


def test_bad_input_is_refused(tmp_path):
    ds = _trace()
    with pytest.raises(ValueError, match="rule"):
        C.cached_origin_stale_mass(ds, tmp_path, rule="most")
    with pytest.raises(ValueError, match="segment 0"):
        C.cached_origin_norms(ds.isel(segment=slice(3, None)), tmp_path)
    with pytest.raises(TypeError, match="progress"):
        C.cached_origin_norms(ds, tmp_path, progress=5)


def test_progress_reports_every_block_and_tqdm_works(capsys):
    ds = _trace()
    ticks = []
    got = O.origin_stale_mass(ds, progress=lambda d, n: ticks.append((d, n)), block_segments=5)
    assert ticks == [(5, T), (10, T), (15, T), (20, T), (T, T), (T, T)]  # each block, then the end
    np.testing.assert_allclose(got.values, O.origin_stale_mass(ds).values, rtol=EXACT, equal_nan=True)
    bar = O.origin_stale_mass(ds, progress=True)  # a tqdm bar (stderr), same values
    np.testing.assert_allclose(bar.values, got.values, rtol=EXACT, equal_nan=True)
    assert "origin stale mass" in capsys.readouterr().err


def test_an_oversized_or_misshapen_cache_file_is_ignored(tmp_path, monkeypatch):
    ds = _trace()
    C.cached_origin_norms(ds, tmp_path)
    f = tmp_path / C.CACHE_FILE
    with np.load(f) as z:
        arrays = dict(z)
    arrays["norms"] = arrays["norms"][:, :, :, :1]  # right fingerprint, wrong shape
    np.savez(f, **arrays)
    C.clear_memory_cache()
    seen = _calls(monkeypatch)
    got = C.cached_origin_norms(ds, tmp_path)
    assert seen == [(0, T)] and got.shape == (3, 1, T, 2)
    with open(f, "ab") as fh:  # far larger than norms and state can be
        fh.write(b"\0" * (64 << 20))
    C.clear_memory_cache()
    C.cached_origin_norms(ds, tmp_path)
    assert len(seen) == 2
