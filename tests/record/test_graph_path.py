"""The recorder's CUDA-graph path (record/fast_record.py), run here with emulated graphs so CI covers its buffer
logic without a GPU: packed statistics, the device ring, chunk hand-over to the writer, keyframe snapshots, the
eager tail. On a GPU the same comparisons run in tests/gpu (`make test-gpu`)."""

import numpy as np
import pytest
import torch

import armt_viz as av
from armt_viz.model.fast import GraphedStepper, fast_stream
from armt_viz.record import fast_record, recorder
from armt_viz.testing import hard_floats, tiny_model


@pytest.fixture
def model():
    m = tiny_model(seed=3).eval()
    with torch.no_grad():
        for b in m.blocks:
            b.W_mv.weight.normal_(0, 0.05)  # a non-trivial memory
    return m


def _chunks(ids, sizes):
    i = 0
    for n in sizes:
        yield ids[:, i:i + n]
        i += n
    yield ids[:, i:]


def _graph_path(monkeypatch):
    """Route `record` through the graph path with emulated graphs (a partial tail runs the HF step, as with
    fast=False)."""
    monkeypatch.setattr(recorder, "_EMULATE_GRAPH", True)


@pytest.mark.parametrize("level,storage", [("summary", "float32"), ("writes", "float32"), ("writes", "bfloat16"),
                                           ("writes", "float16")])
def test_emulated_graph_recorder_equals_the_eager_recorder(model, monkeypatch, level, storage):
    """Bit for bit, also with half-precision write events, which the graph path rounds on the device and the eager
    path on the host (the partial tail's eager row shares the last chunk with graph rows)."""
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 11 * S + S // 2))  # 11 full segments and a partial tail
    kw = dict(level=level, keyframe_every=3, chunk_segments=4, progress=False, storage_dtype=storage)
    eager = av.record(model, ids, fast=False, **kw)
    used = []
    real = fast_record.GraphRows.row

    def spy(self, out, segment):
        used.append(segment)
        return real(self, out, segment)
    _graph_path(monkeypatch)
    monkeypatch.setattr(fast_record.GraphRows, "row", spy)
    graphed = av.record(model, _chunks(ids, [S - 3, 2 * S + 5, 7]), **kw)
    assert used == list(range(11)), "the full segments did not all run the graph step"
    assert set(graphed.data_vars) == set(eager.data_vars)
    for k in eager.variables:
        np.testing.assert_array_equal(graphed[k].values, eager[k].values, err_msg=k)
    assert graphed.sizes["segment"] == 12 and graphed.sizes["keyframe"] == 4  # segments 2, 5, 8, 11


@pytest.mark.parametrize("n", [5, 6])  # an odd count is padded
def test_to_storage_rounds_like_the_host_encoders(n):
    from armt_viz.trace.store import bf16_encode

    x = hard_floats()
    x = x[: len(x) // n * n].reshape(-1, n)
    bf = fast_record.to_storage(x, torch.bfloat16).numpy().view(np.uint16)[: x.numel()]
    np.testing.assert_array_equal(bf, bf16_encode(x.numpy()).reshape(-1))
    h = fast_record.to_storage(x, torch.float16).numpy().view(np.uint16)[: x.numel()]
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(h, x.numpy().astype(np.float16).reshape(-1).view(np.uint16))
    nan = fast_record.to_storage(torch.tensor([float("nan"), 1.0]), torch.bfloat16).numpy().view(np.uint16)
    assert np.isnan((np.asarray(nan[:1], np.uint32) << 16).view(np.float32)).all()


def test_a_reused_stepper_starts_each_stream_from_a_fresh_memory(model):
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (1, 5 * S))
    with torch.no_grad():
        ref = [o.logits.clone() for o in model.stream([ids])]
        st = GraphedStepper(model, 1, emulate=True)
        for _ in range(2):  # before the fix the second stream began with the first one's final memory
            got = [o.logits.clone() for o in fast_stream(model, ids, st)]
            for r, g in zip(ref, got):
                torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)


def test_the_fast_path_refuses_a_cpu_model_unless_emulated(model):
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        GraphedStepper(model, 1)


@pytest.mark.parametrize("how", ["initial_state", "replay"])
def test_the_graph_recorder_keeps_a_restored_memory(model, monkeypatch, how):
    """Bug (issue 14.1): a new store numbers its segments from 0 and the graph stepper took segment 0 for a fresh
    memory, zeroing the buffers `load_state` had just filled: every replay on a GPU started from empty memory."""
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 8 * S))
    kw = dict(level="writes", keyframe_every=2, chunk_segments=3, progress=False)
    original = av.record(model, ids, fast=False, **kw)
    if how == "replay":
        eager = av.replay(model, original, 5, fast=False, keyframe_every=2, chunk_segments=3)
        _graph_path(monkeypatch)
        graphed = av.replay(model, original, 5, keyframe_every=2, chunk_segments=3)
        ref = original.isel(segment=slice(5, None))
    else:
        with torch.no_grad():
            outs = list(model.stream([ids[:, :4 * S]]))
        state = outs[-1].state
        eager = av.record(model, ids[:, 4 * S:], fast=False, initial_state=state, **kw)
        _graph_path(monkeypatch)
        graphed = av.record(model, ids[:, 4 * S:], initial_state=state, **kw)
        ref = original.isel(segment=slice(4, None))
    # the restored memory is read at the first replayed segment (0 if it had been thrown away)
    assert float(graphed["read_out_norm_mean"].isel(segment=0).min()) > 0
    for k in ("read_out_norm_mean", "assoc_norm", "segment_loss", "write_delta"):
        np.testing.assert_allclose(graphed[k].values, ref[k].values, rtol=1e-5, atol=1e-6, err_msg=k)
        np.testing.assert_allclose(graphed[k].values, eager[k].values, rtol=1e-5, atol=1e-6, err_msg=k)


