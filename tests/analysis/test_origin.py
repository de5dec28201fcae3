"""Origin decomposition (armt_viz.analysis.origin): cases with analytic answers, and exactness on recorded models.

Keys with hand-known DPFP features (nu=3, d_mem=2): phi([1,1]) = e1 + e8 and phi([-1,-1]) = e3 + e10, orthogonal,
|phi|^2 = 2. With eps = 0 (the exact normaliser) and one key rewritten in every segment after the first:
  * gamma on: z = phi after the first write and gamma = 1 - z.phi/|phi|^2 = 0 afterwards, so D = |phi|^2 and every
    rewrite with gate beta multiplies an older origin's key by (1 - beta): survival (1 - beta)^n after n rewrites;
  * gamma off, beta = 1: before write t (1-based) z = (t-1) phi, D = 2 (t-1), so write t multiplies older keys by
    1 - 1/(t-1) = (t-2)/(t-1); the product over t = i+1..n telescopes to (i-1)/(n-1) for version i >= 2, and
    write 2 (factor 0) erases version 1.
"""

from __future__ import annotations

import numpy as np
import pytest

import armt_viz as av
from armt_viz.analysis import origin as O
from armt_viz.analysis.staleness import stale_mass
from armt_viz.config import ARMTConfig

from .conftest import build_trace, ledger_from_events

K_A, K_B = [1.0, 1.0], [-1.0, -1.0]
SURVIVAL_TOL = 1e-6  # analytic cases: float64 arithmetic, eps = 0
EXACT_REL = 1e-5  # recorded models: the acceptance tolerance (float32 recording)
SEG = 8


def _rows_trace(config, rows, probes=(), ledger=None):
    """rows: per segment a list of (key, value, gate) per memory token; 1 sample, 1 layer."""
    M = len(rows[0])
    keys = np.array([[[[r[j][0] for j in range(M)]] for r in rows]], dtype=np.float64)
    values = np.array([[[[r[j][1] for j in range(M)]] for r in rows]], dtype=np.float64)
    gates = np.array([[[[r[j][2] for j in range(M)]] for r in rows]], dtype=np.float64)
    return build_trace(config, keys, values, gates, probes, ledger=ledger)


def _rewrites(n_writes, beta, correction, delta_rule=True, hidden=3, seed=0):
    rng = np.random.default_rng(seed)
    config = ARMTConfig(num_mem_tokens=1, d_mem=2, segment_size=SEG, eps=0.0, correction=correction,
                        delta_rule=delta_rule)
    rows = [[(K_A, rng.normal(size=hidden), beta)] for _ in range(n_writes)]
    return _rows_trace(config, rows)


@pytest.mark.parametrize("beta", [0.3, 0.7])
def test_gamma_on_first_version_survives_as_one_minus_beta_to_the_n(beta):
    ds = _rewrites(7, beta, correction=True)
    for n in range(0, 7):  # after n rewrites (segment n)
        surv = O.origin_contributions(ds, n, 0)["survival"].values
        expected = (1 - beta) ** (n - np.arange(n + 1))  # version i (0-based) saw n - i rewrites
        np.testing.assert_allclose(surv, expected, rtol=0, atol=SURVIVAL_TOL)
    assert surv[0] < 0.2  # the case is not trivial


@pytest.mark.parametrize("n", [2, 3, 5, 8])
def test_gamma_off_beta_one_version_i_survives_as_i_minus_1_over_n_minus_1(n):
    ds = _rewrites(n, 1.0, correction=False)
    surv = O.origin_contributions(ds, n - 1, 0)["survival"].values
    i = np.arange(1, n + 1)
    expected = np.where(i == 1, 0.0, (i - 1) / (n - 1))
    np.testing.assert_allclose(surv, expected, rtol=0, atol=SURVIVAL_TOL)
    # with gamma on, the same writes leave only the newest version
    on = O.origin_contributions(_rewrites(n, 1.0, correction=True), n - 1, 0)["survival"].values
    np.testing.assert_allclose(on, np.r_[np.zeros(n - 1), 1.0], rtol=0, atol=SURVIVAL_TOL)


