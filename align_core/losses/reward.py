"""Reward-model loss: the Bradley-Terry pairwise objective (Ouyang et al. 2022, InstructGPT, eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_reward_loss(
    chosen_scores: torch.Tensor, rejected_scores: torch.Tensor, score_regularization: float = 0.0
) -> torch.Tensor:
    """``-logsigmoid(r_chosen - r_rejected) + reg * (r_chosen**2 + r_rejected**2) / 2`` per pair.

    The optional L2 term keeps scores near 0, so a reward model's scale stays comparable across
    runs (align-anything's ``regularization``).

    Args:
        chosen_scores: (b,) end score of each chosen response.
        rejected_scores: (b,) end score of the paired rejected response.
        score_regularization: weight of the squared-score penalty, >= 0.

    Returns:
        losses: (b,) per pair.
    """
    losses = -F.logsigmoid(chosen_scores - rejected_scores)
    if score_regularization:
        losses = losses + score_regularization * (chosen_scores.square() + rejected_scores.square()) / 2
    return losses
