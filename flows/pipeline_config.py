"""``pipeline.yaml``: the datasets, models and training jobs of one end-to-end pipeline.

```yaml
output_dir: runs/demo                  # models/, shards/, jobs/<job>/ land here
models:
  tiny: {tiny: {arch: llama, seed: 0}} # built offline (alignflow tiny-model); or {path: /models/x}
datasets:
  alpaca: {source: data/alpaca.jsonl, template: Alpaca, kind: supervised}
  hh: {source: data/hh.jsonl, template: HH-RLHF, kind: preference, options: {}}
jobs:
  sft: {algorithm: sft, model: tiny, train: [alpaca], config: {train_cfgs: {max_steps: 50}}}
  dpo: {algorithm: dpo, model: sft, train: [hh]}   # model: a job's name -> trains from its output
```

A job whose ``model`` names another job depends on it and runs after it (``after: [job]`` adds an
ordering); other jobs run concurrently. ``config`` holds training-config sections (see
``align_core.config``); the pipeline fills in the model, the datasets and the output folder. Any
other key is an error naming it. Dataset, model and job names are identifiers (they name folders
under ``output_dir``).

The checks a run makes before doing any work live here too, without Prefect, so the CLI runs them
before a server starts and the flows run the same ones (a deployment's run has no CLI before it):
``check_materialize`` for one dataset, ``check_pipeline`` for a whole pipeline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from align_core.errors import UsageError
from align_core.materialize import MaterializeSpec
from align_core.shards.writer import DEFAULT_ROWS_PER_SHARD
from align_core.sources import check_source
from tasks.parallel import parse_runner

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Keys of a job's training config that the pipeline sets itself (from the job's other keys).
PIPELINE_SET_KEYS = {
    ("train_cfgs", "algorithm"): "algorithm",
    ("model_cfgs", "model_name_or_path"): "model",
    ("data_cfgs", "train_datasets"): "train",
    ("data_cfgs", "eval_datasets"): "eval",
    ("data_cfgs", "ptx_datasets"): "ptx",
    ("logger_cfgs", "output_dir"): "the job's name",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyModelSpec(_Strict):
    arch: str = "llama"
    seed: int = 0
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    vocab_size: int = 2048


class ModelEntry(_Strict):
    path: str | None = None
    tiny: TinyModelSpec | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        if (self.path is None) == (self.tiny is None):
            raise ValueError("give exactly one of 'path' or 'tiny'")
        return self


class DatasetEntry(_Strict):
    source: str
    template: str
    kind: Literal["supervised", "preference", "prompt_only", "unpaired_preference"]
    options: dict[str, Any] = {}
    template_module: str | None = None
    format: str | None = None
    suite: str | None = None
    media_root: str | None = Field(None, description="the folder media paths in the source are relative to")
    runner: str | None = Field(None, description="where it is formatted: local, dask (a LocalCluster) or dask:ADDRESS; "
                               "default: the pipeline's runner")
    benchmark: bool = Field(False, description="an evaluation benchmark: every job's training datasets are checked "
                            "for n-gram overlap with it")


# A job key naming a trained scoring model -> the training setting its score is added to as a source.
SCORER_SOURCES = {"reward_model": "rewards", "cost_model": "costs"}


class LauncherEntry(_Strict):
    """How a job's ranks start over several nodes (``align_core.launch.multinode_arguments``)."""

    name: Literal["deepspeed", "torchrun"] = "deepspeed"
    hostfile: str | None = Field(None, description="deepspeed: 'hostname slots=N' lines")
    num_nodes: int | None = Field(None, ge=1)
    node_rank: int | None = Field(None, ge=0)
    master_addr: str | None = None
    master_port: int | None = Field(None, ge=1, le=65535)
    args: list[str] = Field([], description="any other launcher flag, verbatim")

    def arguments(self) -> list[str]:
        from align_core.launch import multinode_arguments

        nodes = multinode_arguments(self.name, self.hostfile, self.num_nodes, self.master_addr, self.master_port, self.node_rank)
        return [*nodes, *self.args]


class EvaluateEntry(_Strict):
    """A job's evaluation after training (``align_core.evaluation``): its folder is
    ``<output_dir>/evaluations/<job>/<digest>/``."""

    datasets: list[str] = Field(min_length=1, description="supervised, preference or prompt_only datasets")
    reward_model: str | None = Field(None, description="a models entry or a job: judges completions of prompt sets")
    reference: str | None = Field(None, description="a models entry or a job to compare with; default: the job's model")
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0, description="0: greedy")
    max_length: int = Field(512, ge=8)
    tie_margin: float = Field(0.0, ge=0)

    def refs(self) -> list[str]:
        return [ref for ref in (self.reward_model, self.reference) if ref is not None]


