"""Stale share of recalls, stale mass over time, answer classes: hand-derived and brute-force checks."""

from __future__ import annotations

import numpy as np
import pytest

from armt_viz.analysis import answer_status, recall_shares, stale_mass, stale_share
from armt_viz.config import ARMTConfig
from armt_viz.tasks.stream import StreamConfig, make_stream

from .conftest import EPS, embed_ledger, random_trace, ref_features
from .test_attribution import X


def test_recall_shares_by_hand(rewrite_delete_case):
    ds = rewrite_delete_case
    r = X * np.array([1 - 0.8 * X, 0.8])
    stale = X * r[0] / (r @ r)  # <c0, r>/|r|^2 with c0 = X [1, 0]
    shares = recall_shares(ds)
    assert shares.dims == ("probe", "layer", "status") and shares.attrs["units"] == "1"
    np.testing.assert_allclose(shares.sel(probe=0, layer=0).values, [1 - stale, stale, 0.0], atol=1e-6)
    np.testing.assert_allclose(float(stale_share(ds).sel(probe=0, layer=0)), stale, rtol=1e-6)
    assert stale_share(ds).name == "stale_share"


def test_collision_recall_is_mostly_other(collision_case):
    # f1's key collides with f0's: phi([2,2]) = 4 phi_A, so the read of f0 mixes in f1's write
    ds = collision_case
    y = 8 / (8 + EPS)
    g = 1 - (8 + EPS) / (32 + EPS)
    D = 2 * (1 + 4 * g) + EPS
    c0, c1 = np.array([2.0, 0.0]) / D, 8 * np.array([-y, 1.0]) / D
    r = c0 + c1
    current = c0 @ r / (r @ r)
    shares = recall_shares(ds)
    np.testing.assert_allclose(shares.sel(probe=0, layer=0).values, [current, 0.0, 1 - current], atol=1e-6)
    assert np.isnan(shares.sel(probe=1, layer=0).values).all()  # the query K_C is orthogonal: zero read


def test_stale_mass_by_hand(rewrite_delete_case):
    # W_t = phi_t (x) u_t; |phi_A|^2 = |phi_B|^2 = 2 and phi_A . phi_B = 0, so norms are per-key sums
    n1 = np.hypot(1 - 0.8 * X, 0.8)  # |[1 - 0.8X, 0.8]|: f0's row of A after the rewrite
    a_norm = np.sqrt(2 * np.array([1.0, n1 ** 2, n1 ** 2 + 0.5, (1 - X) ** 2 * n1 ** 2 + 0.5, (1 - X) ** 2 * n1 ** 2 + 0.5]))
    # any: seg 0 (f0 v0) superseded at seg 1; seg 1 (f0 v1 + f2 v0) when the delete at seg 3 supersedes f0 v1
    m_any = np.sqrt(2) * np.array([0.0, 1.0, 1.0, n1, n1])
    # all: seg 1 still holds f2 v0 (never superseded), so only seg 0 counts
    m_all = np.sqrt(2) * np.array([0.0, 1.0, 1.0, 1.0, 1.0])
    ds = rewrite_delete_case
    got = stale_mass(ds)
    assert got.dims == ("sample", "segment", "layer") and got.name == "stale_mass" and got.attrs["units"] == "1"
    np.testing.assert_allclose(got.values[0, :, 0], m_any / a_norm, rtol=1e-6)
    np.testing.assert_allclose(stale_mass(ds, rule="all").values[0, :, 0], m_all / a_norm, rtol=1e-6)
    np.testing.assert_allclose(stale_mass(ds, normalize=False).values[0, :, 0], m_any, rtol=1e-6, atol=1e-12)
    with pytest.raises(ValueError, match="rule"):
        stale_mass(ds, rule="some")


def _brute_stale_mass(ds, ledger, config, rule):
    """Independent loop: versions held per segment, superseded by S if the next version's row is in a segment <= S."""
    role, seg = ledger["role"].values.astype(str), ledger["segment"].values
    fact, ver = ledger["fact_id"].values, ledger["version"].values
    defining = np.isin(role, ["key", "value", "delete"])
    held = {}
    first_seg = {}
    for i in np.flatnonzero(defining):
        held.setdefault(int(seg[i]), set()).add((int(fact[i]), int(ver[i])))
        k = (int(fact[i]), int(ver[i]))
        first_seg[k] = min(first_seg.get(k, 10 ** 9), int(seg[i]))
    T, L = ds.sizes["segment"], ds.sizes["layer"]
    H, hidden = config.n_heads, ds.sizes["hidden"]
    Fh, Dh = 2 * config.nu * config.d_mem // H, hidden // H
    out = np.zeros((T, L))
    for layer in range(L):
        W = np.zeros((T, H * Fh, hidden))
        for t in range(T):
            for j in range(ds.sizes["mem_token"]):
                phis = ref_features(ds["write_key"].values[0, t, layer, j], H, config.nu, config.normalize_features)
                u = ds["write_delta"].values[0, t, layer, j]
                for h in range(H):
                    W[t, h * Fh:(h + 1) * Fh, h * Dh:(h + 1) * Dh] += np.outer(phis[h], u[h * Dh:(h + 1) * Dh])
        for S in range(T):
            M = np.zeros_like(W[0])
            for t in range(S + 1):
                versions = held.get(t, set())
                flags = [first_seg.get((f, v + 1), 10 ** 9) <= S for f, v in versions]
                if versions and (any(flags) if rule == "any" else all(flags)):
                    M += W[t]
            A = ds["assoc_matrix"].values[0, S, layer]
            out[S, layer] = np.linalg.norm(M) / np.linalg.norm(A)
    return out


@pytest.mark.parametrize("rule", ["any", "all"])
def test_stale_mass_matches_brute_force_on_a_stream(rule):
    config = ARMTConfig(num_mem_tokens=2, d_mem=4, n_heads=2, segment_size=8)
    stream = make_stream(StreamConfig(n_keys=3, key_size=1, value_size=1, segment_size=8, events_per_segment=2,
                                      p_write=0.6, p_query=0.2, p_delete=0.2, seed=3), n_tokens=8 * 14)
    ds = embed_ledger(random_trace(config, segments=14, probes=0, hidden=8), stream.ledger)
    expected = _brute_stale_mass(ds, stream.ledger, config, rule)
    got = stale_mass(ds, rule=rule, block_segments=3).values[0]  # small blocks: exercises the carried prefix
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert expected[-1].min() > 0  # the case is not trivial
    lazy = stale_mass(ds.chunk({"segment": 4}), rule=rule)
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values[0], expected, rtol=1e-5)


def test_answer_classes(rewrite_delete_case, collision_case):
    # probe 0 answers the overwritten value 1 (stale); probe 1 answers NONE after the delete (current)
    assert list(answer_status(rewrite_delete_case).values) == ["stale", "current"]
    # f0 queried, answered f1's value 5 (other); f9 never written, answered NONE (current)
    assert list(answer_status(collision_case).values) == ["other", "current"]
    wrong = collision_case.assign(probe_prediction=collision_case["probe_prediction"].copy(data=[11, 0]))
    assert list(answer_status(wrong).values) == ["wrong", "wrong"]
    off = collision_case.assign_coords(probe_token=collision_case["probe_token"] + 2)  # not on an answer token
    assert list(answer_status(off).values) == ["n/a", "n/a"]
