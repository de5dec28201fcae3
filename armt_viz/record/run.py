"""The `armt-viz record` job: a model, a task stream, a store (the CLI only parses into this)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["run_record", "load_model", "task_stream"]


def load_model(spec: str, task: str = "stream"):
    """'demo' (the shipped model for `task`) or a folder written by `ARMTModel.save_pretrained`."""
    if spec == "demo":
        from ..assets import load_demo_model
        return load_demo_model("ar" if task.startswith("ar") else "stream")
    from ..model.armt import ARMTModel
    return ARMTModel.from_pretrained(spec)


def _task_settings(model) -> dict:
    """Task settings saved next to a model (`task.json`), if any."""
    d = getattr(model, "source_dir", None)
    if d and (Path(d) / "task.json").exists():
        return json.loads((Path(d) / "task.json").read_text())
    return {}


def task_stream(model, task: str, n_tokens: int, seed: int):
    """(chunk iterator of [1, n] token arrays, ledger, description) for a task, aligned to the model's segments."""
    from ..record.recorder import RecordInput
    from ..tasks import StreamConfig, concat_ledgers, make_ar_batch, stream_chunks
    S = model.config.segment_size
    if task == "stream":
        settings = {k: v for k, v in _task_settings(model).get("stream", {}).items() if k in StreamConfig.__dataclass_fields__}
        settings.update(segment_size=S, seed=seed)
        cfg = StreamConfig(**settings)
        n = max(S, (n_tokens // S) * S)
        ledger = concat_ledgers([c.ledger for c in stream_chunks(cfg, n)])  # ledger pass (tokens discarded)
        chunks = (c.input_ids[None, :] for c in stream_chunks(cfg, n))
        return RecordInput(chunks, 1, n, ledger, f"mutable-state stream, {n} tokens, seed {seed}, {json.dumps(settings)}")
    if task in ("ar-rewrite", "ar-remember"):
        n_pairs = max(1, n_tokens // 4 - 1)
        b = make_ar_batch(n_pairs, 1, 1, batch_size=1, rewrite=task == "ar-rewrite", seed=seed)
        ids = np.asarray(b.input_ids)
        return RecordInput([ids], 1, ids.shape[1], b.ledger, f"{task}, {n_pairs} pairs, seed {seed}")
    raise ValueError(f"record: task {task!r} is not recordable from the CLI; use 'stream', 'ar-rewrite' or 'ar-remember'")


def run_record(model, task, tokens, store, level, keyframe_every, storage_dtype, seed, resume) -> int:
    from .recorder import record
    m = load_model(model, task)
    inp = task_stream(m, task, tokens, seed)
    record(m, inp, store=store, level=level, keyframe_every=keyframe_every, storage_dtype=storage_dtype,
           resume=resume, seed=seed, description=inp.description)
    return 0