class JobEntry(_Strict):
    algorithm: str
    model: str = Field(description="a models entry, or another job whose trained model this one starts from")
    train: list[str] = Field(min_length=1)
    eval: list[str] = []
    ptx: list[str] = Field([], description="online RL: supervised datasets of the PTX term (with train_cfgs.ptx_coef)")
    config: dict[str, dict[str, Any]] = {}
    nproc: int = Field(1, ge=1, description="ranks per node")
    launcher: LauncherEntry | None = Field(None, description="several nodes: the launcher and its flags")
    after: list[str] = Field([], description="extra jobs to wait for")
    reward_model: str | None = Field(
        None, description="online RL: a models entry or a job whose trained reward model scores the rollouts"
    )
    cost_model: str | None = Field(None, description="ppo_lag: a models entry or a job whose trained cost model costs them")
    evaluate: EvaluateEntry | None = Field(None, description="evaluate the trained model after training")

    def datasets(self) -> list[str]:
        """Every dataset the job reads, its evaluation's included."""
        return [*self.train, *self.eval, *self.ptx, *(self.evaluate.datasets if self.evaluate else [])]

    def training_datasets(self) -> list[str]:
        return [*self.train, *self.eval, *self.ptx]

    def contamination_sources(self, spec: PipelineConfig) -> list[str]:
        """What its training datasets must not overlap: its eval datasets and every benchmark dataset."""
        benchmarks = [name for name, entry in spec.datasets.items() if entry.benchmark]
        return [name for name in dict.fromkeys([*self.eval, *benchmarks]) if name not in self.train]

    def scorers(self) -> dict[str, str]:
        """``{key: models entry or job}`` of the scoring models this job names (keys of ``SCORER_SOURCES``)."""
        named = {"reward_model": self.reward_model, "cost_model": self.cost_model}
        return {key: ref for key, ref in named.items() if ref is not None}


class PipelineConfig(_Strict):
    output_dir: str
    runner: str = Field("local", description="where the parts of materialising, tokenising and reference log-probs "
                        "run: local, dask (a LocalCluster) or dask:ADDRESS (tasks.parallel)")
    models: dict[str, ModelEntry] = {}
    datasets: dict[str, DatasetEntry]
    jobs: dict[str, JobEntry] = {}

    @field_validator("models", "datasets", "jobs")
    @classmethod
    def _identifiers(cls, entries: dict[str, Any]) -> dict[str, Any]:
        for name in entries:
            if not NAME.fullmatch(name) or ".." in name:
                message = (
                    f"{name!r} is not a name: letters, digits, '_', '.' and '-', starting with a letter or digit, "
                    "without '..' (names become folder names under output_dir)"
                )
                raise PydanticCustomError("name", "{message}", {"message": message})
        return entries

    @model_validator(mode="after")
    def _references(self) -> PipelineConfig:
        for name, job in self.jobs.items():
            if job.model not in self.models and job.model not in self.jobs:
                raise ValueError(f"jobs.{name}.model: {job.model!r} is neither a models entry nor a job")
            for dataset in job.datasets():
                if dataset not in self.datasets:
                    raise ValueError(f"jobs.{name}: dataset {dataset!r} is not in datasets ({', '.join(self.datasets)})")
            for other in job.after:
                if other not in self.jobs:
                    raise ValueError(f"jobs.{name}.after: {other!r} is not a job")
            evaluated = {f"evaluate.{key}": ref for key, ref in (job.evaluate.model_dump() if job.evaluate else {}).items()
                         if key in ("reward_model", "reference") and ref is not None}
            for key, ref in {**job.scorers(), **evaluated}.items():
                if ref not in self.models and ref not in self.jobs:
                    raise ValueError(f"jobs.{name}.{key}: {ref!r} is neither a models entry nor a job")
        self.job_order()  # raises on a cycle
        return self

    def dependencies(self, name: str) -> list[str]:
        job = self.jobs[name]
        refs = [job.model, *job.after, *job.scorers().values(), *(job.evaluate.refs() if job.evaluate else [])]
        return [ref for ref in dict.fromkeys(refs) if ref in self.jobs]

    def dataset_runner(self, name: str) -> str:
        """Where dataset ``name`` is materialised: its own runner, else the pipeline's."""
        return self.datasets[name].runner or self.runner

    def job_order(self) -> list[list[str]]:
        """Jobs in waves: every job of a wave depends only on jobs of earlier waves."""
        done: set[str] = set()
        waves = []
        while len(done) < len(self.jobs):
            wave = [name for name in self.jobs if name not in done and set(self.dependencies(name)) <= done]
            if not wave:
                raise ValueError(f"jobs depend on each other in a cycle: {', '.join(sorted(set(self.jobs) - done))}")
            waves.append(wave)
            done.update(wave)
        return waves


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML; relative paths are resolved against its folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise UsageError(f"{path}: cannot read pipeline config ({error.strerror})") from error
    except yaml.YAMLError as error:
        raise UsageError(f"{path}: not valid YAML ({error})") from error
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, p['loc'])) or 'pipeline'}: {p['msg']}" for p in error.errors())
        raise UsageError(f"{path}: {problems}") from None
    base = path.parent.absolute()

    def resolve(value: str) -> str:
        return str((base / value).absolute()) if not Path(value).is_absolute() else value

    config.output_dir = resolve(config.output_dir)
    for dataset in config.datasets.values():
        dataset.source = resolve(dataset.source)
        if dataset.template_module and dataset.template_module.endswith(".py"):
            dataset.template_module = resolve(dataset.template_module)
        if dataset.media_root:
            dataset.media_root = resolve(dataset.media_root)
    for model in config.models.values():
        if model.path:
            model.path = resolve(model.path)
    for job in config.jobs.values():
        if job.launcher and job.launcher.hostfile:
            job.launcher.hostfile = resolve(job.launcher.hostfile)
    return config


