"""Online RL: KL-shaped rewards, GAE, PPO (and PPO-Lagrangian) losses, GRPO and RLOO advantages.

Token tensors are (b, T) over response positions; ``mask`` (b, T), 0/1 or bool, marks the response
tokens. Rows may be right-padded to different lengths: a masked-out position never changes a result
(inputs are zeroed there with ``torch.where`` first, so even NaN leaks into neither values nor
gradients), and every (b, T) output is 0 there. Advantages and returns are training targets, so they
come back detached.
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import torch

KLKind = Literal["k1", "k2", "k3"]
Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


# ----- masked statistics ---------------------------------------------------------------------------


def _zero_masked(mask: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors with masked-out entries set to 0: a NaN there would otherwise turn 0-gradients into NaN."""
    return tuple(torch.where(mask.bool(), x, 0) for x in tensors)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries ``mask`` marks: () with ``dim=None``, else reduced along ``dim``.

    An empty selection gives NaN (0/0), as a mean of nothing is undefined.
    """
    mask = mask.bool()
    selected = torch.where(mask, x, 0)
    total = selected.sum() if dim is None else selected.sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """() variance of the entries ``mask`` marks; unbiased (n - 1 in the denominator) like TRL's.

    Raises ValueError when fewer than 2 entries (1 when biased) are marked.
    """
    (x,) = _zero_masked(mask, x)
    count = int(mask.bool().sum())
    if count < 1 + int(unbiased):
        raise ValueError(f"masked_var needs at least {1 + int(unbiased)} marked entries, the mask marks {count}")
    centered = x - masked_mean(x, mask)
    variance = masked_mean(centered.square(), mask)
    return variance * count / (count - 1) if unbiased else variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(b, T) ``(x - mean) / sqrt(var + eps)`` over the marked entries (mean, unbiased var of all of them).

    With ``shift_mean=False`` the mean is added back: only the scale changes (TRL's option, used for
    rewards). Masked-out entries are set to 0, so padding never carries a value downstream.
    """
    (x,) = _zero_masked(mask, x)
    mean = masked_mean(x, mask)
    whitened = (x - mean) * torch.rsqrt(masked_var(x, mask) + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, 0)


# ----- token aggregation ---------------------------------------------------------------------------


def aggregate_count(mask: torch.Tensor, mode: Aggregation) -> torch.Tensor:
    """() the denominator of ``aggregate``: response tokens ("token_mean"), else rows with >= 1 token."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation {mode!r} is not one of {AGGREGATIONS}")
    mask = mask.bool()
    return mask.sum() if mode == "token_mean" else mask.any(dim=-1).sum()


def aggregate(
    loss_per_token: torch.Tensor, mask: torch.Tensor, mode: Aggregation, reduce: bool = True
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reduce a (b, T) per-token loss over the response tokens.

    Modes:
        "token_mean": sum over all response tokens of the batch / their number (every token weighs
            the same; long responses weigh more).
        "seq_mean_token_mean": each row's mean over its own tokens, then the mean over rows (every
            response weighs the same; the original GRPO).
        "seq_mean_token_sum": each row's token sum, then the mean over rows (Dr. GRPO, Liu et al. 2025,
            which divides by a constant generation budget instead: the same up to a constant the
            learning rate absorbs). No length normalisation bias.
    Rows without response tokens add nothing and are not counted.

    Args:
        loss_per_token: (b, T); masked-out entries are ignored whatever they hold.
        mask: (b, T) 0/1 or bool, the response tokens.
        mode: one of the three above.
        reduce: False returns the numerator and the denominator apart. A trainer that splits an
            optimizer step into micro-batches and ranks adds up each micro-batch's ``sum / step_count``
            where ``step_count`` is the sum of ``aggregate_count`` over the whole step, so the step's
            loss is the same mean whatever the split (see ``StepTotals`` in ``trainers/base.py``).

    Returns:
        () the mean; or with ``reduce=False`` (sum, count), both ().
    """
    count = aggregate_count(mask, mode)
    mask = mask.bool()
    masked = torch.where(mask, loss_per_token, 0)
    if mode == "seq_mean_token_mean":
        masked = masked / mask.sum(dim=-1, keepdim=True).clamp(min=1)
    total = masked.sum()
    return (total, count) if not reduce else total / count


