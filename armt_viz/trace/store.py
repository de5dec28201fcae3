"""Crash-safe zarr trace store: append by chunk of segments, commit marker, resume state.

Protocol (ENV.md §5: a SIGKILL mid-append leaves zarr arrays of different lengths):

1. every append grows the arrays of one append dim (`segment` or `keyframe`) and writes rows;
2. then the memory state after the last appended segment is written to
   `_resume/state_<n>.npz` (temp file + os.replace);
3. then `armt_commit.json` = {"sizes": {"segment": n, "keyframe": k}, "state_file": ...}
   is replaced atomically. Only then is the chunk committed.

Readers slice every array to the committed sizes (they never resize, so a dashboard can
read a store while it is written and sees a consistent prefix). A writer that resumes
first trims the arrays back to the committed sizes.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np

from . import guard
from .schema import APPEND_DIMS, SCHEMA, SCHEMA_VERSION

__all__ = ["TraceWriter", "read_commit", "COMMIT_FILE", "TraceStoreError", "TraceWriteError"]

COMMIT_FILE = "armt_commit.json"
RESUME_DIR = "_resume"
STAGING_SUFFIX = ".partial"  # a new store is built at <path>.partial and moved to <path> with its first commit
_STATE_FILE_RE = re.compile(r"^_resume/state_[0-9]+\.npz$")


def bf16_encode(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even (numpy has no bfloat16)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + (0x7FFF + ((u >> 16) & 1))
    rounded = np.where(np.isnan(x), u | 0x00400000, rounded)  # keep NaN a NaN
    return (rounded >> 16).astype(np.uint16)


def bf16_decode(u: np.ndarray) -> np.ndarray:
    return (np.asarray(u, dtype=np.uint32) << 16).view(np.float32)


class TraceStoreError(ValueError):
    """A store that is not a readable armt_viz trace."""


class TraceWriteError(OSError):
    """Writing a trace store failed (disk full, read-only folder, ...); the committed prefix is intact."""


_WRITE_FIXES = {
    _errno.ENOSPC: "free space on that filesystem (or record to another disk)",
    _errno.EDQUOT: "free space within your disk quota",
    _errno.EACCES: "make the folder writable by this user",
    _errno.EPERM: "make the folder writable by this user",
    _errno.EROFS: "the filesystem is mounted read-only; remount it read-write or record to a writable disk",
}


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_commit(path) -> dict:
    p = Path(path)
    if not p.exists():
        staging = p.with_name(p.name + STAGING_SUFFIX)
        if staging.exists():
            raise FileNotFoundError(
                f"no trace at {str(p)!r} yet: a recording into it has started but not committed its first chunk "
                f"({str(staging)!r} is being built); wait for it (or, if that recording died, record again: "
                "resume=True starts afresh)")
        raise FileNotFoundError(f"no trace at {str(p)!r}: the path does not exist; record one with av.record(..., store=path)")
    f = p / COMMIT_FILE
    if not f.exists():
        raise TraceStoreError(
            f"{str(p)!r} is not an armt_viz trace (no {COMMIT_FILE}): either it is a foreign zarr store, or the "
            "recording was killed before its first chunk was committed; record it again"
        )
    try:
        from .confine import read_small_json

        commit = read_small_json(str(f), 1 << 20, f"{COMMIT_FILE} of {p.name!r}")
        if not isinstance(commit, dict):
            raise ValueError(f"expected a JSON object, got {type(commit).__name__}")
        sizes = {}
        for k, v in commit["sizes"].items():
            if k not in APPEND_DIMS or isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"sizes must map {APPEND_DIMS} to non-negative ints, got {k!r}: {v!r}")
            sizes[k] = v
        if set(sizes) != set(APPEND_DIMS):
            raise ValueError(f"sizes must give every append dim {APPEND_DIMS}, got {sorted(sizes)}")
        state_file = commit.get("state_file")
        if state_file is not None and not (isinstance(state_file, str) and _STATE_FILE_RE.match(state_file)):
            raise ValueError(f"state_file must be '_resume/state_<n>.npz' inside the store, got {state_file!r}")
    except Exception as exc:
        raise TraceStoreError(
            f"{str(f)!r} is corrupted ({type(exc).__name__}: {str(exc)[:200]}); expected JSON like "
            '{"sizes": {"segment": <n>, "keyframe": <k>}, "state_file": "_resume/state_<n>.npz"}. '
            "The data may be intact: if you know the committed sizes, rewrite this file; otherwise record again"
        ) from exc
    commit["sizes"] = sizes
    return commit


class TraceWriter:
    """Owns one store while recording. Arrays are created on the first append of their dim."""

    def __init__(self, path, *, attrs: dict, chunk_segments: int, resume: bool = False):
        self.path = Path(path)
        self.root = self.path  # the folder written: <path>.partial until the first commit moves it to <path>
        self.chunk_segments = chunk_segments
        self.resume_state = None
        self.sizes = {d: 0 for d in APPEND_DIMS}
        self._committed = 0
        self.dense = True  # every chunk is written (a resumed store keeps what it was created with)
        self._pending: dict | None = None  # a resume's first writes, made only once something is appended
        self.lock = guard.WriterLock(self.path)
        with self._io("opening the store"):
            self.lock.acquire()  # one writer per store (StoreLockedError names the owner)
            try:
                self._open(attrs, resume)
            except BaseException:
                self.lock.release()
                raise

    def close(self) -> None:
        """Release the store's writer lock (the data are committed already or left at the last commit)."""
        self.lock.release()

    def _open(self, attrs: dict, resume: bool) -> None:
        import zarr
        commit = read_commit(self.path) if resume and (self.path / COMMIT_FILE).exists() else None
        if commit is not None and commit["sizes"].get("segment", 0) > 0:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
                self.group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
                arrays = list(self.group.arrays())
            # provenance first: a mismatch is refused before anything in the store changes
            bad, unchecked = guard.provenance_mismatches(dict(self.group.attrs), attrs)
            if bad:
                detail = "; ".join(f"{k}: store {str(self.group.attrs.get(k))[:160]}, now {str(attrs[k])[:160]}"
                                   for k in bad)
                raise ValueError(
                    f"resume=True refused for {self.path.name!r}: {', '.join(bad)} differ from the recording that "
                    f"wrote its {commit['sizes'].get('segment', 0)} committed segments ({detail}). Resuming would "
                    "mix two runs in one trace; nothing was written. Resume with the same model, weights, input and "
                    "settings, or record to a new store")
            if unchecked:
                warnings.warn(f"resuming {self.path.name!r}: the store does not record {unchecked} (written by an "
                              "older armt_viz), so they cannot be checked against this run", UserWarning,
                              stacklevel=4)
            self.sizes.update(commit["sizes"])
            self.dense = bool(commit.get("dense_chunks"))
            if commit.get("state_file"):
                sf = self.path / commit["state_file"]
                try:
                    with np.load(sf, allow_pickle=False) as z:
                        self.resume_state = {k: z[k] for k in z.files}
                except Exception as exc:
                    raise TraceStoreError(
                        f"resume state {str(sf)!r} is unreadable ({type(exc).__name__}: {str(exc)[:200]}); "
                        "the store opens up to its last commit, but cannot be resumed: record again with resume=False"
                    ) from exc
            self._committed = self.sizes.get("segment", 0)
            self._pending = {"arrays": arrays, "attrs": attrs}
        else:
            self._create_store(attrs)

    def _prepare(self) -> None:
        """A resume's first writes: trim arrays to the committed sizes, then record this run's attrs."""
        if self._pending is None:
            return
        pending, self._pending = self._pending, None
        for name, arr in pending["arrays"]:
            dims = tuple(arr.metadata.dimension_names)
            for ax, d in enumerate(dims):
                if d in self.sizes and arr.shape[ax] != self.sizes[d]:
                    arr.resize(tuple(self.sizes[d] if i == ax else s for i, s in enumerate(arr.shape)))
        self.group.update_attributes({**pending["attrs"], "schema_version": SCHEMA_VERSION})  # one metadata write

    def _create_store(self, attrs: dict) -> None:
        """A fresh store is built at <path>.partial and moved to <path> by its first commit, so a store that
        exists always opens, and an old store at <path> is replaced only once the new one has data."""
        import zarr
        p = self.path
        guard.check_removable(p)  # only a store we wrote is ever replaced
        staging = p.with_name(p.name + STAGING_SUFFIX)
        if os.path.lexists(staging):
            guard.check_removable(staging, staging=True)
            shutil.rmtree(staging)
        p.parent.mkdir(parents=True, exist_ok=True)
        # the attributes with the group's creation: one metadata write (attrs.update would rewrite it once per key)
        self.group = zarr.open_group(str(staging), mode="w", zarr_format=3,
                                     attributes={**attrs, "schema_version": SCHEMA_VERSION})
        self.root = staging

    def _move_into_place(self) -> None:
        import zarr
        if os.path.lexists(self.path):
            guard.check_removable(self.path)  # checked again: it may have changed since the recording began
            shutil.rmtree(self.path)
        os.replace(self.root, self.path)
        self.root = self.path
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            self.group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)

    @contextlib.contextmanager
    def _io(self, what: str):
        """Turn an OSError of the filesystem into a TraceWriteError that names the store and the fix."""
        try:
            yield
        except TraceWriteError:
            raise
        except OSError as exc:
            if isinstance(exc, (FileNotFoundError, FileExistsError)) and exc.errno not in _WRITE_FIXES:
                raise
            fix = _WRITE_FIXES.get(exc.errno, "fix the cause above")
            if self.root != self.path:
                state = (f"Nothing was committed yet (the new store was being built at {str(self.root)!r}; "
                         "an older store at the path, if any, is untouched)")
            else:
                state = (f"The store is intact: it opens with av.open_trace and holds the {self._committed} "
                         "segments committed before the failure")
            raise TraceWriteError(
                exc.errno,
                f"writing the trace store {str(self.path)!r} failed while {what}: {exc.strerror or exc}. {state}. "
                f"Fix: {fix}; then call av.record(..., store={str(self.path)!r}, resume=True) with the same "
                "inputs and settings to continue where it stopped",
            ) from exc

    # ------------------------------------------------------------------ arrays
    def _create(self, name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype, fill=None):
        var = SCHEMA.get(name)
        chunks = []
        for d, s in zip(dims, shape):
            if d == "segment":
                chunks.append(self.chunk_segments)
            elif d == "keyframe":
                chunks.append(1 if len(dims) > 1 else 4096)  # 1-D coordinates: one chunk, cheap to read
            elif d in ("probe", "event"):
                chunks.append(max(1, min(int(s), 8192)))
            else:
                chunks.append(max(int(s), 1))
        chunks = _split_layers(dims, chunks, _itemsize(dtype))
        attrs = {"long_name": var.long_name, "units": var.units} if var else {}
        if fill is None:
            fill = np.nan if np.dtype(dtype).kind == "f" else (-1 if np.dtype(dtype).kind == "i" else 0)
        return self.group.create_array(
            name=name, shape=shape, chunks=tuple(chunks), dtype=dtype, dimension_names=dims,
            attributes=attrs, compressors=[_compressor(dtype)], fill_value=fill,
            config={"write_empty_chunks": True},  # every chunk exists, so a missing one is an error (confine.py)
        )

    def _array(self, name, dims, row_shape, dtype):
        # handles of this group's arrays, kept: each lookup in the group reads the store (resize updates a handle
        # in place); dropped whenever the group is opened anew (the store moved into place, or reopened)
        if getattr(self, "_handles_of", None) is not self.group:
            self._handles, self._handles_of = {}, self.group
        arr = self._handles.get(name)
        if arr is None:
            if name in self.group:
                arr = self.group[name]
            else:
                shape = tuple(0 if d in APPEND_DIMS else s for d, s in zip(dims, row_shape))
                arr = self._create(name, dims, shape, dtype)
            self._handles[name] = arr
        return arr

    def append(self, dim: str, rows: dict[str, tuple[tuple[str, ...], np.ndarray]]) -> None:
        """Append `rows[name] = (dims, array)` along `dim` (the arrays carry n new rows on that axis)."""
        with self._io(f"appending {dim} rows"):
            self._append(dim, rows)

    def _append(self, dim: str, rows: dict[str, tuple[tuple[str, ...], np.ndarray]]) -> None:
        self._prepare()
        start = self.sizes[dim]
        n = None
        for name, (dims, data) in rows.items():
            ax = dims.index(dim)
            n = data.shape[ax] if n is None else n
            if data.shape[ax] != n:
                raise ValueError(f"append of {name!r}: {data.shape[ax]} rows, expected {n}")
            arr = self._array(name, dims, data.shape, data.dtype)
            new_shape = list(arr.shape)
            new_shape[ax] = start + n
            arr.resize(tuple(new_shape))
            sl = [slice(None)] * data.ndim
            sl[ax] = slice(start, start + n)
            arr[tuple(sl)] = data
        self.sizes[dim] = start + (n or 0)

    def write_static(self, name: str, dims: tuple[str, ...], data: np.ndarray, index=None) -> None:
        """Create (if needed) a non-appended array and write it, or the rows `index` of its first axis."""
        with self._io(f"writing {name!r}"):
            self._write_static(name, dims, data, index)

    def _write_static(self, name: str, dims: tuple[str, ...], data: np.ndarray, index=None) -> None:
        self._prepare()
        if name not in self.group:
            if index is not None:
                raise ValueError(f"static array {name!r} must be created whole before partial writes")
            arr = self._create(name, dims, data.shape, data.dtype)
            arr[...] = data
            return
        arr = self.group[name]
        if index is None:
            arr[...] = data
        else:
            arr[index] = data

    def commit(self, state: dict[str, np.ndarray] | None, *, complete: bool = False, extra: dict | None = None) -> None:
        with self._io("committing a chunk"):
            self._commit(state, complete, extra)
            if self.root != self.path:
                self._move_into_place()
        self._committed = self.sizes.get("segment", 0)

    def _commit(self, state, complete, extra) -> None:
        self._prepare()
        state_file = None
        rdir = self.root / RESUME_DIR
        if state is not None:
            rdir.mkdir(exist_ok=True)
            state_file = f"{RESUME_DIR}/state_{self.sizes['segment']}.npz"
            tmp = self.root / (state_file + f".tmp{os.getpid()}.npz")
            np.savez(tmp, **state)
            os.replace(tmp, self.root / state_file)
        payload = {"sizes": self.sizes, "state_file": state_file, "complete": complete, "schema_version": SCHEMA_VERSION,
                   "dense_chunks": self.dense}
        payload.update(extra or {})
        _atomic_write(self.root / COMMIT_FILE, json.dumps(payload).encode())
        if rdir.exists():
            keep = Path(state_file).name if state_file else None
            for f in rdir.iterdir():
                if f.name != keep and not f.name.endswith(".npz.tmp"):
                    try:
                        f.unlink()
                    except FileNotFoundError:
                        pass


