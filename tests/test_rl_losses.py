"""Online-RL losses and advantages against values worked out by hand (float64, to 1e-6), plus invariants.

The shared batch has two right-padded rows: row 0 has 3 response tokens, row 1 has 2 (PAD marks the
padded position, whose value must never matter).
"""

from __future__ import annotations

import math

import pytest
import torch

from align_core.losses import (
    aggregate,
    aggregate_count,
    gae,
    group_advantages,
    kl_penalty,
    lagrangian_update,
    masked_mean,
    masked_var,
    masked_whiten,
    ppo_lag_advantages,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    shape_rewards,
)

PAD = 0.0  # filler in the padded slot; padding tests swap in NaN and huge values
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=0)


def pad(x, value=float("nan")):
    """Append two padded positions holding ``value`` (garbage) to a (b, T) tensor."""
    return torch.cat([x, torch.full((x.shape[0], 2), value, dtype=x.dtype)], dim=-1)


def pad_mask(mask):
    return torch.cat([mask, torch.zeros(mask.shape[0], 2, dtype=mask.dtype)], dim=-1)


# ----- KL estimators -------------------------------------------------------------------------------


def test_kl_estimators_match_hand_values():
    logps, ref_logps = t([-1.0, -2.0]), t([-1.5, -1.0])
    # log r = ref - pi = [-0.5, 1.0]
    close(kl_penalty(logps, ref_logps, "k1"), [[0.5, -1.0]])  # -log r
    close(kl_penalty(logps, ref_logps, "k2"), [[0.125, 0.5]])  # (log r)^2 / 2
    # (r - 1) - log r: (e^-0.5 - 1) + 0.5 and (e - 1) - 1
    close(kl_penalty(logps, ref_logps, "k3"), [[0.10653065971263342, 0.7182818284590451]])


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_unbiased_kl_estimators_average_to_kl_policy_to_reference(kind):
    # Exact expectation over a 3-token vocabulary sampled from the policy: E_pi[k] = KL(pi || ref).
    policy, ref = t(0.7, 0.2, 0.1), t(0.4, 0.4, 0.2)
    estimates = kl_penalty(policy.log().unsqueeze(0), ref.log().unsqueeze(0), kind)[0]
    close((policy * estimates).sum(), (policy * (policy / ref).log()).sum())


def test_unknown_kl_kind_is_refused():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(t([0.0]), t([0.0]), "k4")


# ----- reward shaping ------------------------------------------------------------------------------

SCORES = torch.tensor([2.0, -1.0], dtype=torch.float64)
SHAPE_LOGPS = t([-1.0, -1.0, -1.0], [-2.0, -1.0, PAD])
SHAPE_REF_LOGPS = t([-1.5, -1.0, -0.5], [-1.0, -1.0, PAD])


def test_shaped_rewards_penalise_kl_per_token_and_add_score_at_last_token():
    rewards = shape_rewards(SCORES, SHAPE_LOGPS, SHAPE_REF_LOGPS, MASK, kl_coef=0.1)
    # k1 = pi - ref: row 0 [0.5, 0, -0.5], row 1 [-1, 0]; reward = -0.1 * k1, + score at the last token
    close(rewards, [[-0.05, 0.0, 0.05 + 2.0], [0.1, 0.0 - 1.0, 0.0]])


def test_shaped_rewards_clip_the_score_not_the_kl_term():
    rewards = shape_rewards(SCORES, SHAPE_LOGPS, SHAPE_REF_LOGPS, MASK, kl_coef=0.1, clip=(-0.5, 1.5))
    # scores clamp to [1.5, -0.5]
    close(rewards, [[-0.05, 0.0, 0.05 + 1.5], [0.1, -0.5, 0.0]])


def test_shaped_rewards_use_the_chosen_kl_estimator():
    rewards = shape_rewards(SCORES, SHAPE_LOGPS, SHAPE_REF_LOGPS, MASK, kl_coef=1.0, kind="k2")
    # k2 = (ref - pi)^2 / 2: row 0 [0.125, 0, 0.125], row 1 [0.5, 0]
    close(rewards, [[-0.125, 0.0, -0.125 + 2.0], [-0.5, -1.0, 0.0]])


