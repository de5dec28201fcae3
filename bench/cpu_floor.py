"""The kernel floor of the lean CPU step: how fast `model(ids)` could be with the kernels it calls and no Python.

    python -m bench.cpu_floor [--config cpu-tiny] [--tokens 8192] [--threads 1]

One segment of the lean step (`armt_viz.model.lean.LeanStep`, what `model(ids)` runs on a CPU) is run under a
dispatch mode that records every ATen and oneDNN call it makes, with its arguments. That list is then replayed
back to back, once per segment of the input: the same kernels on the same shapes, with no Python logic between
them. Subsets of it are replayed too: the linear products alone, and the products plus attention and the
batched memory products. The official-order reference and `model(ids)` are timed in the same run, so every line
is a ratio to the reference. A ratio here bounds what any rewrite of the Python around these kernels can reach;
going past it needs other kernels (fused, or lower precision).

Each replay is the best of 7 runs of all segments, under inference mode. In-place ops replay on their recorded
tensors, which changes the values but not the work.
"""

from __future__ import annotations

import argparse
import time

import torch


def _best(fn, reps: int = 7) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="cpu-tiny")
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    from torch.utils._python_dispatch import TorchDispatchMode

    from armt_viz.model.lean import LeanStep
    from armt_viz.testing import official_order_reference
    from bench._common import CONFIGS, build

    torch.set_num_threads(a.threads)
    c = CONFIGS[a.config]
    m = build(c, "cpu", torch.float32)
    S = c["S"]
    n_seg = a.tokens // S
    ids = torch.randint(0, c["vocab"], (1, n_seg * S))
    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            calls.append((func, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    with torch.no_grad():
        step = LeanStep(m)
        state = None
        for s in range(3):  # from the third segment on the step reads the memory: a steady-state segment
            state = step(ids[:, s * S:(s + 1) * S], state, s).state
        with Record():
            step(ids[:, 3 * S:4 * S], state, 3)

    def replay(keep=lambda name: True):
        chosen = [(f, ar, kw) for f, ar, kw in calls if keep(str(f))]

        def run():
            with torch.inference_mode():
                for _ in range(n_seg):
                    for f, ar, kw in chosen:
                        f(*ar, **kw)
        return run, len(chosen)

    ref = official_order_reference(m)
    with torch.no_grad():
        t_ref = _best(lambda: ref(ids), reps=3)
        t_model = _best(lambda: m(ids), reps=5)
    print(f"config={a.config} tokens={n_seg * S} threads={a.threads} torch={torch.__version__} "
          f"capability={torch.backends.cpu.get_cpu_capability()} kernels: {step.kernels}")
    print(f"{'what runs':<66} {'ms':>8} {'x ref':>7}")
    print(f"{'official-order reference':<66} {t_ref * 1e3:>8.1f} {1.0:>7.2f}")
    print(f"{'model(ids) (the lean step, set-up included)':<66} {t_model * 1e3:>8.1f} {t_ref / t_model:>7.2f}")
    products = ("linear_pointwise", "addmm", "aten.mm")
    subsets = [
        ("every kernel of the step, replayed without Python", lambda f: True),
        ("linear products only", lambda f: any(k in f for k in products)),
        ("products + attention + batched memory products",
         lambda f: any(k in f for k in products + ("scaled_dot_product", "flash", "bmm"))),
    ]
    for what, keep in subsets:
        run, n = replay(keep)
        t = _best(run)
        print(f"{what + f' ({n} calls a segment)':<66} {t * 1e3:>8.1f} {t_ref / t:>7.2f}")


if __name__ == "__main__":
    main()
