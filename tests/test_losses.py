"""Loss functions against values worked out by hand (float64, to 1e-6), plus the papers' invariants."""

from __future__ import annotations

import math

import pytest
import torch

from align_core.losses import (
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    pairwise_reward_loss,
    sequence_logps,
    sft_loss,
    simpo_loss,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=0)


# Two pairs. Row 0: policy prefers chosen by 1 nat more than the reference does (h = +1).
# Row 1: policy prefers rejected (h = (-3+2) - (-1+2) = -2).
PC, PR, RC, RR = t(-1.0, -3.0), t(-2.0, -1.0), t(-1.5, -2.0), t(-1.5, -2.0)


def test_dpo_loss_matches_hand_values():
    losses, chosen_rewards, rejected_rewards = dpo_loss(PC, PR, RC, RR, beta=0.1)
    # -logsigmoid(0.1 * 1) = log(1 + e^-0.1); -logsigmoid(0.1 * -2) = log(1 + e^0.2)
    close(losses, [0.6443966600735709, 0.7981388693815918])
    close(chosen_rewards, [0.1 * 0.5, 0.1 * -1.0])
    close(rejected_rewards, [0.1 * -0.5, 0.1 * 1.0])


def test_cdpo_mixes_both_directions_by_label_smoothing():
    losses, _, _ = dpo_loss(PC[:1], PR[:1], RC[:1], RR[:1], beta=0.1, label_smoothing=0.25)
    # 0.75 * log(1 + e^-0.1) + 0.25 * log(1 + e^0.1)
    close(losses, [0.6693966600735709])


def test_dpo_with_half_smoothing_is_symmetric_in_chosen_and_rejected():
    forward, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.3, label_smoothing=0.5)
    swapped, _, _ = dpo_loss(PR, PC, RR, RC, beta=0.3, label_smoothing=0.5)
    close(swapped, forward)


def test_ipo_regresses_margin_to_half_inverse_beta():
    losses, chosen_rewards, _ = ipo_loss(PC, PR, RC, RR, beta=0.1)
    # (h - 1/(2*0.1))^2 = (1 - 5)^2 and (-2 - 5)^2
    close(losses, [16.0, 49.0])
    close(chosen_rewards, [0.05, -0.1])


def test_simpo_loss_matches_hand_values():
    losses, chosen_rewards, rejected_rewards = simpo_loss(t(-0.5), t(-1.0), beta=2.0, gamma=0.5)
    # -logsigmoid(2 * (-0.5 + 1.0) - 0.5) = log(1 + e^-0.5)
    close(losses, [0.4740769841801067])
    close(chosen_rewards, [-1.0])
    close(rejected_rewards, [-2.0])


def test_orpo_loss_matches_hand_values():
    losses, log_odds = orpo_loss(t(-0.5), t(-1.0), chosen_nll=t(0.5), lam=0.1)
    # log_odds = 0.5 - (log(1 - e^-0.5) - log(1 - e^-1)); loss = 0.5 + 0.1 * log(1 + e^-log_odds)
    close(log_odds, [0.9740769841801067])
    close(losses, [0.5320299785237537])


def test_orpo_log_odds_stay_finite_and_exact_near_log_prob_zero():
    # float32, chosen avg log-prob -1e-10: a naive log1p(-exp(x)) gives log(0) = -inf here.
    chosen, rejected = torch.tensor([-1e-10, 0.0]), torch.tensor([-1.0, -1.0])
    _, log_odds = orpo_loss(chosen, rejected, chosen_nll=-chosen, lam=0.1)
    assert torch.isfinite(log_odds).all()
    # log_odds = (c - r) - log(1 - e^c) + log(1 - e^r), with log(1 - e^c) ~ log(-c) = log(1e-10)
    expected = (-1e-10 + 1.0) - math.log(1e-10) + math.log(1 - math.exp(-1.0))
    assert log_odds[0].item() == pytest.approx(expected, rel=1e-6)


def test_kto_adds_desirable_and_undesirable_terms_around_reference_point():
    losses = kto_loss(
        policy_logps=t(-1.0, -3.0),
        ref_logps=t(-2.0, -2.0),
        desirable=torch.tensor([True, False]),
        kl=torch.tensor(0.5, dtype=torch.float64),
        beta=0.1,
        desirable_weight=1.0,
        undesirable_weight=2.0,
    )
    # r = [1, -1]; desirable: 1 - sigmoid(0.1*(1 - 0.5)); undesirable: 2 * (1 - sigmoid(0.1*(0.5 + 1)))
    close(losses, [0.48750260351578967, 0.9251403093125008])


