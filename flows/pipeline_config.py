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
other key is an error naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from align_core.errors import UsageError


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


class JobEntry(_Strict):
    algorithm: str
    model: str = Field(description="a models entry, or another job whose trained model this one starts from")
    train: list[str] = Field(min_length=1)
    eval: list[str] = []
    config: dict[str, dict[str, Any]] = {}
    nproc: int = Field(1, ge=1)
    after: list[str] = Field([], description="extra jobs to wait for")


class PipelineConfig(_Strict):
    output_dir: str
    models: dict[str, ModelEntry] = {}
    datasets: dict[str, DatasetEntry]
    jobs: dict[str, JobEntry] = {}

    @model_validator(mode="after")
    def _references(self) -> PipelineConfig:
        for name, job in self.jobs.items():
            if job.model not in self.models and job.model not in self.jobs:
                raise ValueError(f"jobs.{name}.model: {job.model!r} is neither a models entry nor a job")
            for dataset in [*job.train, *job.eval]:
                if dataset not in self.datasets:
                    raise ValueError(f"jobs.{name}: dataset {dataset!r} is not in datasets ({', '.join(self.datasets)})")
            for other in job.after:
                if other not in self.jobs:
                    raise ValueError(f"jobs.{name}.after: {other!r} is not a job")
        self.job_order()  # raises on a cycle
        return self

    def dependencies(self, name: str) -> list[str]:
        job = self.jobs[name]
        refs = [job.model, *job.after]
        return [ref for ref in dict.fromkeys(refs) if ref in self.jobs]

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
    for model in config.models.values():
        if model.path:
            model.path = resolve(model.path)
    return config
