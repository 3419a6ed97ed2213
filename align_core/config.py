"""Training configs: YAML with align-anything's four sections, typed, validated, with dotted overrides.

    train_cfgs:  algorithm, epochs | max_steps, batch sizes, optimiser and schedule, zero_stage, ...
    data_cfgs:   train_datasets (materialised dataset folders), eval_datasets, max_length, truncation
    model_cfgs:  model_name_or_path, trust_remote_code
    logger_cfgs: output_dir, log_type

``load_config(path, ["train_cfgs.epochs=2", ...])`` reads the file, applies each override (the value
is parsed as YAML, so ``2`` is an int and ``[a, b]`` a list), and validates the result. Every problem
is a ``UsageError`` naming the key: an unknown key is an error (with the closest known key), never a
silently ignored or overwritten setting.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from align_core.errors import UsageError
from align_core.io import sha256_json

EXAMPLE_CONFIGS = Path(__file__).parent / "configs"  # sft.yaml, rm.yaml: documented starting points

SchedulerName = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "cosine_with_min_lr", "warmup_stable_decay",
]  # transformers' get_scheduler names that need no extra arguments


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainCfgs(_Section):
    algorithm: str = "sft"
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; when set, overrides epochs")
    per_device_train_batch_size: int = Field(4, ge=1)
    per_device_eval_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(1e-5, gt=0)
    lr_scheduler_type: SchedulerName = "cosine"
    lr_warmup_ratio: float = Field(0.0, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.95)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(1.0, ge=0, description="0 disables clipping")
    seed: int = 42
    zero_stage: Literal[0, 1, 2, 3] = 0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="auto: bf16 where supported, else fp32")
    gradient_checkpointing: bool = False
    length_grouping: bool = Field(False, description="batch rows of similar length to cut padding")
    save_interval: int = Field(100, ge=1, description="checkpoint every N optimizer steps (and at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    eval_interval: int | None = Field(None, ge=1, description="evaluate every N steps; None: at the end only")
    score_regularization: float = Field(0.0, ge=0, description="rm: weight of the squared-score penalty")
    # preference family (dpo, ipo, simpo, orpo, kto); see align_core/losses/preference.py for each formula
    beta: float | None = Field(None, gt=0, description="None: the algorithm's paper default (simpo 2.0, else 0.1)")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="dpo: > 0 is conservative DPO (cDPO)")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: target reward margin")
    orpo_lambda: float = Field(0.1, ge=0, description="orpo: weight of the odds-ratio term")
    kto_desirable_weight: float = Field(1.0, gt=0, description="kto: lambda_D")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="kto: lambda_U")
    reference: Literal["cached", "live"] = Field(
        "cached", description="dpo/ipo/kto: reference log-probs from a precomputed column, or a live reference model"
    )
    debug_stop_after_steps: int | None = Field(
        None, ge=1, description="testing: exit abruptly (os._exit, no cleanup) after this many steps"
    )


class DataCfgs(_Section):
    train_datasets: list[str] = Field(min_length=1)
    eval_datasets: list[str] = []
    max_length: int = Field(512, ge=8)
    truncation: Literal["drop", "truncate_prompt_left", "error"] = "drop"
    assistant_turns: Literal["all", "last"] = Field("all", description="supervised: which assistant turns get labels")
    token_cache_dir: str | None = Field(None, description="default: <state dir>/token_cache")
    num_workers: int = Field(0, ge=0)


class ModelCfgs(_Section):
    model_name_or_path: str = Field(min_length=1, description="a local folder; nothing is downloaded")
    reference_model_name_or_path: str | None = Field(None, description="dpo/ipo/kto; None: model_name_or_path")
    trust_remote_code: bool = False


class LoggerCfgs(_Section):
    output_dir: str = Field(min_length=1)
    log_type: Literal["tensorboard", "none"] = "tensorboard"
    progress_bar: bool = True


class TrainConfig(_Section):
    train_cfgs: TrainCfgs = Field(default_factory=TrainCfgs)
    data_cfgs: DataCfgs
    model_cfgs: ModelCfgs
    logger_cfgs: LoggerCfgs

    @model_validator(mode="after")
    def _absolute_paths(self) -> "TrainConfig":
        # Launchers may start ranks in another folder: resolve paths against the caller's cwd once.
        self.data_cfgs.train_datasets = [_absolute(p) for p in self.data_cfgs.train_datasets]
        self.data_cfgs.eval_datasets = [_absolute(p) for p in self.data_cfgs.eval_datasets]
        self.logger_cfgs.output_dir = _absolute(self.logger_cfgs.output_dir)
        if self.data_cfgs.token_cache_dir:
            self.data_cfgs.token_cache_dir = _absolute(self.data_cfgs.token_cache_dir)
        if Path(self.model_cfgs.model_name_or_path).exists():
            self.model_cfgs.model_name_or_path = _absolute(self.model_cfgs.model_name_or_path)
        reference = self.model_cfgs.reference_model_name_or_path
        if reference and Path(reference).exists():
            self.model_cfgs.reference_model_name_or_path = _absolute(reference)
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def digest(self, ignore: Sequence[str] = ()) -> str:
        """sha256 of the settings, leaving out dotted keys in ``ignore``."""
        data = self.to_dict()
        for dotted in ignore:
            section, key = dotted.split(".", 1)
            data[section].pop(key, None)
        return sha256_json(data)


SECTIONS: dict[str, type[_Section]] = {
    name: field.annotation for name, field in TrainConfig.model_fields.items()  # type: ignore[misc]
}


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().absolute())


def parse_overrides(overrides: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``["train_cfgs.epochs=2"]`` -> ``{"train_cfgs": {"epochs": 2}}``; values are parsed as YAML."""
    nested: dict[str, dict[str, Any]] = {}
    for override in overrides:
        dotted, sep, raw_value = override.partition("=")
        section, dot, key = dotted.strip().partition(".")
        if not sep or not dot or not key:
            raise UsageError(f"override {override!r}: expected section.key=value, e.g. train_cfgs.epochs=2")
        _check_key(section, key)
        try:
            value = yaml.safe_load(raw_value) if raw_value.strip() else None
        except yaml.YAMLError as error:
            raise UsageError(f"override {override!r}: value is not valid YAML ({error})") from error
        nested.setdefault(section, {})[key] = value
    return nested


