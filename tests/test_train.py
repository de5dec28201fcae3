"""`armt-viz train --smoke` on the CPU through the CLI: checkpoint, resume, NaN guard, batch format."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from armt_viz.cli import main
from armt_viz.tasks.associative_retrieval import EOS, GEN, SEP, make_ar_batch
from armt_viz.train import TrainConfig, official_loss, sample_ar, smoke_config


def test_smoke_train_writes_checkpoint_and_resumes(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--smoke", "--out", str(out), "--curriculum", "1,2", "--steps", "3,3"]) == 0
    ck = out / "checkpoint"
    for name in ("config.json", "model.safetensors", "optimizer.pt", "progress.json", "task.json"):
        assert (ck / name).exists(), name
    progress = json.loads((ck / "progress.json").read_text())
    assert progress["stage"] == 2 and progress["global_step"] == 6
    assert [s["n"] for s in progress["stages_done"]] == [1, 2]
    assert any(r["kind"] == "eval" for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()))

    # resume with a longer curriculum: only the new stage runs
    assert main(["train", "--smoke", "--out", str(out), "--resume", "--curriculum", "1,2,3", "--steps", "3,3,2"]) == 0
    progress = json.loads((ck / "progress.json").read_text())
    assert progress["stage"] == 3 and progress["global_step"] == 8
    assert [s["n"] for s in progress["stages_done"]] == [1, 2, 3]

    from armt_viz.model.armt import ARMTModel
    model = ARMTModel.from_pretrained(ck)
    assert model.config.segment_size == 4


def test_resume_without_checkpoint_fails(tmp_path, capsys):
    # a user error: one line on stderr and exit 2 (the CLI's contract); --debug raises the error itself
    assert main(["train", "--smoke", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        main(["--debug", "train", "--smoke", "--out", str(tmp_path / "none"), "--resume"])


def test_time_budget_stops_mid_stage_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    main(["train", "--smoke", "--out", str(out), "--curriculum", "1", "--steps", "40", "--time-budget", "0"])
    p = json.loads((out / "checkpoint" / "progress.json").read_text())
    assert p["stage"] == 0 and p["step_in_stage"] == 1  # stopped after the first step, checkpoint saved
    main(["train", "--smoke", "--out", str(out), "--curriculum", "1", "--steps", "3", "--resume"])
    p = json.loads((out / "checkpoint" / "progress.json").read_text())
    assert p["stage"] == 1 and p["global_step"] == 3


@pytest.mark.parametrize("task", ["stream", "mixed"])
def test_stream_smoke(tmp_path, task):
    out = tmp_path / task
    assert main(["train", "--smoke", "--task", task, "--out", str(out), "--steps", "2,2"]) == 0
    meta = json.loads((out / "checkpoint" / "task.json").read_text())
    assert meta["task"] == task and meta["stream"]["segment_size"] == 16
    assert ("ar" in meta) == (task == "mixed")


def test_nan_guard_reports_step_and_stage(tmp_path, monkeypatch):
    import dataclasses

    import armt_viz.train as tr

    real = tr.official_loss
    calls = []

    def poisoned(logits, labels, mask):  # finite on the first step, NaN from the second on
        calls.append(1)
        return real(logits, labels, mask) * (float("nan") if len(calls) > 1 else 1.0)

    monkeypatch.setattr(tr, "official_loss", poisoned)
    cfg = dataclasses.replace(smoke_config(), curriculum=(1, 2), steps=(3, 3), log_every=2)
    with pytest.raises(FloatingPointError, match="step 1 of stage 0"):
        tr.train(cfg, tmp_path / "nan")
    assert not (tmp_path / "nan" / "checkpoint").exists()  # nothing saved past the last good stage


@pytest.mark.parametrize("rewrite", [True, False])
def test_sample_ar_matches_official_format(rewrite):
    n, K, V = 6, 1, 1
    g = torch.Generator().manual_seed(0)
    ids, mask = sample_ar(n, K, V, 300, rewrite=rewrite, generator=g, device="cpu")
    ref = make_ar_batch(n, K, V, batch_size=2, rewrite=rewrite, seed=0)
    assert ids.shape[1] == ref.input_ids.shape[1] and np.array_equal(mask[0].numpy(), ref.labels_mask[0])
    x = ids.numpy()
    pairs, query = x[:, :n * 4].reshape(-1, n, 4), x[:, n * 4:]
    assert (pairs[:, :, 1] == SEP).all() and (pairs[:, :, 3] == EOS).all()
    assert (query[:, 1] == GEN).all() and (query[:, 3] == EOS).all()
    for b in range(len(x)):
        hits = np.flatnonzero(pairs[b, :, 0] == query[b, 0])
        assert len(hits) and pairs[b, hits[-1], 2] == query[b, 2]  # answer = value at the last occurrence
        if not rewrite:
            assert len(set(pairs[b, :, 0])) == n


def test_official_loss_equals_model_loss():
    from armt_viz.model.armt import lm_loss
    logits = torch.randn(3, 8, 128)
    labels = torch.randint(0, 128, (3, 8))
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, -3:] = True
    torch.testing.assert_close(official_loss(logits, labels, mask), lm_loss(logits, labels, mask))


def test_config_validation():
    with pytest.raises(ValueError, match="same length"):
        TrainConfig(curriculum=(1, 2), steps=(1,))
    with pytest.raises(ValueError, match="16\\*\\*key_size"):
        TrainConfig(task="ar-remember", curriculum=(50,), steps=(1,))
    with pytest.raises(ValueError, match="task"):
        TrainConfig(task="nope")
