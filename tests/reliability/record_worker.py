"""The fault-test workload, as a function (in-process use) and as a script (a subprocess that can be SIGKILLed).

    python record_worker.py STORE [--resume] [--tokens N] [--ready FILE] [--crash-at POINT:N]

The workload is deterministic: a tiny random ARMT (tiny_model(seed=1)), a random token stream of two samples fed
in chunks of 50 tokens, level "writes", a keyframe every 4 segments, a commit every 2 segments and two probes.

`--crash-at POINT:N` makes the process SIGKILL itself at the N-th time (1-based) it reaches a step of the
commit protocol (trace/store.py), which random kill times rarely hit exactly:

    resize      just after an array was resized, before its rows are written (arrays disagree, NaN rows)
    write       just after the rows of an array were written (some arrays of the chunk written, others not)
    state       after the resume state npz was moved into place, before the commit file is replaced
    commit      after the new commit file was written to its temp name, before it replaces the old one
    committed   right after the commit file was replaced (old state files not yet cleaned up)
    static      just after a static (probe) array was written

In-process tests use `crash_points(POINT, N)` as a context manager: it raises `Crash` (a BaseException, which
nothing in the recorder catches) at the same place, leaving the files exactly as a kill would.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from pathlib import Path

CHUNK_TOKENS = 50
__all__ = ["run", "crash_points", "Crash", "assert_same_trace", "token_ids", "make_model", "POINTS"]
POINTS = ("resize", "write", "state", "commit", "committed", "static")


class Crash(BaseException):
    """Raised by crash_points in-process: a stand-in for SIGKILL (no handler in the library catches it)."""


def token_ids(n_tokens: int, seed: int = 123):
    import torch
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 32, (2, n_tokens), generator=g)


def make_model():
    from armt_viz.testing import tiny_model
    return tiny_model(seed=1)


def record_kwargs(n_tokens: int) -> dict:
    return dict(level="writes", keyframe_every=4, chunk_segments=2, probes=[(0, 20), (1, n_tokens - 10)],
                progress=False, seed=7, description="reliability workload")


def run(store, *, resume: bool = False, n_tokens: int = 160, model=None, pace: float = 0.0, **over):
    """Record the workload into `store` (resuming if asked); returns the lazily opened trace.

    pace: seconds to wait before handing over each input chunk, so a concurrent reader sees the store grow
    whatever the machine's speed (the data are unchanged)."""
    import time

    import armt_viz as av
    x = token_ids(n_tokens)

    def chunks():
        for i in range(0, x.shape[1], CHUNK_TOKENS):
            if pace:
                time.sleep(pace)
            yield x[:, i:i + CHUNK_TOKENS]
    kw = {**record_kwargs(n_tokens), **over}
    return av.record(model if model is not None else make_model(), chunks(), store=str(store), resume=resume, **kw)


@contextlib.contextmanager
def crash_points(point: str, n: int, action=None):
    """Call `action` (default: raise Crash) the n-th time the recording reaches protocol step `point`."""
    import zarr

    from armt_viz.trace import store as st

    if point not in POINTS:
        raise ValueError(f"point must be one of {POINTS}, got {point!r}")
    count = [0]

    def hit():
        count[0] += 1
        if count[0] == n:
            (action or _raise_crash)()

    saved = []

    def patch(obj, name, new):
        saved.append((obj, name, getattr(obj, name)))
        setattr(obj, name, new)

    real_replace = os.replace
    real_resize = zarr.Array.resize
    real_setitem = zarr.Array.__setitem__
    real_static = st.TraceWriter._write_static

    def replace(src, dst, *a, **k):
        name = os.path.basename(os.fspath(dst))
        if point == "commit" and name == st.COMMIT_FILE:
            hit()
        real_replace(src, dst, *a, **k)
        if (point == "state" and name.startswith("state_") and name.endswith(".npz")) or \
                (point == "committed" and name == st.COMMIT_FILE):
            hit()

    def resize(self, *a, **k):
        real_resize(self, *a, **k)
        if point == "resize":
            hit()

    def setitem(self, *a, **k):
        real_setitem(self, *a, **k)
        if point == "write":
            hit()

    def write_static(self, *a, **k):
        real_static(self, *a, **k)
        if point == "static":
            hit()

    patch(os, "replace", replace)
    patch(zarr.Array, "resize", resize)
    patch(zarr.Array, "__setitem__", setitem)
    patch(st.TraceWriter, "_write_static", write_static)
    try:
        yield count
    finally:
        for obj, name, old in reversed(saved):
            setattr(obj, name, old)


def _raise_crash():
    raise Crash()


def _sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--tokens", type=int, default=160)
    p.add_argument("--ready", default=None, help="file to create once imports are done, just before recording")
    p.add_argument("--crash-at", default=None, help="POINT:N, SIGKILL self at the N-th protocol step POINT")
    p.add_argument("--pace", type=float, default=0.0, help="seconds to wait before each input chunk")
    p.add_argument("--wait-for", default=None, help="after --ready, wait until this file exists, then record")
    a = p.parse_args(argv)
    model = make_model()
    import armt_viz as av
    av.record, av.open_trace  # import everything before signalling readiness
    ctx = contextlib.nullcontext()
    if a.crash_at:
        point, n = a.crash_at.split(":")
        ctx = crash_points(point, int(n), _sigkill_self)
    if a.ready:
        Path(a.ready).write_text(str(os.getpid()))
    while a.wait_for and not Path(a.wait_for).exists():
        import time
        time.sleep(0.02)
    with ctx:
        run(a.store, resume=a.resume, n_tokens=a.tokens, model=model, pace=a.pace)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    raise SystemExit(main())


def assert_same_trace(a, b, *, attrs: bool = True) -> None:
    """Every variable (data and coordinates), every value (NaN equal to NaN) and, by default, every attribute."""
    import numpy as np
    assert set(a.variables) == set(b.variables), sorted(set(a.variables) ^ set(b.variables))
    for k in a.variables:
        assert a[k].dims == b[k].dims, (k, a[k].dims, b[k].dims)
        assert a[k].dtype == b[k].dtype, (k, a[k].dtype, b[k].dtype)
        np.testing.assert_array_equal(a[k].values, b[k].values, err_msg=k)
    if attrs:
        assert a.attrs == b.attrs, {k: (a.attrs.get(k), b.attrs.get(k)) for k in set(a.attrs) | set(b.attrs)
                                    if a.attrs.get(k) != b.attrs.get(k)}
