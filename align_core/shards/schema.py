"""The conversation shard schema: the public contract every later stage reads.

One Arrow row per sample. A conversation is
``list<struct<role: string, content: list<struct<type: string, text: string>>>>``; a content part of
type ``image``/``audio``/``video`` is a placeholder for the next item of the row's matching media
column (``images``/``audios``/``videos``), each a ``list<struct<sha256, path>>`` referencing the
dataset's media store (``media.arrow``: each distinct item's bytes once).

Kinds follow TRL's dataset taxonomy:

=====================  ==============================================================
kind                   conversation columns
=====================  ==============================================================
supervised             ``messages`` (the whole conversation, ending with the assistant)
preference             ``prompt`` (ends with the user), ``chosen``, ``rejected``
                       (the two assistant continuations)
prompt_only            ``prompt`` (ends with the user)
unpaired_preference    ``prompt``, ``completion`` + ``label`` (bool: desirable), for KTO
=====================  ==============================================================
"""

from __future__ import annotations

from enum import Enum

import pyarrow as pa

from align_core.errors import UsageError

# Bump when a column is added, removed or changes meaning; readers refuse versions they do not know.
SCHEMA_VERSION = 1

ROLES = ("system", "user", "assistant")
TEXT_PART = "text"
MEDIA_PART_TYPES = ("image", "audio", "video")
PART_TYPES = (TEXT_PART, *MEDIA_PART_TYPES)

CONTENT_PART = pa.struct([("type", pa.string()), ("text", pa.string())])
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.list_(CONTENT_PART))])
CONVERSATION = pa.list_(MESSAGE)

# A media item of a row: a reference by content digest into the dataset's media store (``media.arrow``,
# which holds each distinct item's bytes once), and the path it was read from (null for inline bytes).
MEDIA_ITEM = pa.struct([("sha256", pa.string()), ("path", pa.string())])
# The media store: one row per distinct item, in order of first use. ``bytes`` are the encoded file
# (PNG/JPEG, WAV/FLAC, MP4/WebM container) as read; ``sampling_rate`` (Hz) is set for audio only.
MEDIA_STORE_SCHEMA = pa.schema(
    [
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("type", pa.string(), nullable=False),
        pa.field("bytes", pa.binary(), nullable=False),
        pa.field("sampling_rate", pa.int32()),
    ]
)
MEDIA_COLUMNS = {"image": "images", "audio": "audios", "video": "videos"}


class Kind(str, Enum):
    SUPERVISED = "supervised"
    PREFERENCE = "preference"
    PROMPT_ONLY = "prompt_only"
    UNPAIRED_PREFERENCE = "unpaired_preference"


# The conversation columns of each kind, in schema order.
CONVERSATION_COLUMNS: dict[Kind, tuple[str, ...]] = {
    Kind.SUPERVISED: ("messages",),
    Kind.PREFERENCE: ("prompt", "chosen", "rejected"),
    Kind.PROMPT_ONLY: ("prompt",),
    Kind.UNPAIRED_PREFERENCE: ("prompt", "completion"),
}


def parse_kind(value: str | Kind) -> Kind:
    """``Kind`` from its name, with an error that lists the valid ones."""
    try:
        return Kind(value)
    except ValueError:
        valid = ", ".join(k.value for k in Kind)
        raise UsageError(f"unknown shard kind {value!r}; expected one of: {valid}") from None


def shard_schema(kind: Kind | str, media: tuple[str, ...] = ()) -> pa.Schema:
    """The Arrow schema of a shard of ``kind`` carrying the given media types (e.g. ``("image",)``)."""
    kind = parse_kind(kind)
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source_index", pa.int64(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
    ]
    fields += [pa.field(name, CONVERSATION) for name in CONVERSATION_COLUMNS[kind]]
    if kind is Kind.UNPAIRED_PREFERENCE:
        fields.append(pa.field("label", pa.bool_()))
    fields.append(pa.field("meta", pa.string()))
    for media_type in media:
        if media_type not in MEDIA_COLUMNS:
            raise ValueError(f"unknown media type {media_type!r}; expected one of {list(MEDIA_COLUMNS)}")
        fields.append(pa.field(MEDIA_COLUMNS[media_type], pa.list_(MEDIA_ITEM)))
    return pa.schema(fields, metadata={"alignflow.schema_version": str(SCHEMA_VERSION), "alignflow.kind": kind.value})


# Quarantine: one row per rejected source row.
QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("source_index", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # short machine code, e.g. "missing_field"
        pa.field("detail", pa.string(), nullable=False),  # human sentence naming the field at fault
        pa.field("raw", pa.string(), nullable=False),  # the raw row as JSON
    ]
)
