"""Curriculum training of a small ARMT on associative retrieval and on the mutable-state stream.

Follows the official AR recipe (ARMT_SPEC.md §3.5, `scripts/associative_retrieval/finetune_amt_ar-value_cur.sh`,
ARMT paper arXiv 2407.04841 §4): a curriculum over the number of pairs n (one pair per segment), every stage
starting from the previous one, full BPTT, AdamW with a per-stage linear schedule (warmup = steps/10, decay
towards 2*steps, so the lr is still about half at the end of a stage), the loss on the answer and EOS of the
query segment (labels_mask as the official code, §1.7), periodic generation-based exact match, and an early end
of a stage once its EM reaches `advance_em` (the official `--desired_metric`). Departures, from the feasibility
runs of issue 4 and our own: batch 512, lr 5e-4, gradient-norm clipping 1.0 instead of value clipping, bf16
autocast on CUDA, a tiny GPT-2 backbone instead of GPT-NeoX, and by default a fixed n per batch starting at
n = 2 (`vary_n=True` gives the official `--vary_n_segments`: n ~ U{1..n_stage} per batch). A run that spent
200 steps at n = 1 with varied n stayed at EM ~ 1/n (one stored value, no key binding) for 4,000 steps; the
shipped recipe solved n = 50 in 1,000 steps (MODEL_CARD.md).

The stream task (`armt_viz.tasks.stream`) trains on windows of n segments cut at random from long generated
streams; a query is scored only when its answer was written inside the window (the model starts each window
with empty memory), and the curriculum runs over n.

Speed. A step is a chain of small kernels, one segment after another, and moves the [batch, key_feature, hidden]
memory of every layer in and out for every segment. Batches are drawn on the device
(`sample_ar`, `StreamPool.sample`), the segment step is `torch.compile`d on CUDA (two graphs: first segment and
the rest), and nothing in the loop reads a value back to the host except every `log_every` steps, where the
loss is logged and the NaN/Inf flag is checked.

Checkpoints: `out/checkpoint/` (model via `save_pretrained`, `optimizer.pt`, `progress.json`) after every stage
and when the time budget runs out; `--resume` continues from it, mid-stage if need be. `out/log.jsonl` has one
JSON line per log point and evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .config import ARMTConfig

__all__ = ["TrainConfig", "SPECIMEN_VARIANTS", "StreamCursor", "default_config", "smoke_config", "build_model", "sample_ar", "StreamPool",
           "official_loss", "train", "run_train", "export_fp16", "task_description"]

logger = logging.getLogger(__name__)

TASKS = ("ar-rewrite", "ar-remember", "stream", "mixed")
SEP, GEN, EOS, VOCAB = 100, 101, 102, 128  # armt_viz.tasks.associative_retrieval (official ids, §3.1)
_BIG = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (stored in `progress.json` and the model card).

    Attributes:
        task: "ar-rewrite", "ar-remember", "stream", or "mixed" (alternating AR-rewrite and stream batches; the
            model is saved with the stream segment size, AR batches are cut at K+V+2).
        curriculum: n per stage: pairs (AR) or segments per window (stream).
        steps: optimizer steps per stage (same length as curriculum).
        batch_size, lr, weight_decay, grad_clip: AdamW settings; clipping is on the global grad norm.
        warmup_frac, decay_horizon: per-stage schedule, warmup = warmup_frac*steps, linear decay to 0 at
            decay_horizon*steps (official: 0.1 and 2.0).
        vary_n: AR: each batch draws n uniformly in 1..n_stage (the official `--vary_n_segments`); off by
            default, where every batch uses the stage's n (the shipped recipe).
        key_size, value_size: AR key/value digits K, V (segment = K+V+2 tokens, one pair per segment).
        n_layer, d_model, n_head, n_positions: GPT-2 backbone (vocab 128, no dropout).
        num_mem_tokens, d_mem: ARMT memory (M, d_mem); correction on, wrap_pos off (official AR settings).
        stream_*: the stream format (`StreamConfig`) for "stream"/"mixed"; stream_pool_tokens tokens are
            generated once and windows are sampled from them.
        stream_p_query_absent: probability a stream query asks about a key without a value (None: the
            StreamConfig default).
        stream_fresh_windows: every curriculum window is the start of a stream of its own (empty key table), so
            every query in it is answerable from the window; off: windows are cut at random from long streams,
            where most queries ask about keys written before the window and go unscored (with 64 keys and one
            write per segment, about 1 in 64 at n = 2: the first specimen run learned nothing from them).
        stream_long_segments: length in segments of each long stream the truncated-BPTT cursor walks (the pool
            then holds stream_pool_tokens / (segments * S) streams, and a row that restarts starts a stream from
            its beginning with empty memory); None: the cursor walks the curriculum's pool.
        tbptt_from_stage: stream only; from this stage on, truncated BPTT over long streams: every batch row
            walks along one long stream window after window, its memory carried (detached) from the previous
            step, so the model learns on memories that hold long histories; rows restart at a random point
            with empty memory with probability `tbptt_reset` per step (or at the stream's end).
            None: every window starts from empty memory.
        eval_segments: stream only; in the truncated-BPTT stages, evaluate on streams of at least this many
            segments (None: the stage's n).
        correction, gating, delta_rule: ARMTConfig switches of the trained model (gamma correction,
            per-channel write gate, delta rule); the specimen variants differ only in these and d_mem.
        eval_every, eval_samples: periodic generation-based exact match at the stage's n.
        advance_em: end a stage early once its evaluation reaches this EM (None: never).
        device: "auto" (CUDA when available), "cpu", "cuda", ...; bf16: autocast on CUDA (None: on when CUDA).
        compile: torch.compile the segment step (None: on when CUDA).
        seed: seeds the backbone init and the batch sampler. time_budget: seconds, then checkpoint and stop.
        log_every: steps between loss logs (and host reads).
    """

    task: str = "ar-rewrite"
    curriculum: tuple[int, ...] = (2, 3, 5, 10, 20, 50)
    steps: tuple[int, ...] = (600, 900, 1400, 1200, 1200, 2000)
    batch_size: int = 512
    lr: float = 5e-4
    weight_decay: float = 1e-3
    grad_clip: float = 1.0
    warmup_frac: float = 0.1
    decay_horizon: float = 2.0
    vary_n: bool = False
    key_size: int = 1
    value_size: int = 1
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    n_positions: int = 64
    num_mem_tokens: int = 4
    d_mem: int = 64
    stream_segment_size: int = 32
    stream_events: int = 6
    stream_keys: int = 16
    stream_key_size: int = 1
    stream_value_size: int = 1
    stream_p_write: float = 0.5
    stream_p_query: float = 0.4
    stream_p_delete: float = 0.1
    stream_pool_tokens: int = 8_000_000
    stream_p_query_absent: float | None = None
    stream_fresh_windows: bool = False
    stream_long_segments: int | None = None
    tbptt_from_stage: int | None = None
    tbptt_reset: float = 0.02
    eval_segments: int | None = None
    correction: bool = True
    gating: bool = False
    delta_rule: bool = True
    eval_every: int = 100
    eval_samples: int = 500
    advance_em: float | None = 0.95
    device: str = "auto"
    bf16: bool | None = None
    compile: bool | None = None
    seed: int = 0
    time_budget: float | None = None
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"TrainConfig.task must be one of {TASKS}, got {self.task!r}")
        if len(self.curriculum) != len(self.steps) or not self.curriculum:
            raise ValueError(f"TrainConfig: curriculum {self.curriculum} and steps {self.steps} must be non-empty "
                             "and of the same length (one step count per stage)")
        if any(int(n) < 1 for n in self.curriculum) or any(int(s) < 1 for s in self.steps):
            raise ValueError(f"TrainConfig: stages need n >= 1 and steps >= 1, got {self.curriculum} / {self.steps}")
        if self.task == "ar-remember" and max(self.curriculum) > 16 ** self.key_size:
            raise ValueError(f"TrainConfig: ar-remember needs n <= 16**key_size = {16 ** self.key_size}, got a stage "
                             f"with n = {max(self.curriculum)}; raise key_size or use ar-rewrite")
        if self.task in ("stream", "mixed") and min(self.curriculum) < 2:
            raise ValueError("TrainConfig: stream windows need n >= 2 segments (queries are answered from earlier "
                             f"segments only), got curriculum {self.curriculum}")
        if self.batch_size < 1 or self.lr <= 0 or self.grad_clip <= 0:
            raise ValueError(f"TrainConfig: batch_size, lr and grad_clip must be positive, got "
                             f"{self.batch_size}, {self.lr}, {self.grad_clip}")

    @property
    def ar_segment_size(self) -> int:
        return self.key_size + self.value_size + 2

    @property
    def segment_size(self) -> int:
        """Segment size the model is saved with."""
        return self.stream_segment_size if self.task in ("stream", "mixed") else self.ar_segment_size

    def stream_config(self, seed: int | None = None, **overrides):
        from .tasks.stream import StreamConfig
        kw = dict(n_keys=self.stream_keys, key_size=self.stream_key_size, value_size=self.stream_value_size,
                  segment_size=self.stream_segment_size, events_per_segment=self.stream_events,
                  p_write=self.stream_p_write, p_query=self.stream_p_query, p_delete=self.stream_p_delete, seed=seed)
        if self.stream_p_query_absent is not None:
            kw["p_query_absent"] = self.stream_p_query_absent
        kw.update(overrides)
        return StreamConfig(**kw)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = dict(d)
        for k in ("curriculum", "steps"):
            d[k] = tuple(d[k])
        return cls(**d)


