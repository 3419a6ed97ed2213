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


def safety_cost_loss(
    chosen_costs: torch.Tensor,
    rejected_costs: torch.Tensor,
    chosen_unsafe: torch.Tensor,
    rejected_unsafe: torch.Tensor,
    score_regularization: float = 0.0,
) -> torch.Tensor:
    """Safe RLHF's cost-model loss (Dai et al. 2024, eq. 5) per pair, the pair ordered by safety (chosen =
    the safer response): the more harmful response costs more, and each cost's sign says whether its
    response is unsafe (> 0) or safe (< 0):

        -logsigmoid(c_rejected - c_chosen) - logsigmoid(s_chosen c_chosen) - logsigmoid(s_rejected c_rejected)

    with s = +1 for an unsafe response and -1 for a safe one (+ the optional squared-cost penalty).

    Args:
        chosen_costs, rejected_costs: (b,) end scores of the safer and the more harmful response.
        chosen_unsafe, rejected_unsafe: (b,) bool safety labels of the two responses.
    """
    chosen_sign = chosen_unsafe.to(chosen_costs.dtype) * 2 - 1
    rejected_sign = rejected_unsafe.to(rejected_costs.dtype) * 2 - 1
    losses = pairwise_reward_loss(rejected_costs, chosen_costs, score_regularization)
    return losses - F.logsigmoid(chosen_sign * chosen_costs) - F.logsigmoid(rejected_sign * rejected_costs)
