"""Columns of a token cache shard, per shard kind.

Every kind has ``id`` (the sample id from the conversation shard) and ``length`` (the longest
sequence of the row, what length grouping sorts by). Then one group of sequence columns per
sequence the row trains on:

=====================  =====================================================================
kind                   sequence columns (list<int32>)
=====================  =====================================================================
supervised             ``input_ids``, ``labels``
preference             ``chosen_input_ids``, ``chosen_labels``, ``rejected_input_ids``, ``rejected_labels``
prompt_only            ``input_ids`` (rendered with the generation prompt; no labels)
unpaired_preference    ``input_ids``, ``labels``, + ``desirable`` (bool, the shard's ``label``)
=====================  =====================================================================

``labels`` equal ``input_ids`` on trained tokens and -100 elsewhere (not shifted: the model shifts).
A cache of a dataset with media adds ``<prefix>media`` (list<string>) per sequence: the media items
its expanded placeholders stand for, in order (``MediaRef.key()``: ``type:sha256[:frame]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from align_core.data.truncation import EncodedSequence
from align_core.shards.schema import Kind

TOKEN_LIST = pa.list_(pa.int32())
MEDIA_REFS = pa.list_(pa.string())

# Column-name prefix of each sequence a row of the kind holds, in order (chosen first).
SEQUENCE_PREFIXES: dict[Kind, tuple[str, ...]] = {
    Kind.SUPERVISED: ("",),
    Kind.PREFERENCE: ("chosen_", "rejected_"),
    Kind.PROMPT_ONLY: ("",),
    Kind.UNPAIRED_PREFERENCE: ("",),
}


def has_labels(kind: Kind) -> bool:
    return kind is not Kind.PROMPT_ONLY


def token_schema(kind: Kind, media: bool = False) -> pa.Schema:
    fields = [pa.field("id", pa.string(), nullable=False), pa.field("length", pa.int32(), nullable=False)]
    for prefix in SEQUENCE_PREFIXES[kind]:
        fields.append(pa.field(f"{prefix}input_ids", TOKEN_LIST, nullable=False))
        if has_labels(kind):
            fields.append(pa.field(f"{prefix}labels", TOKEN_LIST, nullable=False))
        if media:
            fields.append(pa.field(f"{prefix}media", MEDIA_REFS, nullable=False))
    if kind is Kind.UNPAIRED_PREFERENCE:
        fields.append(pa.field("desirable", pa.bool_(), nullable=False))
    return pa.schema(fields, metadata={"alignflow.kind": kind.value})


@dataclass
class TokenizedRow:
    id: str
    sequences: list[EncodedSequence]  # in SEQUENCE_PREFIXES order
    desirable: bool | None = None
    media: list[tuple] | None = None  # per sequence, its MediaRefs in placeholder order (media datasets only)


def token_record_batch(kind: Kind, rows: list[TokenizedRow], media: bool = False) -> pa.RecordBatch:
    schema = token_schema(kind, media)
    columns: dict[str, list] = {
        "id": [row.id for row in rows],
        "length": [max(len(sequence.input_ids) for sequence in row.sequences) for row in rows],
    }
    for position, prefix in enumerate(SEQUENCE_PREFIXES[kind]):
        columns[f"{prefix}input_ids"] = [row.sequences[position].input_ids for row in rows]
        if has_labels(kind):
            columns[f"{prefix}labels"] = [row.sequences[position].labels for row in rows]
        if media:
            columns[f"{prefix}media"] = [[ref.key() for ref in row.media[position]] for row in rows]
    if kind is Kind.UNPAIRED_PREFERENCE:
        columns["desirable"] = [row.desirable for row in rows]
    return pa.RecordBatch.from_pydict(columns, schema=schema)
