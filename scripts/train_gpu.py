"""GPU helpers for training the shipped models: step timing (eager vs compiled) and asset export.

    python scripts/train_gpu.py timing [--n 5,50] [--steps 20]     time a training step, eager vs torch.compile
    python scripts/train_gpu.py export RUN_DIR ASSET_DIR            float16 copy of RUN_DIR/checkpoint (+ task.json)

The training itself is `armt-viz train` (see armt_viz/assets/MODEL_CARD.md for the exact commands).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path


def timing(ns: list[int], steps: int, batch: int) -> None:
    import torch
    from armt_viz.train import TrainConfig, _forward, _segment_fn, build_model, official_loss, sample_ar

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = TrainConfig(batch_size=batch)
    torch.manual_seed(0)
    model = build_model(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator(device=dev).manual_seed(0)
    eager = _segment_fn(model)
    compiled = torch.compile(eager)
    ac = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda")
    rows = []
    for n in ns:
        for name, fn in (("eager", eager), ("compiled", compiled)):
            def step():
                ids, mask = sample_ar(n, 1, 1, batch, rewrite=True, generator=gen, device=dev)
                with ac:
                    loss = official_loss(_forward(fn, model, ids, 4), ids, mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            t = time.perf_counter()
            step()
            first = time.perf_counter() - t
            for _ in range(3):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            rows.append((n, name, first, (time.perf_counter() - t) / steps))
    print(f"device {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, batch {batch}, K=V=1")
    print(f"{'n':>4} {'mode':>9} {'first step s':>13} {'ms/step':>9} {'ms/segment':>11}")
    for n, name, first, per in rows:
        print(f"{n:>4} {name:>9} {first:>13.2f} {per * 1e3:>9.1f} {per * 1e3 / (n + 1):>11.2f}")


def export(run_dir: str, asset_dir: str) -> None:
    from armt_viz.model.armt import ARMTModel
    from armt_viz.train import export_fp16

    ck = Path(run_dir) / "checkpoint"
    model = ARMTModel.from_pretrained(ck)
    out = Path(asset_dir)
    if out.exists():
        shutil.rmtree(out)
    export_fp16(model, out)
    shutil.copy(ck / "task.json", out / "task.json")
    prog = json.loads((ck / "progress.json").read_text())
    keep = {k: prog[k] for k in ("stage", "global_step", "train_seconds", "stages_done", "device", "train_config")
            if k in prog}
    (out / "training.json").write_text(json.dumps(keep, indent=1, sort_keys=True))
    print("exported", out, sorted(p.name for p in out.iterdir()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("timing")
    t.add_argument("--n", default="5,50")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--batch", type=int, default=512)
    e = sub.add_parser("export")
    e.add_argument("run_dir")
    e.add_argument("asset_dir")
    a = p.parse_args(argv)
    if a.cmd == "timing":
        timing([int(x) for x in a.n.split(",")], a.steps, a.batch)
    else:
        export(a.run_dir, a.asset_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
