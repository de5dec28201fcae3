"""On a GPU: is the diagonal path's logit error rounding amplified by the recurrence?

    python -m bench.gpu_diagonal_check [--config gpu-gpt2] [--segments 64]

GPT-2 137M of bench_forward (random weights, W_mv ~ N(0, 0.02)), float32, TF32 off. Per segment,
max |x - ref| / max |ref| of the logits, ref = model.stream, for
  diag graph   diagonal_stream(graph=True)   (steady diagonals replay one captured CUDA graph)
  diag eager   diagonal_stream(graph=False)  (same static buffers, every diagonal eager)
  graph-eager  diag graph against diag eager (the capture itself; expected ~0)
  chaos        model.stream of a copy whose memory-token parameter is perturbed by 1e-6 relative
The chaos column is the baseline: how fast a tiny difference grows through the memory recurrence of
this random model. Diagonal errors that start near float32 rounding (~1e-6) and grow like the chaos
column are rounding amplified by the recurrence, not a schedule bug (a bug is large from the segment
where it happens on).
"""

import argparse
import copy

import torch

from armt_viz.model.diagonal import diagonal_stream
from bench._common import CONFIGS, build


def rel(ref: torch.Tensor, got: torch.Tensor) -> float:
    return ((got.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="gpu-gpt2", choices=[k for k in CONFIGS if CONFIGS[k]["family"] == "gpt2"])
    p.add_argument("--segments", type=int, default=64)
    p.add_argument("--perturb", type=float, default=1e-6)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("gpu_diagonal_check needs CUDA (it checks the captured graph); no CUDA device found")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    c = CONFIGS[a.config]
    m = build(c, "cuda", torch.float32)
    twin = copy.deepcopy(m)
    with torch.no_grad():
        gen = torch.Generator(device="cuda").manual_seed(1)
        noise = torch.randn(twin.memory.shape, device="cuda", generator=gen)
        twin.memory.mul_(1 + a.perturb * noise)
    torch.manual_seed(1)
    ids = torch.randint(0, c["vocab"], (1, a.segments * c["S"]), device="cuda")
    print(f"config={a.config} segments={a.segments} float32 torch={torch.__version__} {torch.cuda.get_device_name()}")
    print(f"{'segment':>7} {'diag graph':>11} {'diag eager':>11} {'graph-eager':>11} {'chaos':>11}", flush=True)
    worst = [0.0] * 4
    with torch.no_grad():
        runs = zip(m.stream([ids]), diagonal_stream(m, ids, graph=True), diagonal_stream(m, ids, graph=False),
                   twin.stream([ids]))
        for ref, graph, eager, chaos in runs:  # in lockstep: one segment's logits alive per run
            errs = [rel(ref.logits, graph.logits), rel(ref.logits, eager.logits), rel(eager.logits, graph.logits),
                    rel(ref.logits, chaos.logits)]
            worst = [max(w, e) for w, e in zip(worst, errs)]
            print(f"{ref.segment:>7} " + " ".join(f"{e:>11.2e}" for e in errs), flush=True)
    print(f"{'max':>7} " + " ".join(f"{e:>11.2e}" for e in worst))


if __name__ == "__main__":
    main()
