"""``@register_reward("name")``: the registry of reward functions, built-in and user-supplied.

A reward function scores a batch of generations, one float per row::

    fn(prompts, completions, metas, **kwargs) -> list[float]

``prompts`` are the rendered prompt conversations (lists of shard messages) or plain text,
``completions`` the generated texts, ``metas`` each row's meta dict from the shard's ``meta`` column
(or None); all three have the same length n. ``kwargs`` come from the config's ``RewardSpec.kwargs``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from align_core.errors import UsageError
from align_core.user_modules import import_user_module

Prompt = list[dict] | str
RewardFn = Callable[..., list[float]]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name``; a later registration of the same name replaces it."""

    def decorate(fn: RewardFn) -> RewardFn:
        if not callable(fn):
            raise TypeError(f"@register_reward({name!r}) must decorate a function")
        _REGISTRY[name] = fn
        return fn

    return decorate


def known_rewards() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    """The function registered as ``name``; an unknown name lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown reward {name!r}; known rewards: {', '.join(known_rewards())}") from None


def load_reward_module(spec: str) -> None:
    """Import a user's rewards from a ``.py`` file path or a dotted module name (config ``reward_module``)."""
    import_user_module(spec, "reward module")


def row_meta(metas: Sequence[dict | None], index: int, key: str, reward: str) -> Any:
    """``metas[index][key]``, or a UsageError naming the reward, the row and what its meta holds."""
    meta = metas[index]
    if not isinstance(meta, dict) or key not in meta:
        raise UsageError(f"reward {reward!r}: row {index} has no meta[{key!r}] (its meta is {meta!r})")
    return meta[key]
