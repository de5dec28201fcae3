"""On a GPU: the CUDA-graph step, the graph recorder, diagonal batching and the compiled memory math against the
eager HF step (the same comparisons the CPU suite makes through emulation, here with real graphs and kernels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import armt_viz as av
from armt_viz.model.diagonal import diagonal_stream
from armt_viz.model.fast import GraphedStepper, fast_stream
from armt_viz.testing import assert_close, hard_floats, tiny_model


def _assert_traces_close(name, ref, got, tol="fp32_reorder"):
    assert set(got.data_vars) == set(ref.data_vars), name
    for k in ref.data_vars:
        x, y = np.asarray(ref[k].values), np.asarray(got[k].values)
        if x.dtype.kind not in "fc":
            np.testing.assert_array_equal(y, x, err_msg=f"{name}: {k}")
            continue
        ok = np.isfinite(x)
        assert (ok == np.isfinite(y)).all(), f"{name}: {k} NaN pattern"
        if ok.any():
            assert_close(f"{name}: {k}", x[ok].astype(np.float64), y[ok].astype(np.float64), tol)


@pytest.mark.parametrize("level", ["summary", "writes"])
@pytest.mark.parametrize("fast", [True, "compile"])
def test_graph_recorder_equals_the_eager_recorder(model, level, fast):
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 9 * S + S // 2))  # a partial tail for the eager step
    kw = dict(level=level, keyframe_every=3, chunk_segments=4, progress=False)
    eager = av.record(model, ids, fast=False, **kw)
    graphed = av.record(model, ids, fast=fast, **kw)
    _assert_traces_close(f"fast={fast!r} level={level}", eager, graphed)


@pytest.mark.parametrize("storage", ["bfloat16", "float16"])
def test_graph_recorder_rounds_half_storage_on_the_device_like_the_eager_recorder(model, storage):
    """The graph path rounds the write events to 16 bits on the GPU inside the graph; the eager path on the host."""
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 9 * S + S // 2))
    kw = dict(level="writes", keyframe_every=3, chunk_segments=4, progress=False, storage_dtype=storage)
    eager = av.record(model, ids, fast=False, **kw)
    graphed = av.record(model, ids, **kw)
    for k in ("write_key", "write_delta"):
        assert graphed[k].encoding.get("dtype", graphed[k].dtype) == eager[k].encoding.get("dtype", eager[k].dtype)
        _assert_traces_close(f"{storage} {k}", eager[[k]], graphed[[k]], "half_storage")
    rest = [k for k in eager.data_vars if k not in ("write_key", "write_delta")]
    _assert_traces_close(f"{storage} statistics", eager[rest], graphed[rest])


def test_rounding_to_16_bits_on_the_gpu_equals_the_host_encoders():
    from armt_viz.record.fast_record import to_storage
    from armt_viz.trace.store import bf16_encode

    x = hard_floats(1 << 20)
    n = x.numel()  # the patterns are padded to an even count
    bf = to_storage(x.cuda(), torch.bfloat16).cpu().numpy().view(np.uint16)[:n]
    np.testing.assert_array_equal(bf, bf16_encode(x.numpy()))
    h = to_storage(x.cuda(), torch.float16).cpu().numpy().view(np.uint16)[:n]
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(h, x.numpy().astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("how", ["replay", "initial_state"])
def test_replay_on_the_graph_recorder_keeps_the_restored_memory(model, how):
    """Issue 14 bug 1 on the GPU: the graph recorder zeroed a restored memory (every replay started empty)."""
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (1, 10 * S))
    original = av.record(model, ids, level="writes", fast=False, keyframe_every=4, progress=False)
    if how == "replay":
        runs = {fast: av.replay(model, original, 6, fast=fast) for fast in (False, True)}
        ref = original.isel(segment=slice(6, None))
    else:
        with torch.no_grad():
            state = list(model.stream([ids[:, :6 * S].cuda()]))[-1].state
        runs = {fast: av.record(model, ids[:, 6 * S:], level="writes", fast=fast, initial_state=state, progress=False)
                for fast in (False, True)}
        ref = original.isel(segment=slice(6, None))
    assert float(runs[True]["read_out_norm_mean"].isel(segment=0).min()) > 0
    for k in ("read_out_norm_mean", "assoc_norm", "segment_loss", "write_delta"):
        for fast, t in runs.items():
            assert_close(f"{how} fast={fast} {k}", ref[k].values, t[k].values, "fp32_chain")


@pytest.mark.parametrize("case", ["fresh", "restored", "batch2"])
def test_the_graph_step_equals_the_hf_step(model, case):
    S = model.config.segment_size
    B = 2 if case == "batch2" else 1
    ids = torch.randint(0, model.vocab_size, (B, 6 * S + 3), device="cuda")
    state = None
    if case == "restored":
        with torch.no_grad():
            state = list(model.stream([torch.randint(0, model.vocab_size, (1, 3 * S), device="cuda")]))[-1].state
    with torch.no_grad():
        want = list(model.stream([ids], state))
        step = GraphedStepper(model, B)
        got = [(o.logits.clone(), o.segment) for o in model.stream([ids], state, step=step)]
    for w, (g, seg) in zip(want, got):
        assert seg == w.segment
        assert_close(f"graph/{case} logits of segment {seg}", w.logits, g)


@pytest.mark.parametrize("graph", [True, False])
def test_diagonal_batching_equals_the_stream(model, graph):
    """(Moved from tests/model/test_diagonal.py and bench/gpu_diagonal_check.py's exactness part.) The second
    call with graph=True replays the cached captured graph."""
    from armt_viz.model import diagonal as diagonal_mod

    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 12 * S + 5), device="cuda")
    with torch.no_grad():
        want = list(model.stream([ids]))
        for _ in range(2):
            got = list(diagonal_stream(model, ids, states=True, graph=graph))
        if graph:
            assert diagonal_mod._executor(model)._idle.graph is not None
    assert len(got) == len(want)
    for w, g in zip(want, got):
        assert_close(f"diagonal graph={graph} logits of segment {w.segment}", w.logits, g.logits)
        for l in range(model.n_layers):
            assert_close(f"diagonal graph={graph} A segment {w.segment} layer {l}", w.state.flat_assoc(l),
                         g.state.flat_assoc(l).expand_as(w.state.flat_assoc(l)), "fp32_chain")


def test_compiled_memory_math_equals_the_eager_step(model):
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (1, 6 * S), device="cuda")
    with torch.no_grad():
        want = [o.logits for o in model.stream([ids])]
        step = GraphedStepper(model, 1, compile_memory=True)
        for _ in range(2):  # a reused stepper starts each call from a fresh memory
            got = [o.logits.clone() for o in fast_stream(model, ids, step)]
            for s, (w, g) in enumerate(zip(want, got)):
                assert_close(f"compiled memory math, segment {s}", w, g)


def test_a_graph_captured_under_bf16_autocast_equals_the_eager_step_under_it():
    m = tiny_model(seed=5).cuda().eval()
    S = m.config.segment_size
    ids = torch.randint(0, m.vocab_size, (1, 3 * S), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):  # captured and replayed under autocast
        want = [o.logits.float() for o in m.stream([ids])]
        got = [o.logits.float().clone() for o in fast_stream(m, ids, GraphedStepper(m, 1))]
    for s, (w, g) in enumerate(zip(want, got)):
        assert_close(f"bf16 autocast graph step vs eager, segment {s}", w, g, "bf16")


@pytest.mark.parametrize("level, probes", [("full", None), ("writes", [(0, 20), (1, 40)])])
def test_recordings_the_graph_cannot_take_run_an_eager_step(model, level, probes):
    """Probes and level 'full' read the hooked tensors of every segment: the recorder must not pick the graph step
    (whose hooks fire only at capture) for them; fast=True then equals fast=False."""
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 5 * S + 3))
    kw = dict(level=level, probes=probes, keyframe_every=2, progress=False)
    _assert_traces_close(f"level={level} probes={bool(probes)}", av.record(model, ids, fast=False, **kw),
                         av.record(model, ids, fast=True, **kw), "exact")


def test_the_cached_weights_digest_follows_every_edit(model):
    """On CUDA the digest is kept between calls; an in-place edit, one through .data (no version bump) and a
    replaced parameter each give the digest of the edited weights."""
    from armt_viz.record.guard import weights_sha256
    from armt_viz.testing import plain_weights_digest as _plain_digest

    d0 = weights_sha256(model)
    assert d0 == _plain_digest(model) and weights_sha256(model) == d0
    p = next(model.parameters())
    with torch.no_grad():
        p.view(-1)[0] += 0.25
    assert weights_sha256(model) == _plain_digest(model) != d0
    d1 = weights_sha256(model)
    p.data.view(-1)[1].mul_(3.0)  # .data: the version counter does not move
    assert weights_sha256(model) == _plain_digest(model) != d1
    b = model.blocks[0].W_mv
    b.weight = torch.nn.Parameter(b.weight.detach().clone() * 2)
    assert weights_sha256(model) == _plain_digest(model)


@pytest.mark.parametrize("amp", [False, True])
def test_model_ids_on_cuda_replays_a_cached_graph_equal_to_the_hf_step(model, amp):
    """The default of `model(ids)` on CUDA (steps.default_step): a CUDA graph from GRAPH_MIN_SEGMENTS full segments
    on, cached per batch and autocast mode; logits and final state copied out, equal to the HF step."""
    from armt_viz.model import steps

    steps.clear_cache(model)
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, steps.GRAPH_MIN_SEGMENTS * S + 5), device="cuda")
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cuda", enabled=False)
    with torch.no_grad(), ctx:
        why = model.explain_executor(input_ids=ids)
        got = model(ids)
        again = model(ids[:, : 2 * S])  # short, but the cached graph replays
        with steps.hf_step(model):
            want = model(ids)
            want_short = model(ids[:, : 2 * S])
    assert why.startswith("the CUDA-graph step"), why
    assert steps._GRAPHS[model][0][1] == amp
    tol = "bf16" if amp else "fp32_reorder"
    assert_close(f"model(ids) graph default amp={amp}", want.logits.float(), got.logits.float(), tol)
    assert_close(f"model(ids) short from the cache amp={amp}", want_short.logits.float(), again.logits.float(), tol)
    for a, b in zip(want.state.assoc, got.state.assoc):
        assert_close(f"final memory amp={amp}", a, b, tol)
    steps.clear_cache(model)
