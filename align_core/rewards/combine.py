"""A weighted sum of reward sources, with each source's own values kept for metrics."""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from align_core.errors import UsageError
from align_core.rewards.registry import Prompt, RewardFn, get_reward


class RewardSpec(BaseModel):
    """One reward source in a config: the registered ``name``, its ``weight`` in the total and the
    ``kwargs`` it is called with. ``label`` names it in metrics (default: ``name``); two sources of
    the same function (two format checks) need different labels."""

    model_config = ConfigDict(extra="forbid")

    name: str
    weight: float = 1.0
    kwargs: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @property
    def key(self) -> str:
        return self.label or self.name

    def resolve(self) -> RewardFn:
        """The registered function, checked to accept ``kwargs`` (so a config error shows before generating)."""
        fn = get_reward(self.name)
        try:
            inspect.signature(fn).bind([], [], [], **self.kwargs)
        except TypeError as error:
            raise UsageError(f"reward {self.key!r} ({self.name}): kwargs {self.kwargs!r} do not fit: {error}") from None
        return fn


def score_source(
    spec: RewardSpec, prompts: Sequence[Prompt], completions: Sequence[str], metas: Sequence[dict | None]
) -> torch.Tensor:
    """``spec``'s function on the batch -> (n,) float32; a wrong count or a non-finite value names it and the row."""
    fn = spec.resolve()
    values = list(fn(prompts, completions, metas, **spec.kwargs))
    where = f"reward {spec.key!r} ({getattr(fn, '__qualname__', spec.name)})"
    if len(values) != len(completions):
        raise UsageError(f"{where} returned {len(values)} values for {len(completions)} completions")
    for index, value in enumerate(values):
        if not isinstance(value, numbers.Real):
            raise UsageError(f"{where} returned {value!r} for row {index}; expected a number")
    scores = torch.tensor([float(value) for value in values], dtype=torch.float32)
    # checked in float32, so a value too large for it (1e39 -> inf) is caught too
    not_finite = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    if not_finite:
        index = not_finite[0]
        raise UsageError(f"{where} returned {values[index]!r} for row {index}; expected a finite number")
    return scores


def combine_rewards(
    specs: Sequence[RewardSpec],
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    metas: Sequence[dict | None] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score n generations with every source and add them up by weight.

    Returns ``total`` (n,) = sum over sources of ``weight * values`` and ``per_source``
    ``{key: values (n,)}``, each source's unweighted values, for per-source metrics.
    ``metas`` None means no row has a meta.
    """
    if not specs:
        raise UsageError("no reward sources given; name at least one registered reward")
    metas = [None] * len(completions) if metas is None else metas
    if not len(prompts) == len(completions) == len(metas):
        raise UsageError(
            f"rewards need one prompt, completion and meta per row; got {len(prompts)} prompts, "
            f"{len(completions)} completions and {len(metas)} metas"
        )
    keys = [spec.key for spec in specs]
    if len(set(keys)) != len(keys):
        raise UsageError(f"reward sources share a name: {keys}; give repeated ones distinct 'label's")
    per_source = {spec.key: score_source(spec, prompts, completions, metas) for spec in specs}
    total = torch.zeros(len(completions), dtype=torch.float32)
    for spec in specs:
        total += spec.weight * per_source[spec.key]
    return total, per_source
