"""Shard rows -> token ids with label masks, per shard kind.

Each row becomes one or more conversations to render (TRL's taxonomy):

- supervised: ``messages``; labels on every assistant message (``assistant_turns="all"``) or on the
  last one only (``"last"``);
- preference: ``prompt + chosen`` and ``prompt + rejected``, labels on the continuation only;
- unpaired_preference: ``prompt + completion``, labels on the completion;
- prompt_only: ``prompt`` rendered with the generation prompt, no labels.

The rendered text is tokenised once with ``add_special_tokens=False`` (the chat template already
holds BOS, so the tokenizer adding its own would double it), with character offsets; a token is
labelled when its characters overlap an assistant span (``ModelFormatter.render_with_spans``).
So the end-of-turn token inside the span is trained on, and a word straddling the span boundary
counts as the assistant's.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass

from align_core.chat import AssistantSpan, ChatTemplateError, ModelFormatter
from align_core.data.schema import TokenizedRow
from align_core.data.truncation import IGNORE_INDEX, EncodedSequence, Truncation, fit_row
from align_core.errors import UsageError
from align_core.shards.schema import Kind

ASSISTANT_TURNS = ("all", "last")


@dataclass(frozen=True)
class Render:
    """One conversation to render. ``label_from``: first message index whose assistant turns get
    labels (None: a prompt to render with the generation prompt). ``protect_from``: first message
    of the response that truncation must keep."""

    conversation: list[dict]
    label_from: int | None
    protect_from: int


def _last_assistant_index(messages: list[dict]) -> int:
    indices = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    return indices[-1] if indices else len(messages)


def row_renders(kind: Kind, row: dict, assistant_turns: str = "all") -> list[Render]:
    """The conversations a shard row of ``kind`` is rendered as (chosen before rejected)."""
    if kind is Kind.SUPERVISED:
        last = _last_assistant_index(row["messages"])
        return [Render(row["messages"], 0 if assistant_turns == "all" else last, last)]
    if kind is Kind.PROMPT_ONLY:
        return [Render(row["prompt"], None, len(row["prompt"]))]
    prompt = row["prompt"]
    continuations = ("chosen", "rejected") if kind is Kind.PREFERENCE else ("completion",)
    return [Render(prompt + row[column], len(prompt), len(prompt)) for column in continuations]


def token_range(starts: list[int], ends: list[int], span: AssistantSpan) -> range:
    """Indices of the tokens whose characters ``[start, end)`` overlap ``span``.

    Token offsets run left to right, so two binary searches find the first token ending after the
    span starts and the first token starting at or after the span ends.
    """
    return range(bisect.bisect_right(ends, span.start), bisect.bisect_left(starts, span.end))


class ConversationEncoder:
    """Renders rows with a ``ModelFormatter``, tokenises them in batches, applies the truncation policy."""

    def __init__(
        self,
        formatter: ModelFormatter,
        max_length: int,
        truncation: Truncation = Truncation.DROP,
        assistant_turns: str = "all",
    ):
        if assistant_turns not in ASSISTANT_TURNS:
            raise UsageError(f"assistant_turns must be one of {list(ASSISTANT_TURNS)}, got {assistant_turns!r}")
        if max_length < 1:
            raise UsageError(f"max_length must be a positive number of tokens, got {max_length}")
        if not getattr(formatter.tokenizer, "is_fast", False):
            raise UsageError("alignflow needs a fast tokenizer (tokenizer.json) for character offsets")
        self.formatter = formatter
        self.tokenizer = formatter.tokenizer
        self.max_length = max_length
        self.truncation = truncation
        self.assistant_turns = assistant_turns

    def encode(self, renders: list[Render], row_ids: list[str]) -> list[EncodedSequence]:
        """Token ids and labels for each render (``row_ids`` name the row of each, for errors)."""
        texts, spans = [], []
        for render, row_id in zip(renders, row_ids):
            try:
                if render.label_from is None:
                    texts.append(self.formatter.render(render.conversation, add_generation_prompt=True))
                    spans.append([])
                else:
                    text, row_spans = self.formatter.render_with_spans(render.conversation)
                    texts.append(text)
                    spans.append(row_spans)
            except ChatTemplateError as error:
                raise ChatTemplateError(f"row {row_id!r}: {error}") from None
        encodings = self.tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        return [
            self._sequence(render, row_spans, input_ids, offsets)
            for render, row_spans, input_ids, offsets in zip(
                renders, spans, encodings["input_ids"], encodings["offset_mapping"]
            )
        ]

    @staticmethod
    def _sequence(render: Render, spans: list[AssistantSpan], input_ids: list[int], offsets) -> EncodedSequence:
        input_ids = list(input_ids)
        if render.label_from is None:
            return EncodedSequence(input_ids, None, len(input_ids))
        starts, ends = (list(column) for column in zip(*offsets)) if offsets else ([], [])
        if starts != sorted(starts) or ends != sorted(ends):  # the binary searches below rely on text order
            raise UsageError("the tokenizer returned token offsets out of text order; cannot place label masks")
        labels = [IGNORE_INDEX] * len(input_ids)
        for span in spans:
            if span.message_index >= render.label_from:
                tokens = token_range(starts, ends, span)
                labels[tokens.start : tokens.stop] = input_ids[tokens.start : tokens.stop]
        response = next((span for span in spans if span.message_index >= render.protect_from), None)
        response_tokens = token_range(starts, ends, response) if response else range(0)
        return EncodedSequence(input_ids, labels, response_tokens.start if response_tokens else len(input_ids))

    def encode_rows(self, kind: Kind, rows: list[dict], outcomes: Counter) -> list[TokenizedRow]:
        """Tokenise shard rows (dicts of their columns), fit them to ``max_length``; counts go to ``outcomes``."""
        renders, owners = [], []
        for position, row in enumerate(rows):
            for render in row_renders(kind, row, self.assistant_turns):
                renders.append(render)
                owners.append(position)
        sequences = self.encode(renders, [rows[position]["id"] for position in owners])
        per_row: list[list[EncodedSequence]] = [[] for _ in rows]
        for position, sequence in zip(owners, sequences):
            per_row[position].append(sequence)
        tokenized = []
        for row, row_sequences in zip(rows, per_row):
            fitted, outcome = fit_row(
                row_sequences, self.max_length, self.truncation, self.tokenizer.bos_token_id, row["id"]
            )
            outcomes[outcome] += 1
            if fitted is not None:
                tokenized.append(TokenizedRow(row["id"], fitted, row.get("label")))
        return tokenized