# Checks before any work: one line (UsageError) naming what is wrong.


def check_output_root(path: str | Path, what: str = "output folder") -> None:
    """``path`` is a folder, or can be made one: its nearest existing ancestor is a writable folder."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        kind = "a file" if existing.is_file() else "not a folder"
        raise UsageError(f"{what} {path}: {existing} is {kind}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {path}: {existing} is not writable")


def check_materialize(
    source: str | Path,
    template: str,
    kind: str,
    out: str | Path,
    *,
    template_options: dict[str, Any] | None = None,
    template_module: str | None = None,
    source_format: str | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    workers: int | None = None,
    validate_contract: bool = True,
    suite: str | None = None,
    contract_overrides: dict[str, Any] | None = None,
    media_root: str | Path | None = None,
    runner: str | None = None,
) -> MaterializeSpec:
    """What the ``materialize`` flow needs, checked before a row is read: the template, its options and
    kind, the media root, the source (``check_source``), the contract's suite and override keys, the output
    root, the runner."""
    from data_contracts.suite import load_suite

    if workers is not None and workers < 1:
        raise UsageError(f"workers must be at least 1, got {workers}")
    parse_runner(runner)
    spec = MaterializeSpec.checked(template, kind, template_options, template_module, rows_per_shard, media_root)
    check_source(source, source_format)
    if validate_contract:
        load_suite(suite, spec.kind, spec.media, contract_overrides)
    check_output_root(out)
    return spec


def check_pipeline(spec: PipelineConfig) -> None:
    """Everything ``pipeline run`` would find out later, before any work: the output folder and every
    path the run writes resolve inside it; each dataset passes ``check_materialize``; each model path is
    a model folder and each tiny model's arch is known; each job's training config builds with
    ``build_config`` (placeholder paths), leaves the keys the pipeline sets alone, and its algorithm
    trains on its datasets' kinds."""
    output_dir = Path(spec.output_dir)
    check_output_root(output_dir, "output_dir")
    check_outputs_inside(spec)
    _prefixed("runner", parse_runner, spec.runner)
    for name, entry in spec.datasets.items():
        _prefixed(
            f"datasets.{name}",
            check_materialize,
            entry.source,
            entry.template,
            entry.kind,
            output_dir / "shards",
            template_options=entry.options,
            template_module=entry.template_module,
            source_format=entry.format,
            suite=entry.suite,
            media_root=entry.media_root,
            runner=spec.dataset_runner(name),
        )
    for name, model in spec.models.items():
        _check_model(name, model)
    for name in spec.jobs:
        _check_job(spec, name)


def output_paths(spec: PipelineConfig) -> dict[str, Path]:
    """Every folder and file a run of ``spec`` writes under ``output_dir``, by what it is for."""
    root = Path(spec.output_dir)
    paths = {folder: root / folder for folder in ("shards", "models", "token_cache", "configs", "jobs")}
    paths.update({f"models.{name}": root / "models" / name for name in spec.models})
    for name in spec.jobs:
        paths[f"jobs.{name}"] = root / "jobs" / name
        paths[f"jobs.{name} config"] = root / "configs" / f"{name}.yaml"
    return paths


def check_outputs_inside(spec: PipelineConfig) -> None:
    """Each output path resolves inside ``output_dir``: names are identifiers, and a symlink under it that
    points elsewhere is refused rather than written through."""
    root = Path(spec.output_dir).resolve()
    for what, path in output_paths(spec).items():
        if not path.resolve().is_relative_to(root):
            raise UsageError(f"{what}: {path} resolves to {path.resolve()}, outside output_dir {root}")


