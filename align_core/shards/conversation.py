"""Conversations in Python and their columnar Arrow form.

In Python a conversation is a list of messages ``{"role": str, "content": [part, ...]}`` with parts
``{"type": "text", "text": str}`` or ``{"type": "image"|"audio"|"video", "text": None}``; a media part
given with its value (``{"type": "image", "image": value}``) keeps it under ``media`` until the
materialiser stores it (the Arrow column holds only type and text).
Templates may write ``content`` as a plain string; ``normalize_conversation`` turns it into parts.

``ConversationColumn`` appends conversations straight into flat child arrays and assembles the
nested ``list<struct<...>>`` column at the end: building nested Arrow from Python dicts is the hot
path of materialisation, and this is several times faster than ``pa.array(list_of_dicts)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from align_core.errors import BAD_ROLES, MISSING_FIELD, WRONG_TYPE, RowRejected
from align_core.shards.schema import CONTENT_PART, MESSAGE, PART_TYPES, ROLES, TEXT_PART

Message = dict[str, Any]
Conversation = list[Message]


def text_message(role: str, text: str) -> Message:
    return {"role": role, "content": [{"type": TEXT_PART, "text": text}]}


_ROLE_SET = frozenset(ROLES)


def normalize_conversation(messages: Any, column: str) -> Conversation:
    """Check a template's conversation and give every message a list of typed parts.

    Raises ``RowRejected`` naming ``column`` and the message index when the structure is wrong.
    This runs once per row of every dataset, so well-formed text messages take a fast path.
    """
    if type(messages) is not list:
        raise RowRejected(WRONG_TYPE, f"{column}: expected a list of messages, got {type(messages).__name__}")
    normalized = []
    for index, message in enumerate(messages):
        # type() before `in`: an unhashable role (a list) would raise TypeError in the set lookup
        if type(message) is dict and type(message.get("role")) is str and message["role"] in _ROLE_SET:
            content = message.get("content")
            if type(content) is str:
                normalized.append({"role": message["role"], "content": [{"type": TEXT_PART, "text": content}]})
                continue
            if type(content) is list:
                for part in content:  # a for/else, not all(genexpr): this is the hottest loop of materialisation
                    if type(part) is not dict or len(part) != 2 or part.get("type") != TEXT_PART or type(part.get("text")) is not str:
                        break
                else:
                    normalized.append({"role": message["role"], "content": content})
                    continue
        normalized.append(_normalize_message(message, f"{column}[{index}]"))
    return normalized


def _normalize_message(message: Any, where: str) -> Message:
    """One reason per way a message can be wrong: missing (missing_field), not the type it must be
    (wrong_type), or a role string that is not a known role (bad_roles)."""
    if not isinstance(message, dict):
        raise RowRejected(WRONG_TYPE, f"{where}: expected a message {{role, content}}, got {type(message).__name__}")
    role = _required(message, "role", where)
    if not isinstance(role, str):
        raise RowRejected(WRONG_TYPE, f"{where}.role: expected a string, got {type(role).__name__}")
    if role not in ROLES:
        raise RowRejected(BAD_ROLES, f"{where}.role: {_short(role)} is not one of {list(ROLES)}")
    return {"role": role, "content": _normalize_content(_required(message, "content", where), where)}


def _normalize_content(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": TEXT_PART, "text": content}]
    if not isinstance(content, list):
        raise RowRejected(WRONG_TYPE, f"{where}.content: expected a string or a list of parts, got {type(content).__name__}")
    parts = []
    for index, part in enumerate(content):
        part_where = f"{where}.content[{index}]"
        if isinstance(part, str):
            parts.append({"type": TEXT_PART, "text": part})
            continue
        if not isinstance(part, dict):
            raise RowRejected(WRONG_TYPE, f"{part_where}: expected a part {{type, text}} or a string, got {type(part).__name__}")
        part_type = _required(part, "type", part_where)
        if not isinstance(part_type, str) or part_type not in PART_TYPES:
            raise RowRejected(WRONG_TYPE, f"{part_where}.type: {_short(part_type)} is not one of {list(PART_TYPES)}")
        if part_type == TEXT_PART:
            text = _required(part, "text", part_where)
            if not isinstance(text, str):
                raise RowRejected(WRONG_TYPE, f"{part_where}.text: expected a string, got {type(text).__name__}")
            parts.append({"type": TEXT_PART, "text": text})
        elif (value := part.get(part_type, part.get("media"))) is not None:  # {"type": "image", "image": value}
            parts.append({"type": part_type, "text": None, "media": value})  # (or already normalised)
        else:
            parts.append({"type": part_type, "text": None})
    return parts


def _required(mapping: dict, key: str, where: str) -> Any:
    if mapping.get(key) is None:
        raise RowRejected(MISSING_FIELD, f"{where}.{key} is missing")
    return mapping[key]


def _short(value: Any) -> str:
    """A value for an error message: its repr, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def conversation_text(messages: Conversation) -> str:
    """All text of a conversation, for equality checks between continuations."""
    return "\x1e".join(
        f"{m['role']}\x1f" + "\x1f".join(p["text"] or f"<{p['type']}>" for p in m["content"]) for m in messages
    )