def test_gamma_off_with_eps_follows_the_product_form():
    """With eps > 0 the factor of write t is 1 - |phi|^2/((t-1)|phi|^2 + eps): the closed form is its product."""
    rng = np.random.default_rng(0)
    eps, n = 1e-2, 6
    config = ARMTConfig(num_mem_tokens=1, d_mem=2, segment_size=SEG, eps=eps, correction=False)
    ds = _rows_trace(config, [[(K_A, rng.normal(size=3), 1.0)] for _ in range(n)])
    surv = O.origin_contributions(ds, n - 1, 0)["survival"].values
    factor = lambda t: 1 - 2.0 / (2.0 * (t - 1) + eps)  # noqa: E731  (write t, 1-based; |phi|^2 = 2)
    expected = [np.prod([factor(t) for t in range(i + 1, n + 1)]) for i in range(1, n + 1)]
    np.testing.assert_allclose(surv, expected, rtol=0, atol=SURVIVAL_TOL)
    assert abs(surv[1] - 1 / (n - 1)) > 1e-4  # ... which differs from the eps = 0 form


def test_no_delta_rule_erases_nothing():
    ds = _rewrites(6, 0.8, correction=True, delta_rule=False)
    surv = O.origin_contributions(ds, 5, 0)["survival"].values
    np.testing.assert_allclose(surv, 1.0, rtol=0, atol=SURVIVAL_TOL)
    with_rule = O.origin_contributions(_rewrites(6, 0.8, correction=True), 5, 0)["survival"].values
    assert with_rule[0] < 0.01  # the same writes under the delta rule erase the first version


def _two_keys(beta_b):
    """Keys A and B written in segment 0, both rewritten in segment 1 (A with beta 1, B with beta_b); a probe
    in segment 2 reads key A and asks fact 0 (A)."""
    config = ARMTConfig(num_mem_tokens=2, d_mem=2, segment_size=SEG, eps=0.0)
    rows = [[(K_A, [1.0, 0, 0], 1.0), (K_B, [0, 1.0, 0], 1.0)],
            [(K_A, [1.0, 0, 1.0], 1.0), (K_B, [1.0, 1.0, 0], beta_b)],
            [(K_A, [0, 0, 0], 0.0), (K_B, [0, 0, 0], 0.0)]]
    events = [dict(role="write", segment=0, position=0, fact=0, value=1),
              dict(role="write", segment=0, position=4, fact=1, value=1),
              dict(role="write", segment=1, position=0, fact=0, value=2),
              dict(role="write", segment=1, position=4, fact=1, value=2),
              dict(role="query", segment=2, position=0, fact=0)]
    ledger = ledger_from_events(events, segment_size=SEG)
    probe = {"sample": 0, "segment": 2, "position": 1, "query": np.array([K_A])}
    return _rows_trace(config, rows, [probe], ledger), ledger


def test_orthogonal_keys_beta_one_leave_no_stale_mass_but_the_per_write_view_reports_it():
    ds, _ = _two_keys(beta_b=1.0)
    surv = O.origin_contributions(ds, 1, 0)["survival"].values
    np.testing.assert_allclose(surv[:2], 0.0, atol=SURVIVAL_TOL)  # both old versions erased
    parts = av.memory_by_origin(ds, segment=1, layer=0)
    A = av.memory_at(ds, 1, 0)[0].values[0]
    np.testing.assert_allclose(parts.sum("status").values, A, rtol=0, atol=1e-12)
    assert np.linalg.norm(parts.sel(status="superseded")) <= SURVIVAL_TOL * np.linalg.norm(A)
    origin = ds.armt.stale_mass(method="origin").values[0, :, 0]
    write = ds.armt.stale_mass(method="write").values[0, :, 0]
    assert origin[1] <= SURVIVAL_TOL
    assert write[1] > 0.5  # the naive view: large stale mass where none survives


