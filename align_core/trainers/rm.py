"""Reward model: a score head trained on preference pairs with the pairwise (Bradley-Terry) loss.

Each step scores the 2b chosen and rejected sequences in one forward pass and reads each one's score at its
last token; with ``train_cfgs.packing`` the 2b sequences are packed padding-free and read back per sequence.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from pydantic import Field

from align_core.data.batch import Batch, forward
from align_core.losses import pairwise_reward_loss
from align_core.shards.schema import Kind
from align_core.trainers.base import Metrics, StepTotals, Trainer
from align_core.trainers.throughput import PackingSettings

if TYPE_CHECKING:
    from align_core.models.score import ScoreModelOutput


def end_scores(output: ScoreModelOutput, batch: Batch) -> torch.Tensor:
    """(n,) each sequence's score at its last token: the model's own ``end_scores`` of a padded batch, or,
    of a packed one (a row of scores per bin), the scores at the positions ``Batch.packing`` finds."""
    if batch.packing is None:
        return output.end_scores
    return output.scores.reshape(-1)[batch.packing.last_positions()]


class RMSettings(PackingSettings):
    score_regularization: float = Field(
        0.0, ge=0, description="weight of the penalty reg * (r_chosen^2 + r_rejected^2) / 2 that keeps scores near 0"
    )


class RMTrainer(Trainer):
    algorithm = "rm"
    dataset_kinds = (Kind.PREFERENCE,)
    settings = RMSettings

    def load_model(self, path: str) -> torch.nn.Module:
        from align_core.models.registry import load_score_model

        return load_score_model(path, **self.load_options())

    def _pair_scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(b,) end scores of the chosen and the rejected responses, from one forward over the 2b stacked rows."""
        chosen_scores, rejected_scores = end_scores(forward(self.engine, batch), batch).float().chunk(2)
        return chosen_scores, rejected_scores

    def compute_loss(self, batch: Batch, totals: StepTotals) -> tuple[torch.Tensor, Metrics]:
        chosen_scores, rejected_scores = self._pair_scores(batch)
        losses = pairwise_reward_loss(chosen_scores, rejected_scores, self.train_cfgs.score_regularization)
        pairs = totals.rows
        return losses.sum() / pairs, {
            "accuracy": (chosen_scores > rejected_scores).float().sum() / pairs,
            "rewards/chosen": chosen_scores.sum() / pairs,
            "rewards/rejected": rejected_scores.sum() / pairs,
            "rewards/margin": (chosen_scores - rejected_scores).sum() / pairs,
        }

    def eval_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        chosen_scores, rejected_scores = self._pair_scores(batch)
        losses = pairwise_reward_loss(chosen_scores, rejected_scores, self.train_cfgs.score_regularization)
        return {"loss": losses, "chosen": chosen_scores, "rejected": rejected_scores}

    def summarize_eval(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        chosen, rejected = values["chosen"], values["rejected"]
        rewards = torch.cat([chosen, rejected])
        return {
            "loss": values["loss"].mean().item(),
            "accuracy": (chosen > rejected).float().mean().item(),
            "reward_mean": rewards.mean().item(),
            "reward_std": rewards.std(unbiased=False).item(),
            "rewards/margin": (chosen - rejected).mean().item(),
        }
