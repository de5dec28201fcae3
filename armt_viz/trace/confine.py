"""Reading a trace store that may be hostile: confinement, budgets before allocation, missing chunks (issue 16).

A trace travels between people, so its folder is untrusted input. ``scan_store`` walks the store once, before
zarr, xarray or dask see it, and returns a ``StoreListing``; ``ConfinedStore`` (a read-only zarr ``LocalStore``)
then serves only the files of that listing. Nothing else is read:

* **Confinement.** Every file and folder must resolve inside the trace folder. A symlink whose target leaves it
  (or loops, or dangles) refuses the whole trace; so does anything that is not a regular file or a folder (a FIFO
  would block a reader forever). Reads after the scan open files with ``O_NOFOLLOW | O_NONBLOCK`` and check
  again that they are regular, so a file swapped for a link or a FIFO after the scan is refused too.
* **Budgets.** Every ``zarr.json`` is size-checked before it is parsed, and every array's declared shape, chunk
  shape, chunk count and decompressed chunk size are checked against ``TraceLimits`` (defaults sized for a
  10⁹-token trace; configurable, also through ``ARMT_VIZ_TRACE_LIMITS``). The commit marker's sizes are checked
  against the same limits. A refusal names the array, what it declares and the limit.
* **Missing data.** A store written with every chunk present (the recorder's stores: ``dense_chunks`` in the
  commit marker) must hold every chunk the commit marker covers; a missing one is an error naming the array and
  the segment range, at open and at any later read (a trace deleted while a dashboard shows it). Older stores
  may legitimately skip chunks equal to the fill value; their missing chunks are counted in
  ``StoreListing.missing`` so a reader can say so.
"""

from __future__ import annotations

import dataclasses
import errno
import itertools
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .store import TraceStoreError

__all__ = ["scan_committed", "TraceLimits", "TraceBudgetError", "TraceConfinementError", "MissingChunkError", "StoreListing",
           "scan_store", "ConfinedStore", "default_limits", "LIMITS_ENV"]

LIMITS_ENV = "ARMT_VIZ_TRACE_LIMITS"  # JSON object of TraceLimits fields, e.g. '{"max_chunks": 100000}'


class TraceBudgetError(ValueError):
    """A store declares more than the configured limits allow (refused before anything is allocated)."""


class TraceConfinementError(PermissionError):
    """A file or folder of a store resolves outside it, or is not a regular file or folder."""


class MissingChunkError(OSError):
    """A chunk that the commit marker says was written is absent."""


@dataclass(frozen=True)
class TraceLimits:
    """What one trace may declare. Defaults fit a 10⁹-token trace as the recorder chunks it at GPT-2 sizes
    (segment 512: ~4k chunks per array, ~80k in all), and keep what a reader builds per chunk (dask graph
    entries, ~10-20 µs each) under a second. A tiny model recorded over 10⁹ tokens at segment size 16 needs
    larger ``max_chunks``/``max_total_chunks`` (``ARMT_VIZ_TRACE_LIMITS``).

    Args:
        max_segments: committed segments (10⁹ tokens at segment size 16).
        max_keyframes: committed keyframes.
        max_rows: any other row dimension (``probe``, ``event``: ledger events).
        max_width: any non-row dimension (``sample``, ``layer``, ``hidden``, ``key_feature``, ``position``...).
        max_chunks: chunks of one array (inside the declared shape).
        max_total_chunks: chunks of all arrays together.
        max_chunk_bytes: decompressed bytes of one chunk.
        max_arrays: arrays in one store.
        max_metadata_bytes: bytes of one ``zarr.json`` or of the commit marker.
        max_files: files in one store.
        max_file_bytes: bytes of one (compressed) chunk file.
    """

    max_segments: int = 2 ** 26
    max_keyframes: int = 2 ** 26
    max_rows: int = 2 ** 30
    max_width: int = 2 ** 20
    max_chunks: int = 2 ** 16
    max_total_chunks: int = 2 ** 17
    max_chunk_bytes: int = 2 ** 29
    max_arrays: int = 1024
    max_metadata_bytes: int = 2 ** 20
    max_files: int = 2 ** 21
    max_file_bytes: int = 2 ** 30

    def dim_limit(self, dim: str) -> tuple[int, str]:
        if dim == "segment":
            return self.max_segments, "max_segments"
        if dim == "keyframe":
            return self.max_keyframes, "max_keyframes"
        if dim in ("probe", "event"):
            return self.max_rows, "max_rows"
        return self.max_width, "max_width"


