"""Preference-optimisation losses: DPO, cDPO, IPO, SimPO, ORPO and KTO, as in their papers.

All are pure per-example functions over (b,) tensors of sequence log-probabilities (see
``sequence_logps``); they return per-example losses so the trainer chooses the reduction.
Rewards are returned detached: they are metrics, never a path for gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _log_ratio_margin(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """h = (pi_c - ref_c) - (pi_r - ref_r), and the implicit rewards beta * (pi - ref) for each side."""
    chosen_log_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_log_ratio = policy_rejected_logps - ref_rejected_logps
    return (
        chosen_log_ratio - rejected_log_ratio,
        beta * chosen_log_ratio.detach(),
        beta * rejected_log_ratio.detach(),
    )


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct Preference Optimization (Rafailov et al. 2023, eq. 7); conservative DPO when smoothed.

    ``-(1-eps) * logsigmoid(beta*h) - eps * logsigmoid(-beta*h)``: with ``label_smoothing`` eps > 0
    the preference label is taken to be flipped with probability eps (cDPO, Mitchell 2023).

    Args:
        policy_chosen_logps, policy_rejected_logps: (b,) summed log-probs of the responses under the policy.
        ref_chosen_logps, ref_rejected_logps: (b,) the same under the frozen reference model.
        beta: inverse temperature of the implicit reward.
        label_smoothing: eps in [0, 0.5].

    Returns:
        losses: (b,); chosen_rewards, rejected_rewards: (b,) ``beta * (policy - ref)``, detached.
    """
    margin, chosen_rewards, rejected_rewards = _log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * margin) - label_smoothing * F.logsigmoid(-beta * margin)
    return losses, chosen_rewards, rejected_rewards


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity Preference Optimisation (Azar et al. 2023, eq. 17): ``(h - 1/(2*beta))**2``.

    A squared loss regresses the log-ratio margin h to a finite target instead of pushing it to
    infinity, so IPO does not overfit deterministic preferences. The trainer passes length-averaged
    log-probs (the paper's setting); this function does no normalisation of its own.

    Args: as ``dpo_loss`` (beta is the paper's tau).

    Returns:
        losses: (b,); chosen_rewards, rejected_rewards: (b,) ``beta * (policy - ref)``, detached.
    """
    margin, chosen_rewards, rejected_rewards = _log_ratio_margin(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta
    )
    return (margin - 1 / (2 * beta)) ** 2, chosen_rewards, rejected_rewards


def simpo_loss(
    policy_chosen_avg_logps: torch.Tensor,
    policy_rejected_avg_logps: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simple Preference Optimization (Meng et al. 2024, eq. 6): ``-logsigmoid(beta*(c - r) - gamma)``.

    Reference-free: the reward is the length-averaged log-prob, and gamma is a target margin.

    Args:
        policy_chosen_avg_logps, policy_rejected_avg_logps: (b,) log-probs averaged over each
            response's own tokens (not the padded length).
        beta: reward scale; gamma: target reward margin.

    Returns:
        losses: (b,); chosen_rewards, rejected_rewards: (b,) ``beta * avg_logps``, detached.
    """
    losses = -F.logsigmoid(beta * (policy_chosen_avg_logps - policy_rejected_avg_logps) - gamma)
    return losses, beta * policy_chosen_avg_logps.detach(), beta * policy_rejected_avg_logps.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends (Maechler 2012).

    Near 0, ``log(-expm1(x))`` keeps the precision ``log1p(-exp(x))`` loses; far below, the reverse.
    x is capped just below 0 so a log-prob that rounded to 0 gives a large finite value, not -inf.
    """
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_odds_ratio_loss(
    policy_chosen_avg_logps: torch.Tensor, policy_rejected_avg_logps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO's odds-ratio term (Hong et al. 2024, eqs. 4-6): ``-logsigmoid(log_odds)`` per pair.

    ``odds(y) = P(y) / (1 - P(y))`` with ``log P(y)`` the length-averaged log-prob, so
    ``log_odds = (c - r) - (log(1 - e^c) - log(1 - e^r))``.

    Args:
        policy_chosen_avg_logps, policy_rejected_avg_logps: (b,) length-averaged log-probs, <= 0.

    Returns:
        losses: (b,); log_odds: (b,) log odds ratio of chosen over rejected, detached.
    """
    log_odds = (policy_chosen_avg_logps - policy_rejected_avg_logps) - (
        _log1mexp(policy_chosen_avg_logps) - _log1mexp(policy_rejected_avg_logps)
    )
    return -F.logsigmoid(log_odds), log_odds.detach()


def orpo_loss(
    policy_chosen_avg_logps: torch.Tensor,
    policy_rejected_avg_logps: torch.Tensor,
    chosen_nll: torch.Tensor,
    lam: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Odds Ratio Preference Optimization (Hong et al. 2024, eq. 7) per pair: ``chosen_nll + lam * odds-ratio term``.

    The trainer adds the two terms over a step itself (the NLL as a mean over all chosen tokens);
    this per-pair form is the paper's equation, kept for checks against it.

    Args:
        policy_chosen_avg_logps, policy_rejected_avg_logps: (b,) length-averaged log-probs, <= 0.
        chosen_nll: (b,) the SFT loss of the chosen response (mean NLL per token).
        lam: weight of the odds-ratio term (the paper's lambda).

    Returns:
        losses: (b,); log_odds: (b,) log odds ratio of chosen over rejected, detached.
    """
    odds_ratio_losses, log_odds = orpo_odds_ratio_loss(policy_chosen_avg_logps, policy_rejected_avg_logps)
    return chosen_nll + lam * odds_ratio_losses, log_odds


def kto_reference_point(policy_mismatched_logps: torch.Tensor, ref_mismatched_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 (Ethayarajh et al. 2024, eq. 8 and section 4.1).

    A biased estimate of KL(policy || ref) from completions paired with *other* prompts of the batch:
    the mean log-ratio, clamped at 0 (a KL is never negative) and detached (no gradient flows through it).

    Args:
        policy_mismatched_logps, ref_mismatched_logps: (m,) summed log-probs of mismatched pairs.

    Returns:
        kl: () scalar. In data parallel training, average the mean over ranks before clamping.
    """
    return (policy_mismatched_logps - ref_mismatched_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """Kahneman-Tversky Optimization (Ethayarajh et al. 2024, eq. 8), on unpaired examples.

    With ``r = policy - ref``: a desirable example costs ``w_d * (1 - sigmoid(beta * (r - kl)))``,
    an undesirable one ``w_u * (1 - sigmoid(beta * (kl - r)))``; both terms are added (not
    subtracted) to the batch loss.

    Args:
        policy_logps, ref_logps: (b,) summed log-probs of each completion.
        desirable: (b,) bool, True for a desirable completion.
        kl: () or (b,) the detached reference point from ``kto_reference_point``.
        beta, desirable_weight, undesirable_weight: the paper's beta, lambda_D, lambda_U.

    Returns:
        losses: (b,).
    """
    log_ratio = policy_logps - ref_logps
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - kl)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - log_ratio)))
    return torch.where(desirable.bool(), desirable_losses, undesirable_losses)
