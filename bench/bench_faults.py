"""Fault injection for the recorder: SIGKILLs at random moments and at every commit-protocol step, a disk that
fills up and a disk that turns read-only mid-run. After each fault: `av.open_trace` opens the store (a consistent
prefix of the uninterrupted run: sizes agree, no NaN rows, values equal) and `record(..., resume=True)` ends with a
trace identical to the uninterrupted one (every variable, every value, every attribute).

The writers are subprocesses (tests/reliability/record_worker.py: a tiny random ARMT on a 2-sample token stream,
level "writes", a commit every 2 segments). Random kill moments are stratified uniformly over the writer's run,
from the moment its imports are done (first chunk and final commit included). The run is measured in the
writer's own CPU time (all threads), not wall time, so the spread holds on a shared, loaded machine: an
uninterrupted writer's CPU time C is measured first, and trial i is killed once its writer has used
(i + u) / trials * C seconds of CPU (u uniform in [0, 1)). Targeted kills make the writer SIGKILL itself at the
first, middle and last time it reaches each protocol step (resize, write, state, commit, committed, static).
The resume runs in this process.

    PYTHONPATH=. .venv/bin/python bench/bench_faults.py [--trials 24] [--tokens 640] [--no-targeted] [--no-disk]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "reliability" / "record_worker.py"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(WORKER.parent))

import record_worker as rw  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """CPU time (user + system, all threads) of a live process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def reap(p: subprocess.Popen) -> tuple[int, float]:
    """Wait for the child; (return code, its total CPU time in seconds)."""
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    return p.returncode, ru.ru_utime + ru.ru_stime


