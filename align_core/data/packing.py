"""Padding-free packing: the sequences of one micro-batch placed end to end in as few rows of at most
``capacity`` tokens as first-fit-decreasing finds, each sequence attending only to itself.

Any kind with labels packs: a supervised batch's rows, or a preference batch's chosen and rejected
sequences of every pair (2b sequences, sequence-major, into the same bins). A packed batch keeps the
sequences' tokens and labels, and its ``Batch.packing`` maps every position back to its sequence, so
every count, loss and score the trainers compute (token sums over labels, ``trained_tokens``, a scorer's
per-sequence log-probs, a reward model's score at each sequence's last token, ``non_pad_tokens``) is the
padded batch's; only the padding is gone.

The model gets no attention mask, only where each sequence starts, in the two forms transformers (5.x)
reads, so one packed batch serves whatever attention implementation the model was loaded with:

- ``position_ids`` restarting at 0 for each sequence, and for a row's trailing padding, which is one more
  sequence of its own (so it never meets a real token, and no softmax row is empty). With
  ``attention_mask=None`` and no KV cache, ``masking_utils.find_packed_sequence_indices`` starts a new
  sequence wherever a position is not the previous one + 1, and sdpa, eager and flex_attention get the
  block-causal mask built from it (a dense (n, 1, L, L) mask for sdpa and eager, a sparse BlockMask for
  flex; sliding windows compose with it). It looks per row, so several rows per batch pack.
- ``cu_seq_lens_q/k`` and ``max_length_q/k``: every segment's start (a sequence, or a row's padding) in the
  flattened (rows * L) tokens. FlashAttention (``flash_attention_2``/``_3``/``_4``) takes them straight
  into its varlen kernel: no mask at all, and a row's padding costs only its own short segment.
  Transformers infers them from ``position_ids`` only for a batch of one row; with several rows and no
  ``cu_seq_lens`` it would run plain causal attention across each row's sequences. The other
  implementations ignore these arguments.

``check_packable`` (called by ``forward`` on every packed batch) refuses, in one line, any other
implementation (a custom, paged or hub kernel, which may read neither) and a model whose code builds its
mask without ``transformers.masking_utils``. Each sequence's first label is ignored, so no token is
trained to follow the previous sequence's last one. Packed and padded forwards agree to float tolerance under sdpa, eager,
flex_attention and, on CPU with a reference kernel in place of the CUDA one, transformers' FlashAttention
path (``tests/test_packing.py``, ``tests/test_packing_attention.py``).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from align_core.data.batch import Batch, Packing
from align_core.data.truncation import IGNORE_INDEX
from align_core.errors import UsageError

# those whose mask transformers builds from packed position_ids, and FlashAttention's, whose kernel reads cu_seq_lens
PACKABLE_IMPLEMENTATIONS = ("sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3", "flash_attention_4")


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
    owners = torch.full((n, width), -1, dtype=torch.long)
    starts = []  # of every segment (a sequence, or a bin's padding) in the flattened tokens
    for row, members in enumerate(bins):
        start = 0
        for index in members:
            end = start + lengths[index]
            packed_ids[row, start:end] = torch.from_numpy(np.asarray(input_ids[index], dtype=np.int64))
            packed_labels[row, start:end] = torch.from_numpy(np.asarray(labels[index], dtype=np.int64))
            packed_labels[row, start] = IGNORE_INDEX  # never trained to follow the previous sequence
            positions[row, start:end] = torch.arange(lengths[index])
            owners[row, start:end] = index
            starts.append(row * width + start)
            start = end
        if start < width:  # the padding: a sequence of its own
            positions[row, start:] = torch.arange(width - start)
            starts.append(row * width + start)
    boundaries = [*starts, n * width]
    longest = max((end - start for start, end in itertools.pairwise(boundaries)), default=0)
    return Batch(
        input_ids=packed_ids,
        attention_mask=(owners >= 0).long(),  # what counts as a real token; not given to the model
        labels=packed_labels,
        sequences_per_row=sequences_per_row,
        packing=Packing(owners, len(input_ids), positions, torch.tensor(boundaries, dtype=torch.int32), longest),
    )


def check_packable(model: Any) -> None:
    """Nothing where ``model`` (a transformers model, or a scorer or DeepSpeed engine holding one) keeps a packed
    batch's sequences apart; else one line naming why it would not."""
    from transformers import PreTrainedModel

    modules = model.modules() if isinstance(model, torch.nn.Module) else iter(())
    pretrained = next((module for module in modules if isinstance(module, PreTrainedModel)), None)
    if pretrained is None:
        return
    implementation = pretrained.config._attn_implementation
    if implementation not in PACKABLE_IMPLEMENTATIONS:
        raise UsageError(f"train_cfgs.packing: the {implementation!r} attention implementation is given no sequence "
                         f"boundaries; load the model with one of {', '.join(PACKABLE_IMPLEMENTATIONS)} or set packing: false")
    decoder = type(pretrained.base_model)
    if not hasattr(sys.modules[decoder.__module__], "create_causal_mask"):
        raise UsageError(f"train_cfgs.packing: {decoder.__name__} builds its attention mask without "
                         "transformers.masking_utils, so packed sequences would attend to each other; set packing: false")
