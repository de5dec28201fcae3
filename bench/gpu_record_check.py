"""On a GPU: the fast paths equal the eager ones, and how much faster they are than the reference.

    python -m bench.gpu_record_check [--config gpu-gpt2] [--tokens 131072] [--dtypes float32 bfloat16]
        [--official PATH --official-python PY [--official-tokens 32768]]

Exactness (graph and compiled recorder against the eager one, replay from a restored memory, diagonal,
compiled memory math) is tested in tests/gpu (`make test-gpu`). Speed: tokens/s of recording at levels summary and writes (bfloat16 storage, default keyframes),
as ratios against the official-order reference measured in the same run, with bytes/token of each store.

--official: also time a checkout of the official ARMT code (`bench/official_runner.py`, its own Python) in the
same run. The official wrapper keeps every segment's logits (512 x 50,257 per segment: 26 GB in bf16 at 262k
tokens), so it runs --official-tokens (default 32,768) tokens, alternating three times with the reference over
the same tokens; each row then also gets x official = x ref * (official time / reference time per token).
"""

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch

import armt_viz as av
from armt_viz.model.fast import GraphedStepper, fast_stream
from bench._common import CONFIGS, build
from armt_viz.testing import official_order_reference


def store_bytes(store: Path) -> int:
    return sum(f.stat().st_size for f in store.rglob("*") if f.is_file() and "_resume" not in f.parts)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="gpu-gpt2")
    p.add_argument("--tokens", type=int, default=131072)
    p.add_argument("--dtypes", nargs="+", default=["bfloat16"])
    p.add_argument("--paths", nargs="+", default=["eager", "graph", "compile"])
    p.add_argument("--keyframe-every", default="auto", type=lambda v: v if v == "auto" else int(v))
    p.add_argument("--growth", action="store_true", help="print how bf16 rounding differences grow over segments")
    p.add_argument("--official", default=None, help="root of a checkout of the official ARMT code")
    p.add_argument("--official-python", default=None, help="python of an environment where the official code runs")
    p.add_argument("--official-tokens", type=int, default=32768)
    p.add_argument("--ref-tokens", type=int, default=65536)
    a = p.parse_args()
    if (a.official is None) != (a.official_python is None):
        p.error("--official PATH and --official-python PY go together")
    c = CONFIGS[a.config]
    m = build(c, "cuda", torch.float32)
    ids = torch.randint(0, c["vocab"], (1, a.tokens + 100))  # + a partial segment for the eager tail
    print(f"config={a.config} tokens={a.tokens} {torch.cuda.get_device_name()} torch={torch.__version__}", flush=True)
    if a.growth:
        growth(m, ids[:, :64 * c["S"]].cuda(), c["S"])
    for dtype in a.dtypes:
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
        with amp:
            ref = official_order_reference(m)
            x = ids[:, :a.tokens].cuda()
            # the reference returns every segment's logits (52 GB in float32 at 262k tokens): it is timed over
            # its first --ref-tokens tokens and its time scaled to the whole input (its cost is linear in length)
            nr = min(a.ref_tokens, a.tokens)
            with torch.no_grad():
                ref(x[:, :4 * c["S"]]); torch.cuda.synchronize()
                t = time.perf_counter(); ref(x[:, :nr]); torch.cuda.synchronize()
                t_ref = (time.perf_counter() - t) * a.tokens / nr
            print(f"[{dtype}] official-order reference: {a.tokens / t_ref:.0f} tok/s (timed over {nr} tokens)",
                  flush=True)
            off = official_per_ref(a, c, m, x, dtype) if a.official else None
            for level in ("summary", "writes"):
                for path in a.paths:
                    fast = {"eager": False, "graph": True, "compile": "compile"}[path]
                    kw = dict(level=level, progress=False, fast=fast, storage_dtype="bfloat16",
                              keyframe_every=a.keyframe_every)
                    with tempfile.TemporaryDirectory() as d:  # warm-up: graph capture, compile
                        av.record(m, x[:, :4 * c["S"]].cpu(), store=f"{d}/w.zarr", **kw)
                    with tempfile.TemporaryDirectory() as d:
                        torch.cuda.synchronize(); t = time.perf_counter()
                        av.record(m, x if path == "eager" else x.cpu(), store=f"{d}/t.zarr", **kw)
                        torch.cuda.synchronize(); dt = time.perf_counter() - t
                        bpt = store_bytes(Path(d) / "t.zarr") / a.tokens
                        if path == "graph":
                            per = {v.name: store_bytes(v) / a.tokens for v in (Path(d) / "t.zarr").iterdir() if v.is_dir()}
                            top = sorted(per.items(), key=lambda kv: -kv[1])[:4]
                            print("    bytes/token by variable: " + ", ".join(f"{k} {v:.1f}" for k, v in top), flush=True)
                    vs_off = f", {t_ref / dt * off:.2f}x official" if off else ""
                    print(f"[{dtype}] record level={level} {path}: {a.tokens / dt:.0f} tok/s, {t_ref / dt:.2f}x "
                          f"reference{vs_off}, {bpt:.1f} bytes/token (keyframe_every={a.keyframe_every})", flush=True)


