"""Install trained stream specimens (the .tgz files of scripts/device_specimens.sh) under armt_viz/assets/.

    python scripts/install_specimens.py DIR_WITH_TGZ [--variants baseline no-gamma ...]

Each variant V lands in armt_viz/assets/stream_<V>/ (hyphens -> underscores): config.json, model.safetensors
(float16), task.json (stream format + `trained_range`), training.json (the run's progress, stage log and
in-training evaluations) and evals.json (scripts/specimen_evals.py). `trained_range` says what the model was
trained on (windows of the last stage, carried memory under truncated BPTT) and where its recall was measured
at or above 0.9 (the last stream-position bin of the 1M-token evaluation that stays >= 0.9, if any).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "armt_viz" / "assets"


def exact_up_to(evals: dict, threshold: float = 0.9) -> int:
    """Largest stream position (segments) up to which every position bin of the long run has EM >= threshold;
    0 when the first bin is already below."""
    seg = evals["long"]["segment"]
    upto = 0
    for lo, hi, acc in zip(seg["lower"], seg["upper"], seg["accuracy"]):
        if acc is None or acc < threshold:
            break
        upto = int(hi)
    return upto


def install(tgz: Path, variant: str) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        run = Path(tmp) / variant
        dest = ASSETS / f"stream_{variant.replace('-', '_')}"
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy(run / "asset" / name, dest / name)
        progress = json.loads((run / "checkpoint" / "progress.json").read_text())
        evals = json.loads((run / "evals.json").read_text())
        task = json.loads((run / "asset" / "task.json").read_text())
        cfg = progress["train_config"]
        window = int(cfg["curriculum"][min(progress["stage"], len(cfg["curriculum"]) - 1)])
        task["variant"] = variant
        task["trained_range"] = {
            "max_segments_trained": window,
            "carried_memory": cfg.get("tbptt_from_stage") is not None,
            "recall_exact_up_to_segments": exact_up_to(evals),
            "source": ("training.json (windows of the last stage; with carried_memory the memory held long "
                       "histories under truncated BPTT) and evals.json (EM >= 0.9 in every stream-position bin "
                       "up to recall_exact_up_to_segments)"),
        }
        (dest / "task.json").write_text(json.dumps(task, indent=1, sort_keys=True))
        (dest / "training.json").write_text(json.dumps(progress, indent=1, sort_keys=True))
        (dest / "evals.json").write_text(json.dumps(evals, indent=1, sort_keys=True))
        return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src")
    p.add_argument("--variants", nargs="*", default=["baseline", "no-gamma", "gate", "half-dmem", "no-delta"])
    a = p.parse_args(argv)
    for v in a.variants:
        tgz = Path(a.src) / f"{v}.tgz"
        if tgz.exists():
            print("installed", install(tgz, v))
        else:
            print("missing", tgz)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