def _reduce_loss(
    loss_per_token: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation, step_count: float | None
) -> torch.Tensor:
    """The aggregated loss: over this batch's own count, or a share of a step when ``step_count`` is given."""
    total, count = aggregate(loss_per_token, mask, aggregation, reduce=False)
    return total / (count if step_count is None else step_count)


# ----- rewards and advantages ----------------------------------------------------------------------


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, kind: KLKind = "k1") -> torch.Tensor:
    """(b, T) per-token estimates of KL(policy || reference) from tokens sampled by the policy.

    Schulman's estimators ("Approximating KL Divergence", 2020) with ``r = ref / pi``, so
    ``log r = ref_logps - logps``:
        k1 = -log r = logps - ref_logps (unbiased, can be negative),
        k2 = (log r)**2 / 2 (biased, >= 0),
        k3 = (r - 1) - log r (unbiased, >= 0).
    The signs are TRL's and OpenRLHF's (their k1 is ``log_probs - ref_log_probs``): k1 is positive when
    the policy gives its own sample more probability than the reference does. No clamping: masked
    positions are not selected here, so callers mask the result.

    Args:
        logps: (b, T) log-probs of the sampled tokens under the policy.
        ref_logps: (b, T) the same under the frozen reference.
        kind: "k1", "k2" or "k3".
    """
    log_r = ref_logps - logps
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return log_r.square() / 2
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"kl kind {kind!r} is not one of ('k1', 'k2', 'k3')")


def _last_token(mask: torch.Tensor) -> torch.Tensor:
    """(b, T) bool, True at each row's last response token (nowhere in a row without one)."""
    mask = mask.bool()
    length = mask.shape[-1]
    last_index = length - 1 - mask.flip(-1).int().argmax(dim=-1)
    one_hot = torch.arange(length, device=mask.device) == last_index.unsqueeze(-1)
    return one_hot & mask.any(dim=-1, keepdim=True)


def shape_rewards(
    scores: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    clip: tuple[float, float] | None = None,
    kind: KLKind = "k1",
) -> torch.Tensor:
    """(b, T) token rewards of RLHF-PPO (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2).

    Every response token gets ``-kl_coef * KL`` (``kl_penalty`` of ``kind``); each row's last response
    token also gets its sequence score, first clamped to ``clip = (low, high)`` when given (OpenRLHF's
    reward clip range). Masked-out positions are 0.

    Args:
        scores: (b,) sequence scores of the reward model.
        logps, ref_logps: (b, T) log-probs of the sampled tokens under the policy and the reference.
        mask: (b, T) response tokens.
        kl_coef: weight of the KL penalty, >= 0.
    """
    if clip is not None:
        scores = scores.clamp(min=clip[0], max=clip[1])
    mask = mask.bool()
    logps, ref_logps = _zero_masked(mask, logps, ref_logps)
    kl_rewards = torch.where(mask, -kl_coef * kl_penalty(logps, ref_logps, kind), 0)
    return kl_rewards + torch.where(_last_token(mask), scores.unsqueeze(-1).to(kl_rewards.dtype), 0)


