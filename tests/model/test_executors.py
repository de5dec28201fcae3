"""One equivalence suite for every way of running the ARMT segment step (issue 14).

Every executor is compared with the HF-wrapped eager step (`model.step`, the reference that the golden tests tie
to the official code) over the grid

    executor  x  config variant  x  state case

on tiny models (2 layers, d 64, S 16), through the model's one segment loop (`run_segments`), on logits of
every segment and the memory (A, z) after the last one, with one named tolerance (`armt_viz.testing`).

Executors: the lean CPU step; the CUDA-graph step through its CPU emulation (same static buffers and
first/later graphs, run eagerly); diagonal batching through its emulated pipeline (the steady diagonal that a
CUDA graph would replay, run eagerly). The compiled memory math needs a compiler toolchain and minutes on a CPU:
it is compared with the eager step in tests/gpu (gpu marker). A combination an executor cannot run is not in the
grid; `test_the_grid_is_what_the_executors_accept` checks the grid against each executor's own `why_not`, so
nothing drops out silently.

Adding a config flag is one line in CONFIGS; adding an executor is one entry in EXECUTORS.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from armt_viz.config import ARMTConfig
from armt_viz.model.armt import MemoryState
from armt_viz.model.diagonal import _check_model, diagonal_stream
from armt_viz.model.fast import GraphedStepper
from armt_viz.model.lean import LeanStep
from armt_viz.testing import assert_close, stable_seed, tiny_model

TOL = "fp32_reorder"  # logits
# the memory: a write divides by z.k + eps, which the random tiny models make small at times, so a 1e-7 rounding
# of a denominator becomes ~1.6e-5 of A (seen: diagonal, two heads, layer 1, segment 2, A jumps 0.44 -> 20.5)
STATE_TOL = "fp32_chain"

# name -> ARMTConfig overrides (tiny_model defaults: M=4, d_mem=16, S=16, one head, scalar gate)
CONFIGS = {
    "base": {},
    "no_correction": dict(correction=False),
    "no_denominator": dict(use_denom=False),
    "gamma_without_eps": dict(gamma_eps=False),
    "per_channel_gate": dict(gating=True),
    "normalized_features": dict(normalize_features=True),
    "two_heads": dict(n_heads=2),
    "two_heads_per_channel_gate": dict(n_heads=2, gating=True),
    "wrap_pos": dict(wrap_pos=True),
    "right_alignment": dict(segment_alignment="right"),
    "center_alignment": dict(segment_alignment="center"),
}
if "delta_rule" in {f.name for f in dataclasses.fields(ARMTConfig)}:  # issue 13's flag, where it exists
    CONFIGS["no_delta_rule"] = dict(delta_rule=False)

CASES = ("fresh", "restored", "midstream", "partial_tail", "batch2", "ablated")


@functools.cache
def _model(config: str):
    m = tiny_model(seed=stable_seed(config, modulo=10_000), **CONFIGS[config])
    return m


def _ids(config: str, case: str) -> torch.Tensor:
    m = _model(config)
    S = m.config.segment_size
    g = torch.Generator().manual_seed(stable_seed(config, case))
    B = 2 if case == "batch2" else 1
    n = 4 * S + (S // 2 + 1 if case == "partial_tail" else 0)
    if m.config.segment_alignment != "left":
        n += 5  # a partial first (right) or uneven (center) segment
    return torch.randint(0, m.vocab_size, (B, n), generator=g)


def _start_state(config: str, case: str) -> MemoryState | None:
    """restored: a memory from a copy (not the executor's own tensors), after 3 segments of another stream."""
    if case != "restored":
        return None
    m = _model(config)
    prefix = torch.randint(0, m.vocab_size, (1, 3 * m.config.segment_size),
                           generator=torch.Generator().manual_seed(stable_seed(config, "prefix")))
    with torch.no_grad():
        st = list(m.stream([prefix]))[-1].state
    H = m.config.n_heads
    return MemoryState.from_flat([st.flat_assoc(l).clone() for l in range(m.n_layers)],
                                 [st.flat_normalizer(l).clone() for l in range(m.n_layers)], st.segments, heads=H)


# ------------------------------------------------------------------------------------------------- executors
# run(model, ids, state, step) -> [SegmentOutput]; make(model, batch) -> a reusable step object (or None)
def _split_runner(make_step):
    def run(model, ids, state, step):
        return list(model.run_segments(model._split(ids, None), state, grad=False, step=step))
    return run, make_step


def _diagonal_run(model, ids, state, step):
    with torch.no_grad():
        return list(diagonal_stream(model, ids, state=state, states=True, emulate=True))


def _graph_why_not(model):
    return GraphedStepper.why_not(model)


def _diagonal_why_not(model):
    try:
        _check_model(model)
    except ValueError as exc:
        return str(exc)
    if model.config.segment_alignment != "left":
        return "diagonal batching cuts a stream left-aligned (it is model.stream), not by segment_alignment"
    return None


EXECUTORS = {
    # name: (run, make_step, why_not)
    "lean": (*_split_runner(lambda m, B: LeanStep(m)), LeanStep.why_not),
    "graph_emulated": (*_split_runner(lambda m, B: GraphedStepper(m, B, emulate=True)), _graph_why_not),
    "diagonal_emulated": (_diagonal_run, lambda m, B: None, _diagonal_why_not),
}


def _reference(model, ids, state, executor):
    if executor == "diagonal_emulated":  # diagonal batching is model.stream: left-aligned re-cut
        with torch.no_grad():
            return list(model.stream([ids], state))
    return list(model.run_segments(model._split(ids, None), state, grad=False))


def _drive(run, model, ids, state, step, case):
    """One run of a case: midstream is two calls, the second from the state the first returned."""
    if case != "midstream":
        return run(model, ids, state, step)
    cut = 2 * model.config.segment_size + (5 if model.config.segment_alignment != "left" else 0)
    first = run(model, ids[:, :cut], state, step)
    return first + run(model, ids[:, cut:], first[-1].state, step)


# static applicability (checked against why_not by a test): GPT-2 backbones throughout
def _applies(executor: str, overrides: dict) -> bool:
    if executor == "lean":
        return overrides.get("n_heads", 1) == 1
    if executor == "graph_emulated":
        return not overrides.get("wrap_pos", False)
    return not overrides.get("wrap_pos", False) and overrides.get("segment_alignment", "left") == "left"


GRID = [(e, c, case) for e in EXECUTORS for c in CONFIGS if _applies(e, CONFIGS[c]) for case in CASES]


def _run_case(executor: str, config: str, case: str):
    run, make_step, _ = EXECUTORS[executor]
    model = _model(config)
    ids = _ids(config, case)
    state = _start_state(config, case)
    step = make_step(model, ids.shape[0])
    ablate = model.ablate_memory() if case == "ablated" else torch.no_grad()
    with ablate:
        want = _drive(lambda m, i, st, _: _reference(m, i, st, executor), model, ids, state, None, case)
        got = _drive(run, model, ids, state, step, case)
        # copy what a graph step returns as views of its static buffers before anything else runs
        got_logits = [o.logits.clone() for o in got]
        last = got[-1].state
        got_state = [(last.flat_assoc(l).clone(), last.flat_normalizer(l).clone()) for l in range(model.n_layers)]
    return model, want, got, got_logits, got_state


@pytest.mark.parametrize("executor, config, case", GRID, ids=["-".join(p) for p in GRID])
def test_executor_equals_the_hf_step(executor, config, case):
    model, want, got, got_logits, got_state = _run_case(executor, config, case)
    assert [o.segment for o in got] == [o.segment for o in want], "segment indices"
    assert len(got_logits) == len(want)
    for s, (w, g) in enumerate(zip(want, got_logits)):
        assert_close(f"{executor}/{config}/{case} logits of segment {s}", w.logits, g, TOL)
    last = want[-1].state
    assert got[-1].state.segments == last.segments
    for l, (a, z) in enumerate(got_state):
        B = a.shape[0]
        assert_close(f"{executor}/{config}/{case} A layer {l}", last.flat_assoc(l).expand(B, -1, -1), a, STATE_TOL)
        if model.config.use_denom:
            assert_close(f"{executor}/{config}/{case} z layer {l}", last.flat_normalizer(l).expand(B, -1), z,
                         STATE_TOL)


def test_the_grid_is_what_the_executors_accept():
    """Every (executor, config) left out of the grid is one the executor itself refuses, and vice versa."""
    for e, (_, _, why_not) in EXECUTORS.items():
        for c, overrides in CONFIGS.items():
            reason = why_not(_model(c))
            assert (reason is None) == _applies(e, overrides), (e, c, reason)
    covered = {e: {c for e2, c, _ in GRID if e2 == e} for e in EXECUTORS}
    assert all(len(v) >= 6 for v in covered.values()), covered


def test_the_restored_memory_is_not_empty():
    """The 'restored' case starts from a memory that matters: the first segment reads something."""
    st = _start_state("base", "restored")
    assert st.segments == 3 and float(st.flat_assoc(0).abs().max()) > 0
    m = _model("base")
    ids = _ids("base", "restored")
    with torch.no_grad():
        a = m.step(ids[:, :16], st).logits
        b = m.step(ids[:, :16], m.init_state()).logits
    assert float((a - b).abs().max()) > 1e-3


@pytest.mark.parametrize("alignment, lengths", [
    ("left", [16, 16, 16, 16, 5]),  # the remainder last
    ("right", [5, 16, 16, 16, 16]),  # the remainder first
    ("center", [14, 14, 14, 14, 13]),  # torch.chunk into ceil(69/16) = 5 pieces of ceil(69/5) = 14
])
def test_the_official_split_cuts_segments_where_the_spec_says(alignment, lengths):
    """The split every executor of the grid shares (model._split), against its hand-derived answer
    (ARMT_SPEC §1.3): the executors cannot disagree about it, so it is pinned here."""
    m = tiny_model(segment_alignment=alignment)
    ids = torch.arange(69).remainder(m.vocab_size).unsqueeze(0)
    segs = m._split(ids, None)
    assert [s.shape[1] for s, _ in segs] == lengths
    assert torch.equal(torch.cat([s for s, _ in segs], 1), ids)  # in order, nothing lost or repeated
