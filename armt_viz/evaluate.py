"""Evaluation: exact match on AR (official metric), the stream and bAbI; capacity and recall-vs-age curves.

* AR (ARMT_SPEC.md §3.4): `model.generate` on `k_1 SEP v_1 EOS ... k_t GEN` with `max_new_tokens = V+1`,
  greedy, pad = EOS; a sample is correct when the generated tokens are `(v_t, EOS)` (`tasks.exact_match`; with
  exactly V+1 generated tokens the official "last V+1 tokens" rule is the same test). The model runs with
  segment size K+V+2 (one pair per segment), as every official AR run does.
* Stream and bAbI: queries sit inside a segment, so generation is replaced by teacher-forced greedy
  prediction at the query: correct when the argmax at GEN and at every answer token gives the answer tokens
  and EOS. Greedy generation from the same prefix would give the same verdict (the first wrong token decides).
* Memory capacity (§3.6): `capacity(n, em) = n * EM(n)`, the expected number of correctly recalled pairs.
* Recall vs fact age on the stream: per-query outcomes with the age of the answer's version in tokens and
  segments and the number of writes in between (`stream_queries`), binned by `recall_vs_age`.

`run_eval` backs `armt-viz eval` and returns one flat dict (printed as one JSON line by the CLI).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

__all__ = ["load_model", "ar_exact_match", "stream_exact_match", "stream_queries", "babi_exact_match", "capacity",
           "capacity_curve", "recall_vs_age", "run_eval", "model_stream_config"]

TASKS = ("ar-remember", "ar-rewrite", "stream", "babi")


def _device(device):
    import torch
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_model(model, task: str = "ar-rewrite", device=None):
    """`"demo"` (the shipped model for `task`), a folder written by `save_pretrained` (or a training `--out`
    folder holding `checkpoint/`), or an `ARMTModel`. Returns the model in eval mode on `device`."""
    from .model.armt import ARMTModel

    from ._usage import check_model_spec

    if isinstance(model, ARMTModel):
        m = model
    elif model == "demo":
        from ._usage import UsageError
        from .assets import load_demo_model
        if task == "babi":
            raise UsageError("--task babi: no demo model is shipped for bAbI; pass --model PATH of a model "
                             "trained on it (armt-viz train does not train bAbI yet)")
        m = load_demo_model("ar" if task.startswith("ar") else "stream")
    else:
        check_model_spec(model)
        p = Path(model)
        if (p / "checkpoint" / "config.json").exists():
            p = p / "checkpoint"
        m = ARMTModel.from_pretrained(p)
        m.source_path = m.source_dir = str(p)
    return m.to(_device(device)).eval()


@contextlib.contextmanager
def _segment_size(model, size: int):
    """Run `model` with segment size `size` inside the block (the AR format fixes it to K+V+2)."""
    old = model.config
    if old.segment_size != size:
        model.config = dataclasses.replace(old, segment_size=size)
    try:
        yield
    finally:
        model.config = old


def _progress(it, on: bool, desc: str, step: int, total: int):
    """``it`` (batch starts) with a tqdm bar on stderr counting samples when ``on``."""
    if not on:
        return it
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="sample")

    def gen():
        try:
            for s in it:
                yield s
                bar.update(min(step, total - s))
        finally:
            bar.close()
    return gen()


def chance_exact_match(value_size: int = 1, n_values: int = 16) -> float:
    """Exact match of a uniform guess over the ``n_values ** value_size`` values (the EOS taken as given)."""
    return float(n_values) ** -int(value_size)


def _ablated(model, on: bool):
    return model.ablate_memory() if on else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------- AR
def ar_exact_match(model, n_pairs: int, key_size: int = 1, value_size: int = 1, *, samples: int = 500,
                   rewrite: bool = True, seed: int = 0, batch_size: int = 250, device=None,
                   ablate_memory: bool = False, progress: bool = False) -> np.ndarray:
    """Per-sample official exact match (bool array of length `samples`) on `make_ar_batch(n_pairs, ...)`.

    The samples depend only on (n_pairs, key_size, value_size, samples, rewrite, seed), not on batch_size.
    """
    import torch
    from .tasks.associative_retrieval import EOS, exact_match, make_ar_batch

    dev = _device(device) if device is not None else next(model.parameters()).device
    data = make_ar_batch(n_pairs, key_size, value_size, batch_size=samples, rewrite=rewrite, seed=seed)
    gens = []
    with torch.no_grad(), _segment_size(model, data.segment_size), _ablated(model, ablate_memory):
        for s in _progress(range(0, samples, batch_size), progress, f"eval AR n={n_pairs}", batch_size, samples):
            ids = torch.as_tensor(data.prompt_ids[s:s + batch_size], device=dev)
            out = model.generate(ids, max_new_tokens=data.max_new_tokens, do_sample=False, pad_token_id=EOS)
            g = out.cpu().numpy()
            if g.shape[1] < data.max_new_tokens:  # every sample stopped early: pad as HF would
                g = np.pad(g, ((0, 0), (0, data.max_new_tokens - g.shape[1])), constant_values=-1)
            gens.append(g)
    return exact_match(np.concatenate(gens), data.answers)


def capacity(n_pairs: Sequence[int] | np.ndarray, exact_match: Sequence[float] | np.ndarray) -> xr.DataArray:
    """Memory capacity estimate n * EM(n) over the number of pairs (ARMT_SPEC §3.6); pure."""
    n = np.asarray(n_pairs, dtype=np.int64)
    em = np.asarray(exact_match, dtype=np.float64)
    if n.shape != em.shape:
        raise ValueError(f"capacity: n_pairs {n.shape} and exact_match {em.shape} must have the same shape")
    return xr.DataArray(n * em, dims=("n_pairs",), coords={"n_pairs": n}, name="capacity",
                        attrs={"long_name": "expected correctly recalled pairs n*EM(n)", "units": "1"})


def capacity_curve(model, n_values: Sequence[int], key_size: int = 1, value_size: int = 1, *, samples: int = 500,
                   rewrite: bool = True, seed: int = 0, batch_size: int = 250, device=None,
                   ablate_memory: bool = False) -> xr.Dataset:
    """EM(n) and n*EM(n) for every n in `n_values` (dataset over `n_pairs`)."""
    ems = [float(ar_exact_match(model, int(n), key_size, value_size, samples=samples, rewrite=rewrite, seed=seed,
                                batch_size=batch_size, device=device, ablate_memory=ablate_memory).mean())
           for n in n_values]
    cap = capacity(n_values, ems)
    ds = xr.Dataset({"exact_match": ("n_pairs", np.asarray(ems)), "capacity": cap}, coords=cap.coords)
    ds["exact_match"].attrs = {"long_name": "exact match", "units": "1"}
    ds.attrs = {"task": "ar-rewrite" if rewrite else "ar-remember", "key_size": key_size, "value_size": value_size,
                "samples": samples, "seed": seed, "ablate_memory": int(ablate_memory)}
    return ds


# ----------------------------------------------------------------------------------------------- stream
def model_stream_config(model, **overrides):
    """The `StreamConfig` a model was trained on (`task.json` next to its weights), else the defaults with
    the model's segment size."""
    from .tasks.stream import StreamConfig

    src = getattr(model, "source_path", None) or getattr(model, "source_dir", None)
    d: dict[str, Any] = {}
    if src is not None and (Path(src) / "task.json").exists():
        d = dict(json.loads((Path(src) / "task.json").read_text()).get("stream", {}))
    d.setdefault("segment_size", model.config.segment_size)
    d.update(overrides)
    d.pop("chunk_segments", None)
    return StreamConfig(**d)