def default_limits() -> TraceLimits:
    """``TraceLimits()`` with the overrides of ``$ARMT_VIZ_TRACE_LIMITS`` (a JSON object of field: int)."""
    raw = os.environ.get(LIMITS_ENV, "").strip()
    if not raw:
        return TraceLimits()
    names = {f.name for f in dataclasses.fields(TraceLimits)}
    try:
        over = json.loads(raw)
        if not isinstance(over, dict) or not all(k in names and isinstance(v, int) and v > 0 for k, v in over.items()):
            raise ValueError("not an object of known fields with positive ints")
    except ValueError as exc:
        raise ValueError(f"${LIMITS_ENV}={raw[:200]!r} is not valid ({exc}); expected a JSON object with some of "
                         f"{sorted(names)} mapped to positive ints, e.g. '{{\"max_chunks\": 100000}}'") from None
    return TraceLimits(**over)


_ALLOWED_CODECS = {"bytes", "blosc", "zstd", "gzip", "crc32c", "transpose", "vlen-utf8", "vlen-bytes"}
_ALLOWED_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16",
                   "float32", "float64", "string", "bytes"}
_META = "zarr.json"


@dataclass(frozen=True)
class ArrayInfo:
    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    separator: str


@dataclass
class StoreListing:
    """The validated content of a store: its files (relative POSIX paths), its arrays, and the committed sizes
    (the chunks inside them must exist when ``dense``)."""

    root: str
    files: frozenset[str]
    arrays: dict[str, ArrayInfo]
    dense: bool
    sizes: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    label: str = ""  # the path as the caller gave it (for messages)
    complete: bool = False  # the commit marker says the recording finished

    def _grid(self, a: ArrayInfo) -> list[range]:
        return [range(math.ceil((min(s, self.sizes[d]) if d in self.sizes else s) / c))
                for d, s, c in zip(a.dims, a.shape, a.chunks)]

    def expected_keys(self, a: ArrayInfo):
        """The chunk keys of array ``a`` inside the committed sizes."""
        for idx in itertools.product(*self._grid(a)):
            yield f"{a.name}/c" + "".join(a.separator + str(i) for i in idx)

    def expected(self, key: str) -> tuple[str, str, int, int] | None:
        """``(array, dim, lo, hi)`` when ``key`` is a chunk inside the committed sizes (rows lo..hi-1 of ``dim``;
        dim '' for an array without an append dim), else None."""
        name, _, rest = key.partition("/")
        a = self.arrays.get(name)
        if a is None or not rest.startswith("c"):
            return None
        parts = [p for p in rest[1:].split(a.separator) if p != ""]
        if len(parts) != len(a.dims) or not all(p.isdigit() for p in parts):
            return None
        idx = [int(p) for p in parts]
        if any(i not in r for i, r in zip(idx, self._grid(a))):
            return None
        ax = next((i for i, d in enumerate(a.dims) if d in self.sizes), None)
        if ax is None:
            return (name, "", 0, 0)
        lo = idx[ax] * a.chunks[ax]
        return (name, a.dims[ax], lo, min(lo + a.chunks[ax], self.sizes[a.dims[ax]]))

    def describe_missing(self, key: str) -> str:
        name, dim, lo, hi = self.expected(key) or (key.split("/")[0], "", 0, 0)
        where = f"{dim}s {lo}-{hi - 1}" if dim else "its data"
        return (f"array {name!r} has no data for {where} (chunk file {key!r} is missing, though the commit marker "
                "says it was written); the trace was damaged or deleted while being read. Record it again or "
                "restore the file")


def _refuse(label: str, rel: str, why: str) -> TraceConfinementError:
    return TraceConfinementError(errno.EACCES, f"trace {label!r} refused: {rel!r} {why}; a trace "
                                 "folder must hold only its own regular files and folders. Copy the trace without "
                                 "links (cp -rL inside the trace only) or ask whoever sent it")