@dataclass(frozen=True)
class FixedTurns:
    """Conversations of many rows that all have the same turns, each message one text part, column-wise:
    message ``j`` of row ``i`` has role ``roles[j]`` and text ``texts[j][i]`` (Alpaca: user, assistant)."""

    roles: tuple[str, ...]
    texts: tuple[list[str], ...]

    def __len__(self) -> int:
        return len(self.texts[0])

    def slice(self, start: int, stop: int) -> FixedTurns:
        return FixedTurns(self.roles, tuple(column[start:stop] for column in self.texts))


@dataclass(frozen=True)
class VaryingTurns:
    """Conversations of many rows whose turns differ (transcripts), each message one text part:
    row ``i`` has roles ``roles[i]`` and texts ``texts[i]``."""

    roles: list[list[str]]
    texts: list[list[str]]

    def __len__(self) -> int:
        return len(self.texts)

    def slice(self, start: int, stop: int) -> VaryingTurns:
        return VaryingTurns(self.roles[start:stop], self.texts[start:stop])


class ConversationColumn:
    """Accumulates normalised conversations and builds one Arrow ``CONVERSATION`` array."""

    def __init__(self) -> None:
        self._message_offsets = [0]
        self._roles: list[str] = []
        self._part_offsets = [0]
        self._part_types: list[str] = []
        self._part_texts: list[str | None] = []

    def __len__(self) -> int:
        return len(self._message_offsets) - 1

    def append(self, messages: Conversation) -> None:
        # Bound methods in locals: this runs once per message of every row materialised.
        roles, part_types, part_texts, part_offsets = self._roles, self._part_types, self._part_texts, self._part_offsets
        for message in messages:
            roles.append(message["role"])
            for part in message["content"]:
                part_types.append(part["type"])
                part_texts.append(part["text"])
            part_offsets.append(len(part_types))
        self._message_offsets.append(len(roles))

    def extend(self, conversations: Iterable[Conversation]) -> None:
        for messages in conversations:
            self.append(messages)

    def extend_turns(self, turns: FixedTurns | VaryingTurns) -> None:
        """Append text-only conversations in bulk: the same lists (so the same arrays) as ``append`` of
        each conversation's messages, built with list operations rather than a dict per message."""
        if isinstance(turns, VaryingTurns):
            for roles, texts in zip(turns.roles, turns.texts):
                self._extend_messages(roles, texts)
                self._message_offsets.append(len(self._roles))
            return
        per_row = len(turns.roles)
        texts: list[str | None] = [None] * (per_row * len(turns))
        for position, column in enumerate(turns.texts):
            texts[position::per_row] = column
        start = len(self._roles)
        self._extend_messages(list(turns.roles) * len(turns), texts)
        self._message_offsets.extend(range(start + per_row, len(self._roles) + 1, per_row))

    def _extend_messages(self, roles: list[str], texts: list) -> None:
        """Messages of one text part each."""
        start = len(self._part_types)
        self._roles.extend(roles)
        self._part_types.extend([TEXT_PART] * len(texts))
        self._part_texts.extend(texts)
        self._part_offsets.extend(range(start + 1, start + len(texts) + 1))

    def to_array(self) -> pa.Array:
        parts = pa.StructArray.from_arrays(
            [pa.array(self._part_types, pa.string()), pa.array(self._part_texts, pa.string())],
            fields=list(CONTENT_PART),
        )
        content = pa.ListArray.from_arrays(pa.array(self._part_offsets, pa.int32()), parts)
        messages = pa.StructArray.from_arrays([pa.array(self._roles, pa.string()), content], fields=list(MESSAGE))
        return pa.ListArray.from_arrays(pa.array(self._message_offsets, pa.int32()), messages)
