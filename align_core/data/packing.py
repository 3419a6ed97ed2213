"""Padding-free packing: the sequences of one micro-batch placed end to end in as few rows of at most
``capacity`` tokens as first-fit-decreasing finds, each sequence attending only to itself.

Any kind with labels packs: a supervised batch's rows, or a preference batch's chosen and rejected
sequences of every pair (2b sequences, sequence-major, into the same bins). A packed batch keeps the
sequences' tokens and labels, and its ``Batch.packing`` maps every position back to its sequence, so
every count and loss the trainers compute (token sums over labels, ``trained_tokens``, a scorer's
per-sequence log-probs, ``non_pad_tokens``) is the padded batch's; only the padding is gone. The model gets:

- ``position_ids`` restarting at 0 for each sequence (as if it were alone);
- ``attention_mask`` (n, 1, L, L) bool: causal within each sequence, nothing across them. It replaces the 2D
  mask in the model call (``Batch.model_inputs`` override ``Batch.attention_mask`` there); padded
  positions attend to themselves only, so no softmax row is empty.

Each sequence's first label is ignored, so no token is trained to follow the previous sequence's last
one. With transformers' SDPA attention (CPU, and GPU without FlashAttention) this equals the padded
forward to float tolerance (``tests/test_packing.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from align_core.data.batch import Batch, ModelInput, Packing
from align_core.data.truncation import IGNORE_INDEX


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Sequence indices per bin: longest first, each into the first bin it fits (one longer than
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


def pack_sequences(
    input_ids: Sequence[Sequence[int]],
    labels: Sequence[Sequence[int]],
    pad_token_id: int,
    capacity: int,
    sequences_per_row: int = 1,
) -> Batch:
    """One ``Batch`` of token sequences (and their labels) packed into bins.

    Args:
        input_ids, labels: n token lists each, in a batch's sequence-major order (n = rows * k).
        sequences_per_row: k (2 for preference rows: every chosen sequence, then every rejected one).
    """
    lengths = [len(sequence) for sequence in input_ids]
    bins = first_fit_decreasing(lengths, capacity)
    width = max((sum(lengths[i] for i in members) for members in bins), default=0)
    n = len(bins)
    packed_ids = torch.full((n, width), pad_token_id, dtype=torch.long)
    packed_labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    documents = torch.full((n, width), -1, dtype=torch.long)
    owners = torch.full((n, width), -1, dtype=torch.long)
    for row, members in enumerate(bins):
        start = 0
        for document, index in enumerate(members):
            end = start + lengths[index]
            packed_ids[row, start:end] = torch.from_numpy(np.asarray(input_ids[index], dtype=np.int64))
            packed_labels[row, start:end] = torch.from_numpy(np.asarray(labels[index], dtype=np.int64))
            packed_labels[row, start] = IGNORE_INDEX  # never trained to follow the previous sequence
            positions[row, start:end] = torch.arange(lengths[index])
            documents[row, start:end] = document
            owners[row, start:end] = index
            start = end
    return Batch(
        input_ids=packed_ids,
        attention_mask=(documents >= 0).long(),  # what counts as a real token
        labels=packed_labels,
        sequences_per_row=sequences_per_row,
        model_inputs={"attention_mask": ModelInput(document_mask(documents)), "position_ids": ModelInput(positions)},
        packing=Packing(owners, len(input_ids)),
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