def _walk(root: str, limits: TraceLimits, label: str) -> set[str]:
    """Every regular file under ``root`` (relative), refusing links out, loops, and special files."""
    files: set[str] = set()
    seen_dirs = {os.stat(root).st_ino}
    stack = [("", root)]
    while stack:
        rel_dir, real_dir = stack.pop()
        try:
            entries = list(os.scandir(real_dir))
        except FileNotFoundError:
            if rel_dir:  # a sub-folder removed while we walked (a writer replacing its resume state): gone
                continue
            raise _refuse(label, ".", "cannot be listed (it no longer exists)") from None
        except OSError as exc:
            raise _refuse(label, rel_dir or ".", f"cannot be listed ({exc.strerror})") from None
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            path = e.path
            if e.is_symlink():
                try:
                    target = os.path.realpath(path, strict=True)
                except OSError as exc:  # dangling, or a loop
                    kind = "is a symlink loop" if exc.errno == errno.ELOOP else "is a dangling symlink"
                    raise _refuse(label, rel, kind) from None
                if os.path.commonpath([root, target]) != root:
                    raise _refuse(label, rel, "is a symlink that resolves outside the trace folder")
                path = target
            try:
                st = os.stat(path)
            except FileNotFoundError:
                if path == e.path:
                    # listed, then gone: a live writer's temporary file renamed into place (zarr writes
                    # `<chunk>.<uuid>.partial` and renames it) or a file replaced; nothing is there to read
                    continue
                raise _refuse(label, rel, "is a symlink whose target vanished") from None
            except OSError as exc:
                raise _refuse(label, rel, f"cannot be read ({exc.strerror})") from None
            if stat.S_ISDIR(st.st_mode):
                if st.st_ino in seen_dirs:
                    raise _refuse(label, rel, "links back to a folder already seen (a loop)")
                seen_dirs.add(st.st_ino)
                stack.append((rel, path))
            elif stat.S_ISREG(st.st_mode):
                if st.st_size > limits.max_file_bytes:
                    raise TraceBudgetError(f"trace {label!r}: file {rel!r} holds {st.st_size:,} "
                                           f"bytes, over the limit max_file_bytes={limits.max_file_bytes:,}")
                files.add(rel)
                if len(files) > limits.max_files:
                    raise TraceBudgetError(f"trace {label!r} holds more than max_files="
                                           f"{limits.max_files:,} files; raise the limit ({LIMITS_ENV}) if it is real")
            else:
                raise _refuse(label, rel, "is not a regular file or folder (a FIFO, socket or device)")
    return files