def _check_key(section: str, key: str | None) -> None:
    if section not in SECTIONS:
        raise UsageError(f"unknown config section {section!r}{_suggest(section, SECTIONS)}; sections: {', '.join(SECTIONS)}")
    fields = SECTIONS[section].model_fields
    if key is not None and key not in fields:
        raise UsageError(f"unknown config key '{section}.{key}'{_suggest(key, fields)}")


def _suggest(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def build_config(data: dict[str, Any], overrides: Sequence[str] = (), source: str = "config") -> TrainConfig:
    """Validate a config mapping after applying dotted overrides; errors name ``source`` and the key."""
    if not isinstance(data, dict):
        raise UsageError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    merged = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for section, values in merged.items():
        _check_key(section, None)
        if not isinstance(values, dict):
            raise UsageError(f"{source}: section {section!r} must be a mapping, got {type(values).__name__}")
        for key in values:
            _check_key(section, key)
    for section, values in parse_overrides(overrides).items():
        merged.setdefault(section, {}).update(values)
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as error:
        problems = [_describe(problem) for problem in error.errors()]
        raise UsageError(f"{source}: " + "; ".join(problems)) from None


def _describe(problem: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in problem["loc"])
    if problem["type"] == "missing":
        return f"{key}: required"
    return f"{key}: {problem['msg']} (got {problem.get('input')!r})"


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML training config and apply ``section.key=value`` overrides."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as error:
        raise UsageError(f"{path}: cannot read config ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML ({error})") from error
    return build_config(data or {}, overrides, source=str(path))


def dump_config(config: TrainConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