def official_per_ref(a, c, m, x, dtype) -> float:
    """Official time / reference time over the same --official-tokens tokens (best of 3, alternating)."""
    from bench.official_runner import OfficialProcess
    n = min(a.official_tokens, x.shape[1])
    proc = OfficialProcess(a.official, a.official_python, layers=c["layers"], d=c["d"], heads=c["heads"],
                           vocab=c["vocab"], S=c["S"], M=c["M"], d_mem=c["d_mem"], tokens=n, threads=1,
                           device="cuda", dtype=dtype)
    ref = official_order_reference(m)
    try:
        with torch.no_grad():
            t_off, t_ref = proc.paired(lambda: ref(x[:, :n]), torch.cuda.synchronize)
    finally:
        proc.close()
    print(f"[{dtype}] the official code ({a.official}; transformers {proc.versions['transformers']}, torch "
          f"{proc.versions['torch']}, {proc.versions['device']}), {n} tokens: {n / t_off:.0f} tok/s; reference "
          f"{n / t_ref:.0f} tok/s over the same tokens (reference / official speed {t_off / t_ref:.2f})", flush=True)
    return t_off / t_ref


@torch.no_grad()
def growth(m, x, S):
    """Relative logit difference per segment: compiled vs eager graph (bf16 autocast), and eager bf16 vs
    eager fp32 -- whether a difference at segment 64 is a bug or rounding amplified by the dynamics."""
    segs = [0, 1, 3, 7, 15, 31, 63]
    fp32 = [o.logits.float().clone() for o in fast_stream(m, x, GraphedStepper(m, 1))]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = [o.logits.float().clone() for o in fast_stream(m, x, GraphedStepper(m, 1))]
        comp = [o.logits.float().clone() for o in fast_stream(m, x, GraphedStepper(m, 1, compile_memory=True))]
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()  # noqa: E731
    # one step from the same (eager bf16) memory: the per-step difference the tolerance is about
    from armt_viz.model.memory import compiled_kernels
    step = []
    with torch.autocast("cuda", dtype=torch.bfloat16):
        states = [None] + [o.state.detach() for o in m.stream([x])]
        for s in segs:
            seg = x[:, s * S:(s + 1) * S]
            st = states[s]
            if st is not None:
                st = st.clone()
            e = m.step(seg, st, explicit_mask=False).logits.float()
            with m.memory_kernels(compiled_kernels()):
                f = m.step(seg, st, explicit_mask=False).logits.float()
            step.append(rel(f, e))
    print("segment:                              " + " ".join(f"{s:>8d}" for s in segs))
    print("bf16 compiled vs eager, whole stream: " + " ".join(f"{rel(comp[s], eager[s]):8.1e}" for s in segs))
    print("bf16 eager vs fp32 eager, stream:     " + " ".join(f"{rel(eager[s], fp32[s]):8.1e}" for s in segs))
    print("bf16 compiled vs eager, one step:     " + " ".join(f"{v:8.1e}" for v in step), flush=True)


if __name__ == "__main__":
    main()
