"""The PTX term of online RL (Ouyang et al. 2022): next-token cross-entropy on supervised data, added to
the policy loss with weight ``ptx_coef``, so the policy keeps the skills RL could erode.

Each policy update of a step reads one supervised micro-batch per rollout micro-batch. Which one is a
pure function of (seed, rank, update index): the order is the shared ``LengthGroupedSampler``'s, epoch
after epoch, so a resumed run reads the same batches without a saved position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from align_core.data.batch import Batch, forward
from align_core.data.sampler import LengthGroupedSampler
from align_core.losses import sft_loss
from align_core.shards.schema import Kind

if TYPE_CHECKING:
    from align_core.trainers.base import Trainer


class PTXStream:
    """The supervised micro-batches of ``data_cfgs.ptx_datasets``, by update, on the trainer's device."""

    def __init__(self, trainer: Trainer):
        cfgs, dist = trainer.train_cfgs, trainer.dist
        self.trainer = trainer
        self.rows, lengths, self.collate = trainer.load_datasets(
            trainer.config.data_cfgs.ptx_datasets, kinds=(Kind.SUPERVISED,), reader="the PTX term reads"
        )
        self.sampler = LengthGroupedSampler(
            lengths, cfgs.per_device_train_batch_size, seed=cfgs.seed, rank=dist.rank, world_size=dist.world_size,
            group_by_length=cfgs.length_grouping,
        )
        self._epoch_batches: tuple[int, list[list[int]]] | None = None

    def update_batches(self, update: int, count: int) -> tuple[list[Batch], float]:
        """The ``count`` micro-batches of policy update number ``update`` (over the whole run), and their
        label tokens summed over every rank: what the update's PTX loss is a token mean over."""
        batches = [self._batch(update * count + position) for position in range(count)]
        tokens = torch.tensor(sum(float(batch.trained_tokens().sum()) for batch in batches),
                              dtype=torch.float64, device=self.trainer.engine.device)
        torch.distributed.all_reduce(tokens)
        return batches, max(tokens.item(), 1.0)

    def _batch(self, index: int) -> Batch:
        epoch_batches = self._batches_of_epoch(index)
        indices = epoch_batches[index % len(epoch_batches)]
        return self.collate([self.rows[i] for i in indices]).to(self.trainer.engine.device)

    def _batches_of_epoch(self, index: int) -> list[list[int]]:
        per_epoch = -(-len(self.sampler) // self.sampler.batch_size)
        epoch = index // per_epoch
        if self._epoch_batches is None or self._epoch_batches[0] != epoch:
            self.sampler.set_epoch(epoch)
            self._epoch_batches = (epoch, self.sampler.batches())
        return self._epoch_batches[1]


def ptx_loss_share(model, batch: Batch, step_tokens: float) -> torch.Tensor:
    """The micro-batch's share of the update's token-mean cross-entropy (its sum over the update's tokens)."""
    nll_sum, _ = sft_loss(forward(model, batch, use_cache=False).logits, batch.labels)
    return nll_sum / step_tokens
