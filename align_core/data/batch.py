"""The batch every model call takes: token tensors, an open set of extra model inputs, per-sequence values.

A ``Batch`` holds ``n`` sequences: ``rows`` rows of ``sequences_per_row`` sequences each, stacked
sequence-major (a preference batch of b rows is its b chosen sequences, then its b rejected ones),
so one forward pass scores every sequence. Beside the tokens it carries

- ``model_inputs``: whatever else the model's forward takes (``pixel_values``, ``image_grid_thw``,
  ``input_features``, ...), each a ``ModelInput`` that knows how its tensor is laid out over the
  sequences, so selecting rows, splitting into micro-batches and repeating for chosen+rejected work
  for any input without a trainer knowing its name;
- ``values``: (n,) per-sequence values that are not model inputs (cached reference log-probs, KTO's
  desirable labels);
- ``companions``: other batches that belong to these rows (KTO's mismatched pairs), selected with them;
- ``packing``: set on a padding-free packed batch (``align_core.data.packing``), whose tensor rows are
  bins of whole sequences: it maps every position back to its sequence, so counts and per-sequence
  values are the unpacked batch's (``num_sequences``, ``trained_tokens``, a scorer's log-probs), and
  gives the model the sequences' boundaries in place of a 2D mask.

``forward(model, batch)`` is the one place a model is called with a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

import torch

from align_core.data.truncation import IGNORE_INDEX


class Layout(str, Enum):
    """How a model input's tensor maps onto the batch's sequences."""

    PER_SEQUENCE = "per_sequence"  # dim 0 has one entry per sequence (LLaVA's pixel_values (n, C, H, W))
    PACKED = "packed"  # dim 0 concatenates a variable number of entries per sequence (Qwen2-VL's patches)
    SHARED = "shared"  # the same for every sequence: passed as is, never split


@dataclass(frozen=True)
class ModelInput:
    """One extra model input. ``counts`` (n,): the entries of dim 0 each sequence owns (PACKED only)."""

    value: torch.Tensor
    layout: Layout = Layout.PER_SEQUENCE
    counts: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.layout is Layout.PACKED and (self.counts is None or int(self.counts.sum()) != len(self.value)):
            raise ValueError("a packed model input needs counts (one per sequence) that sum to its first dimension")

    def select(self, sequences: torch.Tensor) -> ModelInput:
        """The entries of the given sequence indices, in that order."""
        if self.layout is Layout.SHARED:
            return self
        if self.layout is Layout.PER_SEQUENCE:
            return replace(self, value=self.value[sequences.to(self.value.device)])
        starts = torch.cumsum(self.counts, 0) - self.counts
        pieces = [self.value[int(starts[i]) : int(starts[i] + self.counts[i])] for i in sequences.tolist()]
        return replace(self, value=torch.cat(pieces), counts=self.counts[sequences])

    def repeat(self, times: int) -> ModelInput:
        """Stacked ``times`` over: the input of b rows for each of a row's ``times`` sequences."""
        if self.layout is Layout.SHARED:
            return self
        counts = None if self.counts is None else self.counts.repeat(times)
        return replace(self, value=torch.cat([self.value] * times), counts=counts)

    def to(self, device: torch.device | str) -> ModelInput:
        counts = None if self.counts is None else self.counts.to(device)
        return replace(self, value=self.value.to(device), counts=counts)


@dataclass(frozen=True)
class Packing:
    """Where a packed batch's tokens come from, and the boundaries the model attends within.

    Attributes:
        sequence_index: (n_bins, L) the unpacked sequence (its index in the sequence-major order of the
            rows packed) each position belongs to; -1 on padding.
        num_sequences: sequences packed: the unpacked batch's n.
        position_ids: (n_bins, L) restarting at 0 for each sequence and for a bin's trailing padding.
        cu_seq_lens: (segments + 1,) int32 start of every segment (a sequence, or a bin's padding) in the
            flattened (n_bins * L) tokens, then n_bins * L: FlashAttention's varlen boundaries.
        max_length: the longest segment.
    """

    sequence_index: torch.Tensor
    num_sequences: int
    position_ids: torch.Tensor
    cu_seq_lens: torch.Tensor
    max_length: int

    def attention_kwargs(self) -> dict[str, Any]:
        """The boundaries as transformers' attention reads them: ``position_ids`` for the implementations whose
        mask it builds (sdpa, eager, flex_attention), ``cu_seq_lens_*`` for FlashAttention's varlen kernel."""
        return {
            "position_ids": self.position_ids,
            "cu_seq_lens_q": self.cu_seq_lens,
            "cu_seq_lens_k": self.cu_seq_lens,
            "max_length_q": self.max_length,
            "max_length_k": self.max_length,
        }

    def label_sums(self, values: torch.Tensor) -> torch.Tensor:
        """(num_sequences,) sums of ``values`` (n_bins, L-1) at label positions: position t predicts
        token t+1 and counts for that token's sequence (0 expected on padding, which counts for none)."""
        owners = self.sequence_index[:, 1:]
        keep = owners >= 0
        return values.new_zeros(self.num_sequences).index_add(0, owners[keep], values[keep])

    def last_positions(self) -> torch.Tensor:
        """(num_sequences,) each sequence's last token as an index into the flattened (n_bins * L) positions
        (where a reward model reads its score)."""
        owners = self.sequence_index.reshape(-1)
        keep = owners >= 0
        positions = torch.arange(len(owners), device=owners.device)
        last = torch.zeros(self.num_sequences, dtype=torch.long, device=owners.device)
        return last.scatter_reduce(0, owners[keep], positions[keep], "amax", include_self=False)

    def to(self, device: torch.device | str) -> Packing:
        return replace(
            self,
            sequence_index=self.sequence_index.to(device),
            position_ids=self.position_ids.to(device),
            cu_seq_lens=self.cu_seq_lens.to(device),
        )


