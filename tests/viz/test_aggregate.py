"""Server-side min/max aggregation (armt_viz/viz/aggregate.py): spikes survive, zoom re-aggregates."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from armt_viz.viz.aggregate import aggregate_minmax


def _series(n: int, seed: int = 0) -> xr.DataArray:
    y = np.random.default_rng(seed).normal(size=n)
    return xr.DataArray(y, dims="segment", coords={"segment": np.arange(n)}, name="assoc_norm",
                        attrs={"long_name": "Frobenius norm", "units": "1"})


@pytest.mark.parametrize("where", [0, 1, 123_457, 999_999], ids=lambda w: f"spike@{w}")
def test_single_sample_spike_survives_aggregation(where):
    # Given a million samples of noise with one spike
    da = _series(1_000_000)
    da[where] = 1e3
    # When aggregated to 500 pixel columns
    env = aggregate_minmax(da, n_pixels=500)
    # Then the envelope is small and still holds the spike, in the column that covers it
    assert env.attrs["aggregated"] == 1 and env.sizes["segment"] <= 500
    assert float(env["max"].max()) == 1e3
    col = int(np.argmax(env["max"].values))
    assert abs(float(env["segment"][col]) - where) <= 1_000_000 / 500
    assert int(env["count"].sum()) == 1_000_000


def test_negative_spike_in_min_envelope():
    da = _series(10_000)
    da[4321] = -1e3
    env = aggregate_minmax(da, n_pixels=100)
    assert float(env["min"].min()) == -1e3


def test_zoom_reaggregates_visible_range_only():
    da = _series(100_000)
    da[50_000] = 99.0
    da[10] = 77.0  # outside the zoom window: must not leak into its columns
    env = aggregate_minmax(da, x_range=(40_000, 60_000), n_pixels=200)
    inside = (env["segment"] >= 40_000) & (env["segment"] <= 60_000)
    assert float(env["max"].where(inside).max()) == 99.0
    assert 77.0 not in env["max"].values
    # one raw neighbour each side so lines reach the plot edges
    assert float(env["segment"].min()) == 39_999 and float(env["segment"].max()) == 60_001


def test_few_samples_come_back_raw():
    da = _series(50)
    env = aggregate_minmax(da, n_pixels=800)
    assert env.attrs["aggregated"] == 0
    np.testing.assert_array_equal(env["mean"].values, da.values)
    np.testing.assert_array_equal(env["segment"].values, da["segment"].values)


def test_nans_are_ignored_and_attrs_kept():
    da = _series(10_000)
    da[:5000] = np.nan
    env = aggregate_minmax(da, n_pixels=100)
    assert np.isfinite(env["mean"].values).all()
    assert env["max"].attrs == da.attrs


@pytest.mark.parametrize("bad", [0, -3])
def test_rejects_bad_pixels(bad):
    with pytest.raises(ValueError, match="n_pixels"):
        aggregate_minmax(_series(10), n_pixels=bad)
