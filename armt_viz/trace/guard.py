"""Store integrity on the writing side (issue 16): one writer per store, resume only what matches, delete only
what we wrote. No torch; ``TraceWriter`` (trace/store.py) calls these hooks.

* ``WriterLock``: a lock file ``<store>.armt-lock`` beside the store (it also covers the ``<store>.partial``
  staging folder of a new store) holding the owner's pid, host and start time. It is held with ``flock`` on an
  open descriptor, so the kernel drops it when the owner dies however it dies; a later writer then takes the
  stale file over. A second live writer is refused with a message naming the owner. Where ``flock`` is not
  available, the owner's pid is checked instead (on the same host: a dead pid is a stale lock).
* ``check_removable``: a folder is replaced or deleted only if it carries our marks: a zarr v3 group whose root
  attributes hold ``schema_version`` and ``armt_config``, and nothing beside the entries a recording writes.
  Someone else's zarr store, or our store with unrelated files added, is refused and left intact.
* ``provenance_mismatches``: what a resume must agree on (weights, input fingerprint, model and record configs).
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import logging
import os
import socket
from pathlib import Path

__all__ = ["WriterLock", "StoreLockedError", "ForeignStoreError", "check_removable", "lock_path",
           "provenance_mismatches", "PROVENANCE_KEYS", "LOCK_SUFFIX"]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".armt-lock"
# attrs a resume must match: what produced the committed segments (model, weights, input, record settings)
PROVENANCE_KEYS = ("armt_config", "backbone_config", "record_config", "weights_sha256", "input_fingerprint")


class StoreLockedError(RuntimeError):
    """Another live process is writing the store."""


class ForeignStoreError(FileExistsError):
    """The path holds something we did not write; it is never deleted."""


def lock_path(store: str | os.PathLike) -> Path:
    p = Path(store)
    return p.with_name(p.name + LOCK_SUFFIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _describe(owner: dict) -> str:
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')!r} since {owner.get('started', '?')}")


class WriterLock:
    """The single-writer lock of one store (see the module docstring). ``acquire`` or raise; ``release``."""

    def __init__(self, store: str | os.PathLike):
        self.store = Path(store)
        self.path = lock_path(store)
        self._fd: int | None = None

    def _read_owner(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as f:
                owner = json.loads(f.read(4096) or "{}")
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def _refuse(self, owner: dict) -> StoreLockedError:
        return StoreLockedError(
            f"the trace store {self.store.name!r} is being written by another recording ({_describe(owner)}; "
            f"lock file {self.path.name!r}). Two writers would mix their data, so this one was refused and "
            "nothing was written. Wait for that recording to finish, or record to another store; if that process "
            "no longer exists, delete the lock file")

    def acquire(self) -> "WriterLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        for _ in range(20):  # retry if the file was replaced between open and lock
            # the lock is held through a read-only descriptor (flock allows that), so a recording never keeps a
            # file open for writing: a filesystem can still be remounted read-only under it
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refuse(self._read_owner()) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    return self._acquire_by_pid(me)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file after we opened it: lock the new one
                os.close(fd)
                continue
            previous = self._read_owner()
            if previous.get("pid") not in (None, me["pid"]):
                log.warning("taking over the stale writer lock of %s (%s): that writer is gone",
                            self.store.name, _describe(previous))
            wfd = os.open(self.path, os.O_WRONLY | os.O_NOFOLLOW)
            try:  # another descriptor: closing it keeps the flock of `fd`
                os.ftruncate(wfd, 0)
                os.pwrite(wfd, json.dumps(me).encode(), 0)
                os.fsync(wfd)
            finally:
                os.close(wfd)
            self._fd = fd
            return self
        raise StoreLockedError(f"could not lock {self.path.name!r}: it keeps being replaced by another process")

    def _acquire_by_pid(self, me: dict) -> "WriterLock":
        """Fallback without flock (some network filesystems): O_EXCL creation, stale when the pid is dead."""
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                owner = self._read_owner()
                if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) \
                        and not _pid_alive(owner["pid"]):
                    stale = self.path.with_name(self.path.name + f".stale{os.getpid()}")
                    os.replace(self.path, stale)
                    os.unlink(stale)
                    continue
                raise self._refuse(owner) from None
            os.write(fd, json.dumps(me).encode())
            os.fsync(fd)
            os.close(fd)  # held read-only (see acquire)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
            return self
        raise self._refuse(self._read_owner())

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding the lock: no one can lock this inode afterwards
        except FileNotFoundError:
            pass
        except OSError as exc:  # e.g. the filesystem turned read-only: the lock still ends when fd closes
            log.warning("could not remove the writer lock %s: %s", self.path.name, exc)
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


_STORE_FILES = {"zarr.json", "armt_commit.json", "armt_derived_origin_stale.npz"}  # + analysis.stale_cache's file


def _ours_reason(p: Path, *, staging: bool = False) -> str | None:
    """None if ``p`` is a store we wrote (see the module docstring), else why not."""
    if p.is_symlink():
        return "it is a symlink"
    if not p.is_dir():
        return "it is not a folder"
    try:
        from .confine import read_small_json

        meta = read_small_json(str(p / "zarr.json"), 1 << 20, "zarr.json")
    except (OSError, ValueError) as exc:
        return f"it has no readable zarr.json ({exc})"
    attrs = meta.get("attributes") if isinstance(meta, dict) else None
    if not (isinstance(attrs, dict) and meta.get("node_type") == "group" and "schema_version" in attrs
            and "armt_config" in attrs):
        return "its zarr.json is not an armt_viz trace (no schema_version and armt_config attributes)"
    if not staging and not (p / "armt_commit.json").is_file():
        return "it has no armt_commit.json"
    for entry in os.scandir(p):
        name = entry.name
        if entry.is_symlink():
            return f"{name!r} is a symlink"
        if name in _STORE_FILES or (name.startswith(("armt_commit.json.tmp", ".armt_derived_")) and entry.is_file()):
            continue
        if name == "_resume" and entry.is_dir():
            bad = [e.name for e in os.scandir(entry.path) if not (e.name.startswith("state_") and e.is_file())]
            if bad:
                return f"_resume holds files a recording does not write ({bad[:3]})"
            continue
        if entry.is_dir():
            inner = {e.name for e in os.scandir(entry.path)}
            if "zarr.json" in inner and inner <= {"zarr.json", "c"}:
                continue
            return f"{name!r} is not one of its arrays (it holds {sorted(inner)[:5]})"
        return f"{name!r} is not a file a recording writes"
    return None


def check_removable(p: Path, *, staging: bool = False) -> None:
    """Raise ``ForeignStoreError`` unless ``p`` is absent, an empty folder, or a store we wrote."""
    if not os.path.lexists(p):
        return
    if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
        return
    why = _ours_reason(p, staging=staging)
    if why is not None:
        raise ForeignStoreError(
            errno.EEXIST, f"{str(p)!r} exists and is not an armt_viz trace store that can be replaced: {why}. "
            "Nothing was deleted. Record to a new or empty path, or move that folder away yourself")


def _stable(cfg: dict) -> dict:
    """A backbone config without what changes on a save/load round trip (path, versions, private keys)."""
    return {k: v for k, v in cfg.items() if not k.startswith("_") and k not in ("transformers_version", "dtype",
                                                                               "torch_dtype", "architectures")}


def provenance_mismatches(stored: dict, new: dict) -> tuple[list[str], list[str]]:
    """``(mismatches, unchecked)``: provenance keys whose values differ, and keys the store does not record."""
    bad, unchecked = [], []
    for key in PROVENANCE_KEYS:
        if key not in new:
            continue
        if key not in stored:
            unchecked.append(key)
            continue
        a, b = stored[key], new[key]
        try:  # JSON documents compare as data (key order and spacing do not matter)
            a, b = json.loads(a), json.loads(b)
        except (TypeError, ValueError):
            pass
        if key == "backbone_config" and isinstance(a, dict) and isinstance(b, dict):
            a, b = _stable(a), _stable(b)
        if a != b:
            bad.append(key)
    return bad, unchecked