# The stream specimen family (issue 13): one recipe, variants differ only in these ARMTConfig switches.
SPECIMEN_VARIANTS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "no-gamma": {"correction": False},
    "gate": {"gating": True},
    "half-dmem": {"d_mem": 32},
    "no-delta": {"delta_rule": False},
}


def default_config(task: str = "ar-rewrite", variant: str | None = None) -> TrainConfig:
    """Default recipe per task. AR: the shipped model's (pairs 2..50, fixed n per batch, stages end early at
    EM >= 0.95). Stream: the specimen recipe (64 keys of 2 digits, 16-token segments with 2 events each,
    deletes, 8 memory tokens); windows of 2..16 segments from empty memory, then truncated BPTT over long
    streams with carried memory (`tbptt_from_stage`). `variant` picks a member of `SPECIMEN_VARIANTS`."""
    if variant is not None and variant not in SPECIMEN_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(SPECIMEN_VARIANTS)}, got {variant!r}")
    if variant is not None and task != "stream":
        raise ValueError(f"variants belong to the stream specimen family (task 'stream'), got task {task!r}")
    if task == "stream":
        base = TrainConfig(
            task=task, curriculum=(2, 4, 8, 16), steps=(2000, 2000, 2000, 3000), batch_size=512, lr=1e-3,
            num_mem_tokens=8, d_mem=64, n_positions=32, stream_segment_size=16, stream_events=2,
            stream_keys=64, stream_key_size=2, stream_value_size=1, stream_p_write=0.5, stream_p_query=0.4,
            stream_p_delete=0.1, stream_pool_tokens=4_000_000, stream_fresh_windows=True,
            stream_long_segments=2048, tbptt_from_stage=3, tbptt_reset=0.01,
            eval_segments=64, eval_every=100, eval_samples=1024, advance_em=0.97)
        return dataclasses.replace(base, **SPECIMEN_VARIANTS[variant or "baseline"])
    if task == "ar-remember":  # distinct keys: n <= 16**K = 16
        return TrainConfig(task=task, curriculum=(2, 3, 5, 10, 16), steps=(600, 900, 1400, 1200, 1200))
    if task == "mixed":
        return TrainConfig(task=task, curriculum=(2, 3, 5, 10, 20, 50), steps=(600, 900, 1400, 1200, 1200, 2000))
    return TrainConfig(task=task)