def test_a_row_without_response_tokens_gets_no_reward():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    rewards = shape_rewards(SCORES, SHAPE_LOGPS, SHAPE_REF_LOGPS, mask, kl_coef=0.1)
    close(rewards[1], [0.0, 0.0, 0.0])


# ----- GAE -----------------------------------------------------------------------------------------

VALUES = t([1.0, 2.0, 3.0], [0.5, -1.0, PAD])
REWARDS = t([0.0, 0.0, 1.0], [0.5, 2.0, PAD])


def test_gae_matches_hand_recursion():
    advantages, returns = gae(VALUES, REWARDS, MASK, gamma=0.9, lam=0.8)
    # gamma * lam = 0.72; V = 0 after each row's last response token.
    # Row 0: t2: delta = 1 + 0 - 3 = -2,           A2 = -2
    #        t1: delta = 0 + 0.9*3 - 2 = 0.7,      A1 = 0.7 + 0.72*(-2) = -0.74
    #        t0: delta = 0 + 0.9*2 - 1 = 0.8,      A0 = 0.8 + 0.72*(-0.74) = 0.2672
    # Row 1: t1: delta = 2 + 0 - (-1) = 3,         A1 = 3
    #        t0: delta = 0.5 + 0.9*(-1) - 0.5 = -0.9, A0 = -0.9 + 0.72*3 = 1.26
    close(advantages, [[0.2672, -0.74, -2.0], [1.26, 3.0, 0.0]])
    close(returns, [[1.2672, 1.26, 1.0], [1.76, 2.0, 0.0]])  # A + V, 0 on padding


def test_gae_with_lambda_one_returns_discounted_reward_to_go():
    _, returns = gae(VALUES, REWARDS, MASK, gamma=0.9, lam=1.0)
    # Row 0: [0.81 * 1, 0.9 * 1, 1]; row 1: [0.5 + 0.9 * 2, 2]
    close(returns, [[0.81, 0.9, 1.0], [2.3, 2.0, 0.0]])


def test_gae_skips_positions_the_mask_leaves_out_inside_a_row():
    holed, _ = gae(t([1.0, 99.0, 3.0]), t([0.0, 99.0, 1.0]), torch.tensor([[1, 0, 1]]), gamma=0.9, lam=0.8)
    compact, _ = gae(t([1.0, 3.0]), t([0.0, 1.0]), torch.tensor([[1, 1]]), gamma=0.9, lam=0.8)
    close(holed[:, [0, 2]], compact)
    close(holed[:, 1], [0.0])


def test_gae_targets_carry_no_gradient():
    values = VALUES.clone().requires_grad_()
    advantages, returns = gae(values, REWARDS, MASK, gamma=0.9, lam=0.8)
    assert not advantages.requires_grad and not returns.requires_grad


# ----- masked statistics ---------------------------------------------------------------------------

X = t([1.0, 2.0, 3.0], [4.0, 5.0, PAD])


def test_masked_mean_over_all_and_along_dims():
    close(masked_mean(X, MASK), 3.0)  # (1+2+3+4+5) / 5
    close(masked_mean(X, MASK, dim=-1), [2.0, 4.5])
    close(masked_mean(X, MASK, dim=0), [2.5, 3.5, 3.0])


def test_masked_var_is_unbiased_by_default():
    # squared deviations from 3: 4 + 1 + 0 + 1 + 4 = 10
    close(masked_var(X, MASK), 10 / 4)
    close(masked_var(X, MASK, unbiased=False), 10 / 5)


def test_masked_var_refuses_a_single_token():
    with pytest.raises(ValueError, match="marks 1"):
        masked_var(X, torch.tensor([[1, 0, 0], [0, 0, 0]]))


def test_masked_whiten_zeroes_padding_and_can_keep_the_mean():
    # (x - 3) / sqrt(2.5) with 1/sqrt(2.5) = 0.6324555320336759
    step = 0.6324555320336759
    close(masked_whiten(X, MASK), [[-2 * step, -step, 0.0], [step, 2 * step, 0.0]])
    close(masked_whiten(X, MASK, shift_mean=False), [[3 - 2 * step, 3 - step, 3.0], [3 + step, 3 + 2 * step, 0.0]])


