"""Atomic file and folder writes, and content digests.

A reader must never see a half-written file that looks complete: write to a temporary name in the
same folder, fsync, then rename (atomic on POSIX). Folders are staged under a hidden name and
renamed into place once everything inside, manifest last, is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK = 4 << 20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


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
