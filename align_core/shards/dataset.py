"""Reading a materialised dataset folder: manifest, shards in record batches, quarantine, verify.

Every file is checked against the manifest's sha256 before its rows are read (hashed once per process,
``align_core.io.sha256_file_once``), so a damaged shard fails loudly instead of feeding garbled text
on; ``verify()`` recomputes everything, row counts included, for ``alignflow shards verify``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from align_core.errors import UsageError
from align_core.io import digest_mismatch, require_sha256, sha256_file
from align_core.shards.manifest import FileEntry, Manifest, read_manifest
from align_core.shards.media_store import MediaStore
from align_core.shards.schema import MEDIA_COLUMNS, Kind

DAMAGED = "the dataset is damaged, rematerialise it"


class ShardDataset:
    """A complete dataset folder. Shards are memory-mapped, so a dataset larger than RAM streams."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)
        self._media_store: MediaStore | None = None

    @property
    def kind(self) -> Kind:
        return Kind(self.manifest.kind)

    @property
    def digest(self) -> str:
        return self.manifest.dataset_digest

    @property
    def num_rows(self) -> int:
        return self.manifest.rows

    @property
    def shard_paths(self) -> list[Path]:
        return [self.path / entry.path for entry in self.manifest.shards]

    @property
    def shard_digests(self) -> list[str]:
        """The shards' sha256 in order: what downstream caches key on."""
        return [entry.sha256 for entry in self.manifest.shards]

    def require_intact(self) -> None:
        """Raise ``IntegrityError`` naming the first shard whose bytes differ from its manifest sha256.
        Cheap to repeat: each file is hashed once per process, so every consumer calls it before reading."""
        for entry in self.manifest.shards:
            require_sha256(self.path / entry.path, entry.sha256, DAMAGED)

    def schema(self) -> pa.Schema:
        if not self.manifest.shards:
            from align_core.shards.schema import shard_schema

            return shard_schema(self.kind, tuple(self.manifest.media))
        with pa.memory_map(str(self.shard_paths[0])) as source:
            return pa.ipc.open_file(source).schema

    def iter_batches(self, columns: Sequence[str] | None = None, shards: Sequence[int] | None = None) -> Iterator[pa.RecordBatch]:
        """Record batches of every shard, or of the shards numbered in ``shards`` (one part of a parallel job)."""
        numbers = range(len(self.manifest.shards)) if shards is None else shards
        for entry, path in ((self.manifest.shards[number], self.shard_paths[number]) for number in numbers):
            require_sha256(path, entry.sha256, DAMAGED)
            with pa.memory_map(str(path)) as source:
                reader = pa.ipc.open_file(source)
                for index in range(reader.num_record_batches):
                    batch = reader.get_batch(index)
                    yield batch.select(list(columns)) if columns is not None else batch

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        batches = list(self.iter_batches(columns))
        if not batches:
            schema = self.schema()
            return schema.empty_table().select(list(columns)) if columns is not None else schema.empty_table()
        return pa.Table.from_batches(batches)

    def read_quarantine(self) -> pa.Table:
        path = self.path / self.manifest.quarantine.path
        require_sha256(path, self.manifest.quarantine.sha256, DAMAGED)
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_file(source).read_all()

    def media_store(self) -> MediaStore:
        """The dataset's media store (``media.arrow``), checked against its manifest sha256 first."""
        entry = self.manifest.media_store
        if entry is None:
            raise UsageError(f"{self.path}: this dataset carries no media")
        if self._media_store is None:
            require_sha256(self.path / entry.path, entry.sha256, DAMAGED)
            self._media_store = MediaStore(self.path / entry.path)
        return self._media_store

    def row_media(self, row: dict) -> dict[str, list[bytes]]:
        """A row's media bytes per column (``{"images": [png bytes, ...]}``), in placeholder order,
        each checked against its sha256. ``row`` is a shard row as a dict (``batch.to_pylist()``)."""
        store = self.media_store()
        return {
            column: [store.get(item["sha256"]) for item in row.get(column) or []]
            for column in (MEDIA_COLUMNS[media_type] for media_type in self.manifest.media)
        }

    def verify(self) -> list[str]:
        """Recompute every file digest and row count; a list of mismatches (empty when intact)."""
        media_store = [self.manifest.media_store] if self.manifest.media_store else []
        problems = [
            problem
            for entry in [*self.manifest.shards, self.manifest.quarantine, *media_store]
            if (problem := arrow_file_problem(self.path, entry))
        ]
        if sum(entry.rows for entry in self.manifest.shards) != self.manifest.rows:
            problems.append("manifest: shard rows do not add up to 'rows'")
        return problems


def arrow_file_problem(folder: Path, entry: FileEntry) -> str:
    """What is wrong with one Arrow IPC file its manifest lists (recomputed, never memoised): missing,
    digest mismatch, unreadable or a different row count; "" when intact. Token caches and reference
    columns record the same ``{path, rows, sha256}`` and are verified with it too."""
    path = folder / entry.path
    if not path.is_file():
        return f"{entry.path}: missing"
    actual = sha256_file(path)
    if actual != entry.sha256:
        return digest_mismatch(entry.path, entry.sha256, actual)
    try:
        with pa.memory_map(str(path)) as source:
            rows = pa.ipc.open_file(source).count_rows()
    except (pa.ArrowInvalid, OSError) as error:
        return f"{entry.path}: unreadable ({error})"
    if rows != entry.rows:
        return f"{entry.path}: {rows} rows != manifest {entry.rows}"
    return ""