# ----- aggregation ---------------------------------------------------------------------------------

LOSS = t([1.0, 2.0, 3.0], [4.0, 6.0, PAD])


@pytest.mark.parametrize(
    ("mode", "total", "count"),
    [
        ("token_mean", 16.0, 5),  # 1+2+3+4+6 over 5 tokens = 3.2
        ("seq_mean_token_mean", 7.0, 2),  # row means 2 and 5, over 2 rows = 3.5
        ("seq_mean_token_sum", 16.0, 2),  # row sums 6 and 10, over 2 rows = 8
    ],
)
def test_aggregate_means_and_their_sum_count_parts(mode, total, count):
    close(aggregate(LOSS, MASK, mode), total / count)
    numerator, denominator = aggregate(LOSS, MASK, mode, reduce=False)
    close(numerator, total)
    assert denominator.item() == count == aggregate_count(MASK, mode).item()


def test_aggregate_neither_adds_nor_counts_rows_without_tokens():
    mask = torch.tensor([[1, 1, 1], [0, 0, 0]])
    for mode in ("seq_mean_token_mean", "seq_mean_token_sum"):
        assert aggregate(LOSS, mask, mode, reduce=False)[1].item() == 1
    close(aggregate(LOSS, mask, "seq_mean_token_mean"), 2.0)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batch_shares_over_the_step_count_add_up_to_the_whole_batch_loss(mode):
    losses = t([1.0, 2.0, 3.0], [4.0, 6.0, PAD], [7.0, PAD, PAD], [0.5, 1.5, 2.5])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]])
    halves = [(losses[:1], mask[:1]), (losses[1:], mask[1:])]
    step_count = sum(aggregate_count(m, mode) for _, m in halves)
    shares = sum(aggregate(x, m, mode, reduce=False)[0] / step_count for x, m in halves)
    close(shares, aggregate(losses, mask, mode))


def test_unknown_aggregation_is_refused():
    with pytest.raises(ValueError, match="seq_sum"):
        aggregate(LOSS, MASK, "seq_sum")


# ----- PPO policy loss -----------------------------------------------------------------------------

OLD_LOGPS = t([0.0, 0.0, 0.0], [0.0, 0.0, PAD])
# ratios row 0 [1.5, 0.9, 0.5], row 1 [3.0, 1.1]
LOGPS = t([math.log(1.5), math.log(0.9), math.log(0.5)], [math.log(3.0), math.log(1.1), PAD])
ADVANTAGES = t([1.0, -2.0, -1.0], [-1.0, 0.5, PAD])
# Per token -min(ratio*A, clip(ratio, 0.8, 1.2)*A):
#   row 0: ratio 1.5, A=1  -> max(-1.5, -1.2) = -1.2  (clipped)
#          ratio 0.9, A=-2 -> max(1.8, 1.8)   = 1.8
#          ratio 0.5, A=-1 -> max(0.5, 0.8)   = 0.8   (clipped)
#   row 1: ratio 3.0, A=-1 -> max(3.0, 1.2)   = 3.0   (a dual clip of 2 caps it at -2*A = 2.0)
#          ratio 1.1, A=.5 -> max(-0.55, -0.55) = -0.55


def test_ppo_policy_loss_matches_hand_values():
    loss, stats = ppo_policy_loss(LOGPS, OLD_LOGPS, ADVANTAGES, MASK, clip_ratio=0.2)
    close(loss, (-1.2 + 1.8 + 0.8 + 3.0 - 0.55) / 5)
    close(stats["clip_fraction"], 2 / 5)
    close(stats["dual_clip_fraction"], 0.0)
    # k3 of KL(old || new) per token, (ratio - 1) - log ratio, averaged over the 5 tokens
    close(stats["approx_kl"], 0.23982402392743452)


