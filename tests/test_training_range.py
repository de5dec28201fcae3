"""Card metadata `trained_range` (armt_viz/training_range.py): read from a model folder, warn past it."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from armt_viz.training_range import BeyondTrainingRange, range_from_mapping, trained_range, warn_if_beyond


def test_range_is_read_from_task_json_and_warns_only_past_it(tmp_path):
    (tmp_path / "task.json").write_text(json.dumps({"trained_range": {"max_segments_trained": 10,
                                                                        "recall_exact_up_to_segments": 40}}))
    rng = trained_range(tmp_path)
    assert rng.limit == 40
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_beyond(tmp_path, 40) is None
    with pytest.warns(BeyondTrainingRange, match="41 segments, beyond .*trained on at most 10"):
        warn_if_beyond(tmp_path, 41)
    assert trained_range(tmp_path / "missing") is None


def test_bad_range_fields_say_what_is_expected():
    with pytest.raises(ValueError, match="integer >= 1"):
        range_from_mapping({"max_segments_trained": -1})
    assert range_from_mapping({"max_segments_trained": 5}).limit == 5


def test_the_recorder_warns_past_the_shipped_models_range():
    from armt_viz.assets import load_demo_model
    from armt_viz.record import record

    model = load_demo_model("ar")
    ids = np.zeros((1, 4 * 201), dtype=np.int64)
    with pytest.warns(BeyondTrainingRange, match="201 segments"):
        record(model, ids, level="summary", progress=False)


def test_carried_memory_and_bad_metadata(tmp_path):
    carried = range_from_mapping({"max_segments_trained": 64, "carried_memory": True,
                                  "recall_exact_up_to_segments": None})
    assert carried.limit is None  # the window does not bound what a carried-memory model saw
    assert range_from_mapping({"max_segments_trained": 64, "recall_exact_up_to_segments": 0}).limit == 0
    (tmp_path / "task.json").write_text(json.dumps({"trained_range": {"max_segments_trained": "many"}}))
    with pytest.warns(UserWarning, match="integer"):
        assert trained_range(tmp_path) is None
