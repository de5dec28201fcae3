"""`replay` probes count absolute stream positions (as `ds.probe_token`); `positions="relative"` counts from the
replay start; a probe before the start is refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest

import armt_viz as av
from armt_viz.assets import demo_stream_config
from armt_viz.tasks.stream import make_stream

TOL = 1e-6  # same computation, two ways of naming the probe


@pytest.fixture(scope="module")
def recorded():
    model = av.load_demo_model()
    S = model.config.segment_size
    stream = make_stream(demo_stream_config(seed=2), S * 40)
    ds = av.record(model, stream.input_ids[None, :], level="writes", probes=[(0, S * 30 + 2)],
                   ledger=stream.ledger, progress=False)
    return model, ds


def test_absolute_and_relative_positions_probe_the_same_token(recorded):
    model, ds = recorded
    S = model.config.segment_size
    t = int(ds.probe_token.values[0])
    absolute = av.replay(model, ds, from_segment=20, probes=[t])
    relative = av.replay(model, ds, from_segment=20, probes=[(0, t - 20 * S)], positions="relative")
    assert int(absolute.probe_token.values[0]) == t - 20 * S
    np.testing.assert_allclose(absolute.read_out.values, relative.read_out.values, atol=TOL)
    # an unedited replay reads exactly what the recording read at that token
    np.testing.assert_allclose(absolute.read_out.values, ds.read_out.values, atol=1e-4)
    assert f"replay_token_offset={20 * S}" in absolute.attrs["input_description"]


def test_a_probe_before_the_replay_start_is_refused(recorded):
    model, ds = recorded
    with pytest.raises(ValueError, match="before the replay start"):
        av.replay(model, ds, from_segment=20, probes=[5])
    with pytest.raises(ValueError, match="positions must be"):
        av.replay(model, ds, from_segment=20, probes=[90], positions="segment")
