"""The cached steps a training config needs before its first step, as specs: tokenisation of every
dataset, and the reference columns its algorithm reads. The trainer builds what it finds missing; the
pipeline submits the same specs as Prefect tasks first, so both key each step the same way."""

from __future__ import annotations

from pathlib import Path

from align_core.config import TrainConfig
from align_core.data.token_cache import TokenizeSpec
from align_core.reference.cache import ReferenceSpec


def tokenize_specs(config: TrainConfig, dataset_dirs: list[str]) -> list[TokenizeSpec]:
    """One spec per dataset folder: tokenised with the starting model's tokenizer and the data settings."""
    data_cfgs, model_cfgs = config.data_cfgs, config.model_cfgs
    return [
        TokenizeSpec(
            dataset_dir=str(folder),
            tokenizer_path=model_cfgs.model_name_or_path,
            max_length=data_cfgs.max_length,
            truncation=data_cfgs.truncation,
            assistant_turns=data_cfgs.assistant_turns,
            trust_remote_code=model_cfgs.trust_remote_code,
            cache_root=data_cfgs.token_cache_dir,
        )
        for folder in dataset_dirs
    ]


def reference_specs(config: TrainConfig, token_cache_dir: str | Path) -> list[ReferenceSpec]:
    """The cached reference columns the config's algorithm reads for one token cache (none without them)."""
    from align_core.trainers import get_trainer
    from align_core.trainers.engine import resolve_dtype

    trainer = get_trainer(config.train_cfgs.algorithm)
    if not trainer.uses_reference or config.train_cfgs.reference != "cached":
        return []
    model_cfgs = config.model_cfgs
    return [
        ReferenceSpec(
            token_cache_dir=str(token_cache_dir),
            reference_model=model_cfgs.reference_model_name_or_path or model_cfgs.model_name_or_path,
            pairing=pairing,
            dtype=str(resolve_dtype(config.train_cfgs.precision)).removeprefix("torch."),
            batch_size=config.train_cfgs.per_device_eval_batch_size,
            trust_remote_code=model_cfgs.trust_remote_code,
        )
        for pairing in trainer.reference_pairings
    ]
