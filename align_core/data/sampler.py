"""Length-grouped sampling to cut padding, deterministic per (seed, epoch) and distributed-aware.

``LengthGroupedSampler(lengths, batch_size, seed=, rank=, world_size=)`` yields this rank's row
indices; every ``batch_size`` consecutive ones form one batch (use it as a DataLoader ``sampler``
with that ``batch_size``). Rows are shuffled, cut into mega-batches of ``megabatch_multiplier``
global batches, sorted by length inside each (the usual trick: HF Trainer, Megatron), split into
global batches of ``batch_size * world_size`` rows whose order is shuffled again. All ranks see
the same global batch at a step, each a strided share of it, so no rank waits on a longer one.

Every rank gets the same number of indices (rows are repeated to fill, like DistributedSampler,
unless ``drop_last``), which keeps collective ops in lockstep. ``group_by_length=False`` gives a
plain shuffled distributed order with the same (seed, epoch, rank) semantics.

``pad_fraction(lengths, batches)`` is the share of padded positions those batches would have.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from align_core.data.collate import padded_length


class LengthGroupedSampler(Sampler[int]):
    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        group_by_length: bool = True,
        megabatch_multiplier: int = 50,
        drop_last: bool = False,
    ):
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
        if len(lengths) == 0:
            raise ValueError("no rows to sample")
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.group_by_length = group_by_length
        self.megabatch_multiplier = megabatch_multiplier
        self.drop_last = drop_last
        self.epoch = 0
        rows = len(self.lengths)
        self.total = (rows // world_size if drop_last else -(-rows // world_size)) * world_size
        if self.total == 0:
            raise ValueError(f"{rows} rows cannot be split over {world_size} ranks with drop_last")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total // self.world_size

    def global_order(self) -> np.ndarray:
        """All ranks' indices for this epoch, as consecutive global batches (the same on every rank)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator).numpy()
        order = np.resize(order, self.total)  # repeats from the start to fill, or cuts for drop_last
        if not self.group_by_length:
            return order
        global_batch = self.batch_size * self.world_size
        megabatch = global_batch * self.megabatch_multiplier
        sorted_chunks = [
            chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            for chunk in np.split(order, range(megabatch, len(order), megabatch))
        ]
        batches = np.split(np.concatenate(sorted_chunks), range(global_batch, len(order), global_batch))
        # A short last batch stays last: mid-epoch it would shift every later batch's boundaries.
        full = len(batches) if len(batches[-1]) == global_batch else len(batches) - 1
        shuffled = torch.randperm(full, generator=generator).tolist() + list(range(full, len(batches)))
        return np.concatenate([batches[index] for index in shuffled])

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        global_batch = self.batch_size * self.world_size
        for start in range(0, len(order), global_batch):
            yield from order[start : start + global_batch][self.rank :: self.world_size].tolist()

    def batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch."""
        indices = list(self)
        return [indices[start : start + self.batch_size] for start in range(0, len(indices), self.batch_size)]


def pad_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]], pad_to_multiple_of: int | None = None) -> float:
    """Padded positions / all positions when each batch is padded to its longest row."""
    lengths = np.asarray(lengths)
    real = padded_total = 0
    for batch in batches:
        batch_lengths = lengths[list(batch)]
        real += int(batch_lengths.sum())
        padded_total += len(batch_lengths) * padded_length(int(batch_lengths.max()), pad_to_multiple_of)
    return 1.0 - real / padded_total if padded_total else 0.0
