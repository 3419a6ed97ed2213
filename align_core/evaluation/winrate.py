"""Pairwise win rates of a model against a baseline on the same prompts, from a reward model's scores.

``win_rates``: the shares of prompts where the model's completion scores higher (win), lower (loss) or
within ``tie_margin`` (tie). ``length_controlled_win_rate``: reward models reward length, so, as
AlpacaEval 2 does (Dubois et al. 2024), a logistic regression of the outcome on the length difference,
``P(win) = sigmoid(a + b * tanh(d / s))`` with ``d`` the model's minus the baseline's completion length
and ``s`` the std of ``d``, is fitted by Newton's method; the length-controlled win rate is its
prediction at equal lengths, ``sigmoid(a)``. Ties count as half a win in the fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def outcomes(model_scores: Sequence[float], baseline_scores: Sequence[float], tie_margin: float = 0.0) -> torch.Tensor:
    """(n,) 1 where the model wins, 0 where it loses, 0.5 for a tie (scores within ``tie_margin``)."""
    difference = torch.as_tensor(model_scores, dtype=torch.float64) - torch.as_tensor(baseline_scores, dtype=torch.float64)
    result = (difference > 0).double()
    result[difference.abs() <= tie_margin] = 0.5
    return result


def win_rates(results: torch.Tensor) -> dict[str, float]:
    """``win_rate``, ``tie_rate``, ``loss_rate`` (shares of prompts) and ``win_rate_with_ties`` (ties as half)."""
    n = max(len(results), 1)
    wins, ties = float((results == 1).sum()), float((results == 0.5).sum())
    return {"win_rate": wins / n, "tie_rate": ties / n, "loss_rate": (len(results) - wins - ties) / n,
            "win_rate_with_ties": (wins + ties / 2) / n}


def length_controlled_win_rate(results: torch.Tensor, length_differences: Sequence[float], steps: int = 50,
                               ridge: float = 1e-4) -> float:
    """``sigmoid(a)`` of the logistic fit ``P(win) = sigmoid(a + b * tanh(d / std(d)))`` (Newton's method, a
    small ridge on b keeps it finite when the outcome is separable by length); with no length spread the
    fit has no length term and this is the plain win rate with ties as half."""
    y = results.double()
    d = torch.as_tensor(length_differences, dtype=torch.float64)
    spread = d.std(unbiased=False) if len(d) > 1 else torch.tensor(0.0, dtype=torch.float64)
    if spread == 0:
        return float(y.mean()) if len(y) else 0.0
    x = torch.stack([torch.ones_like(d), torch.tanh(d / spread)], dim=1)  # (n, 2)
    theta = torch.zeros(2, dtype=torch.float64)
    penalty = torch.diag(torch.tensor([ridge, ridge], dtype=torch.float64))
    for _ in range(steps):
        p = torch.sigmoid(x @ theta)
        gradient = x.T @ (y - p) - penalty @ theta
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + penalty
        update = torch.linalg.solve(hessian, gradient)
        theta = theta + update
        if float(update.abs().max()) < 1e-10:
            break
    return 1.0 / (1.0 + math.exp(-float(theta[0])))
