"""The truncation policy: what happens to a row longer than ``max_length`` tokens.

- ``drop``: the row is left out (counted as ``dropped_too_long``).
- ``truncate_prompt_left``: whole messages are removed from the start of the prompt, right after BOS,
  until every sequence of the row fits, so the kept sequence is BOS then whole messages: every trained
  turn keeps its chat-template header and no turn is half there. The response is never cut, and at
  least one user message before it is kept. A row whose response (header included) alone does not
  fit is dropped (``dropped_response_too_long``); one that fits only without any user message, or
  without a message start to cut at, is dropped as ``dropped_prompt_too_long``. The sequences of one
  row (chosen and rejected) lose the same prompt tokens, so they keep sharing one prompt.
- ``error``: a ``UsageError`` naming the row and its length.

Rows whose labels would be all masked are dropped before any of this (``dropped_no_labels``):
they would contribute a zero-token loss, i.e. nothing but a NaN risk.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from align_core.errors import UsageError

IGNORE_INDEX = -100  # label value the loss skips (PyTorch's cross_entropy default)


class Truncation(str, Enum):
    DROP = "drop"
    TRUNCATE_PROMPT_LEFT = "truncate_prompt_left"
    ERROR = "error"


def parse_truncation(value: str | Truncation) -> Truncation:
    try:
        return Truncation(value)
    except ValueError:
        valid = ", ".join(policy.value for policy in Truncation)
        raise UsageError(f"unknown truncation policy {value!r}; expected one of: {valid}") from None


# Outcomes of fitting one row, as counted in the token cache manifest.
KEPT = "kept"
TRUNCATED = "truncated"
DROPPED_TOO_LONG = "dropped_too_long"
DROPPED_RESPONSE_TOO_LONG = "dropped_response_too_long"
DROPPED_PROMPT_TOO_LONG = "dropped_prompt_too_long"
DROPPED_NO_LABELS = "dropped_no_labels"
OUTCOMES = (KEPT, TRUNCATED, DROPPED_TOO_LONG, DROPPED_RESPONSE_TOO_LONG, DROPPED_PROMPT_TOO_LONG, DROPPED_NO_LABELS)


@dataclass(frozen=True)
class PromptCuts:
    """Where ``truncate_prompt_left`` may cut one sequence, in token indices.

    ``ends``: ascending positions where a cut that starts right after BOS may stop: the starts of
    messages 1 .. the last user message before the response, so a cut removes whole messages and
    leaves a user turn. ``response_start``: where the response message's rendering (its header)
    begins; it and everything after it are kept (``len(input_ids)`` when there is no response).
    """

    ends: tuple[int, ...]
    response_start: int

    def shifted(self, start: int, count: int) -> PromptCuts:
        """The same cut points once tokens ``[start, start + count)`` are gone."""
        removed = range(start + 1, start + count)  # ends inside the removed tokens no longer start a message
        ends = tuple(end if end <= start else end - count for end in self.ends if end not in removed)
        return PromptCuts(ends, self.response_start - count)


@dataclass(frozen=True)
class EncodedSequence:
    """One tokenised sequence: ``input_ids`` and ``labels`` ``(seq_len,)``; ``labels`` is None for
    prompt-only rows. ``cuts`` is filled in by the encoder only for rows that need truncation
    (finding message starts costs one rendering per message)."""

    input_ids: list[int]
    labels: list[int] | None
    cuts: PromptCuts | None = None

    def has_labels(self) -> bool:
        return self.labels is not None and any(label != IGNORE_INDEX for label in self.labels)

    def drop_tokens(self, start: int, count: int) -> EncodedSequence:
        """Without tokens ``[start, start + count)``."""
        def cut(values):
            return values[:start] + values[start + count :]

        labels = cut(self.labels) if self.labels is not None else None
        cuts = self.cuts.shifted(start, count) if self.cuts is not None else None
        return replace(self, input_ids=cut(self.input_ids), labels=labels, cuts=cuts)


def fit_row(
    sequences: list[EncodedSequence],
    max_length: int,
    policy: Truncation,
    bos_token_id: int | None,
    row_id: str,
) -> tuple[list[EncodedSequence] | None, str]:
    """Apply the policy to one row's sequences -> (sequences or None if dropped, outcome)."""
    if any(sequence.labels is not None and not sequence.has_labels() for sequence in sequences):
        return None, DROPPED_NO_LABELS
    longest = max(len(sequence.input_ids) for sequence in sequences)
    if longest <= max_length:
        return sequences, KEPT
    if policy is Truncation.ERROR:
        raise UsageError(
            f"row {row_id!r}: {longest} tokens exceed max_length={max_length} "
            "(truncation='error'; use 'drop' or 'truncate_prompt_left' to handle long rows)"
        )
    if policy is Truncation.DROP:
        return None, DROPPED_TOO_LONG
    return cut_prompt_left(sequences, max_length, bos_token_id, row_id)


def cut_prompt_left(
    sequences: list[EncodedSequence], max_length: int, bos_token_id: int | None, row_id: str
) -> tuple[list[EncodedSequence] | None, str]:
    """Remove the fewest whole leading messages (after BOS) that make every sequence fit.

    Whole messages rather than a token-exact cut with the cut turn's labels masked: both train exactly
    the turns that start after the cut, and whole messages leave no headless fragment in the context.
    """
    if any(sequence.cuts is None for sequence in sequences):
        raise ValueError(f"row {row_id!r}: no cut points; ConversationEncoder adds them to rows it must truncate")
    keep = 1 if bos_token_id is not None and sequences[0].input_ids[:1] == [bos_token_id] else 0
    if any(keep + len(sequence.input_ids) - sequence.cuts.response_start > max_length for sequence in sequences):
        return None, DROPPED_RESPONSE_TOO_LONG
    excess = max(len(sequence.input_ids) for sequence in sequences) - max_length
    # One cut for all sequences of the row: a message start they share, with the same tokens before it.
    shared_ends = sorted(set.intersection(*(set(sequence.cuts.ends) for sequence in sequences)))
    first = sequences[0].input_ids
    end = next(
        (
            end
            for end in shared_ends
            if end - keep >= excess and all(sequence.input_ids[:end] == first[:end] for sequence in sequences)
        ),
        None,
    )
    if end is None:
        return None, DROPPED_PROMPT_TOO_LONG
    return [sequence.drop_tokens(keep, end - keep) for sequence in sequences], TRUNCATED
