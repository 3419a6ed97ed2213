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
from align_core.losses.reward import pairwise_reward_loss
from align_core.losses.sft import sft_loss

__all__ = [
    "IGNORE_INDEX",
    "dpo_loss",
    "ipo_loss",
    "kto_loss",
    "kto_reference_point",
    "orpo_loss",
    "orpo_odds_ratio_loss",
    "pairwise_reward_loss",
    "sequence_logps",
    "sft_loss",
    "simpo_loss",
    "token_logps",
]
