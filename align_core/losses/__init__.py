"""Pure loss functions: per-example tensors in, per-example losses out; shapes in each docstring."""

from align_core.losses.logps import IGNORE_INDEX, sequence_logps, token_logps
from align_core.losses.preference import (
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    orpo_odds_ratio_loss,
    simpo_loss,
)
from align_core.losses.reward import pairwise_reward_loss, safety_cost_loss
from align_core.losses.rl import (
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
from align_core.losses.sft import sft_loss

__all__ = [
    "IGNORE_INDEX",
    "aggregate",
    "aggregate_count",
    "dpo_loss",
    "gae",
    "group_advantages",
    "ipo_loss",
    "kl_penalty",
    "kto_loss",
    "kto_reference_point",
    "lagrangian_update",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "orpo_loss",
    "orpo_odds_ratio_loss",
    "pairwise_reward_loss",
    "ppo_lag_advantages",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "safety_cost_loss",
    "sequence_logps",
    "sft_loss",
    "shape_rewards",
    "simpo_loss",
    "token_logps",
]