def _query_hits(preds: np.ndarray, tokens: np.ndarray, answer_tok: np.ndarray, value_size: int) -> np.ndarray:
    """preds/tokens [T] of one stream; answer_tok: first answer token per query -> bool per query."""
    ok = np.ones(len(answer_tok), dtype=bool)
    for j in range(value_size + 1):  # GEN+j predicts a_{j+1}; the last one predicts EOS
        ok &= preds[answer_tok - 1 + j] == tokens[answer_tok + j]
    return ok


def _answer_rows(ledger: xr.Dataset) -> xr.Dataset:
    return ledger.isel(event=np.flatnonzero(ledger["role"].values == "answer"))


def stream_exact_match(model, stream_config, n_segments: int, *, samples: int = 32, seed: int = 0, device=None,
                       batch_size: int = 64, ablate_memory: bool = False, progress: bool = False) -> dict[str, Any]:
    """EM over every query of `samples` fresh streams of `n_segments` segments (stream seeds seed..seed+samples-1).

    Returns {"exact_match", "n_queries", "exact_match_none" (queries whose answer is NONE), "n_none"}.
    """
    import torch
    from .tasks.stream import make_stream

    dev = _device(device) if device is not None else next(model.parameters()).device
    cfg = dataclasses.replace(stream_config, seed=None)
    S = cfg.segment_size
    hits, none = [], []
    with torch.no_grad(), _segment_size(model, S), _ablated(model, ablate_memory):
        for s in _progress(range(0, samples, batch_size), progress, "eval stream", batch_size, samples):
            chunks = [make_stream(dataclasses.replace(cfg, seed=seed + i), n_segments * S)
                      for i in range(s, min(samples, s + batch_size))]
            ids = torch.as_tensor(np.stack([c.input_ids for c in chunks]), device=dev)
            preds = model(ids).logits.argmax(-1).cpu().numpy()
            for b, c in enumerate(chunks):
                rows = _answer_rows(c.ledger)
                hits.append(_query_hits(preds[b], c.input_ids, rows["token"].values, cfg.value_size))
                none.append(rows["expected_answer"].values < 0)
    hit, non = np.concatenate(hits), np.concatenate(none)
    return {"exact_match": float(hit.mean()) if len(hit) else float("nan"), "n_queries": int(len(hit)),
            "exact_match_none": float(hit[non].mean()) if non.any() else float("nan"), "n_none": int(non.sum())}