def test_ppo_policy_loss_per_sequence_aggregation():
    loss, _ = ppo_policy_loss(LOGPS, OLD_LOGPS, ADVANTAGES, MASK, clip_ratio=0.2, aggregation="seq_mean_token_mean")
    close(loss, ((-1.2 + 1.8 + 0.8) / 3 + (3.0 - 0.55) / 2) / 2)
    loss, _ = ppo_policy_loss(LOGPS, OLD_LOGPS, ADVANTAGES, MASK, clip_ratio=0.2, aggregation="seq_mean_token_sum")
    close(loss, ((-1.2 + 1.8 + 0.8) + (3.0 - 0.55)) / 2)


def test_ppo_policy_loss_share_divides_by_the_step_count():
    loss, _ = ppo_policy_loss(LOGPS, OLD_LOGPS, ADVANTAGES, MASK, clip_ratio=0.2, step_count=10)
    close(loss, (-1.2 + 1.8 + 0.8 + 3.0 - 0.55) / 10)


def test_dual_clip_caps_the_loss_of_negative_advantages_only():
    loss, stats = ppo_policy_loss(LOGPS, OLD_LOGPS, ADVANTAGES, MASK, clip_ratio=0.2, dual_clip=2.0)
    close(loss, (-1.2 + 1.8 + 0.8 + 2.0 - 0.55) / 5)
    close(stats["dual_clip_fraction"], 1 / 5)
    # A positive advantage with a huge ratio is already bounded by the ordinary clip: no dual clip.
    _, stats = ppo_policy_loss(t([math.log(10.0)]), t([0.0]), t([1.0]), torch.tensor([[1]]), 0.2, dual_clip=2.0)
    close(stats["dual_clip_fraction"], 0.0)


def test_dual_clip_must_exceed_one():
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_policy_loss(LOGPS, OLD_LOGPS, ADVANTAGES, MASK, clip_ratio=0.2, dual_clip=1.0)


def test_ppo_policy_gradient_is_zero_exactly_where_clipped():
    logps = LOGPS.clone().requires_grad_()
    loss, _ = ppo_policy_loss(logps, OLD_LOGPS, ADVANTAGES, MASK, clip_ratio=0.2, dual_clip=2.0)
    loss.backward()
    # clipped: row 0 tokens 0 and 2, row 1 token 0 (dual clip); padding never gets gradient.
    # Elsewhere d(-ratio*A)/d logps / 5 = -ratio*A/5: row 0 token 1 -0.9*-2/5, row 1 token 1 -1.1*0.5/5
    close(logps.grad, [[0.0, 0.36, 0.0], [0.0, -0.11, 0.0]])


# ----- PPO value loss ------------------------------------------------------------------------------

NEW_VALUES = t([1.0, 2.0, 0.0], [3.0, -1.0, PAD])
OLD_VALUES = t([0.0, 1.8, 1.0], [2.0, -1.0, PAD])
RETURNS = t([1.2, 1.0, 0.0], [2.0, 1.0, PAD])
# V_clip = old + clip(V - old, -0.5, 0.5); per token 0.5 * max((V - R)^2, (V_clip - R)^2):
#   row 0: V_clip 0.5 -> 0.5 * max(0.04, 0.49) = 0.245  (clipped)
#          V_clip 2.0 -> 0.5 * max(1, 1)       = 0.5
#          V_clip 0.5 -> 0.5 * max(0, 0.25)    = 0.125  (clipped)
#   row 1: V_clip 2.5 -> 0.5 * max(1, 0.25)    = 0.5    (moved past the range, but the plain error is larger)
#          V_clip -1  -> 0.5 * max(4, 4)       = 2.0


def test_ppo_value_loss_matches_hand_values():
    loss, stats = ppo_value_loss(NEW_VALUES, OLD_VALUES, RETURNS, MASK, clip_value=0.5)
    close(loss, (0.245 + 0.5 + 0.125 + 0.5 + 2.0) / 5)
    close(stats["clip_fraction"], 2 / 5)


def test_ppo_value_loss_without_clip_is_half_squared_error():
    loss, stats = ppo_value_loss(NEW_VALUES, OLD_VALUES, RETURNS, MASK, clip_value=None)
    close(loss, 0.5 * (0.04 + 1.0 + 0.0 + 1.0 + 4.0) / 5)
    close(stats["clip_fraction"], 0.0)


