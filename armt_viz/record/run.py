"""The `armt-viz record` job: a model, a task stream, a store (the CLI only parses into this).

Checks come first, before anything is allocated: the model spec, the token count, the probes spec, and the
size of the trace (``estimate_bytes``) against the level's budget, the free disk and the memory the task
input needs. A problem a user can fix raises ``armt_viz.UsageError`` (the CLI prints it as one line, exit 2).

Defaults (``level="auto"``, ``probes="queries"``): level ``writes`` when the estimated trace fits
``WRITES_BUDGET_BYTES`` (else ``summary``), and a probe at every query's GEN token, the token that predicts the
answer, so the dashboard's Memory and Facts tabs have data.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._usage import UsageError, check_model_spec

__all__ = ["run_record", "load_model", "task_stream", "query_probes", "parse_probes", "estimate_bytes",
           "plan_record", "RecordPlan", "WRITES_BUDGET_BYTES", "MAX_TOKENS", "RECORD_TASKS"]

log = logging.getLogger(__name__)

RECORD_TASKS = ("stream", "ar-remember", "ar-rewrite")
WRITES_BUDGET_BYTES = 2 * 1024 ** 3   # level "auto" records writes when the estimated trace fits this
MAX_TOKENS = 2 ** 31                   # int32 token positions in the trace schema
_LEDGER_BYTES_PER_EVENT = 15 * 8      # ledger columns held in memory while recording (upper bound)


def load_model(spec: str, task: str = "stream"):
    """'demo' (the shipped model for `task`) or a folder written by `ARMTModel.save_pretrained`."""
    check_model_spec(spec)
    if spec == "demo":
        from ..assets import load_demo_model
        return load_demo_model("ar" if task.startswith("ar") else "stream")
    from ..model.armt import ARMTModel
    m = ARMTModel.from_pretrained(spec)
    m.source_path = m.source_dir = str(spec)
    return m


def _task_settings(model) -> dict:
    """Task settings saved next to a model (`task.json`), if any."""
    d = getattr(model, "source_dir", None)
    if d and (Path(d) / "task.json").exists():
        return json.loads((Path(d) / "task.json").read_text())
    return {}


def task_stream(model, task: str, n_tokens: int, seed: int):
    """(chunk iterator of [1, n] token arrays, ledger, description) for a task, aligned to the model's segments."""
    from ..record.recorder import RecordInput
    from ..tasks import StreamConfig, concat_ledgers, make_ar_batch, stream_chunks
    S = model.config.segment_size
    if task == "stream":
        settings = {k: v for k, v in _task_settings(model).get("stream", {}).items()
                    if k in StreamConfig.__dataclass_fields__}
        settings.update(segment_size=S, seed=seed)
        cfg = StreamConfig(**settings)
        n = max(S, (n_tokens // S) * S)
        ledger = concat_ledgers([c.ledger for c in stream_chunks(cfg, n)])  # ledger pass (tokens discarded)
        chunks = (c.input_ids[None, :] for c in stream_chunks(cfg, n))
        return RecordInput(chunks, 1, n, ledger,
                           f"mutable-state stream, {n} tokens, seed {seed}, {json.dumps(settings)}")
    if task in ("ar-rewrite", "ar-remember"):
        n_pairs = max(1, n_tokens // 4 - 1)
        b = make_ar_batch(n_pairs, 1, 1, batch_size=1, rewrite=task == "ar-rewrite", seed=seed)
        ids = np.asarray(b.input_ids)
        return RecordInput([ids], 1, ids.shape[1], b.ledger, f"{task}, {n_pairs} pairs, seed {seed}")
    raise UsageError(f"record: task {task!r} is not recordable from the CLI; use one of {', '.join(RECORD_TASKS)}")


# ------------------------------------------------------------------------------------------------ probes
def query_probes(ledger, n_tokens: int) -> list[tuple[int, int]]:
    """One probe per query of ``ledger``: at the token before the answer's first token (GEN, which predicts it),
    as ``(sample, token)`` pairs inside ``[0, n_tokens)``."""
    roles = np.asarray(ledger["role"].values)
    sel = roles == "answer"
    tokens = np.asarray(ledger["token"].values)[sel] - 1
    samples = (np.asarray(ledger["sample"].values)[sel] if "sample" in ledger
               else np.zeros(int(sel.sum()), dtype=np.int64))
    keep = (tokens >= 0) & (tokens < n_tokens)
    return [(int(s), int(t)) for s, t in zip(samples[keep], tokens[keep])]


def parse_probes(spec: str) -> tuple[str, int]:
    """``'queries'`` / ``'none'`` / ``'every:N'`` -> (kind, N). Raises ``UsageError`` for anything else."""
    if spec in ("queries", "none"):
        return spec, 0
    kind, _, n = spec.partition(":")
    if kind == "every" and n.isdigit() and int(n) >= 1:
        return "every", int(n)
    raise UsageError(f"--probes {spec!r}: expected 'queries' (a probe at every query's GEN token), 'every:N' "
                     "(every N-th token, N >= 1) or 'none'")


def _probe_positions(kind: str, every: int, ledger, n_tokens: int) -> list[tuple[int, int]]:
    if kind == "none":
        return []
    if kind == "every":
        return [(0, t) for t in range(every - 1, n_tokens, every)]
    if ledger is None:
        raise UsageError("--probes queries needs a task with a fact ledger; use --probes every:N or none")
    return query_probes(ledger, n_tokens)


# ------------------------------------------------------------------------------------------------ sizes
def estimate_bytes(model, level: str, n_segments: int, *, storage_dtype: str = "float32", n_probes: int = 0,
                   keyframe_every: int | None = None) -> int:
    """Estimated bytes of a trace on disk (uncompressed: an upper bound): per-segment statistics, write events
    (levels writes/full), full memories (full), keyframes and probe reads."""
    from .recorder import _keyframe_bytes, auto_keyframe_every

    cfg, L, d = model.config, model.n_layers, model.d_model
    item = 4 if storage_dtype == "float32" else 2
    per_segment = 4 * L * 12 + 8 * cfg.segment_size
    if level in ("writes", "full"):
        per_segment += L * cfg.num_mem_tokens * (item * (cfg.d_key + d) + 12)
    if level == "full":
        per_segment += L * (4 * cfg.d_key * (d + 1) + item * cfg.num_mem_tokens * d)
    kf = keyframe_every or auto_keyframe_every(model)
    keyframes = _keyframe_bytes(model) * (n_segments // kf + 1)
    probes = n_probes * L * 4 * (cfg.d_key + d + 1)
    return int(per_segment * n_segments + keyframes + probes)


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:,.1f} TB"


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _free_disk(store: str) -> int | None:
    p = Path(store).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


@dataclass(frozen=True)
class RecordPlan:
    """What ``run_record`` will do, decided before anything is allocated."""

    level: str
    n_tokens: int
    n_segments: int
    estimated_bytes: int
    budget_bytes: int
    message: str


def plan_record(model, task: str, tokens: int, level: str, store: str, *, storage_dtype: str = "float32",
                n_probes_hint: int | None = None, budget_bytes: int = WRITES_BUDGET_BYTES) -> RecordPlan:
    """Check the sizes of a recording and choose its level (``"auto"``: writes when it fits ``budget_bytes``).

    Raises:
        UsageError: a token count out of range, a task input that would not fit in memory, or a trace that
            would not fit on the store's disk.
    """
    if not isinstance(tokens, (int, np.integer)) or tokens < 1:
        raise UsageError(f"--tokens {tokens!r}: expected a positive number of tokens")
    if tokens > MAX_TOKENS:
        raise UsageError(f"--tokens {tokens:,}: at most {MAX_TOKENS:,} tokens per trace (int32 positions); "
                         "record a shorter run")
    S = model.config.segment_size
    n = max(S, (int(tokens) // S) * S)
    n_seg = n // S
    events = n / 4  # at most one ledger event per 4 tokens (the shortest event: k SEP v EOS)
    need_ram = int(events * _LEDGER_BYTES_PER_EVENT + (n * 8 * 3 if task.startswith("ar") else 0))
    ram = _available_memory()
    if ram is not None and need_ram > ram:
        raise UsageError(f"--tokens {tokens:,}: the task's tokens and fact ledger need about {_human(need_ram)} of "
                         f"memory, {_human(ram)} is available; record fewer tokens")
    probes = n_probes_hint if n_probes_hint is not None else int(events * 0.5)
    sizes = {lv: estimate_bytes(model, lv, n_seg, storage_dtype=storage_dtype, n_probes=probes)
             for lv in ("summary", "writes", "full")}
    if level == "auto":
        chosen = "writes" if sizes["writes"] <= budget_bytes else "summary"
        why = (f"level 'writes' (estimated {_human(sizes['writes'])}, within the {_human(budget_bytes)} budget)"
               if chosen == "writes" else
               f"level 'summary' (estimated {_human(sizes['summary'])}; 'writes' would take "
               f"{_human(sizes['writes'])}, over the {_human(budget_bytes)} budget)")
    else:
        chosen = level
        why = f"level '{level}' (estimated {_human(sizes[level])}; budget for level auto {_human(budget_bytes)})"
    free = _free_disk(store)
    if free is not None and sizes[chosen] > free:
        raise UsageError(f"--tokens {tokens:,} at level '{chosen}' needs up to {_human(sizes[chosen])} on disk; "
                         f"only {_human(free)} is free under {str(Path(store).parent)!r}; record fewer tokens "
                         "or a lower --level")
    return RecordPlan(chosen, n, n_seg, sizes[chosen], budget_bytes,
                      f"{n:,} tokens = {n_seg:,} segments of {S}; {why}; --level to choose")


def run_record(model, task, tokens, store, level="auto", keyframe_every="auto", storage_dtype="float32", seed=0,
               resume=False, probes="queries", progress=True) -> int:
    """Record ``model`` on ``task`` into ``store``; returns 0. See the module docstring for the defaults.

    Raises:
        UsageError: bad arguments (the CLI prints them as one line and exits 2).
    """
    from ..training_range import BeyondTrainingRange, check_range, trained_range
    from .recorder import record

    if task not in RECORD_TASKS:
        raise UsageError(f"--task {task!r}: record supports {', '.join(RECORD_TASKS)}")
    kind, every = parse_probes(probes)
    m = load_model(model, task)
    plan = plan_record(m, task, tokens, level, store, storage_dtype=storage_dtype)
    sys.stderr.write(f"armt-viz record: {plan.message}\n")
    beyond = check_range(trained_range(m), plan.n_segments)
    if beyond:
        sys.stderr.write(f"armt-viz record: warning: {beyond}\n")
    inp = task_stream(m, task, plan.n_tokens, seed)
    positions = _probe_positions(kind, every, inp.ledger, inp.total_tokens or plan.n_tokens)
    with warnings.catch_warnings():  # already said above, in one line
        warnings.simplefilter("ignore", BeyondTrainingRange)
        record(m, inp, store=store, level=plan.level, keyframe_every=keyframe_every, storage_dtype=storage_dtype,
               resume=resume, seed=seed, description=inp.description, probes=positions or None,
               progress=progress)
    return 0
