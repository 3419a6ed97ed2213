"""Which rows each rank reads, in which micro-batches: a pure function of (seed, epoch, rank, world).

Because the order is recomputed, not iterated, a resumed run skips to its data position by slicing
a list of row indices, without reading a single skipped row.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import DistributedSampler


class _Sized:
    """DistributedSampler needs only ``len(dataset)``."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size


def _chunk(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[start : start + batch_size]) for start in range(0, len(indices), batch_size)]


class BatchPlan:
    """Micro-batches of row indices for one rank.

    Every rank gets the same number of batches per epoch (the sampler pads by repeating rows), which
    keeps collective ops in lockstep. With ``lengths`` given, rows of similar length share a batch
    (shuffled within and across groups, so order still changes each epoch).
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        seed: int,
        rank: int,
        world_size: int,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
    ):
        if num_rows == 0:
            raise ValueError("no rows to batch")
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.lengths = lengths
        self._sampler = DistributedSampler(
            _Sized(num_rows), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=False
        )

    def __len__(self) -> int:
        """Micro-batches per epoch on each rank."""
        return -(-len(self._sampler) // self.batch_size)

    def epoch(self, epoch: int) -> list[list[int]]:
        self._sampler.set_epoch(epoch)
        indices = list(self._sampler)
        if self.lengths is None:
            return _chunk(indices, self.batch_size)
        return self._length_grouped(indices, epoch)

    def _length_grouped(self, indices: list[int], epoch: int) -> list[list[int]]:
        # Sort this rank's rows by length inside windows of 50 batches (the usual mega-batch trick),
        # then shuffle the batches: padding drops while neighbouring steps still see mixed lengths.
        window = 50 * self.batch_size
        batches = []
        for start in range(0, len(indices), window):
            block = sorted(indices[start : start + window], key=lambda row: self.lengths[row], reverse=True)
            batches += _chunk(block, self.batch_size)
        generator = torch.Generator().manual_seed(self.seed + 7919 * epoch + self.rank)
        return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
