"""The media store of a dataset folder: ``media.arrow``, each distinct media item's bytes once, keyed by sha256.

Rows reference items by sha256 (their ``images``/``audios``/``videos`` columns), so an image that
a thousand rows ask about is stored once. Items are written in order of first use in source order,
which the parent process fixes whatever the worker count, so the file's bytes are reproducible.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from align_core.errors import IntegrityError
from align_core.io import sha256_file
from align_core.shards.manifest import FileEntry
from align_core.shards.schema import MEDIA_STORE_SCHEMA

MEDIA_STORE_NAME = "media.arrow"
# Media are already compressed (PNG, MP4...); zstd over them costs time and saves little, but the
# occasional WAV or BMP shrinks, and the output stays deterministic.
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


class MediaStoreWriter:
    """Appends media blobs not seen before; ``close()`` returns the manifest entry."""

    def __init__(self, dataset_dir: Path, batch_bytes: int = 64 << 20):
        self.path = Path(dataset_dir) / MEDIA_STORE_NAME
        self.batch_bytes = batch_bytes
        self._seen: set[str] = set()
        self._pending: list = []
        self._pending_bytes = 0
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_file(self._sink, MEDIA_STORE_SCHEMA, options=IPC_OPTIONS)
        self.referenced_bytes = 0  # what per-row storage would have held, for the dedup figure

    @property
    def count(self) -> int:
        return len(self._seen)

    def add(self, blobs: Iterable) -> None:
        """Add ``MediaBlob``s in order; one whose sha256 is already stored is skipped."""
        for blob in blobs:
            if blob.sha256 in self._seen:
                continue
            self._seen.add(blob.sha256)
            self._pending.append(blob)
            self._pending_bytes += len(blob.data)
            if self._pending_bytes >= self.batch_bytes:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        columns = {
            "sha256": [blob.sha256 for blob in self._pending],
            "type": [blob.media_type for blob in self._pending],
            "bytes": [blob.data for blob in self._pending],
            "sampling_rate": [blob.sampling_rate for blob in self._pending],
        }
        self._writer.write_batch(pa.RecordBatch.from_pydict(columns, schema=MEDIA_STORE_SCHEMA))
        self._pending, self._pending_bytes = [], 0

    def close(self) -> FileEntry:
        self._flush()
        self._writer.close()
        self._sink.close()
        return FileEntry(path=MEDIA_STORE_NAME, rows=self.count, sha256=sha256_file(self.path))


class MediaStore:
    """Read side: ``get(sha256)`` gives an item's bytes, checked against its sha256."""

    def __init__(self, path: Path):
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        self._table = table
        self._row = {sha: index for index, sha in enumerate(table.column("sha256").to_pylist())}

    def __len__(self) -> int:
        return len(self._row)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._row

    def __iter__(self):
        """The stored items' sha256s, in order of first use."""
        return iter(self._row)

    def get(self, sha256: str) -> bytes:
        try:
            index = self._row[sha256]
        except KeyError:
            raise IntegrityError(f"media item {sha256[:16]} is referenced by a row but not in {MEDIA_STORE_NAME}") from None
        data = self._table.column("bytes")[index].as_py()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"{MEDIA_STORE_NAME}: media item {sha256[:16]} does not match its sha256")
        return data

    def sampling_rate(self, sha256: str) -> int | None:
        return self._table.column("sampling_rate")[self._row[sha256]].as_py()
