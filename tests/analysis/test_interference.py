"""Key overlap, retrieval SNR and the correction distribution on crafted cases."""

from __future__ import annotations

import numpy as np
import pytest

from armt_viz.analysis import correction_distribution, key_overlap, retrieval_snr

from .conftest import EPS, TINY, random_trace


def test_key_overlap_of_colliding_and_orthogonal_keys(collision_case):
    cos = key_overlap(collision_case, segments=[0, 1, 2])
    # seg 0 K_A and seg 1 [2,2] collide (phi = 4 phi_A); seg 2 K_C is orthogonal to both
    np.testing.assert_allclose(cos.values, [[1, 1, 0], [1, 1, 0], [0, 0, 1]], atol=1e-12)
    gram = key_overlap(collision_case, segments=[0, 1], cosine=False)
    np.testing.assert_allclose(gram.values, [[2, 8], [8, 32]])
    assert cos.name == "key_cosine" and gram.name == "key_gram" and gram.attrs["units"] == "1"
    assert list(cos["write_segment"].values) == [0, 1, 2]


def test_retrieval_snr_by_hand(collision_case, rewrite_delete_case):
    y = 8 / (8 + EPS)
    snr = retrieval_snr(collision_case)
    # signal c0 = 2 [1, 0] / D, noise c1 = 8 [-y, 1] / D: the ratio does not depend on D
    np.testing.assert_allclose(float(snr.sel(probe=0, layer=0)), 2 / (8 * np.hypot(y, 1)), rtol=1e-6)
    assert np.isnan(float(snr.sel(probe=1, layer=0)))  # f9 was never written: no current write
    X = 2 / (2 + EPS)
    r = X * np.array([1 - 0.8 * X, 0.8])
    signal = X * np.array([-0.8 * X, 0.8])  # probe 0 asks f0 v1, written at seg 1
    np.testing.assert_allclose(float(retrieval_snr(rewrite_delete_case).sel(probe=0, layer=0)),
                               np.linalg.norm(signal) / np.linalg.norm(r - signal), rtol=1e-6)


def test_correction_distribution(rewrite_delete_case):
    # gammas after the first segment: seg1 0, seg2 X = 2/(2+eps), seg3 0, seg4 1 - eps/(eps+2)... (K_C unseen)
    hist = correction_distribution(rewrite_delete_case, bins=4)
    assert hist.dims == ("layer", "correction") and hist.attrs["units"] == "count"
    np.testing.assert_array_equal(hist.values[0], [2, 0, 0, 2])
    with_first = correction_distribution(rewrite_delete_case, bins=4, include_first=True)
    assert int(with_first.sum()) == 5 and with_first.values[0, -1] == 3
    lazy = correction_distribution(rewrite_delete_case.chunk({"segment": 2}), bins=4)
    np.testing.assert_array_equal(lazy.values, hist.values)


def test_correction_distribution_counts_every_event():
    ds = random_trace(TINY.__class__(num_mem_tokens=3, d_mem=4, n_heads=2, segment_size=8), segments=5, probes=0)
    hist = correction_distribution(ds)
    assert int(hist.sum()) == 4 * 3 * 2 * 2  # segments 1..4 x mem tokens x heads x layers
    with pytest.raises(ValueError, match="write_correction"):
        correction_distribution(ds.drop_vars("write_correction"))
