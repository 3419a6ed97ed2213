"""The dataset template interface and the helpers templates share.

A template turns one raw source row (a dict) into a sample of one shard kind. It implements any of

- ``format_supervised_sample(raw) -> (messages, meta)``
- ``format_preference_sample(raw) -> (prompt, chosen, rejected, meta)``
- ``format_prompt_only_sample(raw) -> (prompt, meta)``
- ``format_unpaired_preference_sample(raw) -> (prompt, completion, desirable, meta)``

and raises ``RowRejected`` with a reason for a row it cannot format. ``meta`` is a JSON-able dict
(or None) of source fields a trainer may need, e.g. safety labels.

Options are declared as a class attribute ``options = {"name": default}`` and given to the
constructor; they are part of the dataset digest.

A template may also format many rows at once, column-wise (``format_<kind>_batch(rows) ->
FormattedBatch``, or ``batch_kinds`` for ``rows_as_batch``): the built-in text templates do, to skip
building and checking a dict per message. A batch method formats only the rows it is sure of, exactly
as the row method would, and leaves every other row (a bad one, an unusual one) to the row method,
which gives its reason. It is used only where the template's own class declares it, so a subclass
that changes the row method never inherits it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from align_core.errors import (
    BAD_ROLES,
    EMPTY_TEXT,
    IDENTICAL_PAIR,
    MEDIA_COUNT_MISMATCH,
    MISSING_FIELD,
    WRONG_TYPE,
    RowRejected,
    UsageError,
)
from align_core.shards.conversation import (
    Conversation,
    FixedTurns,
    VaryingTurns,
    conversation_text,
    normalize_conversation,
    text_message,
)
from align_core.shards.schema import CONVERSATION_COLUMNS, ROLES, TEXT_PART, Kind, parse_kind

FORMAT_METHODS = {
    Kind.SUPERVISED: "format_supervised_sample",
    Kind.PREFERENCE: "format_preference_sample",
    Kind.PROMPT_ONLY: "format_prompt_only_sample",
    Kind.UNPAIRED_PREFERENCE: "format_unpaired_preference_sample",
}

BATCH_METHODS = {kind: method.removesuffix("_sample") + "_batch" for kind, method in FORMAT_METHODS.items()}


@dataclass
class FormattedBatch:
    """The rows a batch method formatted: ``positions`` (ascending) in the rows it was given, and for those
    rows each conversation column's turns, the meta JSON (``meta_json``) and, for unpaired preference, the label."""

    positions: list[int]
    conversations: dict[str, FixedTurns | VaryingTurns]
    metas: list[str | None]
    labels: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.positions)


def meta_json(meta: dict | None) -> str | None:
    """A sample's ``meta`` column: sorted-key JSON, or null for no meta."""
    return json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str) if meta else None


