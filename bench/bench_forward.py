"""Tokens/s of a plain forward and of recording at each level, against the official-order reference.

All numbers in one run, side by side, on the same machine; printed as ratios. Also bytes/token per level.

    python -m bench.bench_forward [--config cpu-tiny|gpu-gpt2|gpu-llama1b] [--tokens N] [--threads 1]
        [--official PATH --official-python PY]

`model(ids)` is timed as a user calls it (under no_grad), including the choice of its executor and, for the
first call, building the lean step (`armt_viz.model.steps.default_step`); the executor it ran is printed.

--official PATH: also time a user-supplied checkout of the official ARMT code (`bench/official_runner.py`, in
its own Python given by --official-python, since it needs transformers <= 4.51), alternating with the
reference; every row then also reports its ratio to the official code: x official = x ref * (official time /
reference time) of that alternating pair. The official code is never committed here.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import torch

from bench._common import CONFIGS, build, timeit  # noqa: F401  (CONFIGS and build are imported from here too)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="cpu-tiny", choices=list(CONFIGS))
    p.add_argument("--tokens", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--levels", nargs="*", default=["summary", "writes", "full"])
    p.add_argument("--storage-dtype", default="float32")
    p.add_argument("--official", default=None, help="root of a checkout of the official ARMT code")
    p.add_argument("--official-python", default=None,
                   help="python of an environment where the official code runs (torch, transformers <= 4.51)")
    a = p.parse_args(argv)
    if (a.official is None) != (a.official_python is None):
        p.error("--official PATH and --official-python PY go together: the official code runs in its own "
                "environment (transformers <= 4.51); give both, or neither")
    torch.set_num_threads(a.threads)
    c = CONFIGS[a.config]
    device = "cuda" if a.config.startswith("gpu") and torch.cuda.is_available() else "cpu"
    m = build(c, device, torch.float32)
    official = None
    if a.official is not None:
        from bench.official_runner import OfficialProcess
        try:
            official = OfficialProcess(a.official, a.official_python, layers=c["layers"], d=c["d"], heads=c["heads"],
                                       vocab=c["vocab"], S=c["S"], M=c["M"], d_mem=c["d_mem"],
                                       tokens=a.tokens or c["tokens"], threads=a.threads, device=device, dtype=a.dtype)
        except ValueError as e:
            p.error(str(e))
    # bf16 = autocast (the official code cannot run pure-bf16 weights: its float32 state clashes), scoped to the run
    amp = torch.autocast(device, dtype=torch.bfloat16) if a.dtype == "bfloat16" else contextlib.nullcontext()
    try:
        with amp:
            measure(a, c, device, m, official)
    finally:
        if official is not None:
            official.close()


def measure(a, c, device, m, official=None):
    """Every row of the table for model `m` on `device` (the caller sets the autocast scope)."""
    import armt_viz as av
    from armt_viz.model import steps
    from armt_viz.testing import official_order_reference

    n = a.tokens or c["tokens"]
    ids = torch.randint(0, c["vocab"], (1, n), device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ref = official_order_reference(m)
    print(f"config={a.config} device={device} dtype={a.dtype} threads={a.threads} tokens={n} "
          f"torch={torch.__version__} {torch.cuda.get_device_name() if device == 'cuda' else ''}", flush=True)
    print(f"{'path':<48} {'tok/s':>10} {'x ref':>7} {'bytes/token':>12}"
          + (f" {'x official':>10}" if official else ""), flush=True)
    off_per_ref = [None]  # official time / reference time, from their alternating pair

    def run_ref():
        with torch.no_grad():
            ref(ids)

    def paired(fn, reps=3):
        """(best time of fn, best time of the reference), the two timed alternately, so that a change in
        machine load during the run affects both sides of the ratio alike."""
        fn()
        sync()
        tf = tr = float("inf")
        for _ in range(reps):
            tr = min(tr, timeit(run_ref, sync, reps=1, warm=False))
            tf = min(tf, timeit(fn, sync, reps=1, warm=False))
        return tf, tr

    class Rows(list):
        def append(self, r):
            super().append(r)
            name, (t, t_ref), bpt = r
            extra = f" {t_ref / t * off_per_ref[0]:>10.2f}" if off_per_ref[0] else ""
            print(f"{name:<48} {n / t:>10.0f} {t_ref / t:>7.2f} {'' if bpt is None else f'{bpt:.1f}':>12}{extra}",
                  flush=True)
    rows = Rows()
    with torch.no_grad():
        t_ref = timeit(run_ref, sync)
        if official is not None:
            t_off, tr_off = official.paired(run_ref, sync)
            off_per_ref[0] = t_off / tr_off
            print(f"  the official code ({a.official}; transformers {official.versions['transformers']}, "
                  f"torch {official.versions['torch']}): {n / t_off:.0f} tok/s; reference / official speed "
                  f"{t_off / tr_off:.2f} (the reference should be within 10 %)", flush=True)
            rows.append(("official ARMT code", (t_off, tr_off), None))
        rows.append(("official-order reference", (t_ref, t_ref), None))

        def hf_plain():
            with steps.hf_step(m):
                for _ in m.stream([ids]):
                    pass
        rows.append(("armt_viz HF-wrapped step (stream)", paired(hf_plain), None))
        with steps.hf_step(m):
            eager = torch.cat([o.logits.float() for o in m.stream([ids])], 1)  # what every fast path must reproduce
        got = m(ids).logits.float()
        err = ((got - eager).abs().max() / eager.abs().max()).item()

        def cold():  # every set-up cost: the executor choice and building the lean step / capturing the graph
            steps.clear_cache(m)
            m(ids)
        rows.append((f"armt_viz model(ids) default (rel err {err:.1e})", paired(cold), None))
        rows.append(("armt_viz model(ids), its step cached", paired(lambda: m(ids)), None))
        print(f"  model(ids) ran: {m.explain_executor(input_ids=ids)}", flush=True)

        def fast_row(label, segments):
            """A row for the fast path `segments()` (an iterator of SegmentOutputs), with its logits' error
            against the eager stream; logits are cloned (the CUDA-graph paths yield views of static buffers)."""
            got = torch.cat([o.logits.float().clone() for o in segments()], 1)
            err = ((got - eager).abs().max() / eager.abs().max()).item()

            def run():
                for _ in segments():
                    pass
            rows.append((f"{label} (rel err {err:.1e})", paired(run), None))

        from armt_viz.model.fast import GraphedStepper, fast_stream
        if device == "cpu":
            from armt_viz.model.lean import LeanStep
            lean = LeanStep(m)
            fast_row("armt_viz lean CPU forward", lambda: fast_stream(m, ids, lean))
        if device == "cuda":
            stepper, cstepper = GraphedStepper(m, 1), GraphedStepper(m, 1, compile_memory=True)
            fast_row("armt_viz CUDA-graph forward", lambda: fast_stream(m, ids, stepper))
            fast_row("  + compiled memory math", lambda: fast_stream(m, ids, cstepper))
        # issue 7: the layer x segment grid by anti-diagonals, one continuous pipeline, one grouped call per
        # diagonal (no host sync inside); on CUDA the steady diagonals replay one captured graph (graph=True),
        # timed next to the same pipeline run eagerly (graph=False)
        from armt_viz.model.diagonal import diagonal_stream
        for graph in ([True, False] if device == "cuda" else [False]) if c["family"] == "gpt2" else []:
            fast_row(f"armt_viz diagonal, {'CUDA graph' if graph else 'eager'}",
                     lambda graph=graph: diagonal_stream(m, ids, graph=graph))
    runs = [(level, True) for level in a.levels]
    if device == "cpu" and "summary" in a.levels:
        runs.insert(1, ("summary", False))  # the HF-wrapped step, for comparison with the lean one
    for level, fast in runs:
        if level == "full" and c["d"] > 256:
            continue
        with tempfile.TemporaryDirectory() as d:
            store = Path(d) / "t.zarr"
            t = paired(lambda: av.record(m, ids, store=store, level=level, progress=False,
                                         storage_dtype=a.storage_dtype, fast=fast), reps=2)
            size = sum(f.stat().st_size for f in store.rglob("*") if f.is_file() and "_resume" not in f.parts)
        rows.append((f"record level={level} ({a.storage_dtype}){'' if fast else ', fast=False'}", t, size / n))
    print("done", flush=True)


if __name__ == "__main__":
    main()
