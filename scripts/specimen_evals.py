"""The numbers of a stream specimen's model card in one JSON file (CPU or GPU).

    python scripts/specimen_evals.py MODEL_DIR --out evals.json [--device cuda] [--long-tokens 1000000]

* stream EM over 256-segment streams (and 16, 64, 1024), with and without memory: what
  `armt-viz eval --model MODEL_DIR --task stream --pairs N --samples S --json [--ablate-memory]` prints;
* EM by stream position up to `--long-tokens` tokens of one stream (seed 0), binned by segment, with and
  without memory (`evaluate.stream_queries` + `recall_vs_age(by="segment")`), and by answer age and writes in
  between.
"""

from __future__ import annotations

import argparse
import json
import time


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--pairs", default="16,64,256,1024")
    p.add_argument("--long-tokens", type=int, default=1_000_000)
    a = p.parse_args(argv)

    from armt_viz import evaluate as ev

    t0 = time.monotonic()
    res: dict = {"model": a.model, "samples": a.samples, "seed": 0, "em": {}, "em_ablated": {}}
    for n in (int(x) for x in a.pairs.split(",")):
        for ablate, key in ((False, "em"), (True, "em_ablated")):
            if ablate and n > 256:
                continue
            r = ev.run_eval(a.model, "stream", pairs=n, samples=a.samples, device=a.device, ablate_memory=ablate)
            res[key][str(n)] = {k: r[k] for k in ("exact_match", "n_queries", "exact_match_none", "n_none")}
    m = ev.load_model(a.model, "stream", None if a.device == "auto" else a.device)
    cfg = ev.model_stream_config(m, seed=0)
    S = cfg.segment_size
    seg_edges = [0, 256, 1024, 4096, 16384, a.long_tokens // S + 1]
    for ablate, key in ((False, "long"), (True, "long_ablated")):
        n_tok = a.long_tokens if not ablate else min(a.long_tokens, 4096 * S)
        q = ev.stream_queries(m, cfg, n_tok // S * S, ablate_memory=ablate)
        out = {}
        for by, edges in (("segment", [e for e in seg_edges if e <= n_tok // S] + [n_tok // S + 1]),
                          ("age_segments", None), ("intervening_writes", None)):
            r = ev.recall_vs_age(q, by=by, edges=sorted(set(edges)) if edges else None)
            out[by] = {"lower": r["lower"].values.tolist(), "upper": r["upper"].values.tolist(),
                       "accuracy": [None if x != x else round(float(x), 4) for x in r["accuracy"].values],
                       "count": r["count"].values.tolist()}
        none = q["expected_answer"].values < 0
        out["overall"] = float(q["correct"].values.mean())
        out["none_accuracy"] = float(q["correct"].values[none].mean()) if none.any() else None
        out["n_tokens"] = int(n_tok // S * S)
        res[key] = out
    res["elapsed_s"] = round(time.monotonic() - t0, 1)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