class Template:
    """Base class of dataset templates. ``name`` and ``code_version`` are set by ``register_template``."""

    name: ClassVar[str] = ""
    code_version: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    media: ClassVar[tuple[str, ...]] = ()  # the media types its samples carry: image, audio, video
    # kinds whose rows ``rows_as_batch`` may format in bulk; read from the class itself, never a base
    batch_kinds: ClassVar[tuple[Kind, ...]] = ()

    def media_types(self) -> tuple[str, ...]:
        """The media columns of the datasets this template (with its options) builds."""
        return self.media

    def __init__(self, **options: Any):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise UsageError(f"template {self.name!r} has no option {', '.join(unknown)}; its options: {known}")
        self.settings = {**self.options, **options}

    @classmethod
    def supported_kinds(cls) -> list[Kind]:
        return [kind for kind, method in FORMAT_METHODS.items() if getattr(cls, method, None) is not None]

    def format(self, kind: Kind, raw: dict) -> dict[str, Any]:
        """Format ``raw`` as a sample of ``kind``: ``{column: value}`` for the kind's columns + ``meta``.

        Conversations come back normalised; ``meta`` as a JSON string.
        """
        if type(kind) is not Kind:  # this runs per row: skip the enum lookup in the common case
            kind = parse_kind(kind)
        method = getattr(self, FORMAT_METHODS[kind], None)
        if method is None:
            raise UsageError(
                f"template {self.name!r} cannot produce {kind.value!r} samples; "
                f"it supports: {', '.join(k.value for k in self.supported_kinds())}"
            )
        *values, meta = method(raw)
        return self.sample(kind, values, meta)

    def sample(self, kind: Kind, values: list, meta: dict | None) -> dict[str, Any]:
        """The sample of ``kind`` from a format method's conversations (+ desirable flag) and meta."""
        columns = CONVERSATION_COLUMNS[kind]
        sample: dict[str, Any] = {
            column: normalize_conversation(value, column) for column, value in zip(columns, values)
        }
        if kind is Kind.UNPAIRED_PREFERENCE:
            sample["label"] = bool(values[-1])
        if kind is Kind.PREFERENCE and conversation_text(sample["chosen"]) == conversation_text(sample["rejected"]):
            raise RowRejected(IDENTICAL_PAIR, "chosen and rejected are identical")
        if self.media_types():
            collect_media(sample, columns)
        sample["meta"] = meta_json(meta)
        return sample

    def rows_as_batch(self, kind: Kind, rows: list[dict]) -> FormattedBatch:
        """A batch method for a template whose row method returns text messages: each row through the row
        method, its conversations kept where every message is one text part (as the normaliser would keep
        them); what ``sample`` adds per message is skipped. Other rows are left to the row method."""
        method = getattr(self, FORMAT_METHODS[kind])
        columns = CONVERSATION_COLUMNS[kind]
        positions, metas, labels = [], [], []
        roles: dict[str, list] = {column: [] for column in columns}
        texts: dict[str, list] = {column: [] for column in columns}
        for position, raw in enumerate(rows):
            try:
                *values, meta = method(raw)
                turns = [text_turns(value) for value in values[: len(columns)]]
            except Exception:  # noqa: BLE001, S112  (the row method, run again, gives the reason)
                continue
            if None in turns or (kind is Kind.PREFERENCE and _same_text(turns[1], turns[2])):
                continue
            positions.append(position)
            for column, (column_roles, column_texts) in zip(columns, turns):
                roles[column].append(column_roles)
                texts[column].append(column_texts)
            metas.append(meta_json(meta))
            if kind is Kind.UNPAIRED_PREFERENCE:
                labels.append(bool(values[-1]))
        conversations = {column: VaryingTurns(roles[column], texts[column]) for column in columns}
        return FormattedBatch(positions, conversations, metas, labels if kind is Kind.UNPAIRED_PREFERENCE else None)

    def format_batch(self, kind: Kind, rows: list[dict]) -> FormattedBatch | None:
        """The rows of ``rows`` this template formats column-wise, or None when it has no batch method for
        ``kind`` (or carries media): every row then takes ``format``."""
        own = type(self).__dict__  # never inherited: a subclass may have changed the row method
        if self.media_types():
            return None
        if BATCH_METHODS[kind] in own:
            return getattr(self, BATCH_METHODS[kind])(rows)
        if kind in own.get("batch_kinds", ()):
            return self.rows_as_batch(kind, rows)
        return None


def text_turns(messages: Any) -> tuple[list[str], list[str]] | None:
    """``(roles, texts)`` of a conversation whose messages each hold one text part (a string content, or one
    ``{"type": "text", "text": str}`` part) with a known role: exactly what ``normalize_conversation`` keeps
    as it is. None for anything else, which the row path then normalises or rejects."""
    if type(messages) is not list:
        return None
    roles, texts = [], []
    for message in messages:
        role = message.get("role") if type(message) is dict else None
        if type(role) is not str or role not in ROLES:
            return None
        content = message.get("content")
        if type(content) is list and len(content) == 1 and type(content[0]) is dict and len(content[0]) == 2:
            part = content[0]
            content = part.get("text") if part.get("type") == TEXT_PART else None
        if type(content) is not str:
            return None
        roles.append(role)
        texts.append(content)
    return roles, texts


def _same_text(first: tuple[list[str], list[str]], second: tuple[list[str], list[str]]) -> bool:
    """``conversation_text`` equality of two text-only conversations (what ``sample`` rejects as identical)."""
    return conversation_text([text_message(*turn) for turn in zip(*first)]) == conversation_text(
        [text_message(*turn) for turn in zip(*second)]
    )


def collect_media(sample: dict[str, Any], columns: tuple[str, ...]) -> None:
    """Move the values of a sample's media parts, in column then placeholder order, into
    ``sample["media"]`` (type -> values), and count each type's placeholders (``_<type>_placeholders``)."""
    values: dict[str, list] = {}
    for column in columns:
        for message in sample[column]:
            for part in message["content"]:
                if part["type"] != TEXT_PART:
                    sample[f"_{part['type']}_placeholders"] = sample.get(f"_{part['type']}_placeholders", 0) + 1
                    if "media" in part:
                        values.setdefault(part["type"], []).append(part.pop("media"))
    sample["media"] = values