def _check_model(name: str, model: ModelEntry) -> None:
    if model.path and not (Path(model.path) / "config.json").is_file():
        raise UsageError(f"models.{name}.path: {model.path} has no config.json (alignflow loads local Hugging Face folders only)")
    if model.tiny:
        from align_core.models.tiny import ARCHITECTURES

        if model.tiny.arch not in ARCHITECTURES:
            raise UsageError(f"models.{name}.tiny.arch: unknown {model.tiny.arch!r}; expected one of: {', '.join(ARCHITECTURES)}")


def _check_job(spec: PipelineConfig, name: str) -> None:
    from align_core.config import build_config
    from align_core.trainers import get_trainer, settings_by_algorithm

    job = spec.jobs[name]
    for (section, key), source in PIPELINE_SET_KEYS.items():
        if key in job.config.get(section, {}):
            raise UsageError(f"jobs.{name}.config.{section}.{key}: set by the pipeline (from {source}); remove it")
    for key in job.scorers():
        field = SCORER_SOURCES[key]
        takers = sorted(algorithm for algorithm, settings in settings_by_algorithm().items() if field in settings.model_fields)
        if job.algorithm in settings_by_algorithm() and job.algorithm not in takers:
            raise UsageError(f"jobs.{name}.{key}: {job.algorithm} takes no {field} ({', '.join(takers)} do)")
    if job.launcher:
        _prefixed(f"jobs.{name}.launcher", job.launcher.arguments)
    config = _prefixed(f"jobs.{name}", build_config, job_sections(spec, name), source=f"jobs.{name}.config")
    trainer = get_trainer(config.train_cfgs.algorithm)
    if job.evaluate:
        for dataset in job.evaluate.datasets:
            if spec.datasets[dataset].kind not in ("supervised", "preference", "prompt_only"):
                raise UsageError(f"jobs.{name}.evaluate: dataset {dataset!r} is {spec.datasets[dataset].kind}; "
                                 "evaluate reads supervised, preference and prompt_only datasets")
            if spec.datasets[dataset].kind == "prompt_only" and not job.evaluate.reward_model:
                raise UsageError(f"jobs.{name}.evaluate: prompt set {dataset!r} needs a reward_model to judge completions")
    for dataset in job.training_datasets():
        kind = spec.datasets[dataset].kind
        kinds = ("supervised",) if dataset in job.ptx else tuple(k.value for k in trainer.dataset_kinds)
        if kind not in kinds:
            reader = "the PTX term reads" if dataset in job.ptx else f"{job.algorithm} trains on"
            raise UsageError(f"jobs.{name}: dataset {dataset!r} is {kind}; {reader} {' or '.join(kinds)} datasets")


def job_sections(
    spec: PipelineConfig,
    name: str,
    model_dir: Callable[[str], str] | None = None,
    dataset_dirs: dict[str, str] | None = None,
):
    """Job ``name``'s training-config sections: its ``config`` plus what the pipeline decides.
    ``model_dir(ref)``: the folder of a models entry or of a job's trained model. Without it and
    ``dataset_dirs`` (not known before the run), placeholder paths stand in."""
    job = spec.jobs[name]
    output_dir = Path(spec.output_dir)
    if model_dir is None:
        def model_dir(ref: str) -> str:
            return str(output_dir / ("jobs" if ref in spec.jobs else "models") / ref / "model")
    base_model = model_dir(job.model)
    dataset_dirs = dataset_dirs or {dataset: str(output_dir / "shards" / dataset) for dataset in spec.datasets}
    sections = {section: dict(values) for section, values in job.config.items()}
    sections.setdefault("train_cfgs", {})["algorithm"] = job.algorithm
    sections.setdefault("model_cfgs", {})["model_name_or_path"] = base_model
    data = sections.setdefault("data_cfgs", {})
    data["train_datasets"] = [dataset_dirs[dataset] for dataset in job.train]
    data["eval_datasets"] = [dataset_dirs[dataset] for dataset in job.eval]
    data["ptx_datasets"] = [dataset_dirs[dataset] for dataset in job.ptx]
    data.setdefault("token_cache_dir", str(output_dir / "token_cache"))
    sections.setdefault("logger_cfgs", {})["output_dir"] = str(output_dir / "jobs" / name)
    for key, ref in job.scorers().items():  # one more reward (cost) source: the named model's score
        train_cfgs, field = sections["train_cfgs"], SCORER_SOURCES[key]
        source = {"name": "reward_model", "kwargs": {"path": model_dir(ref)}}
        train_cfgs[field] = [*train_cfgs.get(field, []), source]
    return sections


def _prefixed(where: str, check, *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, its usage error prefixed with ``where`` unless it names it already."""
    try:
        return check(*args, **kwargs)
    except UsageError as error:
        message = str(error)
        raise UsageError(message if message.startswith(where) else f"{where}: {message}") from None
