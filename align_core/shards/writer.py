"""Writing shards and the quarantine into a (staging) dataset folder.

Shards are Arrow IPC files: memory-mappable, and byte-identical when the same table is written
twice (Parquet embeds the pyarrow version, so its digests would move with upgrades).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from align_core.io import sha256_file
from align_core.shards.conversation import ConversationColumn, FixedTurns, VaryingTurns
from align_core.shards.manifest import QUARANTINE_NAME, SHARDS_SUBDIR, FileEntry
from align_core.shards.schema import CONVERSATION_COLUMNS, MEDIA_COLUMNS, QUARANTINE_SCHEMA, Kind, shard_schema

DEFAULT_ROWS_PER_SHARD = 100_000
# zstd keeps shards of text ~3-4x smaller at a small CPU cost, and stays deterministic.
IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")


def sample_id(source_sha256: str, source_index: int) -> str:
    """Stable sample id: the same source row always gets the same id."""
    return f"{source_sha256[:16]}-{source_index}"


class SampleBatch:
    """Columns of formatted samples, accumulated until flushed as one record batch."""

    def __init__(self, kind: Kind, media: tuple[str, ...]):
        self.kind = kind
        self.media = media
        self.ids: list[str] = []
        self.source_indices: list[int] = []
        self.conversations = {column: ConversationColumn() for column in CONVERSATION_COLUMNS[kind]}
        self.labels: list[bool] = []
        self.metas: list[str | None] = []
        self.media_items: dict[str, list[Any]] = {MEDIA_COLUMNS[m]: [] for m in media}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, sample_id_: str, source_index: int, sample: dict[str, Any]) -> None:
        self.ids.append(sample_id_)
        self.source_indices.append(source_index)
        for column, builder in self.conversations.items():
            builder.append(sample[column])
        if self.kind is Kind.UNPAIRED_PREFERENCE:
            self.labels.append(sample["label"])
        self.metas.append(sample.get("meta"))
        for column, items in self.media_items.items():
            items.append(sample.get(column) or [])

    def add_turns(
        self,
        ids: list[str],
        source_indices: list[int],
        conversations: dict[str, FixedTurns | VaryingTurns],
        metas: list[str | None],
        labels: list[bool] | None = None,
    ) -> None:
        """Append samples formatted column-wise (a template's batch method): the same columns as ``add``
        of each sample in turn."""
        self.ids.extend(ids)
        self.source_indices.extend(source_indices)
        for column, builder in self.conversations.items():
            builder.extend_turns(conversations[column])
        if self.kind is Kind.UNPAIRED_PREFERENCE:
            self.labels.extend(labels)
        self.metas.extend(metas)
        for items in self.media_items.values():
            items.extend([] for _ in ids)

    def to_record_batch(self, schema: pa.Schema) -> pa.RecordBatch:
        arrays: dict[str, pa.Array] = {
            "id": pa.array(self.ids, pa.string()),
            "source_index": pa.array(self.source_indices, pa.int64()),
            "kind": pa.array([self.kind.value] * len(self.ids), pa.string()),
        }
        arrays.update({column: builder.to_array() for column, builder in self.conversations.items()})
        if self.kind is Kind.UNPAIRED_PREFERENCE:
            arrays["label"] = pa.array(self.labels, pa.bool_())
        arrays["meta"] = pa.array(self.metas, pa.string())
        for column, items in self.media_items.items():
            arrays[column] = pa.array(items, schema.field(column).type)
        return pa.RecordBatch.from_arrays([arrays[name] for name in schema.names], schema=schema)


class ShardWriter:
    """Appends formatted samples; rolls over to a new shard file every ``rows_per_shard`` rows."""

    def __init__(
        self,
        dataset_dir: Path,
        kind: Kind,
        source_sha256: str,
        media: tuple[str, ...] = (),
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        batch_rows: int = 10_000,
    ):
        self.dataset_dir = Path(dataset_dir)
        self.kind = kind
        self.media = media
        self.source_sha256 = source_sha256
        self.schema = shard_schema(kind, media)
        self.rows_per_shard = rows_per_shard
        self.batch_rows = batch_rows
        self.entries: list[FileEntry] = []
        self._batch = SampleBatch(kind, media)
        self._writer: pa.ipc.RecordBatchFileWriter | None = None
        self._sink = None
        self._rows_in_shard = 0
        (self.dataset_dir / SHARDS_SUBDIR).mkdir(parents=True, exist_ok=True)

    @property
    def rows(self) -> int:
        return sum(entry.rows for entry in self.entries) + self._rows_in_shard + len(self._batch)

    def add(self, source_index: int, sample: dict[str, Any]) -> None:
        """Append one formatted sample (the output of ``Template.format``)."""
        self._batch.add(sample_id(self.source_sha256, source_index), source_index, sample)
        if len(self._batch) >= self.batch_rows:
            self._flush_batch()

    def _flush_batch(self) -> None:
        if len(self._batch):
            self.write_batch(self._batch.to_record_batch(self.schema))
            self._batch = SampleBatch(self.kind, self.media)

    def write_batch(self, batch: pa.RecordBatch) -> None:
        """Append a batch built by ``SampleBatch`` (e.g. in a worker process), splitting it at shard boundaries."""
        if batch.schema != self.schema:
            raise ValueError(f"batch schema does not match the {self.kind.value} shard schema")
        offset = 0
        while offset < batch.num_rows:
            if self._writer is None:
                path = self._shard_path(len(self.entries))
                self._sink = pa.OSFile(str(path), "wb")
                self._writer = pa.ipc.new_file(self._sink, self.schema, options=IPC_OPTIONS)
            piece = batch.slice(offset, self.rows_per_shard - self._rows_in_shard)
            self._writer.write_batch(piece)
            self._rows_in_shard += piece.num_rows
            offset += piece.num_rows
            if self._rows_in_shard >= self.rows_per_shard:
                self._close_shard()

    def _shard_path(self, number: int) -> Path:
        return self.dataset_dir / SHARDS_SUBDIR / f"shard-{number:05d}.arrow"

    def _close_shard(self) -> None:
        self._writer.close()
        self._sink.close()
        path = self._shard_path(len(self.entries))
        self.entries.append(
            FileEntry(path=str(path.relative_to(self.dataset_dir)), rows=self._rows_in_shard, sha256=sha256_file(path))
        )
        self._writer = self._sink = None
        self._rows_in_shard = 0

    def close(self) -> list[FileEntry]:
        self._flush_batch()
        if self._writer is not None:
            self._close_shard()
        return self.entries


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, from "\\ud800" escapes or undecodable bytes
        return False
    return True


def _utf8_safe(text: str) -> str:
    """``text`` with lone surrogates escaped as ``\\udXXX``: an Arrow string must be valid UTF-8,
    and the quarantine is exactly where such rows go."""
    return text if _is_utf8(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_default(value: Any) -> str:
    """Non-JSON values of a raw row: bytes (an image, a clip) by size and digest, not a repr 4x their size."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()}>"
    return repr(value)


def _raw_json(raw: Any) -> str:
    text = json.dumps(raw, ensure_ascii=False, default=_json_default)
    # ASCII escapes keep a row with lone surrogates valid JSON that still decodes to the same row.
    return text if _is_utf8(text) else json.dumps(raw, ensure_ascii=True, default=_json_default)


class QuarantineWriter:
    """Rejected rows with their reason and the raw row as JSON, in one Arrow file."""

    def __init__(self, dataset_dir: Path):
        self.path = Path(dataset_dir) / QUARANTINE_NAME
        self.reasons: Counter[str] = Counter()
        self._rows: dict[str, list] = {name: [] for name in QUARANTINE_SCHEMA.names}
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_file(self._sink, QUARANTINE_SCHEMA, options=IPC_OPTIONS)
        self.count = 0

    def add(self, source_index: int, reason: str, detail: str, raw: Any) -> None:
        self._rows["source_index"].append(source_index)
        self._rows["reason"].append(_utf8_safe(reason))
        self._rows["detail"].append(_utf8_safe(detail))
        self._rows["raw"].append(_utf8_safe(raw) if isinstance(raw, str) else _raw_json(raw))
        self.reasons[reason] += 1
        self.count += 1
        if len(self._rows["reason"]) >= 10_000:
            self._flush()

    def _flush(self) -> None:
        if self._rows["reason"]:
            self._writer.write_batch(pa.RecordBatch.from_pydict(self._rows, schema=QUARANTINE_SCHEMA))
            self._rows = {name: [] for name in QUARANTINE_SCHEMA.names}

    def close(self) -> FileEntry:
        self._flush()
        self._writer.close()
        self._sink.close()
        return FileEntry(path=QUARANTINE_NAME, rows=self.count, sha256=sha256_file(self.path))
