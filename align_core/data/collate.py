"""Collators: lists of ``TokenDataset`` rows -> a padded ``Batch``, each only as long as its longest row.

===============================  ==========================================================
kind                             batch
===============================  ==========================================================
supervised                       ``input_ids``, ``attention_mask``, ``labels`` (b, L), right padded
preference                       the same at (2b, L), ``sequences_per_row=2``: ``[0, b)`` chosen,
                                 ``[b, 2b)`` rejected, so a trainer scores both in one forward pass
unpaired_preference              as supervised, + ``values["desirable"]`` (b,) bool
prompt_only                      ``input_ids``, ``attention_mask`` (b, L), left padded for generate()
===============================  ==========================================================

A cache with media adds the model's media inputs (``pixel_values``, ``input_features``, ...), computed
here by its processor from each sequence's media refs (``align_core.data.media_inputs``).

Padding: ``pad_token_id`` in ``input_ids``, 0 in ``attention_mask``, -100 in ``labels``.
``pad_to_multiple_of`` rounds L up (GPU-friendly shapes; fewer distinct shapes to compile).
``pack_capacity``: the sequences are packed padding-free into rows of at most that many tokens instead
(``align_core.data.packing``; kinds with labels, without media).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from align_core.data.batch import Batch
from align_core.data.media_inputs import MediaProcessor, MediaRef
from align_core.data.packing import pack_sequences
from align_core.data.schema import SEQUENCE_PREFIXES, has_labels
from align_core.data.truncation import IGNORE_INDEX
from align_core.shards.schema import Kind


def padded_length(longest: int, pad_to_multiple_of: int | None = None) -> int:
    if pad_to_multiple_of and longest % pad_to_multiple_of:
        return longest + pad_to_multiple_of - longest % pad_to_multiple_of
    return longest


def pad_sequences(
    sequences: Sequence[Sequence[int]],
    pad_value: int,
    side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> torch.Tensor:
    """Stack token lists into a (b, L) long tensor, padding on ``side`` ("right" or "left") with ``pad_value``."""
    if side not in ("right", "left"):
        raise ValueError(f"padding side must be 'right' or 'left', got {side!r}")
    width = padded_length(max((len(sequence) for sequence in sequences), default=0), pad_to_multiple_of)
    batch = torch.full((len(sequences), width), pad_value, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        # int32 -> int64 copies, so the read-only memory-mapped views are never handed to torch.
        values = torch.from_numpy(np.asarray(sequence, dtype=np.int64))
        if side == "right":
            batch[row, : len(values)] = values
        elif len(values):
            batch[row, width - len(values) :] = values
    return batch


@dataclass
class Collator:
    """Pads a list of rows of ``kind`` into one batch (see the module docstring for the keys)."""

    kind: Kind
    pad_token_id: int
    pad_to_multiple_of: int | None = None
    media: MediaProcessor | None = None  # for a cache whose sequences name media items
    pack_capacity: int | None = None  # pack padding-free into rows of at most this many tokens

    def __post_init__(self) -> None:
        if self.pack_capacity is not None and (self.media is not None or not has_labels(self.kind)):
            what = "rows with media inputs" if self.media is not None else f"{self.kind.value} rows"
            raise ValueError(f"{what} are not packed")

    def __call__(self, rows: Sequence[dict[str, Any]]) -> Batch:
        side = "left" if self.kind is Kind.PROMPT_ONLY else "right"
        prefixes = SEQUENCE_PREFIXES[self.kind]
        # Sequence-major order: all chosen rows, then all rejected rows.
        input_ids = [row[f"{prefix}input_ids"] for prefix in prefixes for row in rows]
        values = {}
        if self.kind is Kind.UNPAIRED_PREFERENCE:
            values["desirable"] = torch.tensor([bool(row["desirable"]) for row in rows])
        if self.pack_capacity is not None:
            labels = [row[f"{prefix}labels"] for prefix in prefixes for row in rows]
            batch = pack_sequences(input_ids, labels, self.pad_token_id, self.pack_capacity, len(prefixes))
            batch.values = values
            return batch
        ones = [np.ones(len(sequence), dtype=np.int64) for sequence in input_ids]
        labels = None
        if has_labels(self.kind):
            labels = pad_sequences(
                [row[f"{prefix}labels"] for prefix in prefixes for row in rows], IGNORE_INDEX, side, self.pad_to_multiple_of
            )
        model_inputs = {}
        if self.media is not None:
            refs = [[MediaRef.parse(str(key)) for key in row[f"{prefix}media"]] for prefix in prefixes for row in rows]
            model_inputs = self.media.model_inputs(refs)
        return Batch(
            input_ids=pad_sequences(input_ids, self.pad_token_id, side, self.pad_to_multiple_of),
            attention_mask=pad_sequences(ones, 0, side, self.pad_to_multiple_of),
            labels=labels,
            sequences_per_row=len(prefixes),
            model_inputs=model_inputs,
            values=values,
        )
