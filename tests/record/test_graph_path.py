"""The recorder's CUDA-graph path (record/fast_record.py), run here with emulated graphs so CI covers its buffer
logic without a GPU: packed statistics, the device ring, chunk hand-over to the writer, keyframe snapshots, the
eager tail. On a GPU the same comparison runs in `bench/gpu_record_check.py` (worst difference 0.0)."""

import numpy as np
import pytest
import torch

import armt_viz as av
from armt_viz.model.fast import GraphedStepper, fast_stream
from armt_viz.record import recorder
from armt_viz.testing import tiny_model


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


@pytest.mark.parametrize("level", ["summary", "writes"])
def test_emulated_graph_recorder_equals_the_eager_recorder(model, monkeypatch, level):
    S = model.config.segment_size
    ids = torch.randint(0, model.vocab_size, (2, 11 * S + S // 2))  # 11 full segments and a partial tail
    kw = dict(level=level, keyframe_every=3, chunk_segments=4, progress=False)
    eager = av.record(model, ids, fast=False, **kw)
    used = []
    real = recorder.run_graphed

    def spy(*a, **k):
        used.append(True)
        return real(*a, **k)
    monkeypatch.setattr(recorder, "graph_record_eligible", lambda m, rec: rec.rank <= 1 and not rec.probes)
    monkeypatch.setattr(recorder, "lean_eligible", lambda m: "the partial tail runs the HF step, as fast=False does")
    monkeypatch.setattr(recorder, "run_graphed", spy)
    graphed = av.record(model, _chunks(ids, [S - 3, 2 * S + 5, 7]), **kw)
    assert used, "the graph path did not run"
    assert set(graphed.data_vars) == set(eager.data_vars)
    for k in eager.variables:
        np.testing.assert_array_equal(graphed[k].values, eager[k].values, err_msg=k)
    assert graphed.sizes["segment"] == 12 and graphed.sizes["keyframe"] == 4  # segments 2, 5, 8, 11


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
