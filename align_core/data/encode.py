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

Rows that ``truncate_prompt_left`` must shorten also get their cut points: the token where each
message's rendering begins (``ModelFormatter.message_starts``), so truncation removes whole messages.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, replace

from align_core.chat import AssistantSpan, ChatTemplateError, ModelFormatter
from align_core.data.media_inputs import MediaProcessor, MediaRef, surviving_media
from align_core.data.schema import TokenizedRow
from align_core.data.truncation import IGNORE_INDEX, EncodedSequence, PromptCuts, Truncation, fit_row
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
    media: tuple[MediaRef, ...] = ()  # the media items of its placeholders, in order


def _last_assistant_index(messages: list[dict]) -> int:
    indices = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    return indices[-1] if indices else len(messages)


def row_renders(
    kind: Kind, row: dict, assistant_turns: str = "all", media: dict[str, list[MediaRef]] | None = None
) -> list[Render]:
    """The conversations a shard row of ``kind`` is rendered as (chosen before rejected); ``media``:
    each conversation column's media refs (``MediaProcessor.prepare_row``)."""
    media = media or {}

    def refs(*columns: str) -> tuple[MediaRef, ...]:
        return tuple(ref for column in columns for ref in media.get(column, ()))

    if kind is Kind.SUPERVISED:
        last = _last_assistant_index(row["messages"])
        return [Render(row["messages"], 0 if assistant_turns == "all" else last, last, refs("messages"))]
    if kind is Kind.PROMPT_ONLY:
        return [Render(row["prompt"], None, len(row["prompt"]), refs("prompt"))]
    prompt = row["prompt"]
    continuations = ("chosen", "rejected") if kind is Kind.PREFERENCE else ("completion",)
    return [Render(prompt + row[column], len(prompt), len(prompt), refs("prompt", column)) for column in continuations]


def token_range(starts: list[int], ends: list[int], span: AssistantSpan) -> range:
    """Indices of the tokens whose characters ``[start, end)`` overlap ``span``.

    Token offsets run left to right, so two binary searches find the first token ending after the
    span starts and the first token starting at or after the span ends.
    """
    return range(bisect.bisect_right(ends, span.start), bisect.bisect_left(starts, span.end))


def token_boundary(starts: list[int], ends: list[int], char: int) -> int | None:
    """Index of the first token starting at or after character ``char``; None when a token straddles it."""
    index = bisect.bisect_right(ends, char)
    return index if index == len(starts) or starts[index] >= char else None


def offset_columns(offsets) -> tuple[list[int], list[int]]:
    """Token character offsets ``[(start, end), ...]`` -> (starts, ends), checked to run in text order."""
    starts, ends = (list(column) for column in zip(*offsets)) if offsets else ([], [])
    if starts != sorted(starts) or ends != sorted(ends):  # the binary searches rely on text order
        raise UsageError("the tokenizer returned token offsets out of text order; cannot place label masks")
    return starts, ends


