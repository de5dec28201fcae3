"""attribute_read: hand-derived shares on crafted cases, completeness on random traces, lazy == eager."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from armt_viz.analysis import attribute_read
from armt_viz.config import ARMTConfig

from .conftest import EPS, random_trace, relative_gap

X = 2 / (2 + EPS)  # q.phi_A / D for the key K_A read with the query K_A after one write (|phi_A|^2 = 2)


def _shares(contributions, r):
    r = np.asarray(r)
    return np.array([np.dot(c, r) / np.linalg.norm(r) for c in contributions])


def test_rewrite_by_hand(rewrite_delete_case):
    # probe 0 (seg 2) reads the memory after seg 1: u0 = [1, 0]; u1 = 0.8([0, 1] - X [1, 0]); gamma0 = 1, gamma1 = 0
    ds = rewrite_delete_case
    r = X * np.array([1 - 0.8 * X, 0.8])
    c = [X * np.array([1.0, 0.0]), X * np.array([-0.8 * X, 0.8])]
    np.testing.assert_allclose(ds["read_out"].isel(probe=0, layer=0), r, rtol=1e-6)

    shares = attribute_read(ds, probe=0, layer=0)
    np.testing.assert_allclose(shares.values, _shares(c, r), rtol=1e-6)
    assert shares.name == "read_share" and shares.attrs["units"] == "1" and shares.attrs["long_name"]
    assert list(shares["write_segment"].values) == [0, 1]
    assert list(shares["status"].values) == ["stale", "current"]
    assert list(shares["fact_id"].values) == [0, 0] and list(shares["version"].values) == [0, 1]
    assert relative_gap(shares.sum(), np.linalg.norm(r)) < 1e-6

    vectors = attribute_read(ds, probe=0, layer=0, kind="vector")
    np.testing.assert_allclose(vectors.values, np.stack(c), rtol=1e-6)
    den = attribute_read(ds, probe=0, layer=0, kind="denominator")
    np.testing.assert_allclose(den.values[:, 0], [X, 0.0], rtol=1e-6)
    np.testing.assert_allclose(float(den.sum()), 1 - EPS / (2 + EPS), rtol=1e-7)

    by_status = attribute_read(ds, probe=0, layer=0, by="status")
    a = _shares(c, r)
    np.testing.assert_allclose(by_status.sel(status=["current", "stale", "other"]).values, [a[1], a[0], 0], atol=1e-7)
    # seg 1 holds f0 and f2: its share is split equally between them
    by_fact = attribute_read(ds, probe=0, layer=0, by="fact")
    assert list(by_fact["fact_id"].values) == [0, 2]
    np.testing.assert_allclose(by_fact.values, [a[0] + a[1] / 2, a[1] / 2], rtol=1e-6)


def test_delete_by_hand(rewrite_delete_case):
    # probe 1 (seg 4) after the delete at seg 3: u3 = -X [1 - 0.8X, 0.8] erases f0; seg 2 wrote an orthogonal key
    ds = rewrite_delete_case
    r = X * (1 - X) * np.array([1 - 0.8 * X, 0.8])
    c = [X * np.array([1.0, 0.0]), X * np.array([-0.8 * X, 0.8]), np.zeros(2), -X * X * np.array([1 - 0.8 * X, 0.8])]
    vectors = attribute_read(ds, probe=1, layer=0, kind="vector")
    np.testing.assert_allclose(vectors.values, np.stack(c), atol=1e-7)
    np.testing.assert_allclose(vectors.sum("write").values, ds["read_out"].isel(probe=1, layer=0), atol=1e-9)
    shares = attribute_read(ds, probe=1, layer=0)
    assert list(shares["status"].values) == ["stale", "stale", "other", "current"]
    # |r| ~ 4e-6: the erased fact leaves O(1) shares that cancel; check them absolutely
    direction = r / np.linalg.norm(r)
    np.testing.assert_allclose(shares.values, [np.dot(v, direction) for v in c], atol=1e-6)
    den = attribute_read(ds, probe=1, layer=0, kind="denominator")
    np.testing.assert_allclose(den.values[:, 0], [X, 0, 0, 0], atol=1e-7)


def test_groupings_add_up(rewrite_delete_case):
    ds = rewrite_delete_case
    total = float(attribute_read(ds, 0, 0).sum())
    for by in ("segment", "mem_token", "status", "fact"):
        assert float(attribute_read(ds, 0, 0, by=by).sum()) == pytest.approx(total, rel=1e-12), by
    seg = attribute_read(ds, 0, 0, by="segment")
    assert seg.dims == ("write_segment",)
    vec = attribute_read(ds, 0, 0, kind="vector", by="status")
    assert vec.dims == ("status", "hidden")


CONFIGS = {
    "one-head": ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8),
    "two-heads-normalized": ARMTConfig(num_mem_tokens=3, d_mem=4, n_heads=2, normalize_features=True, segment_size=8),
    "no-denominator": ARMTConfig(num_mem_tokens=2, d_mem=4, use_denom=False, segment_size=8),
    "no-correction-no-gamma-eps": ARMTConfig(num_mem_tokens=2, d_mem=4, correction=False, gamma_eps=False, segment_size=8),
}


@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_complete_on_random_traces(config):
    ds = random_trace(config, samples=2, segments=5, probes=3, hidden=8)
    for p in range(3):
        for layer in range(2):
            r = ds["read_out"].isel(probe=p, layer=layer).values
            shares = attribute_read(ds, p, layer)
            assert shares.sizes["write"] == int(ds["probe_segment"][p]) * config.num_mem_tokens
            assert relative_gap(shares.sum(), np.linalg.norm(r)) < 1e-6
            vec = attribute_read(ds, p, layer, kind="vector").sum("write")
            np.testing.assert_allclose(vec.values, r, rtol=1e-5, atol=1e-7)
            if config.use_denom:
                D = ds["read_denominator"].isel(probe=p, layer=layer).values
                den = attribute_read(ds, p, layer, kind="denominator").sum("write")
                np.testing.assert_allclose(den.values, 1 - config.eps / D, rtol=1e-6)
    if not config.use_denom:
        with pytest.raises(ValueError, match="use_denom=False"):
            attribute_read(ds, 0, 0, kind="denominator")


def test_detects_a_wrong_write():
    """The check can fail: perturb one stored write and completeness breaks."""
    ds = random_trace(CONFIGS["one-head"], segments=4, probes=2)
    p = int(np.argmax(ds["probe_segment"].values))
    r = np.linalg.norm(ds["read_out"].isel(probe=p, layer=0).values)
    bad = ds.copy(deep=True)
    bad["write_delta"][0, 0, 0, 0] += 0.5
    assert relative_gap(attribute_read(bad, p, 0).sum(), r) > 1e-3


def test_lazy_equals_eager():
    ds = random_trace(CONFIGS["two-heads-normalized"], segments=6, probes=2)
    lazy = attribute_read(ds.chunk({"segment": 2}), 0, 1)
    assert lazy.chunks is not None  # stays lazy on a dask-backed trace
    xr.testing.assert_allclose(lazy.compute(), attribute_read(ds, 0, 1))


def test_first_segment_probe_reads_nothing(small_config):
    from .conftest import build_trace  # a probe in segment 0: no earlier write, zero read
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(1, 2, 1, 2, 4))
    ds = build_trace(small_config, keys, rng.normal(size=(1, 2, 1, 2, 8)), np.ones((1, 2, 1, 2)),
                     [dict(sample=0, segment=0, position=3, query=rng.normal(size=(1, 4)))])
    from armt_viz.analysis.attribution import EmptyReadWarning

    with pytest.warns(EmptyReadWarning, match="segment 0, before any write"):  # said, not silently empty
        shares = attribute_read(ds, 0, 0)
    assert shares.sizes["write"] == 0 and float(shares.sum()) == 0.0 == shares.attrs["read_out_norm"]


def test_errors_name_the_problem(rewrite_delete_case):
    with pytest.raises(ValueError, match="by must be"):
        attribute_read(rewrite_delete_case, 0, 0, by="token")
    with pytest.raises(IndexError, match="probe=5"):
        attribute_read(rewrite_delete_case, 5, 0)
    with pytest.raises(ValueError, match="write_key"):
        attribute_read(rewrite_delete_case.drop_vars("write_key"), 0, 0)
    with pytest.raises(ValueError, match="segments 0..3"):
        attribute_read(rewrite_delete_case.isel(segment=slice(2, None)), 1, 0)
    with pytest.raises(ValueError, match="ledger"):
        attribute_read(rewrite_delete_case.drop_vars([v for v in rewrite_delete_case.data_vars
                                                      if v.startswith("ledger_")]), 0, 0, by="status")