def test_kto_reference_point_is_clamped_mean_log_ratio():
    close(kto_reference_point(t(-1.0, -2.0), t(-2.0, -2.5)), 0.75)  # mean([1, 0.5])
    close(kto_reference_point(t(-1.0, -4.0), t(-2.0, -2.0)), 0.0)  # mean([1, -2]) < 0 -> 0
    policy = t(-1.0, -2.0).requires_grad_()
    assert not kto_reference_point(policy, t(-2.0, -2.5)).requires_grad


def test_pairwise_reward_loss_with_score_regularizer():
    losses = pairwise_reward_loss(t(2.0, 0.0), t(1.0, 1.0), score_regularization=0.1)
    # log(1 + e^-1) + 0.1 * (4 + 1) / 2 and log(1 + e^1) + 0.1 * (0 + 1) / 2
    close(losses, [0.5632616875182228, 1.3632616875182229])


@pytest.mark.parametrize(
    "loss_of_chosen",
    [
        lambda c: dpo_loss(c, t(-2.0), t(-1.5), t(-1.5), beta=0.5)[0],
        lambda c: dpo_loss(c, t(-2.0), t(-1.5), t(-1.5), beta=0.5, label_smoothing=0.2)[0],
        lambda c: simpo_loss(c / 10, t(-0.3), beta=2.0, gamma=0.5)[0],
        lambda c: orpo_loss(c / 10, t(-0.3), chosen_nll=t(0.4), lam=0.5)[0],
        lambda c: kto_loss(c, t(-1.5), torch.tensor([True]), torch.tensor(0.2, dtype=torch.float64))[0],
    ],
    ids=["dpo", "cdpo", "simpo", "orpo", "kto"],
)
def test_better_chosen_log_prob_never_raises_the_loss(loss_of_chosen):
    chosen = torch.linspace(-8.0, -0.01, 200, dtype=torch.float64)
    losses = torch.stack([loss_of_chosen(value.reshape(1)) for value in chosen]).flatten()
    assert (losses[1:] <= losses[:-1] + 1e-12).all()


def hand_logits():
    """(1, 3, 3) logits: position 0 uniform (p = 1/3 each), position 1 probabilities [1/4, 1/2, 1/4]."""
    return torch.tensor([[[0.0, 0.0, 0.0], [0.0, math.log(2.0), 0.0], [5.0, -1.0, 2.0]]], dtype=torch.float64)


def test_sequence_logps_shift_labels_and_skip_masked_tokens():
    # labels[t] is predicted by logits[t-1]: token 2 from position 0 (-ln 3), token 1 from position 1 (-ln 2)
    sum_logps, mean_logps, n_tokens = sequence_logps(hand_logits(), torch.tensor([[7, 2, 1]]))
    close(sum_logps, [-math.log(6.0)])
    close(mean_logps, [-math.log(6.0) / 2])
    assert n_tokens.tolist() == [2]
    sum_logps, mean_logps, n_tokens = sequence_logps(hand_logits(), torch.tensor([[7, -100, 1]]))
    close(sum_logps, [-math.log(2.0)])
    close(mean_logps, [-math.log(2.0)])
    assert n_tokens.tolist() == [1]


def test_sequence_logps_matches_a_slow_reference_loop():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 11, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 11, (3, 9), generator=generator)
    labels[0, :4] = -100  # a prompt
    labels[1, 6:] = -100  # padding
    labels[2, :] = -100  # a row with no label tokens
    expected_sums, expected_counts = [], []
    for row in range(3):
        total, count = 0.0, 0
        for position in range(1, 9):
            if labels[row, position] != -100:
                total += torch.log_softmax(logits[row, position - 1], -1)[labels[row, position]].item()
                count += 1
        expected_sums.append(total)
        expected_counts.append(count)
    sum_logps, mean_logps, n_tokens = sequence_logps(logits, labels)
    close(sum_logps, expected_sums)
    close(mean_logps, [s / max(c, 1) for s, c in zip(expected_sums, expected_counts)])
    assert n_tokens.tolist() == expected_counts


def test_sft_loss_is_summed_nll_over_label_tokens():
    loss, n_tokens = sft_loss(hand_logits(), torch.tensor([[7, 2, 1]]))
    close(loss, math.log(6.0))
    assert n_tokens.item() == 2
    loss, n_tokens = sft_loss(hand_logits(), torch.full((1, 3), -100))
    assert loss.item() == 0.0 and n_tokens.item() == 0