def stream_queries(model, stream_config, n_tokens: int, *, device=None, ablate_memory: bool = False) -> xr.Dataset:
    """Run `model` over one long stream (segment by segment, flat memory) and return one row per query.

    Variables over `query`: correct (bool), token, segment, fact_id, expected_answer (-1: NONE), age_tokens and
    age_segments (query minus the start of the answer's version; -1 if the key was never written),
    intervening_writes (writes of any key strictly between the version's start and the query), n_superseded.
    """
    import torch
    from .tasks.stream import stream_chunks

    dev = _device(device) if device is not None else next(model.parameters()).device
    cfg = stream_config
    S = cfg.segment_size
    preds = np.empty(n_tokens, dtype=np.int64)
    tokens = np.empty(n_tokens, dtype=np.int64)
    ledgers = []
    pos = 0
    state = None
    with torch.no_grad(), _segment_size(model, S), _ablated(model, ablate_memory):
        for chunk in stream_chunks(cfg, n_tokens):
            ids = torch.as_tensor(chunk.input_ids, device=dev).unsqueeze(0)
            for out in model.stream([ids], state):  # the model's one segment loop
                state = out.state
                n = out.logits.shape[1]
                preds[pos:pos + n] = out.logits[0].argmax(-1).cpu().numpy()
                pos += n
            tokens[pos - len(chunk.input_ids):pos] = chunk.input_ids
            ledgers.append(chunk.ledger)
    from .tasks.ledger import concat_ledgers
    led = concat_ledgers(ledgers) if len(ledgers) > 1 else ledgers[0]
    rows = _answer_rows(led)
    tok = rows["token"].values
    vf = rows["valid_from"].values
    writes = np.sort(led["token"].values[led["role"].values == "key"])
    never = vf < 0
    inter = np.searchsorted(writes, tok) - np.searchsorted(writes, vf, side="right")
    ds = xr.Dataset(
        {
            "correct": ("query", _query_hits(preds, tokens, tok, cfg.value_size)),
            "token": ("query", tok),
            "segment": ("query", tok // S),
            "fact_id": ("query", rows["fact_id"].values),
            "expected_answer": ("query", rows["expected_answer"].values),
            "age_tokens": ("query", np.where(never, -1, tok - vf)),
            "age_segments": ("query", np.where(never, -1, tok // S - vf // S)),
            "intervening_writes": ("query", np.where(never, -1, inter)),
            "n_superseded": ("query", rows["n_superseded"].values),
        },
        coords={"query": np.arange(len(tok))},
        attrs={"n_tokens": n_tokens, "segment_size": S, "ablate_memory": int(ablate_memory),
               "stream_config": json.dumps(dataclasses.asdict(cfg), sort_keys=True)},
    )
    return ds


def recall_vs_age(queries: xr.Dataset, by: str = "age_segments", edges: Sequence[float] | None = None) -> xr.Dataset:
    """Accuracy of `queries` (from `stream_queries`) binned by `by` ("age_segments", "age_tokens",
    "intervening_writes", or "segment" for the position in the stream); rows with a negative value (queries
    about never-written keys) are left out. Pure.

    Default bins: 1, 2, 3, 4, then doubling (log2-spaced) up to the largest value. Bin i is [edges[i], edges[i+1]).
    """
    x = queries[by].values
    ok = queries["correct"].values
    keep = x >= 0
    x, ok = x[keep], ok[keep]
    if edges is None:
        top = max(1, int(x.max()) if len(x) else 1)
        edges = [0, 1, 2, 3, 4]
        while edges[-1] <= top:
            edges.append(edges[-1] * 2)
    e = np.asarray(edges, dtype=np.float64)
    idx = np.digitize(x, e) - 1
    nb = len(e) - 1
    count = np.bincount(idx[(idx >= 0) & (idx < nb)], minlength=nb)
    hit = np.bincount(idx[(idx >= 0) & (idx < nb)], weights=ok[(idx >= 0) & (idx < nb)], minlength=nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(count > 0, hit / np.maximum(count, 1), np.nan)
    return xr.Dataset(
        {"accuracy": ("bin", acc), "count": ("bin", count.astype(np.int64))},
        coords={"bin": np.arange(nb), "lower": ("bin", e[:-1]), "upper": ("bin", e[1:])},
        attrs={"by": by},
    )


# ----------------------------------------------------------------------------------------------- bAbI
def babi_exact_match(model, config=None, *, samples: int = 200, seed: int = 0, batch_size: int = 50, device=None,
                     ablate_memory: bool = False) -> float:
    """Teacher-forced EM on the questions of `make_babi_batch` stories (answer word then <eos>)."""
    import torch
    from .tasks.babi import BabiConfig, make_babi_batch

    dev = _device(device) if device is not None else next(model.parameters()).device
    cfg = config or BabiConfig(segment_size=model.config.segment_size)
    hits = []
    with torch.no_grad(), _ablated(model, ablate_memory):
        for s in range(0, samples, batch_size):
            b = make_babi_batch(cfg, batch_size=min(batch_size, samples - s), seed=seed + s)
            if b.tokenizer.vocab_size > model.vocab_size:
                raise ValueError(f"the bAbI vocabulary ({b.tokenizer.vocab_size} words) exceeds the model's "
                                 f"({model.vocab_size}); train the model on the bAbI tokenizer")
            ids = torch.as_tensor(b.input_ids, device=dev)
            mask = torch.as_tensor(b.attention_mask, device=dev).long()
            preds = model(ids, attention_mask=mask).logits.argmax(-1).cpu().numpy()
            rows = np.arange(len(ids))[:, None]
            p = b.answer_positions  # [sample, question]
            hits.append(((preds[rows, p - 1] == b.answers) & (preds[rows, p] == b.tokenizer.eos_id)).ravel())
    return float(np.concatenate(hits).mean())


# ----------------------------------------------------------------------------------------------- CLI
def _chance_fields(res: dict, task: str, value_size: int) -> dict[str, Any]:
    """``chance`` (EM of a uniform guess over the value set), the Wilson 95% interval of the EM, and whether
    the two cannot be told apart."""
    from .analysis.chance import rate_vs_chance

    n = int(res.get("n_queries") or res.get("samples") or 0)
    em = res.get("exact_match")
    if task == "babi" or em is None or not n or not np.isfinite(em):
        return {"chance": None}
    chance = chance_exact_match(value_size if task != "stream" else
                                int(res.get("stream_config", {}).get("value_size", 1)))
    cmp = rate_vs_chance(int(round(em * n)), n, chance)
    return {"chance": {"exact_match": chance, "basis": "uniform guess over the 16**V values",
                       "exact_match_ci95": [cmp["low"], cmp["high"]],
                       "indistinguishable_from_chance": cmp["indistinguishable"]}}


def run_eval(model: str = "demo", task: str = "ar-rewrite", pairs: int = 10, key_size: int = 1, value_size: int = 1,
             samples: int = 500, seed: int = 0, batch_size: int = 250, device: str = "auto",
             ablate_memory: bool = False, json: bool = False,  # noqa: A002 (CLI dest name)
             progress: bool = False) -> dict[str, Any]:
    """`armt-viz eval`: one evaluation, returned as a flat dict with at least `exact_match`.

    `pairs` is n for AR, the number of segments per stream for the stream task, and the number of facts per
    story for bAbI; `samples` counts AR samples, streams, or stories.
    """
    import torch

    from ._usage import UsageError

    if task not in TASKS:
        raise UsageError(f"--task {task!r}: expected one of {', '.join(TASKS)}")
    for name, v in (("pairs", pairs), ("samples", samples), ("batch-size", batch_size), ("key-size", key_size),
                    ("value-size", value_size)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise UsageError(f"--{name} {v!r}: expected a positive integer")
    if task == "ar-remember" and pairs > 16 ** key_size:
        raise UsageError(f"--pairs {pairs} with --task ar-remember: at most 16**key_size = {16 ** key_size} "
                         "distinct keys exist; use fewer pairs, a larger --key-size, or --task ar-rewrite")
    t0 = time.monotonic()
    torch.manual_seed(seed)
    m = load_model(model, task, device)
    dev = next(m.parameters()).device
    res: dict[str, Any] = {"task": task, "pairs": pairs, "samples": samples, "seed": seed,
                           "ablate_memory": bool(ablate_memory), "model": str(model),
                           "checkpoint_sha256": getattr(m, "checkpoint_sha256", None), "device": str(dev)}
    if task.startswith("ar-"):
        em = ar_exact_match(m, pairs, key_size, value_size, samples=samples, rewrite=task == "ar-rewrite",
                            seed=seed, batch_size=batch_size, device=dev, ablate_memory=ablate_memory,
                            progress=progress)
        res.update(exact_match=float(em.mean()), key_size=key_size, value_size=value_size,
                   capacity=float(pairs * em.mean()))
    elif task == "stream":
        cfg = model_stream_config(m)
        res.update(stream_exact_match(m, cfg, pairs, samples=samples, seed=seed, device=dev,
                                      batch_size=min(batch_size, 64), ablate_memory=ablate_memory,
                                      progress=progress))
        res["stream_config"] = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("seed", "chunk_segments")}
    else:
        from .tasks.babi import BabiConfig
        cfg = BabiConfig(n_facts=pairs, segment_size=m.config.segment_size)
        res["exact_match"] = babi_exact_match(m, cfg, samples=samples, seed=seed, batch_size=min(batch_size, 64),
                                              device=dev, ablate_memory=ablate_memory)
    res.update(_chance_fields(res, task, value_size))
    res["elapsed_s"] = round(time.monotonic() - t0, 2)
    return res
