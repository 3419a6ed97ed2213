"""Trainers: one small class per algorithm over the shared loop (base.py) and DeepSpeed engine (engine.py).

``get_trainer(algorithm)`` maps ``train_cfgs.algorithm`` to its class. A new algorithm is one
``Trainer`` subclass decorated with ``@register_trainer`` (built in, or in a module named by
``train_cfgs.trainer_module``), with its settings class as ``settings``.
"""

from __future__ import annotations

from align_core.config import TrainCfgs
from align_core.errors import UsageError
from align_core.trainers.base import Trainer
from align_core.trainers.cost import CostModelTrainer
from align_core.trainers.grpo import GRPOTrainer, RLOOTrainer
from align_core.trainers.kto import KTOTrainer
from align_core.trainers.ppo import PPOLagTrainer, PPOTrainer
from align_core.trainers.preference import DPOTrainer, IPOTrainer, ORPOTrainer, SimPOTrainer
from align_core.trainers.rm import RMTrainer
from align_core.trainers.sft import SFTTrainer
from align_core.user_modules import import_user_module

TRAINERS: dict[str, type[Trainer]] = {
    trainer.algorithm: trainer
    for trainer in (
        SFTTrainer, RMTrainer, DPOTrainer, IPOTrainer, SimPOTrainer, ORPOTrainer, KTOTrainer, GRPOTrainer, RLOOTrainer,
        PPOTrainer, PPOLagTrainer, CostModelTrainer,
    )
}


def register_trainer(cls: type[Trainer]) -> type[Trainer]:
    """Class decorator: make ``cls`` the trainer of ``train_cfgs.algorithm: <cls.algorithm>``."""
    if not cls.algorithm:
        raise UsageError(f"{cls.__name__}: a trainer needs an algorithm name")
    known = TRAINERS.get(cls.algorithm)
    if known is not None and known is not cls and known.__qualname__ != cls.__qualname__:
        raise UsageError(f"{cls.__name__}: algorithm {cls.algorithm!r} is already {known.__name__}'s")
    TRAINERS[cls.algorithm] = cls
    return cls


def import_trainer_module(spec: str) -> None:
    import_user_module(spec, "trainer module")


def get_trainer(algorithm: str) -> type[Trainer]:
    if algorithm not in TRAINERS:
        raise UsageError(f"train_cfgs.algorithm: unknown {algorithm!r}; expected one of {', '.join(sorted(TRAINERS))}")
    return TRAINERS[algorithm]


def settings_by_algorithm() -> dict[str, type[TrainCfgs]]:
    return {name: trainer.settings for name, trainer in TRAINERS.items()}


__all__ = [
    "TRAINERS", "CostModelTrainer", "DPOTrainer", "GRPOTrainer", "IPOTrainer", "KTOTrainer", "ORPOTrainer", "PPOLagTrainer", "PPOTrainer",
    "RLOOTrainer", "RMTrainer", "SFTTrainer", "SimPOTrainer", "Trainer",
    "get_trainer", "import_trainer_module", "register_trainer", "settings_by_algorithm",
]