def attach_media(conversation: Conversation, media_type: str, values: list, where: str) -> Conversation:
    """Give the ``media_type`` placeholders of ``conversation`` the row's separate list of media
    values (TRL / Hugging Face rows: ``{"type": "image"}`` parts and an ``images`` column), in order."""
    remaining = list(values)
    attached, placeholders = [], 0
    for message in conversation:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == media_type:
                    placeholders += 1
                    part = {**part, media_type: remaining.pop(0) if remaining else None}
                parts.append(part)
            message = {**message, "content": parts}
        attached.append(message)
    if placeholders != len(values):
        raise RowRejected(MEDIA_COUNT_MISMATCH, f"{where}: {placeholders} {media_type} placeholder(s) but {len(values)} item(s)")
    return attached


# Field helpers: one clear reason per way a raw field can be wrong. ``where`` prefixes the detail
# when the field is nested (``conversations[2]: field 'value' is missing``).

INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits: str.isdigit() also accepts '²', which int() refuses


def field(raw: dict, name: str, *, where: str = "") -> Any:
    if name not in raw or raw[name] is None:
        raise RowRejected(MISSING_FIELD, f"{where}field {name!r} is missing")
    return raw[name]


def text_field(raw: dict, name: str, *, allow_empty: bool = False, where: str = "") -> str:
    value = field(raw, name, where=where)
    if not isinstance(value, str):
        raise RowRejected(WRONG_TYPE, f"{where}field {name!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowRejected(EMPTY_TEXT, f"{where}field {name!r} is empty")
    return value


def optional_text_field(raw: dict, name: str) -> str:
    """A text field that may be absent or null (e.g. Alpaca's ``input``): '' then."""
    value = raw.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowRejected(WRONG_TYPE, f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def int_field(raw: dict, name: str) -> int:
    """An integer; digit strings are accepted because CSV sources carry every value as text."""
    value = field(raw, name)
    if isinstance(value, bool):
        raise RowRejected(WRONG_TYPE, f"field {name!r} must be an integer, got bool")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and INTEGER.fullmatch(value.strip()):
        return int(value)
    raise RowRejected(WRONG_TYPE, f"field {name!r} must be an integer, got {_short(value)}")


def number_field(raw: dict, name: str) -> int | float:
    """A finite number (a NaN or infinity from a Parquet column is no score)."""
    value = field(raw, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RowRejected(WRONG_TYPE, f"field {name!r} must be a finite number, got {_short(value)}")
    return value


def bool_field(raw: dict, name: str) -> bool:
    """A boolean; 'true'/'false' strings are accepted because CSV sources carry every value as text."""
    value = field(raw, name)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise RowRejected(WRONG_TYPE, f"field {name!r} must be a boolean, got {_short(value)}")


def list_field(raw: dict, name: str) -> list:
    value = field(raw, name)
    if not isinstance(value, list):
        raise RowRejected(WRONG_TYPE, f"field {name!r} must be a list, got {type(value).__name__}")
    if not value:
        raise RowRejected(EMPTY_TEXT, f"field {name!r} is an empty list")
    return value


def _short(value: Any) -> str:
    """A value for an error message: its repr, cut to one short line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def require_nonempty_text(messages: Conversation, column: str) -> None:
    """Reject a conversation with a message without content, or a text part that is empty or only whitespace."""
    for index, message in enumerate(messages):
        if message.get("content") == []:
            raise RowRejected(EMPTY_TEXT, f"{column}[{index}] ({message.get('role')}) has no content")
        for part in message["content"] if isinstance(message.get("content"), list) else [message.get("content")]:
            text = part.get("text") if isinstance(part, dict) else part
            kind = part.get("type", "text") if isinstance(part, dict) else "text"
            if kind == "text" and (not isinstance(text, str) or not text.strip()):
                raise RowRejected(EMPTY_TEXT, f"{column}[{index}] ({message.get('role')}) has empty text")


def require_last_role(messages: Conversation, role: str, column: str) -> None:
    if not messages:
        raise RowRejected(EMPTY_TEXT, f"{column} has no messages")
    last = messages[-1].get("role")
    if last != role:
        raise RowRejected(BAD_ROLES, f"{column} must end with the {role}, ends with {last!r}")
