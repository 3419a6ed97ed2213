"""Atomic file and folder writes, and content digests.

A reader must never see a half-written file that looks complete: write to a temporary name in the
same folder, fsync, then rename (atomic on POSIX). Folders are staged under a hidden name and
renamed into place once everything inside, manifest last, is written.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

from align_core.errors import IntegrityError

CHUNK = 4 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@functools.cache
def _sha256_of_version(path: str, device: int, inode: int, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def sha256_file_once(path: str | os.PathLike) -> str:
    """``sha256_file``, computed once per process for each version of a file: memoised on its path,
    device, inode, size and mtime, so the several readers of a shard in one process hash it once,
    and a file rewritten or replaced since is hashed again. Not shared between processes, so a file
    damaged in place (same mtime) is still caught by the next process that reads it."""
    path = os.path.abspath(path)
    info = os.stat(path)
    return _sha256_of_version(path, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)


def digest_mismatch(path: str | os.PathLike, expected: str, actual: str) -> str:
    """The one wording of a digest mismatch, for errors and verify reports alike."""
    return f"{path}: sha256 mismatch (manifest says {expected[:16]}, file has {actual[:16]})"


def require_sha256(path: str | os.PathLike, expected: str, damaged: str) -> None:
    """Raise ``IntegrityError`` naming ``path`` unless its bytes have the sha256 its manifest recorded
    (hashed once per process). ``damaged`` ends the message: what is damaged and what to do."""
    try:
        actual = sha256_file_once(path)
    except FileNotFoundError:
        raise IntegrityError(f"{path}: missing (its manifest lists it); {damaged}") from None
    if actual != expected:
        raise IntegrityError(f"{digest_mismatch(path, expected, actual)}; {damaged}")


def sha256_tree(root: str | os.PathLike, files: Iterable[Path] | None = None) -> str:
    """Digest of a folder: every file's relative path and bytes, in sorted order."""
    root = Path(root)
    digest = hashlib.sha256()
    paths = sorted(files if files is not None else (p for p in root.rglob("*") if p.is_file()))
    for path in paths:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\0")
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    """Digest of a JSON-able value, independent of dict order."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def staging_dir(final: Path) -> Path:
    """A fresh hidden folder beside ``final`` to build it in: unique per call (two threads of one
    process may build the same thing), named after its owner so a killed run's leftovers can be found."""
    staging = final.with_name(f".staging-{final.name}-{owner_tag()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def publish_dir(staging: Path, final: Path) -> bool:
    """Rename a finished staging folder into place. False if another run published ``final`` first."""
    for path in staging.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    try:
        os.rename(staging, final)
    except OSError:
        if final.exists():  # a concurrent run won the race with identical content
            shutil.rmtree(staging, ignore_errors=True)
            return False
        raise
    _fsync_dir(final.parent)
    return True


def remove_stale_staging(root: Path) -> None:
    """Remove staging folders left by runs that were killed (their owner no longer exists)."""
    if not root.is_dir():
        return
    for path in root.glob(".staging-*"):
        if owner_dead(path.name):
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_tag() -> str:
    """``<random>-<pid>@<host>``: names a staging folder after the process building it, unique per call."""
    return f"{uuid.uuid4().hex[:8]}-{os.getpid()}@{socket.gethostname()}"


def owner_dead(name: str) -> bool:
    """Whether the process named at the end of ``name`` (by ``owner_tag``; older names end in the pid)
    is gone. A process on another host cannot be probed: it counts as alive, so its folder stays."""
    rest, at, host = name.rpartition("@")
    if at and host != socket.gethostname():
        return False
    pid = (rest if at else name).rsplit("-", 1)[-1]
    return pid.isdigit() and not pid_alive(int(pid))


LOCK_NAME = ".alignflow.lock"


class FolderLock:
    """An exclusive ``flock`` on ``<folder>/.alignflow.lock``: one run writes a folder at a time.

    The file names the holder (pid, host, what it is); a second taker fails at once with a
    ``UsageError`` that says so. The kernel drops the lock when the holding process dies, however
    it dies, so a run killed with SIGKILL never leaves a stale lock behind.
    """

    def __init__(self, folder: str | os.PathLike, holder: str):
        self.path = Path(folder) / LOCK_NAME
        self.holder = holder  # what holds it, for the other taker's message: "a training run"
        self._fd: int | None = None

    def acquire(self) -> Self:
        from align_core.errors import UsageError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # never truncate: the holder's pid is in it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"{self.path.parent} is in use by {self._read_holder()}; wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "holder": self.holder}
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _read_holder(self) -> str:
        for _ in range(20):  # the holder writes its record just after locking: give it a moment
            try:
                record = json.loads(self.path.read_text())
                return f"{record['holder']} (pid {record['pid']} on {record['host']})"
            except (OSError, ValueError, KeyError, TypeError):
                time.sleep(0.05)
        return "another process (pid unknown)"