def test_partial_gate_leaves_the_analytic_residue():
    ds, _ = _two_keys(beta_b=0.5)
    parts = av.memory_by_origin(ds, segment=1, layer=0)
    phi_b = np.zeros(12)
    phi_b[[3, 10]] = 1.0
    expected = 0.5 * np.outer(phi_b, [0, 1.0, 0])  # (1 - beta_b) of B's first value along phi_B
    np.testing.assert_allclose(parts.sel(status="superseded").values, expected, atol=SURVIVAL_TOL)
    A = av.memory_at(ds, 1, 0)[0].values[0]
    got = ds.armt.stale_mass(method="origin").values[0, 1, 0]
    assert got == pytest.approx(np.linalg.norm(expected) / np.linalg.norm(A), rel=1e-9)
    # relative to fact 1 (B): both segments hold a version of B (a segment's writes carry every version it holds),
    # so segment 0 is "superseded" (its A part is erased: nothing left) and segment 1 "current"
    rel = av.memory_by_origin(ds, segment=1, layer=0, fact=1)
    np.testing.assert_allclose(rel.sel(status="superseded").values, expected, atol=SURVIVAL_TOL)
    np.testing.assert_allclose(rel.sel(status="current").values, A - expected, atol=SURVIVAL_TOL)
    assert float(np.abs(rel.sel(status="other")).max()) == 0.0
    # per fact: reads at segment 1's write keys (both tokens), z = phi_A + phi_B (gamma = 0 on rewrites):
    # at phi_A: v_A2 = [1, 0, 1]; at phi_B: 0.5 w1 + 0.5 w2 = [0.5, 1, 0], whose old part is 0.5 w1 (norm 0.5)
    fr = ds.armt.fact_residual(0, at=[1])
    total = np.sqrt(2.0 + 0.5 ** 2 + 1.0)
    assert fr["residual"].sel(fact_id=1).item() == pytest.approx(0.5 / total, rel=1e-9)
    assert fr["crosstalk"].sel(fact_id=1).item() == pytest.approx(0.0, abs=1e-12)
    # fact 0 shares both segments with fact 1, so the trace cannot tell their origins apart: same numbers
    assert fr["residual"].sel(fact_id=0).item() == pytest.approx(0.5 / total, rel=1e-9)


def test_read_attribution_by_origin_shows_the_net():
    ds, _ = _two_keys(beta_b=1.0)
    r = float(np.linalg.norm(ds["read_out"].isel(probe=0, layer=0).values))
    origin = av.attribute_read(ds, probe=0, layer=0, by="origin")
    write = av.attribute_read(ds, probe=0, layer=0, by="write")
    assert float(origin.sum()) == pytest.approx(r, rel=1e-6)  # read_out is stored as float32
    assert float(write.sum()) == pytest.approx(r, rel=1e-6)
    by_status = origin.groupby("status").sum()
    assert abs(float(by_status.sel(status="superseded"))) <= SURVIVAL_TOL * r
    assert float(by_status.sel(status="current")) == pytest.approx(r, rel=1e-6)
    stale_write = float(write.where(write["status"] == "stale", 0).sum())
    # per write: the old value's write (v1 . r/|r| = 1/sqrt 2 = |r|/2) and the rewrite's u = v2 - v1 split the read
    assert stale_write == pytest.approx(r / 2, rel=1e-6)
    assert set(origin.coords) >= {"status", "write_segment", "mem_token"}


def test_write_vs_origin_figure_shows_cancelling_bars_and_the_net():
    from armt_viz.viz.figures_origin import write_vs_origin_figure

    ds, _ = _two_keys(beta_b=1.0)
    per_write = av.attribute_read(ds, probe=0, layer=0, by="write")
    per_origin = av.attribute_read(ds, probe=0, layer=0, by="origin")
    fig = write_vs_origin_figure(per_write, per_origin)
    summary = fig.layout.meta["summary"]
    assert summary["write"]["stale"] == pytest.approx(0.5, abs=1e-6)  # half of |r| from the overwritten write
    assert abs(summary["origin"].get("superseded", 0.0)) <= SURVIVAL_TOL
    assert summary["origin"]["current"] == pytest.approx(1.0, abs=1e-6)
    top = [t for t in fig.data if t.yaxis == "y"]
    bottom = [t for t in fig.data if t.yaxis == "y2"]
    assert sum(float(np.sum(t.y)) for t in top) == pytest.approx(1.0, abs=1e-6)
    assert sum(float(np.sum(t.y)) for t in bottom) == pytest.approx(1.0, abs=1e-6)


