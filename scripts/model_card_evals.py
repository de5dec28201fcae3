"""Every number of armt_viz/assets/MODEL_CARD.md in one run (one JSON file), on the CPU or a GPU.

    python scripts/model_card_evals.py --ar armt_viz/assets/ar_rewrite --stream armt_viz/assets/stream \
        --out runs/model_card_evals.json [--device cuda] [--samples 500]

Each AR number is what `armt-viz eval --model <dir> --task ar-rewrite --pairs N --samples S --seed 0
[--ablate-memory] --json` prints (same samples: they depend only on n, K, V, samples and seed).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

AR_N = (1, 2, 3, 5, 10, 20, 30, 50, 75, 100, 150, 200)
AR_N_ABLATED = (1, 5, 10, 50, 200)
REMEMBER_N = (1, 2, 3, 5, 10, 16)
STREAM_N = (16, 64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ar", default=None, help="AR model folder (save_pretrained)")
    p.add_argument("--stream", default=None, help="stream model folder (save_pretrained + task.json)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--samples", type=int, default=500)
    p.add_argument("--stream-samples", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="AR rewrite at a few n and ablated at n=50 only")
    p.add_argument("--long-tokens", type=int, default=20_000, help="stream length for recall vs age")
    args = p.parse_args(argv)

    from armt_viz import evaluate as ev

    res: dict = {"samples": args.samples, "seed": 0}
    t0 = time.monotonic()
    if args.ar:
        m = ev.load_model(args.ar, "ar-rewrite", args.device)
        res["device"] = str(next(m.parameters()).device)
        runs = ((("rewrite", True, (1, 2, 5, 10, 20, 50, 100, 200), False), ("rewrite_ablated", True, (50,), True))
                if args.quick else None)
        for name, rewrite, ns, abl in runs or (("rewrite", True, AR_N, False), ("rewrite_ablated", True, AR_N_ABLATED, True),
                                       ("remember", False, REMEMBER_N, False),
                                       ("remember_ablated", False, (1, 10, 16), True)):
            ds = ev.capacity_curve(m, ns, 1, 1, samples=args.samples, rewrite=rewrite, seed=0, batch_size=500,
                                   ablate_memory=abl)
            res[f"ar_{name}"] = {int(n): round(float(e), 4) for n, e in zip(ds.n_pairs.values, ds.exact_match.values)}
            print(name, res[f"ar_{name}"], f"{time.monotonic() - t0:.0f}s", flush=True)
    if args.stream:
        m = ev.load_model(args.stream, "stream", args.device)
        cfg = ev.model_stream_config(m)
        for abl in (False, True):
            key = "stream_ablated" if abl else "stream"
            res[key] = {n: ev.stream_exact_match(m, cfg, n, samples=args.stream_samples, seed=0, ablate_memory=abl)
                        for n in STREAM_N}
            print(key, {n: round(r["exact_match"], 4) for n, r in res[key].items()}, f"{time.monotonic() - t0:.0f}s",
                  flush=True)
        import dataclasses
        q = ev.stream_queries(m, dataclasses.replace(cfg, seed=0), args.long_tokens)
        position_edges = [0, 50, 100, 200, 400, 800, 1600, 3200, 6400, 12800]
        for by, edges in (("age_segments", None), ("intervening_writes", None), ("segment", position_edges)):
            answered = q.isel(query=np.flatnonzero(q.expected_answer.values >= 0))  # NONE: never written
            r = ev.recall_vs_age(answered if by == "segment" else q, by, edges)
            res[f"stream_recall_vs_{by}"] = [
                {"lower": float(lo), "upper": float(up), "accuracy": round(float(a), 4), "count": int(c)}
                for lo, up, a, c in zip(r.lower.values, r.upper.values, r.accuracy.values, r["count"].values) if c]
        res["stream_long"] = {"tokens": args.long_tokens, "exact_match": round(float(q.correct.mean()), 4),
                              "n_queries": int(q.sizes["query"])}
        print("long stream", res["stream_long"], f"{time.monotonic() - t0:.0f}s", flush=True)
    res["seconds"] = round(time.monotonic() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
