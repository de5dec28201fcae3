"""On a GPU: graph-replayed recording equals the eager recorder, and how much faster it is.

    python -m bench.gpu_record_check [--config gpu-gpt2] [--tokens 16384]
"""

import argparse
import contextlib
import tempfile
import time

import numpy as np
import torch

import armt_viz as av
from bench.bench_forward import CONFIGS, build
from bench.official_order import OfficialOrderARMT


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="gpu-gpt2")
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--skip-exactness", action="store_true")
    a = p.parse_args()
    c = CONFIGS[a.config]
    m = build(c, "cuda", torch.float32)
    ids = torch.randint(0, c["vocab"], (1, a.tokens + 100))  # + a partial segment for the eager tail
    print(f"config={a.config} tokens={ids.shape[1]} {torch.cuda.get_device_name()}", flush=True)
    # exactness (float32)
    for level in (() if a.skip_exactness else ("summary", "writes")):
        e = av.record(m, ids.cuda(), level=level, progress=False, fast=False, keyframe_every=8)
        f = av.record(m, ids, level=level, progress=False, fast=True, keyframe_every=8)
        worst = 0.0
        for k in e.data_vars:
            x, y = np.asarray(e[k].values, np.float64), np.asarray(f[k].values, np.float64)
            assert x.shape == y.shape, (k, x.shape, y.shape)
            ok = np.isfinite(x)
            if ok.any():
                worst = max(worst, float(np.abs(x[ok] - y[ok]).max() / max(np.abs(x[ok]).max(), 1e-30)))
        print(f"level={level}: graph vs eager recorder, worst relative difference over all variables {worst:.2e}", flush=True)
    for dtype in a.dtypes:
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
        with amp:
            ref = OfficialOrderARMT(m)
            x = ids[:, :a.tokens].cuda()
            with torch.no_grad():
                ref(x); torch.cuda.synchronize()
                t = time.perf_counter(); ref(x); torch.cuda.synchronize(); t_ref = time.perf_counter() - t
            print(f"[{dtype}] official-order reference: {a.tokens / t_ref:.0f} tok/s", flush=True)
            for level in ("summary", "writes"):
                for fast in (False, True):
                    with tempfile.TemporaryDirectory() as d:
                        kw = dict(store=f"{d}/t.zarr", level=level, progress=False, fast=fast, storage_dtype="bfloat16")
                        av.record(m, x if not fast else x.cpu(), **kw)
                    with tempfile.TemporaryDirectory() as d:
                        kw["store"] = f"{d}/t.zarr"
                        torch.cuda.synchronize(); t = time.perf_counter()
                        av.record(m, x if not fast else x.cpu(), **kw)
                        torch.cuda.synchronize(); dt = time.perf_counter() - t
                    print(f"[{dtype}] record level={level} {'graph' if fast else 'eager'}: {a.tokens / dt:.0f} tok/s, "
                          f"{t_ref / dt:.2f}x reference", flush=True)


if __name__ == "__main__":
    main()