def smoke_config(task: str = "ar-rewrite") -> TrainConfig:
    """A tiny CPU run (2 layers, d 64, a few dozen steps) for tests: well under a minute on 2 cores."""
    stream = task in ("stream", "mixed")
    return TrainConfig(
        task=task, curriculum=(2, 3) if stream else (1, 2), steps=(6, 6), batch_size=16, lr=1e-3,
        n_layer=2, d_model=64, n_head=2, n_positions=48 if stream else 16, num_mem_tokens=2, d_mem=16,
        stream_segment_size=16, stream_events=3, stream_pool_tokens=16 * 256,
        eval_every=6, eval_samples=16, advance_em=None, device="cpu", bf16=False, compile=False, log_every=3)


# ----------------------------------------------------------------------------------------------- model
def build_model(cfg: TrainConfig):
    """A fresh tiny GPT-2 (vocab 128, no dropout) wrapped by ARMTModel."""
    import transformers
    from .model.armt import ARMTModel

    if cfg.n_positions < cfg.segment_size + cfg.num_mem_tokens:
        raise ValueError(f"n_positions={cfg.n_positions} must hold a segment plus memory tokens "
                         f"({cfg.segment_size} + {cfg.num_mem_tokens})")
    bb_cfg = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=cfg.n_positions, n_embd=cfg.d_model, n_layer=cfg.n_layer, n_head=cfg.n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=GEN, eos_token_id=EOS, pad_token_id=EOS)
    backbone = transformers.GPT2LMHeadModel(bb_cfg)
    flags = {"correction": cfg.correction, "gating": cfg.gating}
    if not cfg.delta_rule:  # only passed when off, so older ARMTConfig versions still build the baseline
        flags["delta_rule"] = False
    armt = ARMTConfig(num_mem_tokens=cfg.num_mem_tokens, d_mem=cfg.d_mem, segment_size=cfg.segment_size, **flags)
    return ARMTModel.from_backbone(backbone, armt)


