"""Batched sweeps: B independent streams recorded in one batch vs B separate runs (issue 17).

    python -m bench.bench_batched [--config cpu-tiny] [--tokens 2048] [--batches 1 8 32] [--level summary]

Each stream is its own sample of the batch (the trace's `sample` axis: per-sample ledgers, losses and
probes). For each B: one `record` of ids [B, tokens], against B separate `record` calls of [1, tokens]
(timed as min(B, --separate-max) calls, scaled to B: the separate runs are identical in cost), alternated so
that load changes hit both. Prints tokens/s of both and the gain. Also checks that sample b of the batched
trace equals the separate run of stream b (max relative difference of the summary statistics).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="cpu-tiny")
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--batches", type=int, nargs="*", default=[1, 8, 32])
    p.add_argument("--level", default="summary", choices=["summary", "writes"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--separate-max", type=int, default=4)
    p.add_argument("--reps", type=int, default=2)
    a = p.parse_args(argv)
    import armt_viz as av
    from bench._common import CONFIGS, build
    torch.set_num_threads(a.threads)
    c = CONFIGS[a.config]
    device = "cuda" if a.config.startswith("gpu") and torch.cuda.is_available() else "cpu"
    m = build(c, device, torch.float32)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    print(f"config={a.config} device={device} level={a.level} tokens/stream={a.tokens} threads={a.threads} "
          f"torch={torch.__version__} {torch.cuda.get_device_name() if device == 'cuda' else ''}", flush=True)
    print(f"{'B':>4} {'batched tok/s':>14} {'separate tok/s':>15} {'gain':>6} {'max rel diff':>13}", flush=True)
    for B in a.batches:
        ids = torch.randint(0, c["vocab"], (B, a.tokens), device=device)
        k = min(B, a.separate_max)

        def batched():
            return av.record(m, ids, level=a.level, progress=False)

        def separate():
            return [av.record(m, ids[b:b + 1], level=a.level, progress=False) for b in range(k)]
        ds_b, ds_s = batched(), separate()  # warm-up, and the equivalence check
        diff = 0.0
        for b in range(k):
            for v in ("assoc_norm", "read_out_norm_mean", "write_gate_mean", "segment_loss"):
                x, y = ds_b[v].isel(sample=b).values, ds_s[b][v].isel(sample=0).values
                diff = max(diff, float(np.nanmax(np.abs(x - y)) / max(np.nanmax(np.abs(y)), 1e-12)))
        tb = ts = float("inf")
        for _ in range(a.reps):
            sync()
            t = time.perf_counter()
            batched()
            sync()
            tb = min(tb, time.perf_counter() - t)
            t = time.perf_counter()
            separate()
            sync()
            ts = min(ts, (time.perf_counter() - t) * B / k)
        n = B * a.tokens
        print(f"{B:>4} {n / tb:>14.0f} {n / ts:>15.0f} {ts / tb:>6.2f} {diff:>13.1e}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
