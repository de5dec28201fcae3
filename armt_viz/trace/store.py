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

import json
import warnings
import os
from pathlib import Path

import numpy as np

from .schema import APPEND_DIMS, SCHEMA, SCHEMA_VERSION

__all__ = ["TraceWriter", "read_commit", "COMMIT_FILE", "TraceStoreError"]

COMMIT_FILE = "armt_commit.json"
RESUME_DIR = "_resume"


class TraceStoreError(ValueError):
    """A store that is not a readable armt_viz trace."""


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
        raise FileNotFoundError(f"no trace at {str(p)!r}: the path does not exist; record one with av.record(..., store=path)")
    f = p / COMMIT_FILE
    if not f.exists():
        raise TraceStoreError(
            f"{str(p)!r} is not an armt_viz trace (no {COMMIT_FILE}): either it is a foreign zarr store, or the "
            "recording was killed before its first chunk was committed; record it again"
        )
    try:
        commit = json.loads(f.read_text())
        sizes = {k: int(v) for k, v in commit["sizes"].items()}
    except Exception as exc:
        raise TraceStoreError(f"{str(f)!r} is corrupted ({exc}); expected JSON with 'sizes'") from exc
    commit["sizes"] = sizes
    return commit


class TraceWriter:
    """Owns one store while recording. Arrays are created on the first append of their dim."""

    def __init__(self, path, *, attrs: dict, chunk_segments: int, resume: bool = False):
        import zarr
        self.path = Path(path)
        self.chunk_segments = chunk_segments
        self.resume_state = None
        if resume and (self.path / COMMIT_FILE).exists():
            commit = read_commit(self.path)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
                self.group = zarr.open_group(str(self.path), mode="r+", use_consolidated=False)
                arrays = list(self.group.arrays())
            old = json.loads(self.group.attrs.get("record_config", "{}"))
            new = json.loads(attrs.get("record_config", "{}"))
            if old and new and old != new:
                raise ValueError(f"resume=True but the record config differs from the store's: store {old}, now {new}; resume with the same settings or record to a new store")
            self.sizes = dict(commit["sizes"])
            for name, arr in arrays:
                dims = tuple(arr.metadata.dimension_names)
                for ax, d in enumerate(dims):
                    if d in self.sizes and arr.shape[ax] != self.sizes[d]:
                        arr.resize(tuple(self.sizes[d] if i == ax else s for i, s in enumerate(arr.shape)))
            if commit.get("state_file"):
                with np.load(self.path / commit["state_file"]) as z:
                    self.resume_state = {k: z[k] for k in z.files}
        else:
            if self.path.exists() and any(self.path.iterdir()):
                if not (self.path / COMMIT_FILE).exists() and not (self.path / "zarr.json").exists():
                    raise FileExistsError(f"{str(self.path)!r} exists and is not a trace store; choose an empty or new path")
                import shutil
                shutil.rmtree(self.path)
            self.group = zarr.open_group(str(self.path), mode="w", zarr_format=3)
            self.sizes = {d: 0 for d in APPEND_DIMS}
        self.group.attrs.update(attrs)
        self.group.attrs["schema_version"] = SCHEMA_VERSION

    # ------------------------------------------------------------------ arrays
    def _create(self, name: str, dims: tuple[str, ...], shape: tuple[int, ...], dtype, fill=None):
        from zarr.codecs import ZstdCodec
        var = SCHEMA.get(name)
        chunks = []
        for d, s in zip(dims, shape):
            if d == "segment":
                chunks.append(self.chunk_segments)
            elif d == "keyframe":
                chunks.append(1)
            else:
                chunks.append(max(int(s), 1))
        attrs = {"long_name": var.long_name, "units": var.units} if var else {}
        if fill is None:
            fill = np.nan if np.dtype(dtype).kind == "f" else (-1 if np.dtype(dtype).kind == "i" else 0)
        return self.group.create_array(
            name=name, shape=shape, chunks=tuple(chunks), dtype=dtype, dimension_names=dims,
            attributes=attrs, compressors=[ZstdCodec(level=3)], fill_value=fill,
        )

    def _array(self, name, dims, row_shape, dtype):
        if name in self.group:
            return self.group[name]
        shape = tuple(0 if d in APPEND_DIMS else s for d, s in zip(dims, row_shape))
        return self._create(name, dims, shape, dtype)

    def append(self, dim: str, rows: dict[str, tuple[tuple[str, ...], np.ndarray]]) -> None:
        """Append `rows[name] = (dims, array)` along `dim` (the arrays carry n new rows on that axis)."""
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
        state_file = None
        rdir = self.path / RESUME_DIR
        if state is not None:
            rdir.mkdir(exist_ok=True)
            state_file = f"{RESUME_DIR}/state_{self.sizes['segment']}.npz"
            tmp = self.path / (state_file + f".tmp{os.getpid()}.npz")
            np.savez(tmp, **state)
            os.replace(tmp, self.path / state_file)
        payload = {"sizes": self.sizes, "state_file": state_file, "complete": complete, "schema_version": SCHEMA_VERSION}
        payload.update(extra or {})
        _atomic_write(self.path / COMMIT_FILE, json.dumps(payload).encode())
        if rdir.exists():
            keep = Path(state_file).name if state_file else None
            for f in rdir.iterdir():
                if f.name != keep and not f.name.endswith(".npz.tmp"):
                    try:
                        f.unlink()
                    except FileNotFoundError:
                        pass
