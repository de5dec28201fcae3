"""probe_keys plumbing on a random tiny model: one query per live key, answers equal a direct run."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import armt_viz as av  # noqa: E402
from armt_viz.analysis import ANSWER_CLASSES, answer_status  # noqa: E402
from armt_viz.tasks.stream import GEN, StreamConfig, make_stream  # noqa: E402

from .conftest import tiny_model  # noqa: E402

SEG = 16


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    model = tiny_model(vocab_size=128)
    stream = make_stream(StreamConfig(n_keys=6, key_size=2, value_size=1, segment_size=SEG, events_per_segment=3,
                                      p_write=0.6, p_query=0.2, p_delete=0.2, seed=4), n_tokens=SEG * 7)
    path = tmp_path_factory.mktemp("pk") / "trace.zarr"
    ds = av.record(model, stream.input_ids, store=path, level="writes", ledger=stream.ledger, progress=False,
                   keyframe_every=2)
    return model, stream, ds, path


def _live(ledger, segment):
    """Brute force: value of every key after `segment`, replaying key/delete rows in order."""
    value = {}
    for role, seg, fact, val in zip(ledger["role"].values, ledger["segment"].values, ledger["fact_id"].values,
                                    ledger["value"].values):
        if seg <= segment and role in ("key", "delete"):
            value[int(fact)] = int(val)
    return {f: v for f, v in value.items() if v >= 0}


def test_one_query_per_live_key_and_answers_equal_a_direct_run(recorded):
    model, stream, ds, path = recorded
    out = av.probe_keys(model, ds, at_segments=[2, 5])
    n = out.sizes["key_probe"]
    expected_rows = [(S, f, v) for S in (2, 5) for f, v in sorted(_live(stream.ledger, S).items())]
    assert n == len(expected_rows) > 0
    got = list(zip(out["key_probe_segment"].values, out["key_probe_fact"].values, out["key_probe_expected"].values))
    assert [tuple(map(int, r)) for r in got] == expected_rows
    assert out["key_probe_tokens"].dims == ("key_probe", "answer_position") and out["key_probe_tokens"].shape == (n, 1)
    assert out["key_probe_answer"].attrs["long_name"]
    # the same queries run directly after the true memory of segments 0..S
    ids = torch.as_tensor(stream.input_ids).unsqueeze(0)
    for S in (2, 5):
        state = None
        for s in range(S + 1):
            state = model.step(ids[:, s * SEG:(s + 1) * SEG], state).state
        rows = np.flatnonzero(out["key_probe_segment"].values == S)
        keys = out["key_probe_fact"].values[rows]
        query = torch.as_tensor(np.stack([keys % 16, keys // 16, np.full(len(keys), GEN)], 1))
        batch = type(state)(tuple(a.expand(len(keys), -1, -1, -1) for a in state.assoc),
                            tuple(z.expand(len(keys), -1, -1) for z in state.normalizer), state.segments)
        with torch.no_grad():
            direct = model.step(query, batch, write=False).logits[:, -1].argmax(-1).numpy()
        np.testing.assert_array_equal(out["key_probe_tokens"].values[rows, 0], direct)
    status = answer_status(out, source="key_probe")
    assert status.sizes["key_probe"] == n and set(status.values) <= set(ANSWER_CLASSES)


def test_restored_memory_equals_memory_at(recorded):
    from armt_viz.record.replay import restore_state
    model, _, ds, _ = recorded
    state = restore_state(model, ds, 3)
    for layer in range(model.n_layers):
        A, z = av.memory_at(ds, segment=3, layer=layer)
        np.testing.assert_allclose(state.flat_assoc(layer).numpy(), A.values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.flat_normalizer(layer).numpy(), z.values, rtol=1e-5, atol=1e-6)


def test_results_are_stored_in_the_trace(recorded):
    model, _, ds, path = recorded
    out = av.probe_keys(model, ds, at_segments=[6], include_absent=True)
    reopened = av.open_trace(path)
    np.testing.assert_array_equal(reopened["key_probe_answer"].values, out["key_probe_answer"].values)
    with pytest.raises(IndexError, match="at_segments"):
        av.probe_keys(model, ds, at_segments=[99])