# ----------------------------------------------------------------------------------------------- data
def _digits(codes: torch.Tensor, size: int) -> torch.Tensor:
    """Little-endian base-16 digits: (...,) -> (..., size), as `tasks.codes_to_digits`."""
    powers = 16 ** torch.arange(size, device=codes.device)
    return (codes.unsqueeze(-1) // powers) % 16


def sample_ar(n: int, key_size: int, value_size: int, batch_size: int, *, rewrite: bool,
              generator: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of official-format AR samples drawn on `device` (same distribution as `tasks.make_ar_batch`).

    Returns (input_ids [batch, (n+1)(K+V+2)], labels_mask [batch, same], True on the last V+2 positions).
    Rewrite: keys with replacement, target uniform among the distinct keys, answer at the last occurrence
    (uniform over last occurrences == uniform over distinct keys). Remember: distinct keys, target uniform.
    """
    K, V, B = key_size, value_size, batch_size
    kw = dict(generator=generator, device=device)
    if rewrite:
        keys = torch.randint(0, 16 ** K, (B, n), **kw)
        later = torch.ones(n, n, dtype=torch.bool, device=device).triu(1)  # [i, j]: j after i
        seen_later = ((keys[:, :, None] == keys[:, None, :]) & later).any(2)  # [batch, n]
        score = torch.rand(B, n, **kw).masked_fill(seen_later, -1.0)
        target = score.argmax(1)
    else:
        keys = torch.rand(B, 16 ** K, **kw).argsort(1)[:, :n]
        target = torch.randint(0, n, (B,), **kw)
    values = torch.randint(0, 16 ** V, (B, n), **kw)
    col = lambda tok: torch.full((B, n, 1), tok, dtype=torch.long, device=device)  # noqa: E731
    pairs = torch.cat([_digits(keys, K), col(SEP), _digits(values, V), col(EOS)], -1)  # [batch, n, K+V+2]
    rows = torch.arange(B, device=device)
    q_key, q_val = keys[rows, target], values[rows, target]
    query = torch.cat([_digits(q_key, K), col(GEN)[:, 0], _digits(q_val, V), col(EOS)[:, 0]], -1)
    ids = torch.cat([pairs.reshape(B, -1), query], 1)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, -(V + 2):] = True
    return ids, mask


def _stream_parts(cfg_dict: dict, n_tokens: int, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Worker: one stream of n_tokens per seed -> (tokens [stream, token], scored_from [stream, token]) where
    scored_from[p] is the first token a window may start at for position p's prediction to be scored (-1: never
    scored; int64 max: always)."""
    from .tasks.stream import StreamConfig, make_stream

    toks, scored = [], []
    for seed in seeds:
        cfg = StreamConfig(**{**cfg_dict, "seed": seed})
        chunk = make_stream(cfg, n_tokens)
        led = chunk.ledger
        ans = led["role"].values == "answer"
        tok = led["token"].values[ans]
        valid_from = led["valid_from"].values[ans]
        start = np.where(valid_from < 0, _BIG, valid_from)  # never written: NONE is answerable anywhere
        scored_from = np.full(n_tokens, -1, dtype=np.int64)
        for j in range(-1, cfg.value_size):  # GEN .. last answer digit predict a_1 .. EOS
            scored_from[tok + j] = start
        toks.append(chunk.input_ids.astype(np.int64))
        scored.append(scored_from)
    return np.stack(toks), np.stack(scored)


class StreamPool:
    """Streams generated once; `sample` cuts segment-aligned windows of n segments.

    `stream_segments=None`: one long stream per worker, windows start at random segments. Otherwise
    `stream_pool_tokens // (stream_segments * S)` streams of `stream_segments` segments each, and with
    `from_start` every window is the beginning of a stream (empty key table before it).

    A position is scored when it is GEN or an answer digit of a query whose answer version was written at or
    after the window's first token (or never written: NONE), so every scored answer is recoverable from memory.
    """

    def __init__(self, cfg: TrainConfig, seed: int, device, workers: int = 1, stream_segments: int | None = None,
                 from_start: bool = False):
        S = cfg.stream_segment_size
        if stream_segments is None:
            n_streams = max(1, workers)
            per = max(S * 64, cfg.stream_pool_tokens // n_streams // S * S)
        else:
            per = int(stream_segments) * S
            n_streams = max(1, cfg.stream_pool_tokens // per)
        seeds = [seed * 1_000_000 + i for i in range(n_streams)]
        cfg_dict = dataclasses.asdict(cfg.stream_config())
        n_jobs = max(1, min(n_streams, 4 * workers))
        groups = [seeds[i::n_jobs] for i in range(n_jobs)]
        if workers > 1 and n_jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            from ._process import exit_with_parent
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=exit_with_parent) as ex:
                parts = list(ex.map(_stream_parts, [cfg_dict] * n_jobs, [per] * n_jobs, groups))
        else:
            parts = [_stream_parts(cfg_dict, per, g) for g in groups]
        order = np.argsort(np.concatenate([np.asarray(g) for g in groups]), kind="stable")  # back to seed order
        self.segment_size = S
        self.from_start = bool(from_start)
        self.tokens = torch.as_tensor(np.concatenate([p[0] for p in parts])[order]).to(device)  # [stream, token]
        self.scored_from = torch.as_tensor(np.concatenate([p[1] for p in parts])[order]).to(device)
        self.device = device

    def sample(self, n: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        S = self.segment_size
        n_streams, T = self.tokens.shape
        if n * S > T:
            raise ValueError(f"StreamPool: windows of {n} segments need streams of at least {n * S} tokens, the "
                             f"pool's are {T}; build the pool with stream_segments >= {n}")
        kw = dict(generator=generator, device=self.device)
        stream = torch.randint(0, n_streams, (batch_size, 1), **kw)
        if self.from_start:
            start = torch.zeros(batch_size, 1, dtype=torch.long, device=self.device)
        else:
            start = torch.randint(0, T // S - n + 1, (batch_size, 1), **kw) * S
        idx = start + torch.arange(n * S, device=self.device)
        ids = self.tokens[stream, idx]
        sf = self.scored_from[stream, idx]
        mask = (sf >= start) & (sf >= 0)
        return ids, mask


# ----------------------------------------------------------------------------------------------- loss
class StreamCursor:
    """Truncated BPTT over the pool's long streams: row b reads windows of n segments one after another from
    stream `stream[b]`; its memory is carried between calls (detached by the caller). A query is scored when its
    answer version was written at or after the token where the row's memory started (`origin`), or was never
    written. Rows restart (random segment, empty memory) with probability `reset` per call or at the stream end;
    over a `from_start` pool a restarting row starts a random stream from its beginning instead.
    """

    def __init__(self, pool: StreamPool, batch_size: int, reset: float, generator: torch.Generator):
        self.pool, self.batch_size, self.reset = pool, batch_size, reset
        self.gen = generator
        dev = pool.device
        n_streams, T = pool.tokens.shape
        self.n_segments_total = T // pool.segment_size
        self.stream = torch.randint(0, n_streams, (batch_size,), generator=generator, device=dev)
        self.pos = torch.randint(0, max(1, self.n_segments_total // 2), (batch_size,), generator=generator,
                                 device=dev) * pool.segment_size
        self.origin = self.pos.clone()
        self.state = None

    def sample(self, n: int, model) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """-> (ids [batch, n*S], labels mask, initial MemoryState with reset rows zeroed)."""
        S, dev = self.pool.segment_size, self.pool.device
        T = self.n_segments_total * S
        restart = torch.rand(self.batch_size, generator=self.gen, device=dev) < self.reset
        restart |= self.pos + n * S > T
        if self.state is None:
            restart[:] = True
        if self.pool.from_start:
            fresh_pos = torch.zeros_like(self.pos)
            fresh_stream = torch.randint(0, self.pool.tokens.shape[0], (self.batch_size,), generator=self.gen,
                                         device=dev)
            self.stream = torch.where(restart, fresh_stream, self.stream)
        else:
            fresh_pos = torch.randint(0, self.n_segments_total - n + 1, (self.batch_size,), generator=self.gen,
                                      device=dev) * S
        self.pos = torch.where(restart, fresh_pos, self.pos)
        self.origin = torch.where(restart, self.pos, self.origin)
        idx = self.pos[:, None] + torch.arange(n * S, device=dev)
        ids = self.pool.tokens[self.stream[:, None], idx]
        sf = self.pool.scored_from[self.stream[:, None], idx]
        mask = (sf >= self.origin[:, None]) & (sf >= 0)
        if self.state is None:
            state = model.init_state(self.batch_size, dev)
        else:
            keep = (~restart).to(self.state.assoc[0].dtype)
            state = type(self.state)(tuple(a * keep.view(-1, 1, 1, 1) for a in self.state.assoc),
                                     tuple(z * keep.view(-1, 1, 1) for z in self.state.normalizer), 1)
        self.pos = self.pos + n * S
        return ids, mask, state

    def carry(self, state) -> None:
        self.state = state.detach()


def official_loss(logits: torch.Tensor, labels: torch.Tensor, labels_mask: torch.Tensor) -> torch.Tensor:
    """ARMT_SPEC §1.7: global shift, keep labels_mask[:, :-1], mean CE; a masked mean instead of boolean
    indexing so that no host sync happens (same value as `armt.lm_loss`)."""
    ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                         reduction="none")
    keep = labels_mask[:, :-1].reshape(-1).to(ce.dtype)
    return (ce * keep).sum() / keep.sum().clamp_min(1.0)


def _segment_fn(model) -> Callable:
    from .model.armt import MemoryState

    def step(ids, assoc, normalizer, first: bool):
        out = model.step(ids, MemoryState(assoc, normalizer, 0 if first else 1))
        return out.logits, out.state.assoc, out.state.normalizer

    return step


class CompiledStep:
    """A SegmentStep (model/steps.py) over `fn(ids, assoc, normalizer, first) -> (logits, assoc, normalizer)`:
    `_segment_fn(model)` or its `torch.compile`d version (two graphs: first segment and later ones), with autograd."""

    def __init__(self, model, fn: Callable):
        self.model, self.fn = model, fn

    @staticmethod
    def why_not(model, state=None, ids=None) -> str | None:
        return None

    def __call__(self, ids, state, segment: int):
        from .model.armt import MemoryState, SegmentOutput

        state = state if state is not None else self.model.init_state(ids.shape[0], ids.device)
        logits, A, Z = self.fn(ids, state.assoc, state.normalizer, state.first)
        return SegmentOutput(logits, MemoryState(tuple(A), tuple(Z), state.segments + 1), segment, ids)


def _forward(step_fn, model, ids: torch.Tensor, segment_size: int, state=None):
    """All segments with full BPTT through the model's one segment loop; returns the concatenated logits
    [batch, seq, vocab], and with a given (carried) `state` also the final state. `segment_size` is the batch's
    own (AR and stream batches of a mixed run differ). A carried state is never a first segment (its rows may
    have been restarted at zero, which reads and writes as a later segment, as before)."""
    from .model.armt import MemoryState

    carried = state is not None
    if carried:
        state = MemoryState(tuple(state.assoc), tuple(state.normalizer), max(state.segments, 1))
    else:
        state = model.init_state(ids.shape[0], ids.device)
    # contiguous: a slice of the batch has the batch's row stride, and torch.compile guards on strides (one
    # recompile per window length n otherwise)
    segments = [(ids[:, s:s + segment_size].contiguous(), None) for s in range(0, ids.shape[1], segment_size)]
    outs = list(model.run_segments(segments, state, grad=True, step=CompiledStep(model, step_fn)))
    logits = torch.cat([o.logits for o in outs], 1)
    if carried:
        last = outs[-1].state
        return logits, MemoryState(last.assoc, last.normalizer, 1)
    return logits


# ----------------------------------------------------------------------------------------------- checkpoints
def task_description(cfg: TrainConfig) -> dict[str, Any]:
    """`task.json`: what the model was trained on (read by `evaluate.model_stream_config`)."""
    d: dict[str, Any] = {"task": cfg.task, "curriculum": list(cfg.curriculum)}
    if cfg.task != "stream":
        d["ar"] = {"key_size": cfg.key_size, "value_size": cfg.value_size, "rewrite": cfg.task != "ar-remember"}
    if cfg.task in ("stream", "mixed"):
        sc = dataclasses.asdict(cfg.stream_config())
        d["stream"] = {k: v for k, v in sc.items() if k not in ("seed", "chunk_segments")}
    return d


def _save_checkpoint(out: Path, model, optimizer, progress: dict, cfg: TrainConfig) -> None:
    ck = out / "checkpoint"
    tmp = out / "checkpoint.tmp"
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "progress.json").write_text(json.dumps(progress, indent=2, sort_keys=True))
    (tmp / "task.json").write_text(json.dumps(task_description(cfg), indent=2, sort_keys=True))
    if ck.exists():
        import shutil
        shutil.rmtree(ck)
    tmp.rename(ck)


def _load_checkpoint(out: Path, model, optimizer) -> dict:
    from safetensors.torch import load_model

    ck = out / "checkpoint"
    if not (ck / "progress.json").exists():
        raise FileNotFoundError(f"--resume: no checkpoint in {str(ck)!r}; run without --resume first")
    load_model(model, str(ck / "model.safetensors"), strict=True)
    optimizer.load_state_dict(torch.load(ck / "optimizer.pt", map_location="cpu", weights_only=True))
    return json.loads((ck / "progress.json").read_text())


def export_fp16(model, directory) -> None:
    """Save `model` with float16 weights (half the size); `ARMTModel.from_pretrained` loads them into float32."""
    import copy
    half = copy.deepcopy(model).to("cpu").half()
    half.save_pretrained(directory)


# ----------------------------------------------------------------------------------------------- training
def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _lr_factor(t: int, steps: int, cfg: TrainConfig) -> float:
    warm = max(1, int(cfg.warmup_frac * steps))
    if t < warm:
        return (t + 1) / warm
    horizon = cfg.decay_horizon * steps
    return max(0.0, (horizon - t) / max(1.0, horizon - warm))


@dataclass
class _Log:
    path: Path
    records: list = field(default_factory=list)

    def write(self, **rec) -> None:
        rec = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in rec.items()}
        self.records.append(rec)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec, sort_keys=True) + "\n")


def _evaluate(model, cfg: TrainConfig, kind: str, n: int, seed: int, device) -> float:
    from . import evaluate as ev

    if kind == "stream":
        res = ev.stream_exact_match(model, cfg.stream_config(), n_segments=n, samples=max(4, cfg.eval_samples // 8),
                                    seed=seed, device=device)
        return float(res["exact_match"])
    em = ev.ar_exact_match(model, n, cfg.key_size, cfg.value_size, samples=cfg.eval_samples,
                           rewrite=kind != "ar-remember", seed=seed, batch_size=cfg.eval_samples, device=device)
    return float(em.mean())


def train(cfg: TrainConfig, out, *, resume: bool = False) -> dict:
    """Run (or continue) the curriculum; returns the final progress dict. See the module docstring."""
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(cfg.device)
    use_bf16 = (device.type == "cuda") if cfg.bf16 is None else (cfg.bf16 and device.type == "cuda")
    use_compile = (device.type == "cuda") if cfg.compile is None else cfg.compile
    t_start = time.monotonic()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg).to(device)
    fused = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    log = _Log(out / "log.jsonl")
    progress = {"stage": 0, "step_in_stage": 0, "global_step": 0, "train_seconds": 0.0, "stages_done": [],
                "evals": []}
    if resume:
        saved = _load_checkpoint(out, model, optimizer)
        progress.update({k: saved[k] for k in progress if k in saved})
        logger.info("resumed from %s at stage %d step %d", out / "checkpoint", progress["stage"],
                    progress["step_in_stage"])
    progress["train_config"] = cfg.to_dict()
    progress["device"] = str(device) if device.type != "cuda" else torch.cuda.get_device_name(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed * 7919 + progress["global_step"])  # fresh draws after a resume
    pool = None
    if cfg.task in ("stream", "mixed"):
        t0 = time.monotonic()
        workers = 1 if device.type == "cpu" else min(16, max(1, (os.cpu_count() or 2) - 1))
        if cfg.stream_fresh_windows:
            n_window = max(cfg.curriculum[:cfg.tbptt_from_stage] or cfg.curriculum)
            pool = StreamPool(cfg, cfg.seed, device, workers=workers, stream_segments=n_window, from_start=True)
        else:
            pool = StreamPool(cfg, cfg.seed, device, workers=workers)
        logger.info("stream pool: %s tokens in %.1fs", tuple(pool.tokens.shape), time.monotonic() - t0)
    seg_fn = _segment_fn(model)
    # static shapes: the step sees [batch, S] ids and three state kinds (first segment, later with grad, carried
    # without grad), three graphs; automatic dynamic shapes recompiled for seconds per step at the carried stage
    step_fn = torch.compile(seg_fn, dynamic=False) if use_compile else seg_fn
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    params = [p for p in model.parameters() if p.requires_grad]
    budget_hit = False
    compile_checked = False

    cursor = None

    def batch(kind: str, n_max: int):
        if kind == "stream":
            if cursor is not None:
                ids, mask, state = cursor.sample(n_max, model)
                return (ids, mask, state), cfg.stream_segment_size
            return pool.sample(n_max, cfg.batch_size, gen), cfg.stream_segment_size
        n = int(torch.randint(1, n_max + 1, (1,)).item()) if cfg.vary_n else n_max  # CPU RNG: no device sync
        ids, mask = sample_ar(n, cfg.key_size, cfg.value_size, cfg.batch_size, rewrite=kind != "ar-remember",
                              generator=gen, device=device)
        return (ids, mask), cfg.ar_segment_size

    def loss_and_backward(fn, ids, mask, seg, state=None):
        with autocast():
            if state is None:
                loss = official_loss(_forward(fn, model, ids, seg), ids, mask)
            else:
                logits, final = _forward(fn, model, ids, seg, state)
                loss = official_loss(logits, ids, mask)
                cursor.carry(final)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    torch.manual_seed(cfg.seed + 1 + progress["global_step"])  # the CPU RNG that draws n per batch
    for stage in range(progress["stage"], len(cfg.curriculum)):
        n_max, steps = int(cfg.curriculum[stage]), int(cfg.steps[stage])
        kinds = ["ar-rewrite", "stream"] if cfg.task == "mixed" else [cfg.task]
        t0, seen0 = time.monotonic(), progress["step_in_stage"]
        loss_sum = torch.zeros((), device=device)
        bad_step = torch.full((), -1, dtype=torch.long, device=device)
        model.train()
        bar = tqdm(total=steps, initial=progress["step_in_stage"], desc=f"stage {stage} n={n_max}",
                   dynamic_ncols=True, mininterval=2.0)
        advanced = False
        if cfg.tbptt_from_stage is not None and stage >= cfg.tbptt_from_stage and cursor is None:
            long_pool = pool
            if cfg.stream_long_segments is not None:
                t1 = time.monotonic()
                long_pool = StreamPool(cfg, cfg.seed + 1, device, workers=workers,
                                       stream_segments=cfg.stream_long_segments, from_start=True)
                logger.info("long-stream pool: %s tokens in %.1fs", tuple(long_pool.tokens.shape),
                            time.monotonic() - t1)
            cursor = StreamCursor(long_pool, cfg.batch_size, cfg.tbptt_reset, gen)
        t = progress["step_in_stage"]
        while t < steps:
            kind = kinds[t % len(kinds)]
            (ids, mask, *carried), seg = batch(kind, n_max)
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * _lr_factor(t, steps, cfg)
            if not compile_checked and step_fn is not seg_fn:
                try:  # the first compiled step (forward and backward); fall back to eager if it breaks
                    tc = time.monotonic()
                    loss = loss_and_backward(step_fn, ids, mask, seg, *carried)
                    logger.info("torch.compile: first step took %.1fs", time.monotonic() - tc)
                except Exception as exc:
                    logger.warning("torch.compile failed (%s: %s); continuing eagerly", type(exc).__name__,
                                   str(exc).splitlines()[0][:300] if str(exc) else "")
                    step_fn = seg_fn
                    loss = loss_and_backward(step_fn, ids, mask, seg, *carried)
            else:
                loss = loss_and_backward(step_fn, ids, mask, seg, *carried)
            compile_checked = True
            gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            finite = torch.isfinite(loss) & torch.isfinite(gnorm)
            bad_step = torch.where((bad_step < 0) & ~finite, torch.full_like(bad_step, t), bad_step)
            optimizer.step()
            loss_sum += loss.detach()
            t += 1
            progress["step_in_stage"], progress["global_step"] = t, progress["global_step"] + 1
            bar.update(1)
            if t % cfg.log_every == 0 or t == steps:
                bad = int(bad_step.item())
                if bad >= 0:
                    bar.close()
                    raise FloatingPointError(
                        f"non-finite loss or gradient norm at step {bad} of stage {stage} (n={n_max}, lr "
                        f"{cfg.lr}); the last good checkpoint is {str(out / 'checkpoint')!r} "
                        "(lower --lr or check the data)")
                k = cfg.log_every if t % cfg.log_every == 0 else (t % cfg.log_every)
                mean = loss_sum.item() / k
                loss_sum.zero_()
                rate = (t - seen0) / max(1e-9, time.monotonic() - t0)
                bar.set_postfix(loss=f"{mean:.4f}", it_s=f"{rate:.1f}")
                log.write(kind="loss", stage=stage, n=n_max, step=t, global_step=progress["global_step"],
                          loss=mean, grad_norm=float(gnorm), lr=optimizer.param_groups[0]["lr"], steps_per_s=rate,
                          elapsed=time.monotonic() - t_start)
            if t % cfg.eval_every == 0 or t == steps:
                model.eval()
                long_eval = cfg.task == "stream" and cfg.tbptt_from_stage is not None and stage >= cfg.tbptt_from_stage
                n_eval = max(n_max, cfg.eval_segments or 0) if long_eval else n_max
                ems = {k2: _evaluate(model, cfg, k2, n_eval, 12345 + stage, device) for k2 in kinds}
                model.train()
                for k2, em in ems.items():
                    log.write(kind="eval", task=k2, stage=stage, n=n_max, step=t, exact_match=em,
                              elapsed=time.monotonic() - t_start)
                    progress["evals"].append({"stage": stage, "n": n_max, "step": t, "task": k2, "exact_match": em})
                    logger.info("stage %d n=%d step %d: %s EM %.4f", stage, n_max, t, k2, em)
                if cfg.advance_em is not None and min(ems.values()) >= cfg.advance_em and t < steps:
                    advanced = True
                    break
            if cfg.time_budget is not None and time.monotonic() - t_start > cfg.time_budget and t < steps:
                budget_hit = True
                break
        bar.close()
        progress["train_seconds"] = progress.get("train_seconds", 0.0) + (time.monotonic() - t0)
        if budget_hit:
            _save_checkpoint(out, model, optimizer, progress, cfg)
            logger.info("time budget reached in stage %d at step %d; checkpoint saved", stage, t)
            break
        progress["stages_done"].append({"stage": stage, "n": n_max, "steps": t, "advanced_early": advanced,
                                        "seconds": round(time.monotonic() - t0, 1)})
        progress["stage"], progress["step_in_stage"] = stage + 1, 0
        _save_checkpoint(out, model, optimizer, progress, cfg)
        if cfg.time_budget is not None and time.monotonic() - t_start > cfg.time_budget:
            budget_hit = stage + 1 < len(cfg.curriculum)
            break
    progress["finished"] = progress["stage"] >= len(cfg.curriculum)
    progress["budget_hit"] = budget_hit
    (out / "progress.json").write_text(json.dumps(progress, indent=2, sort_keys=True))
    return progress


def _ints(text: str | None, name: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in str(text).split(",") if x.strip())
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers such as '1,2,3,5', got {text!r}") from None


def run_train(task: str = "ar-rewrite", out: str = "runs/train", smoke: bool = False, resume: bool = False,
              variant: str | None = None,
              curriculum: str | None = None, steps: str | None = None, batch_size: int | None = None,
              lr: float | None = None, device: str = "auto", bf16: bool | None = None, seed: int = 0,
              time_budget: float | None = None) -> int:
    """`armt-viz train`: defaults from `TrainConfig` (or `smoke_config`), overridden by the given flags."""
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    base = smoke_config(task) if smoke else default_config(task, variant)
    if smoke and variant is not None:
        base = dataclasses.replace(base, **SPECIMEN_VARIANTS[variant])
    over: dict[str, Any] = {"seed": seed}
    cur, stp = _ints(curriculum, "curriculum"), _ints(steps, "steps")
    if cur is not None:
        over["curriculum"] = cur
        if stp is None:  # keep the default steps of the matching stages, repeat the last one
            stp = tuple(base.steps[min(i, len(base.steps) - 1)] for i in range(len(cur)))
    if stp is not None:
        over["steps"] = stp
    for k, v in (("batch_size", batch_size), ("lr", lr), ("bf16", bf16), ("time_budget", time_budget)):
        if v is not None:
            over[k] = v
    if device != "auto" or not smoke:
        over["device"] = device
    cfg = dataclasses.replace(base, **over)
    progress = train(cfg, out, resume=resume)
    logger.info("done: stage %d/%d, %d steps, %.0fs of training; checkpoint %s", progress["stage"],
                len(cfg.curriculum), progress["global_step"], progress["train_seconds"], Path(out) / "checkpoint")
    return 0
