"""Padding-free packing of supervised micro-batches: the rows of one micro-batch placed end to end in as few
sequences of at most ``capacity`` tokens as first-fit-decreasing finds, each row attending only to itself.

A packed batch keeps the rows' tokens and labels, so every loss and count the trainers compute (token
sums over labels, ``non_pad_tokens``) is the padded batch's; only the padding is gone. The model gets:

- ``position_ids`` restarting at 0 for each row (as if it were alone);
- ``attention_mask`` (n, 1, L, L) bool: causal within each row, nothing across rows. It replaces the 2D
  mask in the model call (``Batch.model_inputs`` override ``Batch.attention_mask`` there); padded
  positions attend to themselves only, so no softmax row is empty.

Each row's first label is ignored, so no token is trained to follow the previous row's last one. With
transformers' SDPA attention (CPU, and GPU without FlashAttention) this equals the padded forward to float
tolerance (``tests/test_packing.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from align_core.data.batch import Batch, ModelInput
from align_core.data.truncation import IGNORE_INDEX


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Row indices per bin: longest rows first, each into the first bin it fits (a row longer than
    ``capacity`` gets a bin of its own)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for position, free in enumerate(room):
            if lengths[index] <= free:
                bins[position].append(index)
                room[position] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return bins


def packed_batch(rows: Sequence[dict[str, Any]], pad_token_id: int, capacity: int) -> Batch:
    """One supervised ``Batch`` of ``rows`` (``input_ids``, ``labels`` token lists) packed into bins."""
    lengths = [len(row["input_ids"]) for row in rows]
    bins = first_fit_decreasing(lengths, capacity)
    width = max(sum(lengths[i] for i in members) for members in bins)
    n = len(bins)
    input_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    documents = torch.full((n, width), -1, dtype=torch.long)
    for sequence, members in enumerate(bins):
        start = 0
        for document, index in enumerate(members):
            length = lengths[index]
            end = start + length
            input_ids[sequence, start:end] = torch.from_numpy(np.asarray(rows[index]["input_ids"], dtype=np.int64))
            labels[sequence, start:end] = torch.from_numpy(np.asarray(rows[index]["labels"], dtype=np.int64))
            labels[sequence, start] = IGNORE_INDEX  # never trained to follow the previous row
            positions[sequence, start:end] = torch.arange(length)
            documents[sequence, start:end] = document
            start = end
    return Batch(
        input_ids=input_ids,
        attention_mask=(documents >= 0).long(),  # what counts as a real token
        labels=labels,
        model_inputs={"attention_mask": ModelInput(document_mask(documents)), "position_ids": ModelInput(positions)},
    )


def document_mask(documents: torch.Tensor) -> torch.Tensor:
    """(n, 1, L, L) bool from (n, L) document numbers (-1: padding): causal within a document, a padded
    position attending to itself alone."""
    length = documents.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    same = documents[:, :, None] == documents[:, None, :]
    real = (documents >= 0)[:, :, None]
    mask = same & causal & real
    mask |= torch.eye(length, dtype=torch.bool) & ~real  # padding: itself only
    return mask[:, None]