class ConversationEncoder:
    """Renders rows with a ``ModelFormatter``, tokenises them in batches, applies the truncation policy."""

    def __init__(
        self,
        formatter: ModelFormatter,
        max_length: int,
        truncation: Truncation = Truncation.DROP,
        assistant_turns: str = "all",
        media: MediaProcessor | None = None,
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
        self.media = media  # expands media placeholders after labelling; None: a text-only model

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
        to_cut = self._rows_to_cut(row_ids, encodings["input_ids"])
        sequences = []
        for render, row_id, text, row_spans, input_ids, offsets in zip(
            renders, row_ids, texts, spans, encodings["input_ids"], encodings["offset_mapping"]
        ):
            starts, ends = offset_columns(offsets)
            sequence = self._sequence(render, row_spans, input_ids, starts, ends)
            if row_id in to_cut:
                sequence = replace(sequence, cuts=self._prompt_cuts(render, text, row_spans, starts, ends))
            if self.media is not None:
                sequence = self.media.expand(sequence, render.media, row_id)
            sequences.append(sequence)
        return sequences

    def _rows_to_cut(self, row_ids: list[str], input_ids: list[list[int]]) -> set[str]:
        """Rows that ``truncate_prompt_left`` must shorten: only they pay for finding message starts
        (a repeated id merely costs a needless search)."""
        if self.truncation is not Truncation.TRUNCATE_PROMPT_LEFT:
            return set()
        if self.media is not None:  # media placeholders grow when expanded: find the cut points of every row
            return set(row_ids)
        return {row_id for row_id, ids in zip(row_ids, input_ids) if len(ids) > self.max_length}

    @staticmethod
    def _sequence(
        render: Render, spans: list[AssistantSpan], input_ids: list[int], starts: list[int], ends: list[int]
    ) -> EncodedSequence:
        input_ids = list(input_ids)
        if render.label_from is None:
            return EncodedSequence(input_ids, None)
        labels = [IGNORE_INDEX] * len(input_ids)
        for span in spans:
            if span.message_index >= render.label_from:
                tokens = token_range(starts, ends, span)
                labels[tokens.start : tokens.stop] = input_ids[tokens.start : tokens.stop]
        return EncodedSequence(input_ids, labels)

    def _prompt_cuts(
        self, render: Render, text: str, spans: list[AssistantSpan], starts: list[int], ends: list[int]
    ) -> PromptCuts:
        """Token positions where truncation may cut this render's sequence (see ``PromptCuts``)."""
        conversation = render.conversation
        message_tokens = [
            None if char is None else token_boundary(starts, ends, char)
            for char in self.formatter.message_starts(conversation, text)
        ]
        users = [index for index in range(render.protect_from) if conversation[index]["role"] == "user"]
        # Cutting up to a message start removes messages 0 .. index - 1; the last user message must stay.
        cut_ends = tuple(token for token in message_tokens[1 : users[-1] + 1] if token is not None) if users else ()
        if render.protect_from == len(conversation):  # no response: the generation prompt, if any, is kept
            return PromptCuts(cut_ends, len(starts))
        response_start = message_tokens[render.protect_from]
        if response_start is None:  # header position unknown: at least the response's text must fit
            response = next((span for span in spans if span.message_index >= render.protect_from), None)
            response_start = token_range(starts, ends, response).start if response else len(starts)
        return PromptCuts(cut_ends, response_start)

    def encode_rows(self, kind: Kind, rows: list[dict], outcomes: Counter) -> list[TokenizedRow]:
        """Tokenise shard rows (dicts of their columns), fit them to ``max_length``; counts go to ``outcomes``."""
        renders, owners = [], []
        for position, row in enumerate(rows):
            media = None
            if self.media is not None:
                row, media = self.media.prepare_row(kind, row)
            for render in row_renders(kind, row, self.assistant_turns, media):
                renders.append(render)
                owners.append(position)
        sequences = self.encode(renders, [rows[position]["id"] for position in owners])
        per_row: list[list[EncodedSequence]] = [[] for _ in rows]
        per_row_media: list[list[tuple[MediaRef, ...]]] = [[] for _ in rows]
        for position, sequence, render in zip(owners, sequences, renders):
            per_row[position].append(sequence)
            per_row_media[position].append(render.media)
        tokenized = []
        for row, row_sequences, row_media in zip(rows, per_row, per_row_media):
            fitted, outcome = fit_row(
                row_sequences, self.max_length, self.truncation, self.tokenizer.bos_token_id, row["id"]
            )
            outcomes[outcome] += 1
            if fitted is None:
                continue
            media = None
            if self.media is not None:  # truncation may have cut the first messages, and their media with them
                media = [surviving_media(refs, sequence.input_ids, self.media) for refs, sequence in zip(row_media, fitted)]
            tokenized.append(TokenizedRow(row["id"], fitted, row.get("label"), media))
        return tokenized