def test_bad_input_is_refused():
    ds, _ = _two_keys(beta_b=1.0)
    with pytest.raises(ValueError, match="method"):
        stale_mass(ds, method="net")
    with pytest.raises(IndexError, match="segment"):
        av.memory_by_origin(ds, segment=9, layer=0)
    with pytest.raises(ValueError, match="kind"):
        av.attribute_read(ds, probe=0, layer=0, by="origin", kind="denominator")
    two_heads = ds.assign_attrs(armt_config=ARMTConfig(num_mem_tokens=2, d_mem=2, n_heads=2, segment_size=SEG).to_json())
    with pytest.raises(ValueError, match="write_gate_channel"):
        av.memory_by_origin(two_heads, segment=1, layer=0)


# ------------------------------------------------------------------------------------------ recorded models
torch = pytest.importorskip("torch")


def _assert_origin_sums_exact(ds, *, min_read: float | None = None) -> None:
    """At every segment and layer, memory_by_origin sums to memory_at; at every probe and layer, the origin
    attribution sums to |read_out| (which must exceed `min_read`, when given); both within EXACT_REL."""
    for S in range(ds.sizes["segment"]):
        for layer in range(ds.sizes["layer"]):
            A = av.memory_at(ds, S, layer)[0].values[0]
            total = av.memory_by_origin(ds, segment=S, layer=layer).sum("status").values
            assert np.abs(total - A).max() <= EXACT_REL * np.abs(A).max(), (S, layer)
    for p in range(ds.sizes["probe"]):
        for layer in range(ds.sizes["layer"]):
            r = float(np.linalg.norm(ds["read_out"].isel(probe=p, layer=layer).values))
            got = float(av.attribute_read(ds, probe=p, layer=layer, by="origin").sum())
            assert (min_read is None or r > min_read) and abs(got - r) <= EXACT_REL * r, (p, layer, got, r)


@pytest.mark.parametrize("armt", [{}, {"gating": True, "n_heads": 2}, {"correction": False}, {"delta_rule": False}],
                         ids=["paper", "gated-two-heads", "no-gamma", "no-delta-rule"])
def test_sums_are_exact_on_a_recorded_model_at_every_segment(armt):
    from armt_viz.tasks.stream import StreamConfig, make_stream
    from armt_viz.testing import tiny_model

    model = tiny_model(vocab_size=128, **armt)
    stream = make_stream(StreamConfig(n_keys=4, key_size=1, value_size=1, segment_size=16, events_per_segment=2,
                                      p_delete=0.1, p_write=0.6, p_query=0.3, seed=2), n_tokens=16 * 10)
    answers = stream.ledger["token"].values[stream.ledger["role"].values == "answer"]
    probes = [(0, int(t) - 1) for t in answers if t >= 16][:3]
    assert len(probes) == 3
    ds = av.record(model, stream, level="writes", probes=probes, progress=False)
    _assert_origin_sums_exact(ds, min_read=1e-3)
    eager = ds.armt.stale_mass(method="origin")
    lazy = ds.chunk({"segment": 3}).armt.stale_mass(method="origin", block_segments=3)
    assert lazy.chunks is not None
    np.testing.assert_allclose(lazy.values, eager.values, rtol=1e-12, equal_nan=True)
    assert np.nanmax(eager.values) > 0  # superseded versions exist in this stream


def test_low_rank_bookkeeping_equals_dense_groups():
    """Without per-channel gating, live origins are kept as (eroded key, value) pairs; the dense groups agree."""
    from armt_viz.analysis._common import config_of

    rng = np.random.default_rng(5)
    config = ARMTConfig(num_mem_tokens=2, d_mem=4, n_heads=2, segment_size=SEG)
    T = 9
    events = []
    for t in range(T):
        events.append(dict(role="write", segment=t, position=0, fact=int(rng.integers(3)), value=int(rng.integers(9))))
    ledger = ledger_from_events(events, segment_size=SEG)
    keys = rng.normal(size=(1, T, 1, 2, 4))
    ds = build_trace(config, keys, rng.normal(size=(1, T, 1, 2, 8)), rng.uniform(0.2, 1, size=(1, T, 1, 2)),
                     ledger=ledger)
    ds = ds.assign(write_gate_channel=(("sample", "segment", "layer", "mem_token", "gate_channel"),
                                       np.repeat(ds["write_gate"].values[..., None], 2, axis=-1)))
    facts = O._facts(ds, None)
    key, u, beta, gamma = O._load_writes(ds, config_of(ds), 0, 0, slice(0, T))
    sched = O.segment_schedule(facts, 0, T)
    dense = O._StatusPools(O.OriginScan(config, 8), *sched)
    low = O._LowRankPools(O.OriginScan(config, 8), *sched)
    for t in range(T):
        dense.step(t, key[t], u[t], beta[t], gamma[t])
        low.step(t, key[t], u[t], beta[t], gamma[t])
        np.testing.assert_allclose(low.by_status(t), dense.by_status(t), rtol=0, atol=1e-12)
        np.testing.assert_allclose(low.stale_norms(t), dense.stale_norms(t), rtol=1e-12)
    assert np.linalg.norm(dense.by_status(T - 1)[1]) > 0  # something was superseded


