"""Record a GPT-2-small-shaped random ARMT (12 layers, d 768, segment 512, M 10, d_mem 64) on the CPU:
tokens/s, bytes per token per level and peak RSS, each level in a fresh process.

    python -m bench.bench_gpt2_cpu [--tokens 102400] [--levels summary writes] [--storage-dtype float16]
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(tokens, level, storage_dtype, keyframe_every):
    import torch
    import armt_viz as av
    from bench._common import CONFIGS, build
    m = build(CONFIGS["gpu-gpt2"], "cpu", torch.float32)
    g = torch.Generator().manual_seed(0)
    chunks = (torch.randint(0, 50257, (1, 8192), generator=g) for _ in range(tokens // 8192))
    with tempfile.TemporaryDirectory() as d:
        t = time.time()
        av.record(m, chunks, store=f"{d}/t.zarr", level=level, storage_dtype=storage_dtype,
                  keyframe_every=keyframe_every, progress=False)
        dt = time.time() - t
        size = sum(f.stat().st_size for f in Path(d).rglob("*") if f.is_file() and "_resume" not in f.parts)
    print(json.dumps({"level": level, "tokens": tokens, "tok_s": tokens / dt, "bytes_per_token": size / tokens,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=102400)
    p.add_argument("--levels", nargs="+", default=["summary", "writes"])
    p.add_argument("--storage-dtype", default="float16")
    p.add_argument("--keyframe-every", type=int, default=64)
    p.add_argument("--child", action="store_true")
    p.add_argument("--level", default=None)
    a = p.parse_args()
    if a.child:
        return child(a.tokens, a.level, a.storage_dtype, a.keyframe_every)
    print(f"GPT-2-small-shaped random ARMT on CPU, {a.tokens} tokens, storage {a.storage_dtype}, keyframe_every {a.keyframe_every}")
    print(f"{'level':<8} {'tok/s':>8} {'bytes/token':>12} {'peak RSS MB':>12}")
    for level in a.levels:
        out = subprocess.run([sys.executable, "-m", "bench.bench_gpt2_cpu", "--child", "--level", level,
                              "--tokens", str(a.tokens), "--storage-dtype", a.storage_dtype,
                              "--keyframe-every", str(a.keyframe_every)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{level:<8} {r['tok_s']:>8.0f} {r['bytes_per_token']:>12.1f} {r['peak_rss_mb']:>12.0f}", flush=True)


if __name__ == "__main__":
    main()
