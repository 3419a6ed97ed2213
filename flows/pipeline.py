"""The end-to-end pipeline: materialise + validate every dataset once, prepare models, then train
each job (tokenise -> [reference log-probs] -> train -> evaluate) in dependency order.

Every step is a cached Prefect task keyed by content, so rerunning a failed pipeline shows the
finished steps as Cached and resumes the interrupted training from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from align_core.config import build_config, dump_config
from align_core.io import atomic_write_text
from align_core.shards.dataset import ShardDataset
from flows.materialize import materialize
from flows.pipeline_config import JobEntry, PipelineConfig, load_pipeline
from tasks.models import build_tiny, check_model_path
from tasks.reference import reference_steps
from tasks.tokenize import tokenize
from tasks.train import train_model


@flow(name="pipeline")
def pipeline(config: str) -> dict[str, Any]:
    """Run the pipeline described by the YAML file ``config``; returns every output's location."""
    spec = load_pipeline(config)
    output_dir = Path(spec.output_dir)

    dataset_dirs = {
        name: materialize(
            source=entry.source,
            template=entry.template,
            kind=entry.kind,
            out=str(output_dir / "shards"),
            template_options=entry.options,
            template_module=entry.template_module,
            source_format=entry.format,
            suite=entry.suite,
        )
        for name, entry in spec.datasets.items()
    }
    model_dirs = {
        name: build_tiny(name, entry.tiny.model_dump(), str(output_dir / "models")) if entry.tiny else check_model_path(entry.path)
        for name, entry in spec.models.items()
    }

    results: dict[str, dict[str, Any]] = {}
    for wave in spec.job_order():
        running = {}
        for name in wave:
            job = spec.jobs[name]
            base_model = results[job.model]["model_dir"] if job.model in spec.jobs else model_dirs[job.model]
            config_path, train_config = write_job_config(spec, name, job, base_model, dataset_dirs)
            data_cfgs = train_config.data_cfgs
            tokenized = [
                tokenize.submit(
                    dataset_dir,
                    base_model,
                    data_cfgs.max_length,
                    data_cfgs.truncation,
                    cache_root=data_cfgs.token_cache_dir,
                    assistant_turns=data_cfgs.assistant_turns,
                    trust_remote_code=train_config.model_cfgs.trust_remote_code,
                )
                for dataset_dir in dict.fromkeys([*data_cfgs.train_datasets, *data_cfgs.eval_datasets])
            ]
            # reference log-probs (dpo, ipo, kto): each cached column computed once, before training
            references = reference_steps(train_config, tokenized)
            running[name] = train_model.submit(str(config_path), nproc=job.nproc, wait_for=[*tokenized, *references])
        for name, future in running.items():
            results[name] = future.result()

    summary = {"output_dir": str(output_dir), "datasets": dataset_dirs, "models": model_dirs, "jobs": results}
    publish_summary(spec, summary)
    return summary


def write_job_config(spec: PipelineConfig, name: str, job: JobEntry, base_model: str, dataset_dirs: dict[str, str]):
    """The job's full training config (its ``config`` sections + what the pipeline decides), written as YAML."""
    output_dir = Path(spec.output_dir)
    sections = {section: dict(values) for section, values in job.config.items()}
    sections.setdefault("train_cfgs", {})["algorithm"] = job.algorithm
    sections.setdefault("model_cfgs", {})["model_name_or_path"] = base_model
    data = sections.setdefault("data_cfgs", {})
    data["train_datasets"] = [dataset_dirs[dataset] for dataset in job.train]
    data["eval_datasets"] = [dataset_dirs[dataset] for dataset in job.eval]
    data.setdefault("token_cache_dir", str(output_dir / "token_cache"))
    sections.setdefault("logger_cfgs", {})["output_dir"] = str(output_dir / "jobs" / name)
    train_config = build_config(sections, source=f"jobs.{name}.config")
    config_path = output_dir / "configs" / f"{name}.yaml"
    atomic_write_text(config_path, dump_config(train_config))
    return config_path, train_config


def publish_summary(spec: PipelineConfig, summary: dict[str, Any]) -> None:
    dataset_rows = []
    for name, dataset_dir in summary["datasets"].items():
        manifest = ShardDataset(dataset_dir).manifest
        dataset_rows.append(
            f"| {name} | {manifest.kind} | {manifest.template} | {manifest.rows} | {manifest.quarantined} | "
            f"`{dataset_dir}` | `{Path(dataset_dir) / 'report.html'}` |"
        )
    job_rows = []
    for name, result in summary["jobs"].items():
        metrics = {**result.get("final_train_metrics", {}), **{f"eval/{k}": v for k, v in result.get("eval", {}).items()}}
        shown = ", ".join(f"{key} {value:.4g}" for key, value in sorted(metrics.items()) if isinstance(value, (int, float)))
        job_rows.append(
            f"| {name} | {spec.jobs[name].algorithm} | {result.get('steps')} | {shown} | `{result['model_dir']}` | "
            f"`{Path(spec.output_dir) / 'jobs' / name}` |"
        )
    create_markdown_artifact(
        key="pipeline-summary",
        description=f"pipeline outputs in {summary['output_dir']}",
        markdown=(
            f"## Pipeline `{summary['output_dir']}`\n\n"
            "| dataset | kind | template | rows | quarantined | shards | contract report |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(dataset_rows)
            + "\n\n| job | algorithm | steps | metrics | model | run folder (TensorBoard, metrics.jsonl) |\n|---|---|---|---|---|---|\n"
            + "\n".join(job_rows)
            + "\n"
        ),
    )