@dataclass
class Batch:
    """``n = rows * sequences_per_row`` sequences of length L.

    Attributes:
        input_ids: (n, L) token ids, padded.
        attention_mask: (n, L) 1 on tokens, 0 on padding.
        labels: (n, L) trained token ids, ``IGNORE_INDEX`` elsewhere; None for prompts.
        sequences_per_row: k (2 for preference rows: chosen then rejected).
        model_inputs: extra keyword inputs of the model's forward.
        values: (n,) per-sequence values beside the model inputs.
        companions: batches aligned row by row with this one.
        packing: set when the tensors' rows are bins of packed sequences (n is then the sequences packed).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None
    sequences_per_row: int = 1
    model_inputs: dict[str, ModelInput] = field(default_factory=dict)
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    companions: dict[str, Batch] = field(default_factory=dict)
    packing: Packing | None = None

    @property
    def num_sequences(self) -> int:
        return self.input_ids.shape[0] if self.packing is None else self.packing.num_sequences

    @property
    def num_rows(self) -> int:
        return self.num_sequences // self.sequences_per_row

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the model's forward: the tokens and every extra input. A packed batch gives
        its sequences' boundaries instead of the 2D mask, and needs ``use_cache=False`` (``forward`` passes it)."""
        kwargs = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            **{name: model_input.value for name, model_input in self.model_inputs.items()},
        }
        if self.packing is not None:
            kwargs.update(attention_mask=None, **self.packing.attention_kwargs())
        return kwargs

    def trained_tokens(self) -> torch.Tensor:
        """(k,) label tokens that predict a next token (what a causal LM loss sums over), per sequence group."""
        if self.labels is None:
            return torch.zeros(self.sequences_per_row, dtype=torch.long, device=self.input_ids.device)
        trained = self.labels[:, 1:] != IGNORE_INDEX
        per_sequence = trained.sum(-1) if self.packing is None else self.packing.label_sums(trained.long())
        return per_sequence.view(self.sequences_per_row, self.num_rows).sum(-1)

    def non_pad_tokens(self) -> torch.Tensor:
        return self.attention_mask.sum()

    def sequence_indices(self, rows: torch.Tensor) -> torch.Tensor:
        """Indices of every sequence of ``rows``, in this batch's sequence-major order."""
        groups = torch.arange(self.sequences_per_row, device=rows.device).unsqueeze(1) * self.num_rows
        return (groups + rows.unsqueeze(0)).reshape(-1)

    def select_rows(self, rows: torch.Tensor | list[int]) -> Batch:
        """A batch of the given rows (all sequences of each), with their inputs, values and companions."""
        if self.packing is not None:
            raise ValueError("a packed batch holds bins, not rows: select rows before packing them")
        rows = torch.as_tensor(rows, dtype=torch.long)
        sequences = self.sequence_indices(rows)
        on_device = sequences.to(self.input_ids.device)
        return Batch(
            input_ids=self.input_ids[on_device],
            attention_mask=self.attention_mask[on_device],
            labels=None if self.labels is None else self.labels[on_device],
            sequences_per_row=self.sequences_per_row,
            model_inputs={name: model_input.select(sequences) for name, model_input in self.model_inputs.items()},
            values={name: value[sequences.to(value.device)] for name, value in self.values.items()},
            companions={name: companion.select_rows(rows) for name, companion in self.companions.items()},
        )

    def split(self, parts: int) -> list[Batch]:
        """Consecutive row chunks of nearly equal size (micro-batches); fewer when there are fewer rows."""
        chunks = torch.arange(self.num_rows).tensor_split(min(parts, self.num_rows))
        return [self.select_rows(chunk) for chunk in chunks]

    def sequence_group(self, index: int) -> Batch:
        """The ``index``-th sequence of every row as a one-sequence-per-row batch (0: chosen, 1: rejected)."""
        if self.packing is not None:
            raise ValueError("a packed batch holds bins, not rows: take sequence groups before packing them")
        sequences = torch.arange(index * self.num_rows, (index + 1) * self.num_rows)
        on_device = sequences.to(self.input_ids.device)
        return Batch(
            input_ids=self.input_ids[on_device],
            attention_mask=self.attention_mask[on_device],
            labels=None if self.labels is None else self.labels[on_device],
            model_inputs={name: model_input.select(sequences) for name, model_input in self.model_inputs.items()},
            values={name: value[sequences.to(value.device)] for name, value in self.values.items()},
        )

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            labels=None if self.labels is None else self.labels.to(device),
            sequences_per_row=self.sequences_per_row,
            model_inputs={name: model_input.to(device) for name, model_input in self.model_inputs.items()},
            values={name: value.to(device) for name, value in self.values.items()},
            companions={name: companion.to(device) for name, companion in self.companions.items()},
            packing=None if self.packing is None else self.packing.to(device),
        )


def forward(model: Any, batch: Batch, **kwargs: Any) -> Any:
    """Call ``model`` (a module, a DeepSpeed engine, a scorer) with the batch's tokens and extra inputs."""
    if batch.packing is not None:
        from align_core.data.packing import check_packable

        check_packable(model)
        kwargs = {"use_cache": False, **kwargs}  # with a KV cache transformers does not look for packed sequences
    return model(**batch.model_kwargs(), **kwargs)
