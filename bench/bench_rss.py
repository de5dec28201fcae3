"""Peak RSS vs stream length: streaming (plain) and recording at level "summary" must stay flat.

Each length runs in a fresh subprocess (ru_maxrss is per process). Prints a table of peak RSS and
the ratio to the shortest run, measured side by side in one invocation.

    python -m bench.bench_rss [--lengths 100000 1000000] [--mode record|stream] [--level summary]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time


def _child(n_tokens: int, mode: str, level: str, segment: int) -> None:
    import torch
    torch.set_num_threads(1)
    import armt_viz as av
    from armt_viz.testing import tiny_model
    m = tiny_model(segment_size=segment)
    g = torch.Generator().manual_seed(0)
    chunk = 16_384
    chunks = (torch.randint(0, 32, (1, min(chunk, n_tokens - i)), generator=g) for i in range(0, n_tokens, chunk))
    t = time.time()
    if mode == "stream":
        with torch.no_grad():
            for _ in m.stream(chunks):
                pass
        size = 0
    else:
        with tempfile.TemporaryDirectory() as d:
            av.record(m, chunks, store=f"{d}/t.zarr", level=level, progress=False)
            size = sum(p.stat().st_size for p in __import__("pathlib").Path(d).rglob("*") if p.is_file())
    dt = time.time() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"tokens": n_tokens, "peak_rss_mb": rss, "seconds": dt, "store_bytes": size}))


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--lengths", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--mode", default="record", choices=["record", "stream"])
    p.add_argument("--level", default="summary")
    p.add_argument("--segment", type=int, default=16)
    p.add_argument("--child", type=int, default=None)
    a = p.parse_args(argv)
    if a.child is not None:
        return _child(a.child, a.mode, a.level, a.segment)
    rows = []
    for n in a.lengths:
        out = subprocess.run([sys.executable, "-m", "bench.bench_rss", "--child", str(n), "--mode", a.mode,
                              "--level", a.level, "--segment", str(a.segment)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_rss_mb"]
    print(f"mode={a.mode} level={a.level} segment={a.segment} (tiny GPT-2 ARMT, 2 layers, d 64, 1 thread)")
    print(f"{'tokens':>10} {'peak RSS MB':>12} {'ratio':>6} {'tok/s':>8} {'bytes/token':>12}")
    for r in rows:
        print(f"{r['tokens']:>10} {r['peak_rss_mb']:>12.1f} {r['peak_rss_mb'] / base:>6.3f} "
              f"{r['tokens'] / r['seconds']:>8.0f} {r['store_bytes'] / r['tokens']:>12.2f}")


if __name__ == "__main__":
    main()