def spawn(store: Path, tokens: int, ready: Path, crash_at: str | None = None) -> subprocess.Popen:
    cmd = [sys.executable, str(WORKER), str(store), "--tokens", str(tokens), "--ready", str(ready)]
    if crash_at:
        cmd += ["--crash-at", crash_at]
    return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(p: subprocess.Popen, ready: Path, timeout: float = 300) -> None:
    t0 = time.time()
    while not ready.exists():
        if p.poll() is not None:
            raise RuntimeError(f"worker exited with {p.returncode} before it was ready: {p.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > timeout:
            raise TimeoutError("worker not ready")
        time.sleep(0.01)


def check_prefix(store: Path, ref) -> tuple[str, int]:
    """('opened', committed segments) after checking the prefix, or ('no store yet', 0) with the clear error."""
    import armt_viz as av
    try:
        ds = av.open_trace(store)
    except FileNotFoundError as exc:
        if "has started but not committed its first chunk" in str(exc) or not store.with_name(store.name + ".partial").exists():
            return "no store yet", 0
        raise
    n, k = ds.sizes.get("segment", 0), ds.sizes.get("keyframe", 0)
    assert ds.attrs["committed_segments"] == n and 0 < n <= ref.sizes["segment"], (n, ds.attrs)
    assert k == n // 4, (n, k)  # keyframe_every=4, committed with their segments
    for name, v in ds.variables.items():
        for dim, size in (("segment", n), ("keyframe", k)):
            if dim in v.dims:
                vals = v.values
                if vals.dtype.kind == "f":
                    assert not np.isnan(vals).any(), f"NaN rows in committed {name}"
                np.testing.assert_array_equal(vals, ref[name].isel({dim: slice(0, size)}).values, err_msg=name)
    return "opened", n


def resume_identical(store: Path, tokens: int, model, ref) -> None:
    out = rw.run(store, resume=True, n_tokens=tokens, model=model).load()
    rw.assert_same_trace(out, ref)


def count_points(store: Path, tokens: int, model):
    """The uninterrupted run in this process, counting how often it reaches each protocol step."""
    with contextlib.ExitStack() as stack:
        counts = {pt: stack.enter_context(rw.crash_points(pt, 10**12)) for pt in rw.POINTS}
        ds = rw.run(store, n_tokens=tokens, model=model).load()
    return ds, {pt: c[0] for pt, c in counts.items()}


def disk_trials(work: Path, tokens: int, model, ref, ref_bytes: int, n_writes: int):
    """Real ENOSPC and EROFS on a small tmpfs (needs root and mount); else ENOSPC injected at an array write."""
    import zarr

    import armt_viz as av
    from armt_viz.trace.store import TraceWriteError, TraceWriter
    rows = []
    mnt = work / "mnt"
    mnt.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True).returncode == 0

    def remount(opt):
        subprocess.run(["mount", "-o", f"remount,{opt}", str(mnt)], check=True, capture_output=True)

    def one(kind, store, provoke, restore, want_errno):
        row = {"kind": kind, "at": "", "result": "", "opened": False, "identical": False, "error": ""}
        try:
            with provoke():
                try:
                    rw.run(store, n_tokens=tokens, model=model)
                    raise AssertionError("no error was raised")
                except TraceWriteError as exc:
                    msg = str(exc)
                    assert exc.errno == want_errno, exc.errno
                    assert str(store) in msg and "resume=True" in msg and "Fix:" in msg, msg
                    row["error"] = msg.split(":")[0] + ": " + (exc.strerror or "")
            restore()
            row["result"], n = check_prefix(store, ref)
            row["at"] = f"{n} segments committed"
            row["opened"] = True
            resume_identical(store, tokens, model, ref)
            row["identical"] = True
        except Exception as exc:  # noqa: BLE001
            row["failure"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return row

    try:
        if mounted:
            @contextlib.contextmanager
            def small():
                remount(f"size={ref_bytes // 2}")
                yield

            rows.append(one("disk full (tmpfs at half the store size)", mnt / "full.zarr", small,
                            lambda: remount("size=64m"), errno.ENOSPC))

            @contextlib.contextmanager
            def ro_after_3_commits():
                real = TraceWriter.commit
                n = [0]

                def commit(self, *a, **k):
                    real(self, *a, **k)
                    n[0] += 1
                    if n[0] == 3:
                        remount("ro")
                TraceWriter.commit = commit
                try:
                    yield
                finally:
                    TraceWriter.commit = real

            rows.append(one("read-only remount after the 3rd commit", mnt / "ro.zarr", ro_after_3_commits,
                            lambda: remount("rw"), errno.EROFS))

        nth = max(2, n_writes * 2 // 3)

        @contextlib.contextmanager
        def enospc_at_array_write():
            real = zarr.Array.__setitem__
            n = [0]

            def setitem(self, *a, **k):
                n[0] += 1
                if n[0] >= nth:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real(self, *a, **k)
            zarr.Array.__setitem__ = setitem
            try:
                yield
            finally:
                zarr.Array.__setitem__ = real

        rows.append(one(f"ENOSPC injected at array write {nth}/{n_writes}", work / "inj.zarr", enospc_at_array_write,
                        lambda: None, errno.ENOSPC))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return rows, mounted


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=24, help="random-moment SIGKILL trials")
    ap.add_argument("--tokens", type=int, default=640, help="stream length per sample (16 tokens a segment)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-targeted", action="store_true")
    ap.add_argument("--no-disk", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    work = Path(tempfile.mkdtemp(prefix="armt_faults_"))
    model = rw.make_model()
    t = time.time()
    ref, counts = count_points(work / "ref.zarr", a.tokens, model)
    ref_bytes = sum(f.stat().st_blocks * 512 for f in (work / "ref.zarr").rglob("*") if f.is_file())
    print(f"reference: {ref.sizes['segment']} segments, {ref_bytes / 1e6:.2f} MB on disk, in {time.time() - t:.1f} s "
          f"(in process); protocol steps reached: {counts}")

    # the writer's own duration, from readiness to exit, in a subprocess; its trace must equal the reference
    store, ready = work / "timing.zarr", work / "timing.ready"
    p = spawn(store, a.tokens, ready)
    wait_ready(p, ready)
    t0, c0 = time.time(), cpu_s(p.pid)
    rc, c1 = reap(p)
    assert rc == 0, p.stderr.read().decode()[-2000:]
    run_s, run_cpu = time.time() - t0, c1 - c0
    import armt_viz as av
    rw.assert_same_trace(av.open_trace(store).load(), ref)
    print(f"uninterrupted subprocess run: {run_s:.1f} s wall, {run_cpu:.1f} s CPU after its imports; its trace is "
          "identical to the reference")

    rows = []
    plan = [("random", f"{(i + rng.random()) / a.trials * run_cpu:.2f}") for i in range(a.trials)]
    if not a.no_targeted:
        for pt in rw.POINTS:
            c = counts[pt]
            for n in sorted({1, max(1, c // 2), c}):
                plan.append(("targeted", f"{pt}:{n}"))
    for i, (kind, what) in enumerate(plan):
        store, ready = work / f"t{i}.zarr", work / f"t{i}.ready"
        row = {"kind": kind, "at": what if kind == "targeted" else f"{what} s CPU", "result": "", "opened": False,
               "identical": False}
        try:
            p = spawn(store, a.tokens, ready, crash_at=what if kind == "targeted" else None)
            wait_ready(p, ready)
            if kind == "random":
                c0, target = cpu_s(p.pid), float(what)
                while True:
                    try:
                        if cpu_s(p.pid) - c0 >= target:
                            p.send_signal(signal.SIGKILL)
                            break
                    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
                        break  # exited (a zombie has no usable stat)
                    if p.poll() is not None:
                        break
                    time.sleep(0.002)
            rc = p.wait(timeout=600)
            row["rc"] = rc
            if rc == 0:
                row["result"] = "finished before the kill"
            elif rc != -signal.SIGKILL:
                raise RuntimeError(f"worker failed with {rc}: {p.stderr.read().decode()[-1500:]}")
            res, n = check_prefix(store, ref)
            row["result"] = row["result"] or (f"{n} segments committed" if res == "opened" else
                                              "killed before the first commit: no store yet (clear error)")
            row["opened"] = True
            resume_identical(store, a.tokens, model, ref)
            row["identical"] = True
        except Exception as exc:  # noqa: BLE001
            row["failure"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            shutil.rmtree(store, ignore_errors=True)
            shutil.rmtree(store.with_name(store.name + ".partial"), ignore_errors=True)
        rows.append(row)
        print(f"  {i + 1:>3}/{len(plan)} {kind:<8} {row['at']:<16} {row['result'] or '':<58} "
              f"{'identical' if row['identical'] else 'FAIL ' + row.get('failure', '')}", flush=True)

    disk_rows, mounted = ([], False) if a.no_disk else disk_trials(work, a.tokens, model, ref, ref_bytes,
                                                                                counts["write"])
    for r in disk_rows:
        print(f"  disk     {r['kind']:<45} {r['at']:<24} {'identical' if r['identical'] else 'FAIL ' + r.get('failure', '')}")
    shutil.rmtree(work, ignore_errors=True)

    allrows = rows + disk_rows
    groups = {"SIGKILL at a random moment": [r for r in rows if r["kind"] == "random"],
              "SIGKILL at a protocol step": [r for r in rows if r["kind"] == "targeted"],
              "write error (disk full / read-only)": disk_rows}
    print(f"\nfault injection: {ref.sizes['segment']}-segment writes-level recording, commit every 2 segments, "
          f"writer run {run_s:.1f} s wall / {run_cpu:.1f} s CPU")
    print(f"  {'fault':<38} {'trials':>6} {'opened':>7} {'resumed-identical':>18} {'failures':>9}")
    for name, rs in groups.items():
        print(f"  {name:<38} {len(rs):>6} {sum(r['opened'] for r in rs):>7} {sum(r['identical'] for r in rs):>18} "
              f"{sum('failure' in r for r in rs):>9}")
    tot = len(allrows)
    print(f"  {'total':<38} {tot:>6} {sum(r['opened'] for r in allrows):>7} "
          f"{sum(r['identical'] for r in allrows):>18} {sum('failure' in r for r in allrows):>9}")
    nostore = sum("no store yet" in (r.get("result") or "") for r in rows)
    print(f"  ('opened' includes {nostore} kills before the first commit, where open_trace says no store exists yet"
          f"{'' if mounted or a.no_disk else '; tmpfs unavailable: disk faults injected only'})")
    for r in allrows:
        if "failure" in r:
            print("  failure:", r["kind"], r["at"], r["failure"])
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": allrows, "writer_run_s": run_s, "writer_run_cpu_s": run_cpu,
                                            "counts": counts}, indent=2))
    return 0 if all(r["identical"] for r in allrows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