def test_ppo_value_gradient_is_zero_exactly_where_clipped():
    values = NEW_VALUES.clone().requires_grad_()
    loss, _ = ppo_value_loss(values, OLD_VALUES, RETURNS, MASK, clip_value=0.5)
    loss.backward()
    # unclipped tokens: d 0.5 (V - R)^2 / dV / 5 = (V - R) / 5
    close(values.grad, [[0.0, 1.0 / 5, 0.0], [1.0 / 5, -2.0 / 5, 0.0]])


# ----- padding invariance --------------------------------------------------------------------------


def _tensors(outputs):
    """A function's result (tensor, tuple, list or dict of them, nested) as a flat list of tensors."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = outputs.values()
    return [tensor for output in outputs for tensor in _tensors(output)]


@pytest.mark.parametrize(
    "compute",
    [
        lambda p, m: shape_rewards(SCORES, p(SHAPE_LOGPS), p(SHAPE_REF_LOGPS), m, 0.1, clip=(-0.5, 1.5), kind="k3"),
        lambda p, m: gae(p(VALUES), p(REWARDS), m, gamma=0.9, lam=0.8),
        lambda p, m: (masked_mean(p(X), m), masked_mean(p(X), m, dim=-1), masked_var(p(X), m)),
        lambda p, m: masked_whiten(p(X), m),
        lambda p, m: [
            aggregate(p(LOSS), m, mode) for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")
        ],
        lambda p, m: ppo_policy_loss(p(LOGPS), p(OLD_LOGPS), p(ADVANTAGES), m, 0.2, dual_clip=2.0),
        lambda p, m: ppo_value_loss(p(NEW_VALUES), p(OLD_VALUES), p(RETURNS), m, 0.5),
    ],
    ids=["shape_rewards", "gae", "masked_mean_var", "masked_whiten", "aggregate", "policy_loss", "value_loss"],
)
@pytest.mark.parametrize("garbage", [float("nan"), 1e6])
def test_appending_padded_positions_with_garbage_changes_nothing(compute, garbage):
    unpadded = _tensors(compute(lambda x: x, MASK))
    padded = _tensors(compute(lambda x: pad(x, garbage), pad_mask(MASK)))
    assert len(padded) == len(unpadded)
    for padded_result, result in zip(padded, unpadded):
        if result.dim() == 2:  # (b, T): the appended positions read 0, the rest as before
            close(padded_result[:, 3:], torch.zeros(2, 2))
            padded_result = padded_result[:, :3]
        close(padded_result, result)


@pytest.mark.parametrize(
    ("loss_of", "inputs"),
    [
        (lambda x, m: ppo_policy_loss(x, pad(OLD_LOGPS), pad(ADVANTAGES), m, 0.2, dual_clip=2.0)[0], LOGPS),
        (lambda x, m: ppo_value_loss(x, pad(OLD_VALUES), pad(RETURNS), m, 0.5)[0], NEW_VALUES),
        (lambda x, m: masked_whiten(x, m).square().sum(), X),
        (lambda x, m: shape_rewards(SCORES, x, pad(SHAPE_REF_LOGPS), m, 0.1, kind="k3").sum(), SHAPE_LOGPS),
    ],
)
def test_padding_holding_nan_gets_zero_gradient_and_leaves_the_rest_finite(loss_of, inputs):
    padded = pad(inputs).requires_grad_()
    loss_of(padded, pad_mask(MASK)).backward()
    assert torch.isfinite(padded.grad).all()
    close(padded.grad[:, 3:], torch.zeros(2, 2))
    close(padded.grad[1, 2], 0.0)


# ----- group advantages ----------------------------------------------------------------------------

GROUP_REWARDS = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 3.0], dtype=torch.float64)


def test_grpo_advantages_standardise_within_each_group():
    # group [1, 2, 3]: mean 2, unbiased std 1; group [0, 0, 3]: mean 1, std sqrt((1 + 1 + 4) / 2) = sqrt(3)
    eps = 1e-6
    root3 = math.sqrt(3)
    expected = [-1 / (1 + eps), 0.0, 1 / (1 + eps), -1 / (root3 + eps), -1 / (root3 + eps), 2 / (root3 + eps)]
    close(group_advantages(GROUP_REWARDS, group_size=3), expected)


def test_dr_grpo_advantages_only_centre():
    close(group_advantages(GROUP_REWARDS, group_size=3, scale="none"), [-1.0, 0.0, 1.0, -1.0, -1.0, 2.0])


def test_a_group_of_equal_rewards_has_zero_advantage():
    close(group_advantages(torch.full((4,), 0.7, dtype=torch.float64), group_size=4), torch.zeros(4))


def test_rloo_subtracts_the_mean_of_the_other_members():
    # [1, 2, 3]: 1 - 2.5, 2 - 2, 3 - 1.5; [0, 0, 3]: 0 - 1.5, 0 - 1.5, 3 - 0
    close(rloo_advantages(GROUP_REWARDS, group_size=3), [-1.5, 0.0, 1.5, -1.5, -1.5, 3.0])


@pytest.mark.parametrize(
    "advantages_of",
    [
        lambda r: group_advantages(r, 4),
        lambda r: group_advantages(r, 4, scale="none"),
        lambda r: rloo_advantages(r, 4),
    ],
)
def test_group_advantages_sum_to_zero_per_group(advantages_of):
    rewards = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    close(advantages_of(rewards).view(3, 4).sum(dim=-1), torch.zeros(3))


def test_rewards_that_do_not_split_into_groups_are_refused():
    with pytest.raises(ValueError, match="5 rewards do not split into groups of 2"):
        group_advantages(torch.zeros(5), group_size=2)
    with pytest.raises(ValueError, match="groups of 1"):
        rloo_advantages(torch.zeros(4), group_size=1)


# ----- Safe RLHF's Lagrangian ----------------------------------------------------------------------


def test_lagrange_multiplier_rises_while_cost_exceeds_threshold():
    # log lambda + lr * (C - d) * lambda = log 2 + 0.1 * 2 * 2 -> lambda = 2 e^0.4
    updated = lagrangian_update(math.log(2.0), mean_cost=3.0, cost_threshold=1.0, lr=0.1)
    close(updated.exp(), 2.9836493952825407)


def test_lagrange_multiplier_falls_towards_but_never_below_zero_when_safe():
    # log 2 + 0.1 * (0 - 1) * 2 -> lambda = 2 e^-0.2
    close(lagrangian_update(math.log(2.0), 0.0, 1.0, lr=0.1).exp(), 1.6374615061559636)
    log_lambda = torch.tensor(math.log(2.0), dtype=torch.float64)
    for _ in range(200):
        updated = lagrangian_update(log_lambda, mean_cost=-5.0, cost_threshold=1.0, lr=0.5)
        assert updated < log_lambda and updated.exp() > 0
        log_lambda = updated


def test_lagrange_update_is_one_sgd_step_on_safe_rlhf_dual_loss():
    log_lambda = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
    optimizer = torch.optim.SGD([log_lambda], lr=0.05)
    (-(torch.tensor(2.5, dtype=torch.float64) - 1.0) * log_lambda.exp()).backward()
    expected = lagrangian_update(0.3, mean_cost=2.5, cost_threshold=1.0, lr=0.05)
    optimizer.step()
    close(expected, log_lambda.detach())


def test_lagrange_multiplier_is_capped_at_max_lambda():
    close(lagrangian_update(math.log(2.0), 100.0, 0.0, lr=1.0, max_lambda=5.0), math.log(5.0))


def test_ppo_lag_advantages_trade_reward_against_cost():
    reward_advantages, cost_advantages = t([1.0, -2.0]), t([0.5, 1.0])
    # (A_r - 3 A_c) / (1 + 3): (1 - 1.5) / 4, (-2 - 3) / 4
    close(ppo_lag_advantages(reward_advantages, cost_advantages, 3.0), [[-0.125, -1.25]])
    close(ppo_lag_advantages(reward_advantages, cost_advantages, 0.0), reward_advantages)