def test_a_stepper_loaded_with_a_state_continues_it(model):
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (1, 6 * S))
    with torch.no_grad():
        ref = [o.logits.clone() for o in model.stream([ids])]
        st = GraphedStepper(model, 1, emulate=True)
        st.load_state(model.init_state(1))  # an empty memory: the first-segment graph
        assert st.fresh
        out = st.step(ids[:, :S])
        torch.testing.assert_close(out.logits, ref[0], rtol=1e-6, atol=1e-6)
        mid = list(model.stream([ids[:, :3 * S]]))[-1].state
        st.load_state(mid)
        assert not st.fresh and st.segments == 3
        for i in range(3, 6):
            out = st.step(ids[:, i * S:(i + 1) * S], 0)  # the reported index does not decide the first segment
            torch.testing.assert_close(out.logits, ref[i], rtol=1e-5, atol=1e-6)
        assert out.state.segments == 6


def _imports(path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            out.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_graph_source_never_imports_the_recorder():
    """Issue 14 bug 6: recorder.py and fast_record.py imported each other, and the graph loop reached into the
    recorder's private members. Now the recorder owns the loop and the graph source only makes rows."""
    from pathlib import Path

    src = Path(recorder.__file__).parent
    for name in ("fast_record.py", "stats.py"):
        assert not {m for m in _imports(src / name) if m.endswith("recorder")}, name
    text = (src / "fast_record.py").read_text()
    assert "rec." not in text and "_flush" not in text and "keyframe" not in text.split('"""', 2)[2]


@pytest.mark.parametrize("graph", [False, True])
def test_both_paths_run_the_same_finite_check(model, monkeypatch, graph):
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 6 * S))
    with torch.no_grad():
        model.blocks[1].W_mv.weight[0, 0] = float("inf")
    if graph:
        _graph_path(monkeypatch)
    with pytest.raises(FloatingPointError) as ei:
        av.record(model, ids, chunk_segments=2, progress=False)
    msg = str(ei.value)
    assert "segment 0, layer 1:" in msg and "non-finite weights: ['backbone.transformer.h.1.W_mv.weight']" in msg \
        and "Nothing was committed" in msg, msg


@pytest.mark.parametrize("graph", [False, True])
def test_a_one_token_tail_is_recorded(model, monkeypatch, graph):
    """A 1-token last segment has no loss (NaN by design); the finite check failed it as 'NaN logits'."""
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (1, 2 * S + 1))
    if graph:
        _graph_path(monkeypatch)
    t = av.record(model, ids, progress=False)
    assert t.sizes["segment"] == 3 and int(t["segment_length"][-1]) == 1
    assert np.isnan(t["segment_loss"].values[..., -1]).all() and np.isfinite(t["assoc_norm"].values).all()


@pytest.mark.parametrize("storage", ["float32", "bfloat16"])
def test_a_recording_frees_its_graphs_when_it_returns(model, monkeypatch, storage):
    """Bug: the graph's statistics function closed over its GraphRows, which holds the stepper: a reference cycle,
    so a recording's CUDA graphs (their private memory pools: ~45 GB for GPT-2 at batch 32) outlived it until
    Python's cycle collector ran, and the next batch-32 recording ran out of GPU memory (bench_batched, H100)."""
    import gc
    import weakref

    from armt_viz.model import fast

    made = []
    real = fast.GraphedStepper.__init__

    def spy(self, *a, **k):
        real(self, *a, **k)
        made.append(weakref.ref(self))
    monkeypatch.setattr(fast.GraphedStepper, "__init__", spy)
    _graph_path(monkeypatch)
    ids = torch.randint(0, model.vocab_size, (2, 5 * model.config.segment_size))
    gc.disable()
    try:
        av.record(model, ids, level="writes", storage_dtype=storage, progress=False)
        assert len(made) == 1
        assert made[0]() is None, "the graph stepper is still alive after record returned (a reference cycle?)"
    finally:
        gc.enable()


def test_half_storage_of_odd_sized_write_events_round_trips_through_the_packed_row(monkeypatch):
    """3 layers x 3 memory tokens x d_mem 5 (and x d 63) write-event values: odd counts, so the 16-bit patterns
    are padded to pair up in the float32 row and the host must cut the pad off."""
    import transformers

    from armt_viz import ARMTConfig, ARMTModel

    torch.manual_seed(0)
    bb = transformers.AutoModelForCausalLM.from_config(transformers.GPT2Config(
        n_layer=3, n_embd=63, n_head=3, n_positions=64, vocab_size=32, bos_token_id=0, eos_token_id=1))
    m = ARMTModel.from_backbone(bb, ARMTConfig(num_mem_tokens=3, d_mem=5, segment_size=8)).eval()
    with torch.no_grad():
        for b in m.blocks:
            b.W_mv.weight.normal_(0, 0.1)
    ids = torch.randint(0, 32, (1, 6 * 8 + 3))
    kw = dict(level="writes", chunk_segments=4, progress=False, storage_dtype="bfloat16")
    eager = av.record(m, ids, fast=False, **kw)
    _graph_path(monkeypatch)
    graphed = av.record(m, ids, **kw)
    assert graphed["write_key"].shape == (1, 7, 3, 3, 5)  # sample, segment, layer, memory token, key
    for k in ("write_key", "write_delta"):
        np.testing.assert_array_equal(graphed[k].values, eager[k].values, err_msg=k)