@pytest.mark.parametrize("armt", [dict(n_heads=2), dict(n_heads=2, correction=False, eps=1e-3), dict(delta_rule=False),
                                  dict(use_denom=False)], ids=["two-heads", "no-gamma", "no-delta", "no-denom"])
def test_fast_scan_equals_the_per_layer_reference(armt):
    """The per-head, all-layers scan (`_stale_scan`, blocks of 5 segments so state crosses blocks) equals the
    per-layer `_LowRankPools` bookkeeping on random writes with fact statuses of every kind."""
    from armt_viz.analysis._common import config_of

    rng = np.random.default_rng(3)
    config = ARMTConfig(**{"num_mem_tokens": 2, "d_mem": 4, "segment_size": SEG, **armt})
    T, L, hidden = 17, 2, 8
    events = [dict(role="write", segment=t, position=int(p), fact=int(rng.integers(3)), value=int(rng.integers(9)))
              for t in range(T) if t % 4 != 3 for p in ([0, 4] if t % 3 == 0 else [0])]
    ledger = ledger_from_events(events, segment_size=SEG)
    ds = build_trace(config, rng.normal(size=(1, T, L, 2, 4)), rng.normal(size=(1, T, L, 2, hidden)),
                     rng.uniform(0.2, 1, size=(1, T, L, 2)), ledger=ledger)
    ds = ds.assign(write_gate_channel=(("sample", "segment", "layer", "mem_token", "gate_channel"),
                                       np.repeat(ds["write_gate"].values[..., None], config.n_heads, axis=-1)))
    cfg = config_of(ds)
    facts = O._facts(ds, None)
    sched = O.segment_schedule(facts, 0, T)
    ref = np.zeros((3, T, L))
    for layer in range(L):
        key, u, beta, gamma = O._load_writes(ds, cfg, 0, layer, slice(0, T))
        _, ref[..., layer] = O._stale_block(None, key, u, beta, gamma, 0, sched, cfg, hidden)
    got = np.concatenate([n for _, _, n, _ in O.stale_norms_blocks(ds, 0, sched, block_segments=5)], axis=1)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)
    assert ref[0].max() > 0 and (ref[1] > ref[0] + 1e-9).any()  # superseded and "other" parts both occur
    # resuming from a carry gives the same as one pass
    blocks = list(O.stale_norms_blocks(ds, 0, sched, stop=9, block_segments=4))
    rest = list(O.stale_norms_blocks(ds, 0, sched, start=9, carry=blocks[-1][3], block_segments=4))
    np.testing.assert_allclose(np.concatenate([b[2] for b in blocks + rest], axis=1), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["stream", "stream_gate"])
def test_sums_are_exact_on_a_recorded_specimen_at_every_segment(name):
    """Issue 13 acceptance on the shipped specimens (the demo model, and the per-channel gate): memory_by_origin sums
    to memory_at and origin attribution to |read_out| at every segment, within EXACT_REL."""
    from armt_viz.assets import load_demo_model
    from armt_viz.evaluate import model_stream_config
    from armt_viz.tasks.stream import make_stream

    model = load_demo_model(name)
    stream = make_stream(model_stream_config(model, seed=3), n_tokens=model.config.segment_size * 12)
    answers = stream.ledger["token"].values[stream.ledger["role"].values == "answer"]
    probes = [(0, int(t) - 1) for t in answers if t >= 2 * model.config.segment_size][:4]
    assert len(probes) >= 2
    with pytest.warns(Warning):  # BeyondTrainingRange: the specimens declare no measured range
        ds = av.record(model, stream, level="writes", probes=probes, progress=False, storage_dtype="float32")
    _assert_origin_sums_exact(ds)