def read_small_json(path: str, limit: int, what: str):
    """Parse a JSON file of at most ``limit`` bytes (checked before reading), refusing links and special files."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise TraceConfinementError(errno.EACCES, f"{what} is not a regular file")
        if st.st_size > limit:
            raise TraceBudgetError(f"{what} holds {st.st_size:,} bytes, over the limit of {limit:,} bytes for "
                                   "metadata (max_metadata_bytes)")
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(limit + 1)
    finally:
        os.close(fd)
    try:
        return json.loads(raw)
    except ValueError as exc:
        from .store import TraceStoreError

        raise TraceStoreError(f"{what} is unreadable: not valid JSON ({exc}); the store is corrupted (a truncated "
                              "or edited file): record it again or restore the file") from None


def _array_info(label: str, name: str, meta, limits: TraceLimits) -> ArrayInfo:
    trace = label

    def bad(what):
        return TraceBudgetError(f"trace {trace!r}: array {name!r} {what}") if "limit" in what else \
            TraceStoreError(f"trace {trace!r}: array {name!r}: zarr metadata is unreadable ({name}/zarr.json): "
                            f"{what}; the store is corrupted or was not written by armt_viz")

    if not isinstance(meta, dict):
        raise bad("expected a JSON object")
    shape, dims = meta.get("shape"), meta.get("dimension_names")
    try:
        grid = meta["chunk_grid"]
        chunks = grid["configuration"]["chunk_shape"]
        ok_grid = grid.get("name") == "regular"
    except (KeyError, TypeError):
        raise bad("expected chunk_grid {'name': 'regular', 'configuration': {'chunk_shape': [...]}}") from None
    if not (isinstance(shape, list) and isinstance(chunks, list) and isinstance(dims, list) and ok_grid
            and len(shape) == len(chunks) == len(dims)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
            and all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in chunks)
            and all(isinstance(d, str) for d in dims)):
        raise bad(f"expected shape, chunk_shape and dimension_names of one length with non-negative ints and "
                  f"names; got shape={str(shape)[:80]}, chunk_shape={str(chunks)[:80]}, "
                  f"dimension_names={str(dims)[:80]}")
    if len(shape) > 8:
        raise bad(f"declares {len(shape)} dimensions, over the limit of 8")
    dtype = meta.get("data_type")
    if dtype not in _ALLOWED_DTYPES:
        raise bad(f"has data_type {str(dtype)[:40]!r}; expected one of {sorted(_ALLOWED_DTYPES)}")
    codecs = meta.get("codecs")
    if not isinstance(codecs, list) or not all(isinstance(c, dict) and c.get("name") in _ALLOWED_CODECS
                                               for c in codecs):
        names = [c.get("name") if isinstance(c, dict) else c for c in codecs] if isinstance(codecs, list) else codecs
        raise bad(f"uses codecs {str(names)[:120]}; expected only {sorted(_ALLOWED_CODECS)} (no sharding, no pickle)")
    for d, s in zip(dims, shape):
        lim, lname = limits.dim_limit(d)
        if s > lim:
            raise bad(f"declares dimension {d!r} of {s:,}, over the limit {lname}={lim:,}")
    itemsize = 8 if dtype in ("string", "bytes") else np.dtype(dtype).itemsize
    chunk_bytes = math.prod(chunks) * itemsize
    if chunk_bytes > limits.max_chunk_bytes:
        raise bad(f"declares chunks of {chunks} ({chunk_bytes:,} bytes), over the limit "
                  f"max_chunk_bytes={limits.max_chunk_bytes:,}")
    n_chunks = math.prod(math.ceil(s / c) for s, c in zip(shape, chunks))
    if n_chunks > limits.max_chunks:
        raise bad(f"declares shape {shape} in {n_chunks:,} chunks of {chunks}, over the limit "
                  f"max_chunks={limits.max_chunks:,}")
    enc = meta.get("chunk_key_encoding") or {}
    sep = (enc.get("configuration") or {}).get("separator", "/") if isinstance(enc, dict) else "/"
    if not isinstance(enc, dict) or enc.get("name", "default") != "default" or sep not in ("/", "."):
        raise bad("expected the default chunk key encoding ('c/0/1' or 'c.0.1')")
    return ArrayInfo(name, tuple(dims), tuple(shape), tuple(chunks), sep)


def scan_store(path, sizes: dict[str, int], *, dense: bool, limits: TraceLimits | None = None) -> StoreListing:
    """Validate the store at ``path`` once (see the module docstring) and return its listing.

    Args:
        sizes: committed rows per append dim (from the commit marker): only chunks inside them must exist.
        dense: every chunk was written (missing ones are errors); else they are only counted.

    Raises:
        TraceConfinementError, TraceBudgetError, MissingChunkError, ValueError (malformed metadata).
    """
    limits = limits or default_limits()
    root = os.path.realpath(path)
    label = str(path)
    for d, n in sizes.items():
        lim, lname = limits.dim_limit(d)
        if n > lim:
            raise TraceBudgetError(f"trace {label!r}: the commit marker says {n:,} {d}s were "
                                   f"committed, over the limit {lname}={lim:,}")
    files = _walk(root, limits, label)
    if "zarr.json" in files:  # the root group first: a foreign store is named as such, not by its arrays
        meta = read_small_json(os.path.join(root, "zarr.json"), limits.max_metadata_bytes, f"{label!r}: zarr.json")
        attrs = meta.get("attributes") if isinstance(meta, dict) else None
        if not isinstance(attrs, dict) or "schema_version" not in attrs:
            raise TraceStoreError(f"{label!r} has no schema_version attribute; it was not written by armt_viz")
    arrays: dict[str, ArrayInfo] = {}
    total_chunks = 0
    for rel in sorted(files):
        if not rel.endswith("/" + _META):
            continue
        name = rel[: -len(_META) - 1]
        if "/" in name or name.startswith("_"):
            continue  # only top-level arrays belong to a trace (nested groups are never opened)
        meta = read_small_json(os.path.join(root, rel), limits.max_metadata_bytes,
                               f"trace {label!r}: {rel!r}")
        if isinstance(meta, dict) and meta.get("node_type") == "group":
            continue
        arrays[name] = _array_info(label, name, meta, limits)
        total_chunks += math.prod(math.ceil(s / c) for s, c in zip(arrays[name].shape, arrays[name].chunks))
        if total_chunks > limits.max_total_chunks:
            raise TraceBudgetError(f"trace {label!r}: its arrays declare {total_chunks:,} chunks together (up to "
                                   f"{name!r}), over the limit max_total_chunks={limits.max_total_chunks:,}")
        if len(arrays) > limits.max_arrays:
            raise TraceBudgetError(f"trace {label!r} holds more than max_arrays="
                                   f"{limits.max_arrays} arrays")
    listing = StoreListing(root, frozenset(files), arrays, dense, dict(sizes), label=label)
    for a in arrays.values():
        for key in listing.expected_keys(a):
            if key not in files:
                if dense:
                    raise MissingChunkError(errno.ENOENT, f"trace {label!r}: "
                                            + listing.describe_missing(key))
                if len(listing.missing) < 1000:
                    listing.missing.append(key)
    return listing


def _read_confined(path: str, limit: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise OSError(errno.EACCES, "not a regular file within the size limit")
        chunks, left = [], st.st_size
        while left > 0:
            b = os.read(fd, min(left, 1 << 24))
            if not b:
                break
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _confined_store_class():
    from zarr.abc.store import OffsetByteRequest, RangeByteRequest, SuffixByteRequest
    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import LocalStore

    class ConfinedStore(LocalStore):
        """A read-only ``LocalStore`` that serves only the files of a ``StoreListing`` (see the module docstring)."""

        def __init__(self, root, *, read_only: bool = True, listing: StoreListing | None = None,
                     limits: TraceLimits | None = None) -> None:
            super().__init__(root, read_only=True)
            self.listing = listing
            self.limits = limits or TraceLimits()

        def with_read_only(self, read_only: bool = False):
            return type(self)(self.root, listing=self.listing, limits=self.limits)

        def __eq__(self, other):
            return isinstance(other, ConfinedStore) and self.root == other.root and self.listing is other.listing

        def __hash__(self):
            return hash((str(self.root), id(self.listing)))

        def _read(self, key: str, byte_range):
            listing = self.listing
            if key not in listing.files:
                if listing.dense and listing.expected(key) is not None:
                    raise MissingChunkError(errno.ENOENT, listing.describe_missing(key))
                return None  # a chunk never written (fill value) or an optional metadata file
            try:
                data = _read_confined(os.path.join(listing.root, key), self.limits.max_file_bytes)
            except FileNotFoundError:
                if listing.expected(key) is not None:
                    raise MissingChunkError(errno.ENOENT, listing.describe_missing(key)) from None
                raise MissingChunkError(errno.ENOENT, f"trace {listing.label!r}: {key!r} was "
                                        "removed while the trace was open; reopen it") from None
            except OSError as exc:
                raise TraceConfinementError(errno.EACCES, f"trace {listing.label!r}: {key!r} is "
                                            f"no longer a regular file inside the trace ({exc.strerror}); "
                                            "refused") from None
            if byte_range is None:
                return data
            if isinstance(byte_range, RangeByteRequest):
                return data[byte_range.start:byte_range.end]
            if isinstance(byte_range, OffsetByteRequest):
                return data[byte_range.offset:]
            if isinstance(byte_range, SuffixByteRequest):
                return data[max(0, len(data) - byte_range.suffix):]
            raise TypeError(f"unexpected byte range {byte_range!r}")

        async def get(self, key, prototype=None, byte_range=None):
            import asyncio

            prototype = prototype or default_buffer_prototype()
            if key not in self.listing.files:  # never written: no thread hop, no file system call
                data = self._read(key, byte_range)
            else:
                data = await asyncio.to_thread(self._read, key, byte_range)
            return None if data is None else prototype.buffer.from_bytes(data)

        async def get_partial_values(self, prototype, key_ranges):
            return [await self.get(k, prototype, r) for k, r in key_ranges]

        async def exists(self, key: str) -> bool:
            return key in self.listing.files

        async def list(self):
            for k in sorted(self.listing.files):
                yield k

        async def list_prefix(self, prefix: str):
            for k in sorted(self.listing.files):
                if k.startswith(prefix):
                    yield k

        async def list_dir(self, prefix: str):
            prefix = prefix.rstrip("/")
            seen = set()
            for k in sorted(self.listing.files):
                if prefix and not k.startswith(prefix + "/"):
                    continue
                rest = k[len(prefix) + 1:] if prefix else k
                head = rest.split("/", 1)[0]
                if head not in seen:
                    seen.add(head)
                    yield head

    return ConfinedStore


_CLS = None


def ConfinedStore(root, *, listing: StoreListing, limits: TraceLimits | None = None):  # noqa: N802 (a factory)
    """A read-only zarr store over ``root`` that serves only the files of ``listing``."""
    global _CLS
    if _CLS is None:
        _CLS = _confined_store_class()
    return _CLS(Path(listing.root), listing=listing, limits=limits)


def scan_committed(path, limits: TraceLimits | None = None) -> StoreListing:
    """``scan_store`` at the sizes of the store's commit marker (a picklable function for worker processes)."""
    from .store import read_commit

    commit = read_commit(path)
    listing = scan_store(path, commit["sizes"], dense=bool(commit.get("dense_chunks")), limits=limits)
    listing.complete = bool(commit.get("complete"))
    return listing
