"""Faults while recording (issue 8.1): a crash at each step of the commit protocol, a disk that fills up or
turns read-only mid-run, and a reader polling a store while it is written.

Random-moment SIGKILLs are in tests/record/test_resume.py (3 trials) and bench/bench_faults.py (>= 20); here
the crash is placed *exactly* at the protocol steps a random kill rarely hits (record_worker.crash_points).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import armt_viz as av
import record_worker as rw
from armt_viz.trace.store import COMMIT_FILE, TraceWriteError, TraceWriter

N_SEG = 10  # the default workload: 160 tokens = 10 segments of 16, a commit every 2


def _check_prefix(ds, reference):
    """A committed prefix: sizes agree with the commit, every row equals the uninterrupted run's."""
    n = ds.sizes.get("segment", 0)
    assert ds.attrs["committed_segments"] == n
    assert ds.sizes.get("keyframe", 0) == n // 4  # keyframe_every=4, committed together with their segments
    for k, v in ds.variables.items():
        if "segment" in v.dims:
            np.testing.assert_array_equal(v.values, reference[k].isel(segment=slice(0, n)).values, err_msg=k)
        elif "keyframe" in v.dims:
            np.testing.assert_array_equal(v.values, reference[k].isel(keyframe=slice(0, n // 4)).values, err_msg=k)
    return n


# (point, n): the n-th time the recording reaches that step (see record_worker). 6 commits in a run: 5 chunks
# of 2 segments and the final one. Before the first commit the store is built at <store>.partial.
CRASHES = {
    "first chunk, static probe arrays half written": ("static", 3),
    "first chunk, arrays resized but not written": ("resize", 5),
    "third chunk, some arrays written, others not": ("write", 60),
    "new commit file written, not yet moved in": ("commit", 4),
}


@pytest.mark.parametrize("where", list(CRASHES))
def test_crash_at_each_protocol_step_opens_then_resumes_identically(where, reference, model, tmp_path):
    store = tmp_path / "t.zarr"
    with pytest.raises(rw.Crash), rw.crash_points(*CRASHES[where]):
        rw.run(store, model=model)
    if where.startswith("first chunk"):  # nothing committed: no store yet, and the error says why
        with pytest.raises(FileNotFoundError, match="has started but not committed its first chunk"):
            av.open_trace(store)
    else:
        n = _check_prefix(av.open_trace(store), reference)  # every store that exists opens
        assert 0 < n < N_SEG
    rw.assert_same_trace(rw.run(store, resume=True, model=model).load(), reference)


def test_disk_full_mid_append_is_a_clear_error_store_intact_and_resumable(reference, model, tmp_path, monkeypatch):
    import zarr
    store = tmp_path / "t.zarr"
    real = zarr.Array.__setitem__
    calls = [0]

    def full(self, *a, **k):  # the 40th array write (third chunk) finds the disk full
        calls[0] += 1
        if calls[0] >= 40:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *a, **k)

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    with pytest.raises(TraceWriteError) as ei:
        rw.run(store, model=model)
    monkeypatch.undo()
    msg = str(ei.value)
    assert ei.value.errno == errno.ENOSPC
    assert str(store) in msg and "free space" in msg and "resume=True" in msg and "intact" in msg, msg
    n = _check_prefix(av.open_trace(store), reference)
    assert 0 < n < N_SEG and f"holds the {n} segments" in msg
    rw.assert_same_trace(rw.run(store, resume=True, model=model).load(), reference)


# ---------------------------------------------------------------- a real small filesystem (root + mount only)

@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def mount(*opts):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(opts), "tmpfs", str(mnt)], capture_output=True)
        return r.returncode == 0

    def remount(*opts):
        subprocess.run(["mount", "-o", ",".join(("remount",) + opts), str(mnt)], check=True, capture_output=True)

    if os.geteuid() != 0 or shutil.which("mount") is None or not mount("size=64m"):
        pytest.skip("needs root and permission to mount a tmpfs (a real full / read-only filesystem)")
    try:
        yield mnt, remount
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _du(path: Path) -> int:
    return sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(path) for f in fs)


def test_real_full_disk_then_read_only_disk(reference, model, tmpfs, monkeypatch):
    mnt, remount = tmpfs
    # 1. the filesystem fills up mid-run (a tmpfs sized at half of what the whole recording needs)
    full_size = _du(Path(reference.encoding["source"]))
    remount(f"size={full_size // 2}")
    store = mnt / "full.zarr"
    with pytest.raises(TraceWriteError) as ei:
        rw.run(store, model=model)
    assert ei.value.errno == errno.ENOSPC and str(store) in str(ei.value) and "resume=True" in str(ei.value)
    n = _check_prefix(av.open_trace(store), reference)
    assert 0 < n < N_SEG
    remount("size=64m")  # space freed
    rw.assert_same_trace(rw.run(store, resume=True, model=model).load(), reference)
    shutil.rmtree(store)

    # 2. the folder turns read-only after the second commit (4 segments) (root ignores chmod, not a read-only mount)
    store = mnt / "ro.zarr"
    real_commit = TraceWriter.commit
    commits = [0]

    def commit_then_ro(self, *a, **k):
        real_commit(self, *a, **k)
        commits[0] += 1
        if commits[0] == 2:
            remount("ro")

    monkeypatch.setattr(TraceWriter, "commit", commit_then_ro)
    try:
        with pytest.raises(TraceWriteError) as ei:
            rw.run(store, model=model)
    finally:
        monkeypatch.undo()
    assert ei.value.errno == errno.EROFS and "read-only" in str(ei.value) and str(store) in str(ei.value)
    assert _check_prefix(av.open_trace(store), reference) == 4  # readable on the read-only filesystem
    remount("rw")
    rw.assert_same_trace(rw.run(store, resume=True, model=model).load(), reference)


# ---------------------------------------------------------------- a reader while a writer records

def test_reader_polling_a_store_being_written_sees_a_consistent_prefix(tmp_path):
    store = tmp_path / "live.zarr"
    ready = tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    p = subprocess.Popen([sys.executable, str(Path(rw.__file__)), str(store), "--tokens", "224", "--ready", str(ready),
                          "--pace", "0.3"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    snapshots, seen_sizes, refused = [], set(), 0
    try:
        t0 = time.time()
        while p.poll() is None and time.time() - t0 < 120:
            try:
                ds = av.open_trace(store)
            except FileNotFoundError:  # not created yet
                refused += 1
                time.sleep(0.05)
                continue
            n = ds.sizes.get("segment", 0)
            snap = {k: v.values for k, v in ds.variables.items() if "segment" in v.dims or "keyframe" in v.dims}
            assert ds.attrs["committed_segments"] == n
            assert ds.sizes.get("keyframe", 0) == n // 4
            for k, v in snap.items():
                if v.dtype.kind == "f":
                    assert not np.isnan(v).any(), f"NaN row in committed {k} at {n} segments"
            if n not in seen_sizes:
                seen_sizes.add(n)
                snapshots.append((n, snap))
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    final = av.open_trace(store).load()
    assert final.sizes["segment"] == 14 and final.attrs["complete"] == 1
    for n, snap in snapshots:  # every snapshot was a prefix of the final trace
        for k, v in snap.items():
            dim = "segment" if "segment" in final[k].dims else "keyframe"
            np.testing.assert_array_equal(v, final[k].isel({dim: slice(0, v.shape[final[k].dims.index(dim)])}).values,
                                          err_msg=f"{k} at {n}")
    assert len(seen_sizes) >= 3, f"the reader saw too few distinct prefixes: {sorted(seen_sizes)}"
