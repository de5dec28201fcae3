"""Spectrum, effective rank and the n*EM(n) capacity estimate."""

from __future__ import annotations

import numpy as np
import pytest

from armt_viz.analysis import capacity, effective_rank, memory_spectrum

from .conftest import EPS, random_trace


def test_spectrum_by_hand(rewrite_delete_case):
    # A after seg 1 = phi_A (x) [1-0.8X, 0.8]: one singular value |phi_A| |row| = sqrt(2) |row|
    X = 2 / (2 + EPS)
    spec = memory_spectrum(rewrite_delete_case, segments=[1, 2])
    assert spec.dims == ("segment", "layer", "rank") and spec.sizes["rank"] == 2
    np.testing.assert_allclose(spec.sel(segment=1, layer=0).values, [np.sqrt(2) * np.hypot(1 - 0.8 * X, 0.8), 0],
                               atol=1e-6)
    # after seg 2, A = phi_A b^T + phi_B d^T with phi_A . phi_B = 0: A^T A = 2 (b b^T + d d^T), a 2x2 matrix
    b, d = np.array([1 - 0.8 * X, 0.8]), np.array([0.5, 0.5])
    gram = 2 * (np.outer(b, b) + np.outer(d, d))
    tr, det = np.trace(gram), gram[0, 0] * gram[1, 1] - gram[0, 1] ** 2
    sigma = np.sqrt([(tr + np.sqrt(tr ** 2 - 4 * det)) / 2, (tr - np.sqrt(tr ** 2 - 4 * det)) / 2])
    np.testing.assert_allclose(spec.sel(segment=2, layer=0).values, sigma, rtol=1e-6)
    er = effective_rank(spec)
    p = spec.sel(segment=2, layer=0).values / spec.sel(segment=2, layer=0).values.sum()
    np.testing.assert_allclose(float(er.sel(segment=2, layer=0)), np.exp(-(p * np.log(p)).sum()), rtol=1e-6)
    np.testing.assert_allclose(float(er.sel(segment=1, layer=0)), 1.0, rtol=1e-6)
    assert er.name == "effective_rank" and er.attrs["units"] == "1"


def test_spectrum_at_keyframes_matches_svd(small_config):
    ds = random_trace(small_config, segments=6, probes=0, keyframe_every=2)
    spec = memory_spectrum(ds)
    assert list(spec["segment"].values) == [1, 3, 5]
    ref = np.linalg.svd(ds["assoc_matrix"].values[0, 3, 1], compute_uv=False)
    np.testing.assert_allclose(spec.sel(segment=3, layer=1).values, ref, rtol=1e-5)
    lazy = memory_spectrum(ds.chunk({"keyframe": 1}))
    np.testing.assert_allclose(lazy.values, spec.values)
    assert memory_spectrum(ds, rank=3).sizes["rank"] == 3


def test_capacity_curve():
    em = {1: 1.0, 2: 0.9, 5: 0.5, 10: 0.1}
    cap = capacity(em)
    np.testing.assert_allclose(cap.values, [1.0, 1.8, 2.5, 1.0])
    assert cap.attrs["capacity"] == 2.5 and cap.attrs["argmax_n_pairs"] == 5 and cap.attrs["units"] == "pair"
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        capacity({1: 1.5})
