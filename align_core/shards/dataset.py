"""Reading a materialised dataset folder: manifest, shards in record batches, quarantine, verify."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from align_core.io import sha256_file
from align_core.shards.manifest import Manifest, read_manifest
from align_core.shards.schema import Kind


class ShardDataset:
    """A complete dataset folder. Shards are memory-mapped, so a dataset larger than RAM streams."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: Manifest = read_manifest(self.path)

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

    def schema(self) -> pa.Schema:
        if not self.manifest.shards:
            from align_core.shards.schema import shard_schema

            return shard_schema(self.kind, tuple(self.manifest.media))
        with pa.memory_map(str(self.shard_paths[0])) as source:
            return pa.ipc.open_file(source).schema

    def iter_batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        for path in self.shard_paths:
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
        with pa.memory_map(str(self.path / self.manifest.quarantine.path)) as source:
            return pa.ipc.open_file(source).read_all()

    def verify(self) -> list[str]:
        """Recompute every file digest and row count; a list of mismatches (empty when intact)."""
        problems = []
        for entry in [*self.manifest.shards, self.manifest.quarantine]:
            path = self.path / entry.path
            if not path.is_file():
                problems.append(f"{entry.path}: missing")
                continue
            actual = sha256_file(path)
            if actual != entry.sha256:
                problems.append(f"{entry.path}: sha256 {actual[:12]}... != manifest {entry.sha256[:12]}...")
                continue
            try:
                with pa.memory_map(str(path)) as source:
                    rows = pa.ipc.open_file(source).read_all().num_rows
            except pa.ArrowInvalid as error:
                problems.append(f"{entry.path}: unreadable ({error})")
                continue
            if rows != entry.rows:
                problems.append(f"{entry.path}: {rows} rows != manifest {entry.rows}")
        if sum(entry.rows for entry in self.manifest.shards) != self.manifest.rows:
            problems.append("manifest: shard rows do not add up to 'rows'")
        return problems
