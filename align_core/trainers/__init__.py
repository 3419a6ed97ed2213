"""Trainers: one small class per algorithm over the shared loop (base.py) and DeepSpeed engine (engine.py).

``get_trainer(algorithm)`` maps ``train_cfgs.algorithm`` to its class; a new algorithm is one
``Trainer`` subclass added to ``TRAINERS``.
"""

from __future__ import annotations

from align_core.errors import UsageError
from align_core.trainers.base import Trainer
from align_core.trainers.kto import KTOTrainer
from align_core.trainers.preference import DPOTrainer, IPOTrainer, ORPOTrainer, SimPOTrainer
from align_core.trainers.rm import RMTrainer
from align_core.trainers.sft import SFTTrainer

TRAINERS: dict[str, type[Trainer]] = {
    trainer.algorithm: trainer
    for trainer in (SFTTrainer, RMTrainer, DPOTrainer, IPOTrainer, SimPOTrainer, ORPOTrainer, KTOTrainer)
}


def get_trainer(algorithm: str) -> type[Trainer]:
    if algorithm not in TRAINERS:
        raise UsageError(f"train_cfgs.algorithm: unknown {algorithm!r}; expected one of {', '.join(sorted(TRAINERS))}")
    return TRAINERS[algorithm]


__all__ = [
    "TRAINERS", "DPOTrainer", "IPOTrainer", "KTOTrainer", "ORPOTrainer", "RMTrainer", "SFTTrainer", "SimPOTrainer", "Trainer",
    "get_trainer",
]
