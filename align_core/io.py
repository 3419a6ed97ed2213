"""Atomic file and folder writes, and content digests.

A reader must never see a half-written file that looks complete: write to a temporary name in the
same folder, fsync, then rename (atomic on POSIX). Folders are staged under a hidden name and
renamed into place once everything inside, manifest last, is written.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
    process may build the same thing), with the pid last so a killed run's leftovers can be found."""
    staging = final.with_name(f".staging-{final.name}-{uuid.uuid4().hex[:8]}-{os.getpid()}")
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
    """Remove staging folders left by runs that were killed (their pid no longer exists)."""
    if not root.is_dir():
        return
    for path in root.glob(".staging-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