@torch.no_grad()
def gae(
    values: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) over each row's response tokens.

    ``delta_t = r_t + gamma * V_{t+1} - V_t``, ``A_t = delta_t + gamma * lam * A_{t+1}``, where t+1 is
    the row's next *response* token (positions the mask leaves out are skipped, not counted as steps)
    and V = A = 0 after the last one: the episode ends there.

    Args:
        values: (b, T) critic values of the rollout (no gradient is taken through them).
        rewards: (b, T) token rewards, e.g. from ``shape_rewards``.
        mask: (b, T) response tokens.
        gamma: discount; lam: GAE's lambda, both in [0, 1].

    Returns:
        advantages: (b, T); returns: (b, T) ``advantages + values``, the critic's targets. 0 where
        masked, detached.
    """
    mask = mask.bool()
    advantages = torch.zeros_like(values)
    next_values = values.new_zeros(values.shape[0])
    next_advantages = values.new_zeros(values.shape[0])
    for t in reversed(range(values.shape[-1])):
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        next_advantages = torch.where(mask[:, t], delta + gamma * lam * next_advantages, next_advantages)
        next_values = torch.where(mask[:, t], values[:, t], next_values)
        advantages[:, t] = torch.where(mask[:, t], next_advantages, 0)
    return advantages, torch.where(mask, advantages + values, 0)


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(groups, group_size) view of (n,) rewards whose groups are contiguous."""
    if group_size < 2 or rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size} (>= 2 each)")
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: Literal["std", "none"] = "std", eps: float = 1e-6
) -> torch.Tensor:
    """(n,) group-relative advantages: GRPO (Shao et al. 2024, section 4.1.2) or Dr. GRPO (Liu et al. 2025).

    ``(r - group mean) / (group std + eps)`` with the unbiased std (``scale="std"``, GRPO), or only
    ``r - group mean`` (``scale="none"``, Dr. GRPO, which drops the std's difficulty bias).

    Args:
        rewards: (n,) one score per completion, n = groups * group_size, each group's rows contiguous.
        group_size: completions per prompt, >= 2.
    """
    grouped = _groups(rewards, group_size)
    centered = grouped - grouped.mean(dim=-1, keepdim=True)
    if scale == "std":
        centered = centered / (grouped.std(dim=-1, keepdim=True) + eps)
    elif scale != "none":
        raise ValueError(f"scale {scale!r} is not one of ('std', 'none')")
    return centered.reshape(-1).detach()


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(n,) REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024): r_i minus the mean of the others.

    Args: as ``group_advantages``.
    """
    grouped = _groups(rewards, group_size)
    others_mean = (grouped.sum(dim=-1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others_mean).reshape(-1).detach()


# ----- PPO losses ----------------------------------------------------------------------------------


def ppo_policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float,
    dual_clip: float | None = None,
    aggregation: Aggregation = "token_mean",
    step_count: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), optionally dual-clipped (Ye et al. 2020).

    Per token, with ``ratio = exp(logps - old_logps)``: ``-min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)``.
    Dual clip c > 1 also caps that loss at ``-c * A`` on tokens with A < 0, so a huge ratio on a bad
    action cannot blow the update up. Clipped tokens get no gradient.

    Args:
        logps: (b, T) log-probs of the rollout's tokens under the policy being trained.
        old_logps: (b, T) the same under the policy that sampled them.
        advantages: (b, T).
        mask: (b, T) response tokens.
        clip_ratio: eps; dual_clip: c > 1, or None.
        aggregation: see ``aggregate``.
        step_count: the step's total of ``aggregate_count`` to return this micro-batch's share of the
            step loss; None divides by this batch's own count.

    Returns:
        loss: (); stats, detached means over the response tokens: "clip_fraction" (share of tokens
        where the ratio clip took effect), "dual_clip_fraction" (where the dual clip did) and
        "approx_kl" (k3 estimate of KL(old || new)).
    """
    if dual_clip is not None and dual_clip <= 1:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    logps, old_logps, advantages = _zero_masked(mask, logps, old_logps, advantages)
    ratio = torch.exp(logps - old_logps)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip_ratio, 1 + clip_ratio)
    loss_per_token = torch.maximum(unclipped, clipped)
    dual_clipped = torch.zeros_like(mask, dtype=torch.bool)
    if dual_clip is not None:
        dual_bound = -dual_clip * advantages
        dual_clipped = (advantages < 0) & (loss_per_token > dual_bound)
        loss_per_token = torch.where(dual_clipped, dual_bound, loss_per_token)
    stats = {
        "clip_fraction": masked_mean((clipped > unclipped).to(logps.dtype), mask).detach(),
        "dual_clip_fraction": masked_mean(dual_clipped.to(logps.dtype), mask).detach(),
        "approx_kl": masked_mean(kl_penalty(old_logps, logps, "k3"), mask).detach(),
    }
    return _reduce_loss(loss_per_token, mask, aggregation, step_count), stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_value: float | None,
    aggregation: Aggregation = "token_mean",
    step_count: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss: ``0.5 * max((V - R)**2, (V_clip - R)**2)`` per token.

    ``V_clip = old_V + clip(V - old_V, -clip_value, clip_value)`` keeps the critic near the values
    the advantages were computed with (PPO2's baselines implementation; Engstrom et al. 2020 discuss
    it). ``clip_value=None`` gives the plain squared error. Clipped tokens get no gradient.

    Args:
        values: (b, T) the critic's current values; old_values: (b, T) its values at rollout.
        returns: (b, T) targets, from ``gae``.
        mask, aggregation, step_count: as ``ppo_policy_loss``.

    Returns:
        loss: (); stats: "clip_fraction", detached mean over response tokens where the clipped error won.
    """
    values, old_values, returns = _zero_masked(mask, values, old_values, returns)
    unclipped = (values - returns).square()
    if clip_value is None:
        clipped = unclipped
    else:
        clipped = (old_values + (values - old_values).clamp(-clip_value, clip_value) - returns).square()
    loss_per_token = 0.5 * torch.maximum(unclipped, clipped)
    stats = {"clip_fraction": masked_mean((clipped > unclipped).to(values.dtype), mask).detach()}
    return _reduce_loss(loss_per_token, mask, aggregation, step_count), stats


# ----- Safe RLHF: PPO-Lagrangian -------------------------------------------------------------------


def lagrangian_update(
    log_lambda: float | torch.Tensor,
    mean_cost: float | torch.Tensor,
    cost_threshold: float,
    lr: float,
    max_lambda: float | None = None,
) -> torch.Tensor:
    """() the next log of Safe RLHF's Lagrange multiplier (Dai et al. 2024, the dual step of PPO-Lag).

    The multiplier is kept as ``log_lambda`` so that ``lambda = exp(log_lambda)`` stays > 0. Safe RLHF
    (and align-anything's PPO-Lag) takes one SGD step of size ``lr`` on ``-(C - d) * exp(log_lambda)``,
    gradient ascent on the dual, which is:
        ``log_lambda + lr * (C - d) * exp(log_lambda)``,
    where C is the mean episode cost of recent rollouts and d the threshold: the multiplier grows
    while the policy is too costly and shrinks towards 0 (never below) once it is safe. With
    ``max_lambda`` the result is capped at ``log(max_lambda)``.

    Args:
        log_lambda: () current log multiplier.
        mean_cost: () mean cost over recent episodes (Safe RLHF averages a window of them, over ranks).
        cost_threshold: d, the cost the policy may spend.
        lr: the multiplier's learning rate.
        max_lambda: optional cap on lambda.
    """
    if not isinstance(log_lambda, torch.Tensor):
        log_lambda = torch.tensor(log_lambda, dtype=torch.float64)
    log_lambda = log_lambda.detach()
    violation = torch.as_tensor(mean_cost, dtype=log_lambda.dtype) - cost_threshold
    updated = log_lambda + lr * violation * log_lambda.exp()
    return updated if max_lambda is None else updated.clamp(max=math.log(max_lambda))


def ppo_lag_advantages(
    reward_advantages: torch.Tensor, cost_advantages: torch.Tensor, lam: float | torch.Tensor
) -> torch.Tensor:
    """(b, T) Safe RLHF's combined advantage ``(A_r - lam * A_c) / (1 + lam)`` (Dai et al. 2024, PPO-Lag).

    Dividing by ``1 + lam`` keeps the advantage's scale, so PPO's clip range means the same at any lam.

    Args:
        reward_advantages, cost_advantages: (b, T) GAE of the reward and of the cost critics.
        lam: the multiplier, ``exp(log_lambda)``, >= 0.
    """
    return (reward_advantages - lam * cost_advantages) / (1 + lam)
