"""Peak GPU memory vs stream length: recording must not grow with the input (issue 7).

    python -m bench.gpu_vram [--config gpu-gpt2] [--lengths 32768 131072 524288]

For each length and level (graph recorder, bf16 autocast, bfloat16 storage, default keyframes) and for the plain
CUDA-graph forward: memory allocated before the run (after gc; growth here across runs would be a leak), peak
allocated during the run above that, peak reserved, and the host's peak RSS (ru_maxrss, cumulative over the
process, so it only shows growth).
"""

import argparse
import gc
import resource
import tempfile
import time

import torch

import armt_viz as av
from armt_viz.model.fast import fast_stream
from bench._common import CONFIGS, build


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="gpu-gpt2")
    p.add_argument("--lengths", type=int, nargs="+", default=[32768, 131072, 524288])
    a = p.parse_args()
    c = CONFIGS[a.config]
    m = build(c, "cuda", torch.float32)
    print(f"config={a.config} {torch.cuda.get_device_name()} torch={torch.__version__}; weights "
          f"{sum(x.numel() * x.element_size() for x in m.parameters()) / 2**20:.0f} MiB", flush=True)
    print(f"{'path':<20} {'tokens':>8} {'tok/s':>8} {'before MiB':>11} {'peak-before MiB':>16} "
          f"{'peak reserved MiB':>18} {'host RSS MiB':>13}")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for n in a.lengths:
            ids = torch.randint(0, c["vocab"], (1, n))
            runs = [("forward (graph)", None), ("record summary", "summary"), ("record writes", "writes")]
            for name, level in runs:
                torch.cuda.synchronize()
                gc.collect()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                t = time.perf_counter()
                if level is None:
                    with torch.no_grad():
                        for _ in fast_stream(m, ids.cuda()):
                            pass
                else:
                    with tempfile.TemporaryDirectory() as d:
                        av.record(m, ids, store=f"{d}/t.zarr", level=level, progress=False, storage_dtype="bfloat16")
                torch.cuda.synchronize()
                dt = time.perf_counter() - t
                rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                print(f"{name:<20} {n:>8} {n / dt:>8.0f} {before / 2**20:>11.0f} "
                      f"{(torch.cuda.max_memory_allocated() - before) / 2**20:>16.0f} "
                      f"{torch.cuda.max_memory_reserved() / 2**20:>18.0f} {rss:>13.0f}", flush=True)


if __name__ == "__main__":
    main()
