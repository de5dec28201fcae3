"""Where a GPU recording's time goes: wall time of one `record` call and the time inside its parts.

    python -m bench.profile_record [--config gpu-gpt2] [--tokens 262144] [--levels summary writes]

bf16 autocast, bfloat16 storage, the default graph path, after a warm-up call on 4 segments. Each part is
timed by wrapping it (main thread: the ring copy of a segment's packed row, waiting for the writer; writer thread:
the host copy and unpacking of a chunk, the finite check, bfloat16 encoding of eager rows (the graph path rounds
on the GPU), zarr appends, commits). The parts of the writer thread overlap the main loop; "main: wait for
writer" is what the writer costs the run.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import threading
import time

import torch


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="gpu-gpt2")
    p.add_argument("--tokens", type=int, default=262144)
    p.add_argument("--levels", nargs="+", default=["summary", "writes"])
    a = p.parse_args(argv)
    import armt_viz as av
    from armt_viz.record import fast_record, flusher, recorder
    from armt_viz.trace import store
    from bench._common import CONFIGS, build

    times = collections.defaultdict(float)
    lock = threading.Lock()

    def timed(name, fn):
        def wrapper(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                with lock:
                    times[name] += time.perf_counter() - t
        return wrapper

    handover = fast_record.GraphRows.handover
    patches = [
        (recorder._Recording, "_flush", "writer: flush, total"),
        (recorder._Recording, "_check_rows_finite", "writer: finite check"),
        (recorder, "bf16_encode", "writer: bfloat16 encoding"),
        (store.TraceWriter, "append", "writer: zarr append"),
        (store.TraceWriter, "commit", "writer: commit"),
        (flusher.BackgroundFlusher, "wait", "main: wait for writer"),
        (fast_record.GraphRows, "row", "main: ring copy of the packed rows"),
    ]
    for owner, attr, name in patches:
        setattr(owner, attr, timed(name, getattr(owner, attr)))
    fast_record.GraphRows.handover = lambda self, rows: timed("writer: host copy + unpack", handover(self, rows))

    c = CONFIGS[a.config]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = build(c, device, torch.float32)
    ids = torch.randint(0, c["vocab"], (1, a.tokens))
    print(f"config={a.config} tokens={a.tokens} device={device} "
          f"{torch.cuda.get_device_name() if device == 'cuda' else ''} torch={torch.__version__}", flush=True)
    with torch.autocast(device, dtype=torch.bfloat16):
        for level in a.levels:
            kw = dict(level=level, progress=False, storage_dtype="bfloat16")
            with tempfile.TemporaryDirectory() as d:
                av.record(m, ids[:, :4 * c["S"]], store=f"{d}/warm.zarr", **kw)
            times.clear()
            with tempfile.TemporaryDirectory() as d:
                if device == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                av.record(m, ids, store=f"{d}/t.zarr", **kw)
                if device == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t
            print(f"level={level}: {dt:.2f} s, {a.tokens / dt:.0f} tok/s", flush=True)
            for k, v in sorted(times.items()):
                print(f"   {k:<40} {v:7.2f} s", flush=True)


if __name__ == "__main__":
    main()
