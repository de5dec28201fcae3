"""``armt-viz demo``: record the shipped model on a long mutable-state stream (cached) and serve the dashboard.

Steps (issue 6, item 5):

1. load the shipped stream model (``armt_viz.assets.load_demo_model``) and the stream settings it was trained
   on (``demo_stream_config``);
2. generate the stream (default length: the model's measured range, ``default_tokens``) (``armt_viz.tasks.stream``, with its fact ledger) and record it at level ``writes`` with
   probes at every query's GEN token (the token that predicts the answer), with a progress bar;
3. serve the dashboard over the trace root on http://127.0.0.1:5006.

The store is cached: a complete committed store for the same length and seed is reused; an interrupted one
resumes from its last committed chunk (``record(..., resume=True)``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

__all__ = ["run_demo", "DEMO_TOKENS", "demo_store_path"]

log = logging.getLogger(__name__)

# Default length: the range where the shipped model's recall was measured good (task.json "trained_range":
# recall_exact_up_to_segments x segment_size; 200 x 4 = 800 tokens for the AR model), so the demo shows a run the
# model handles. DEMO_TOKENS when a model declares no such range, as the stream specimens do (their recall never
# reached 0.9 in a position bin): 2,048 segments of 16 tokens, the length of the streams they were trained on
# under truncated BPTT, flagged as beyond the measured range. Longer runs (`--tokens 1048576`) work too.
DEMO_TOKENS = 32_768
DEMO_SEED = 0


def default_tokens(model, segment_size: int) -> int:
    """Tokens of the default demo run: the model's measured range in tokens, else ``DEMO_TOKENS``."""
    from armt_viz.training_range import trained_range

    rng = trained_range(model)
    return rng.limit * segment_size if rng is not None and rng.limit and rng.limit >= 1 else DEMO_TOKENS


def demo_store_path(trace_root: str | Path, tokens: int, seed: int = DEMO_SEED) -> Path:
    return Path(trace_root) / f"demo__stream__{tokens}tok__seed{seed}.zarr"


def _commit(path: Path) -> dict | None:
    try:
        return json.loads((path / "armt_commit.json").read_text())
    except (OSError, ValueError):
        return None


def _say(message: str) -> None:
    sys.stderr.write(message.rstrip() + "\n")


def run_demo(tokens: int | None = None, trace_root: str = "runs", port: int = 5006, address: str = "127.0.0.1",
             no_serve: bool = False) -> int:
    """Record (or reuse) the demo trace under ``trace_root`` and serve the dashboard.

    Args:
        tokens: stream length (default ``DEMO_TOKENS``), rounded down to whole segments.
        trace_root: folder of the cached trace (created).
        port, address: where the dashboard listens.
        no_serve: only record.

    Returns:
        A process exit code (0 = success, 1 = the demo model or a dependency is missing).
    """
    try:
        from armt_viz.assets import demo_stream_config, load_demo_model
        model = load_demo_model("stream")
        cfg = demo_stream_config(seed=DEMO_SEED)
    except (ImportError, FileNotFoundError, OSError) as exc:
        _say(f"armt-viz demo: the shipped demo model is not available ({exc}).\n"
             "Train one with `armt-viz train --task stream` or reinstall armt_viz; "
             "`armt-viz serve --trace-root DIR` serves traces you already have.")
        return 1
    from armt_viz.record import record
    from armt_viz.record.run import query_probes
    from armt_viz.tasks.stream import make_stream
    from armt_viz.training_range import check_range, trained_range

    size = cfg.segment_size
    n = max((tokens or default_tokens(model, size)) // size, 1) * size
    if beyond := check_range(trained_range(model), n // size):
        _say(f"armt-viz demo: warning: {beyond}")
    root = Path(trace_root)
    root.mkdir(parents=True, exist_ok=True)
    store = demo_store_path(root, n, DEMO_SEED)
    commit = _commit(store)
    if commit and commit.get("complete"):
        _say(f"armt-viz demo: reusing the recorded trace {store} ({n:,} tokens)")
    else:
        _say(f"armt-viz demo: recording {n:,} tokens of the mutable-state stream into {store} "
             f"({'resuming' if commit else 'first run'}; cached afterwards)")
        stream = make_stream(cfg, n)
        ledger = stream.ledger
        probes = query_probes(ledger, n)  # GEN predicts the answer's first token
        # keyframes every 64 segments (not "auto"): the dashboard rebuilds A from at most 64 segments of writes
        record(model, stream.input_ids[None, :], store=str(store), level="writes", probes=probes,
               ledger=ledger, keyframe_every=64, resume=bool(commit), storage_dtype="float16", progress=True,
               description=f"demo mutable-state stream, {n} tokens, seed {DEMO_SEED}", seed=DEMO_SEED)
    if no_serve:
        return 0
    from armt_viz.viz.serve import run_serve

    _say(f"armt-viz demo: dashboard on http://{address}:{port}/  (Ctrl-C to stop)")
    return run_serve(str(root), port=port, address=address)
