"""Run the benchmarks one after another, each in its own process; quick by default (`make bench`).

    python -m bench.run_all            quick: small inputs, a couple of minutes on 2 cores
    python -m bench.run_all --full     each benchmark's own defaults (long: tens of minutes)
    python -m bench.run_all --only forward rss

Each benchmark prints its own table of ratios measured side by side in its run (see each module's docstring);
this runner adds only the wall time of each and exits non-zero if any failed. GPU benchmarks
(gpu_record_check, gpu_diagonal_check, gpu_vram) run only where CUDA is available.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# name: (module, quick arguments, full arguments, needs CUDA)
BENCHMARKS = {
    "forward": ("bench.bench_forward", ["--config", "cpu-tiny", "--tokens", str(16 * 128), "--levels", "summary",
                                        "writes"], [], False),
    "cpu-floor": ("bench.cpu_floor", ["--tokens", str(16 * 128)], [], False),
    "rss": ("bench.bench_rss", ["--lengths", "20000", "80000", "--mode", "record"], [], False),
    "analysis": ("bench.bench_analysis", ["--segments", "2000", "--long-segments", "0", "--workers", "1"], [], False),
    "gpu-record": ("bench.gpu_record_check", ["--tokens", "16384", "--paths", "eager", "graph"], [], True),
    "gpu-diagonal": ("bench.gpu_diagonal_check", ["--segments", "16"], [], True),
}


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true", help="each benchmark's own (long) defaults")
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    a = p.parse_args(argv)
    cuda = _cuda()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    failed = []
    for name in a.only or list(BENCHMARKS):
        module, quick, full, needs_cuda = BENCHMARKS[name]
        if needs_cuda and not cuda:
            print(f"== {name}: not run (needs CUDA)", flush=True)
            continue
        cmd = [sys.executable, "-m", module, *(full if a.full else quick)]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
        print(f"== {name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - t:.0f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
