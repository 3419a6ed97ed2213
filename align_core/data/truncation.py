"""The truncation policy: what happens to a row longer than ``max_length`` tokens.

- ``drop``: the row is left out (counted as ``dropped_too_long``).
- ``truncate_prompt_left``: tokens are removed from the left of the prompt, after a leading BOS,
  until every sequence of the row fits; the response is never cut. A row whose response alone does
  not fit is dropped (``dropped_response_too_long``). The sequences of one row (chosen and rejected)
  lose the same prompt tokens, so they keep sharing one prompt.
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
DROPPED_NO_LABELS = "dropped_no_labels"
OUTCOMES = (KEPT, TRUNCATED, DROPPED_TOO_LONG, DROPPED_RESPONSE_TOO_LONG, DROPPED_NO_LABELS)


@dataclass(frozen=True)
class EncodedSequence:
    """One tokenised sequence. ``labels`` is None for prompt-only rows; ``response_start`` is the
    first token that truncation must keep (the start of the trained response; ``len(input_ids)``
    when there is none)."""

    input_ids: list[int]
    labels: list[int] | None
    response_start: int

    def has_labels(self) -> bool:
        return self.labels is not None and any(label != IGNORE_INDEX for label in self.labels)

    def drop_tokens(self, start: int, count: int) -> "EncodedSequence":
        """Without tokens ``[start, start + count)``."""
        def cut(values):
            return values[:start] + values[start + count :]

        labels = cut(self.labels) if self.labels is not None else None
        return replace(self, input_ids=cut(self.input_ids), labels=labels, response_start=self.response_start - count)


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
    excess = longest - max_length
    if excess <= 0:
        return sequences, KEPT
    if policy is Truncation.ERROR:
        raise UsageError(
            f"row {row_id!r}: {longest} tokens exceed max_length={max_length} "
            "(truncation='error'; use 'drop' or 'truncate_prompt_left' to handle long rows)"
        )
    if policy is Truncation.DROP:
        return None, DROPPED_TOO_LONG
    # All sequences of a row share the prompt tokens, so one cut position serves them all.
    keep = 1 if bos_token_id is not None and sequences[0].input_ids[:1] == [bos_token_id] else 0
    if any(sequence.response_start - keep < excess for sequence in sequences):
        return None, DROPPED_RESPONSE_TOO_LONG
    return [sequence.drop_tokens(keep, excess) for sequence in sequences], TRUNCATED
