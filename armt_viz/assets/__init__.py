"""The shipped demo model (trained by `armt-viz train`; recipe, commands and numbers in MODEL_CARD.md).

    ar_rewrite/   ARMT (tiny GPT-2, 4 layers, d 128) on the official AR rewrite format: K=1, V=1, segment 4 =
                  one pair per segment. `task.json` also names the AR-format stream it serves as the
                  "stream" demo model on (one write or query per segment, no deletes).

No model trained on the 32-token-segment mutable-state stream is shipped yet: `load_demo_model("stream")`
returns the AR model, and `demo_stream_config()` the stream format it handles (MODEL_CARD.md, "Stream").
Weights are float16 safetensors (1.9 MB); they load back into float32.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_demo_model", "demo_model_path", "demo_stream_config", "DEMO_MODELS", "ASSETS_DIR"]

ASSETS_DIR = Path(__file__).resolve().parent
DEMO_MODELS = {"ar": "ar_rewrite", "stream": "ar_rewrite"}  # name -> folder under assets/


def demo_model_path(name: str = "stream") -> Path:
    """Folder of the shipped model `name` ("ar" or "stream")."""
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {name!r}; expected one of {sorted(DEMO_MODELS)}")
    path = ASSETS_DIR / DEMO_MODELS[name]
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"the demo model {name!r} is missing from {str(path)!r}; reinstall armt_viz "
                                "or train one with `armt-viz train` (MODEL_CARD.md)")
    return path


def load_demo_model(name: str = "stream", device=None):
    """The shipped trained ARMT for `name` ("stream" or "ar"; today both are the AR rewrite model), in eval
    mode, float32, on `device` (default CPU). `model.source_path` (alias `source_dir`) is its folder, whose
    `task.json` gives the stream format to `armt_viz.evaluate` and `armt-viz record`."""
    from ..model.armt import ARMTModel

    path = demo_model_path(name)
    model = ARMTModel.from_pretrained(path)
    model.source_path = model.source_dir = str(path)  # both names are read (evaluate, record.run)
    if device is not None:
        model = model.to(device)
    return model.eval()


def demo_stream_config(**overrides):
    """The `StreamConfig` the "stream" demo model handles (from its `task.json`); overrides e.g. seed=0."""
    from ..tasks.stream import StreamConfig

    task = json.loads((demo_model_path("stream") / "task.json").read_text())
    cfg = dict(task["stream"])
    cfg.update(overrides)
    return StreamConfig(**cfg)
