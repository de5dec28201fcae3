"""The shipped demo model (trained by `armt-viz train`; recipe, commands and numbers in MODEL_CARD.md).

    ar_rewrite/       ARMT (tiny GPT-2, 4 layers, d 128) on the official AR rewrite format: K=1, V=1, segment 4 =
                      one pair per segment (`load_demo_model("ar")`).
    stream_<variant>/ the stream specimen family (issue 13): tiny GPT-2 (4 layers, d 128), 8 memory tokens,
                      d_mem 64, on the mutable-state stream (16-token segments, 2 events each, 64 keys, deletes
                      with NONE answers). Variants trained the same way: baseline (`load_demo_model("stream")`),
                      no_gamma, gate, half_dmem, no_delta. Each folder has task.json (stream format and
                      `trained_range`), training.json and evals.json; MODEL_CARD.md has the recipe and numbers.
                      They are partly trained (the card says how far and what they reach).

Weights are float16 safetensors (about 2 MB each); they load back into float32.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["load_demo_model", "demo_model_path", "demo_stream_config", "DEMO_MODELS", "SPECIMENS", "ASSETS_DIR"]

ASSETS_DIR = Path(__file__).resolve().parent
SPECIMENS = ("baseline", "no_gamma", "gate", "half_dmem", "no_delta")
# name -> folder under assets/; "stream" is the baseline specimen, "stream_<variant>" names each specimen
DEMO_MODELS = {"ar": "ar_rewrite", "stream": "stream_baseline", **{f"stream_{v}": f"stream_{v}" for v in SPECIMENS}}


def demo_model_path(name: str = "stream") -> Path:
    """Folder of the shipped model `name` ("ar", "stream" or "stream_<variant>", see `DEMO_MODELS`)."""
    if name not in DEMO_MODELS:
        raise ValueError(f"unknown demo model {name!r}; expected one of {sorted(DEMO_MODELS)}")
    path = ASSETS_DIR / DEMO_MODELS[name]
    if not (path / "model.safetensors").exists():
        raise FileNotFoundError(f"the demo model {name!r} is missing from {str(path)!r}; reinstall armt_viz "
                                "or train one with `armt-viz train` (MODEL_CARD.md)")
    return path


def load_demo_model(name: str = "stream", device=None):
    """The shipped trained ARMT for `name` ("stream" = the baseline stream specimen, "stream_<variant>", or "ar"), in eval
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