_SPLIT_CHUNK_BYTES = 8 * 2 ** 20


def _itemsize(dtype) -> int:
    """Bytes per element as blosc and the chunk sizes count them (strings and objects: 1)."""
    return np.dtype(dtype).itemsize if np.dtype(dtype).kind not in "OUS" else 1


def _split_layers(dims, chunks: list[int], item: int) -> list[int]:
    """A chunk over _SPLIT_CHUNK_BYTES (decompressed) is cut along its layer axis into pieces of about a quarter of
    that: zarr compresses the chunks of one write on several threads, where one big chunk is compressed by one.
    GPT-2's write events (128 segments x 12 layers x 10 memory tokens x 768, 23.6 MB in bfloat16) took 1.3 s of
    the GPU writes recording's writer thread at 262k tokens as one chunk per flush."""
    if "layer" not in dims:
        return chunks
    nbytes = item * int(np.prod(chunks))
    if nbytes <= _SPLIT_CHUNK_BYTES:
        return chunks
    ax = dims.index("layer")
    per_layer = nbytes // max(chunks[ax], 1)
    out = list(chunks)
    out[ax] = max(1, min(chunks[ax], (_SPLIT_CHUNK_BYTES // 4) // max(per_layer, 1)))
    return out


def _compressor(dtype):
    """Blosc-zstd level 3 with byte shuffle: the high (sign/exponent) bytes of neighbouring values sit
    together and compress well, the near-random mantissa bytes do not drag them down. On 16-bit write events
    this stores ~0.70-0.73 of the raw bytes where plain zstd stored ~0.80 (bench/RESULTS.md). Level 3, not 5:
    on a 23.6 MB chunk of bf16 write events level 5 compressed at 50 MB/s on one core and was the GPU
    writes recording's bottleneck (2.6 s of its writer thread's 3.3 s at 262k tokens on an H100); level 3
    runs 160 MB/s and stores ~5 % more (ratio 1.36 instead of 1.43)."""
    from zarr.codecs import BloscCodec
    item = _itemsize(dtype)
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle" if item > 1 else "noshuffle", typesize=item)
