"""Training configs: YAML with align-anything's four sections, typed, validated, with dotted overrides.

    train_cfgs:  algorithm, epochs | max_steps, batch sizes, optimiser and schedule, zero_stage, ...,
                 plus the algorithm's own settings (its trainer's ``settings`` class: beta for dpo, ...)
    data_cfgs:   train_datasets (materialised dataset folders), eval_datasets, ptx_datasets (online
                 RL's supervised term), max_length, truncation
    model_cfgs:  model_name_or_path, trust_remote_code, attn_implementation, ...
    logger_cfgs: output_dir, log_type

``load_config(path, ["train_cfgs.epochs=2", ...])`` reads the file, applies each override (the value
is parsed as YAML, so ``2`` is an int and ``[a, b]`` a list), and validates the result. Every problem
is a ``UsageError`` naming the key: an unknown key is an error (with the closest known key), never a
silently ignored or overwritten setting.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, model_validator

from align_core.errors import UsageError
from align_core.io import sha256_json

EXAMPLE_CONFIGS = Path(__file__).parent / "configs"  # sft.yaml, rm.yaml: documented starting points

SchedulerName = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt",
    "cosine_with_min_lr", "warmup_stable_decay",
]  # transformers' get_scheduler names that need no extra arguments

# transformers' attn_implementation values a run may load its models with: each takes a packed batch's
# sequence boundaries (align_core.data.packing); the flash kernels need CUDA and their package (check_kernels)
AttnImplementation = Literal["sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TrainCfgs(_Section):
    """The settings every algorithm reads. An algorithm with settings of its own subclasses this (its
    trainer's ``settings``), and ``train_cfgs`` is validated against that class, so a key the chosen
    algorithm does not read is an error."""

    algorithm: str = "sft"
    trainer_module: str | None = Field(
        None, description="a .py file or module imported first: it registers your own trainer (@register_trainer)"
    )
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
    debug_stop_after_steps: int | None = Field(
        None, ge=1, description="testing: exit abruptly (os._exit, no cleanup) after this many steps"
    )


class DataCfgs(_Section):
    train_datasets: list[str] = Field(min_length=1)
    eval_datasets: list[str] = []
    ptx_datasets: list[str] = Field([], description="online RL: supervised datasets of the PTX term (train_cfgs.ptx_coef)")
    max_length: int = Field(512, ge=8)
    truncation: Literal["drop", "truncate_prompt_left", "error"] = "drop"
    assistant_turns: Literal["all", "last"] = Field("all", description="supervised: which assistant turns get labels")
    token_cache_dir: str | None = Field(None, description="default: <state dir>/token_cache")
    num_workers: int = Field(0, ge=0)

    def all_datasets(self) -> list[str]:
        """Every dataset folder the run reads: each must have passed its contract."""
        return [*self.train_datasets, *self.eval_datasets, *self.ptx_datasets]


class LoraCfgs(_Section):
    """Low-rank adapters (peft's LoRA) on every trained model instead of full fine-tuning."""

    r: int = Field(8, ge=1, description="the adapters' rank")
    alpha: float = Field(16.0, gt=0, description="scaling: the update is alpha / r * B A")
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="module names to adapt, or every linear layer but the output head"
    )
    modules_to_save: list[str] = Field(
        [], description="modules trained in full beside the adapters (a score model's score_head always is)"
    )


class ModelCfgs(_Section):
    model_name_or_path: str = Field(min_length=1, description="a local folder; nothing is downloaded")
    reference_model_name_or_path: str | None = Field(
        None, description="algorithms with a reference model (dpo, ipo, kto); None: model_name_or_path"
    )
    trust_remote_code: bool = False
    attn_implementation: AttnImplementation = Field(
        "sdpa", description="transformers' attention kernel for every model the run loads (flash: CUDA only)"
    )
    # parts of a media model to leave untrained (align_core.models.freeze), for every trained model of the run
    freeze_vision_tower: bool = False
    freeze_audio_tower: bool = False
    freeze_mm_proj: bool = False
    freeze_language_model: bool = False
    lora: LoraCfgs | None = Field(None, description="train LoRA adapters instead of every weight (align_core.models.lora)")
    quantization: Literal["4bit", "8bit"] | None = Field(
        None, description="QLoRA: trained models' bases loaded quantized by bitsandbytes (CUDA only; needs lora)"
    )

    def freeze_switches(self) -> list[str]:
        return [name for name in type(self).model_fields if name.startswith("freeze_") and getattr(self, name)]


class LoggerCfgs(_Section):
    output_dir: str = Field(min_length=1)
    log_type: Literal["tensorboard", "none"] = "tensorboard"
    progress_bar: bool = True
    merge_lora: bool = Field(False, description="with model_cfgs.lora: also export <model>-merged/, the adapters merged in")


class TrainConfig(_Section):
    train_cfgs: SerializeAsAny[TrainCfgs] = Field(default_factory=TrainCfgs)  # the algorithm's settings class
    data_cfgs: DataCfgs
    model_cfgs: ModelCfgs
    logger_cfgs: LoggerCfgs

    @model_validator(mode="after")
    def _absolute_paths(self) -> TrainConfig:
        # Launchers may start ranks in another folder: resolve paths against the caller's cwd once.
        self.data_cfgs.train_datasets = [_absolute(p) for p in self.data_cfgs.train_datasets]
        self.data_cfgs.eval_datasets = [_absolute(p) for p in self.data_cfgs.eval_datasets]
        self.data_cfgs.ptx_datasets = [_absolute(p) for p in self.data_cfgs.ptx_datasets]
        self.logger_cfgs.output_dir = _absolute(self.logger_cfgs.output_dir)
        if self.data_cfgs.token_cache_dir:
            self.data_cfgs.token_cache_dir = _absolute(self.data_cfgs.token_cache_dir)
        if Path(self.model_cfgs.model_name_or_path).exists():
            self.model_cfgs.model_name_or_path = _absolute(self.model_cfgs.model_name_or_path)
        module = self.train_cfgs.trainer_module
        if module and (module.endswith(".py") or Path(module).exists()):
            self.train_cfgs.trainer_module = _absolute(module)
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
    if key is not None and key not in fields and section != "train_cfgs":  # train_cfgs: by its algorithm, later
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
    problems = []
    if isinstance(merged.get("train_cfgs", {}), dict):
        try:
            merged["train_cfgs"] = algorithm_settings(merged.get("train_cfgs", {}), source)
        except ValidationError as error:
            problems += [_describe(problem, prefix="train_cfgs") for problem in error.errors()]
    try:
        config = TrainConfig.model_validate(merged)
    except ValidationError as error:
        problems += [_describe(problem) for problem in error.errors() if problem["loc"][:1] != ("train_cfgs",) or not problems]
    if problems:
        raise UsageError(f"{source}: " + "; ".join(problems))
    _check_reference_model(config, source)
    _check_ptx(config, source)
    if config.model_cfgs.quantization and config.model_cfgs.lora is None:
        raise UsageError(f"{source}: model_cfgs.quantization={config.model_cfgs.quantization} freezes the base in "
                         "quantized form: it trains only with model_cfgs.lora (QLoRA)")
    if config.logger_cfgs.merge_lora and config.model_cfgs.lora is None:
        raise UsageError(f"{source}: logger_cfgs.merge_lora needs model_cfgs.lora (there are no adapters to merge)")
    return config


def algorithm_settings(values: dict[str, Any], source: str = "config") -> TrainCfgs:
    """``train_cfgs`` validated by its algorithm's settings class; a key it does not read names the keys it does."""
    from align_core.trainers import get_trainer, import_trainer_module, settings_by_algorithm

    if values.get("trainer_module"):
        import_trainer_module(values["trainer_module"])
    algorithm = values.get("algorithm", TrainCfgs.model_fields["algorithm"].default)
    settings = get_trainer(algorithm).settings
    unread = [key for key in values if key not in settings.model_fields]
    if unread:
        others = settings_by_algorithm()
        common = set(TrainCfgs.model_fields)
        own = sorted(set(settings.model_fields) - common)
        problems = []
        for key in unread:
            readers = sorted(name for name, cls in others.items() if key in cls.model_fields)
            if readers:
                problems.append(f"train_cfgs.{key}: {algorithm} does not read this key (read by {', '.join(readers)})")
            else:
                known = {name for cls in others.values() for name in cls.model_fields}
                problems.append(f"unknown config key 'train_cfgs.{key}'{_suggest(key, known)}")
        reads = f"{algorithm} reads {', '.join(own)} and the common keys" if own else f"{algorithm} reads only the common keys"
        raise UsageError(f"{source}: " + "; ".join(problems) + f" ({reads})")
    return settings.model_validate(values)


def _check_reference_model(config: TrainConfig, source: str) -> None:
    from align_core.trainers import get_trainer

    algorithm = config.train_cfgs.algorithm
    if config.model_cfgs.reference_model_name_or_path and not get_trainer(algorithm).uses_reference:
        raise UsageError(f"{source}: model_cfgs.reference_model_name_or_path: {algorithm} has no reference model")


def _check_ptx(config: TrainConfig, source: str) -> None:
    """PTX datasets and a PTX weight come together, for an algorithm with a PTX term."""
    from align_core.trainers import settings_by_algorithm

    algorithm, datasets = config.train_cfgs.algorithm, config.data_cfgs.ptx_datasets
    coef = getattr(config.train_cfgs, "ptx_coef", None)
    if datasets and coef is None:
        takers = sorted(name for name, settings in settings_by_algorithm().items() if "ptx_coef" in settings.model_fields)
        raise UsageError(f"{source}: data_cfgs.ptx_datasets: {algorithm} has no PTX term ({', '.join(takers)} do)")
    if coef and not datasets:
        raise UsageError(f"{source}: train_cfgs.ptx_coef={coef} needs data_cfgs.ptx_datasets (supervised datasets)")
    if datasets and not coef:
        raise UsageError(f"{source}: data_cfgs.ptx_datasets is set but train_cfgs.ptx_coef is 0: give the PTX term a weight")


def _describe(problem: dict[str, Any], prefix: str = "") -> str:
    key = ".".join(str(part) for part in (prefix, *problem["loc"]) if part != "")
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
