"""Rewards for online RL: the reward function registry, the built-in rule-based rewards, a trained
reward model as a reward source, their weighted combination and the row metas they read."""

from align_core.rewards import builtin as _builtin  # noqa: F401  (registers the built-ins)
from align_core.rewards.combine import RewardSpec, combine_rewards
from align_core.rewards.metas import metas_for, read_metas
from align_core.rewards.registry import get_reward, known_rewards, load_reward_module, register_reward
from align_core.rewards.reward_model import RewardModelScorer

__all__ = [
    "RewardModelScorer",
    "RewardSpec",
    "combine_rewards",
    "get_reward",
    "known_rewards",
    "load_reward_module",
    "metas_for",
    "read_metas",
    "register_reward",
]
