"""The end-to-end pipeline: materialise + validate every dataset once, prepare models, then train
each job (tokenise -> [reference log-probs] -> train -> evaluate) in dependency order.

Every step is a cached Prefect task keyed by content, so rerunning a failed pipeline shows the
finished steps as Cached and resumes the interrupted training from its last checkpoint. Each step
runs under tags naming what it is for (``dataset:alpaca``, ``job:sft``, ``model:tiny``), which
label it in the Prefect UI and in ``step_rows``, the table of what a run did.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

from prefect import flow, get_run_logger, tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterParentTaskRunId,
    TaskRunFilter,
    TaskRunFilterFlowRunId,
)
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from prefect.exceptions import MissingResult
from prefect.futures import PrefectFuture

from align_core.config import build_config, dump_config
from align_core.io import FolderLock, atomic_write_text
from align_core.markdown import markdown_table
from align_core.shards.dataset import ShardDataset
from align_core.sources import SourceInfo
from align_core.trainers.cached_steps import tokenize_specs
from align_core.trainers.rundir import set_aside_other_run
from data_contracts.results import ValidationResult
from flows.materialize import materialize, materialize_on
from flows.pipeline_config import LauncherEntry, PipelineConfig, check_pipeline, job_sections, load_pipeline
from tasks.artifacts import publish_markdown
from tasks.contamination import check_contamination
from tasks.crashed_runs import start_of_run
from tasks.evaluate import evaluate_model
from tasks.models import build_tiny, check_model_path
from tasks.reference import reference_steps
from tasks.tokenize import tokenize
from tasks.train import train_model

LABEL_KINDS = ("job", "dataset", "model")  # the tags a step is labelled by, in the order its label shows them
DIGEST = re.compile(r"[0-9a-f]{16,}")  # a content digest in a folder name; the table shows its first 12 characters


def labelled(**names: str) -> AbstractContextManager:
    """Tag the runs started inside with what they are for: ``labelled(job="sft")`` -> tag ``job:sft``."""
    return tags(*(f"{kind}:{name}" for kind, name in names.items()))


def one_run_per_output_dir(run: Callable[[str], dict[str, Any]]) -> Callable[[str], dict[str, Any]]:
    """The flow holds its output folder's lock for the whole run: a second run of the same pipeline
    fails at once, naming this one's pid, instead of deleting its files. Then ``start_of_run``."""

    @functools.wraps(run)
    def locked(config: str) -> dict[str, Any]:
        with FolderLock(load_pipeline(config).output_dir, "a pipeline run"):
            start_of_run(FlowRunContext.get().flow_run)
            return run(config)

    return locked


@flow(name="pipeline")
@one_run_per_output_dir
def pipeline(config: str) -> dict[str, Any]:
    """Run the pipeline described by the YAML file ``config``; returns every output's location."""
    spec = load_pipeline(config)
    check_pipeline(spec)  # a deployment's run has no CLI before it: the same checks as `pipeline check`
    output_dir = Path(spec.output_dir)

    dataset_dirs = {}
    for name, entry in spec.datasets.items():
        with labelled(dataset=name):
            dataset_dirs[name] = materialize_on(spec.dataset_runner(name))(
                source=entry.source,
                template=entry.template,
                kind=entry.kind,
                out=str(output_dir / "shards"),
                template_options=entry.options,
                template_module=entry.template_module,
                source_format=entry.format,
                suite=entry.suite,
                media_root=entry.media_root,
                runner=spec.dataset_runner(name),
            )
    model_dirs = {}
    for name, entry in spec.models.items():
        with labelled(model=name):
            if entry.tiny:
                model_dirs[name] = build_tiny(name, entry.tiny.model_dump(), str(output_dir / "models"))
            else:
                model_dirs[name] = check_model_path(entry.path)

    results: dict[str, dict[str, Any]] = {}
    evaluations: dict[str, dict[str, Any]] = {}
    for wave in spec.job_order():
        running, evaluating = {}, {}
        for name in wave:
            def model_dir(ref: str) -> str:  # a models entry's folder, or a finished job's trained model
                return results[ref]["model_dir"] if ref in spec.jobs else model_dirs[ref]

            with labelled(job=name):
                running[name] = submit_job(spec, name, model_dir, dataset_dirs)
                if spec.jobs[name].evaluate:
                    evaluating[name] = submit_evaluation(spec, name, running[name], model_dir, dataset_dirs)
        for name, future in running.items():
            results[name] = future.result()
        for name, future in evaluating.items():
            evaluations[name] = future.result()

    summary = {"output_dir": str(output_dir), "datasets": dataset_dirs, "models": model_dirs, "jobs": results,
               "evaluations": evaluations}
    publish_summary(spec, summary)
    return summary


def submit_job(spec: PipelineConfig, name: str, model_dir: Callable[[str], str], dataset_dirs: dict[str, str]) -> PrefectFuture:
    """Write job ``name``'s config, then submit its steps: tokenise each of its datasets [-> reference
    log-probs] -> train. Returns the training's future."""
    job = spec.jobs[name]
    config_path, train_config = write_job_config(spec, name, model_dir, dataset_dirs)
    superseded = set_aside_other_run(train_config)  # the job's inputs changed since its last run
    if superseded is not None:
        get_run_logger().warning("job %s: its inputs changed; the previous run was moved to %s", name, superseded)
    datasets: dict[str, str] = {}  # folder -> the job's name for it: a folder named twice is tokenised once
    for dataset in job.training_datasets():
        datasets.setdefault(dataset_dirs[dataset], dataset)
    prerequisites = []
    sources = [dataset_dirs[dataset] for dataset in job.contamination_sources(spec)]
    if sources:  # a warning with the overlapping row ids, before the training it concerns
        names = {folder: dataset for dataset, folder in dataset_dirs.items()}
        prerequisites += [check_contamination.submit(dataset_dirs[dataset], sources, names) for dataset in job.train]
    for token_spec in tokenize_specs(train_config, list(datasets)):
        with labelled(dataset=datasets[token_spec.dataset_dir]):
            tokenized = tokenize.submit(token_spec, spec.runner)
            # reference log-probs (dpo, ipo, kto): each cached column computed once, before training
            references = reference_steps(train_config, {str(token_spec.cache_dir()): tokenized}, spec.runner)
            prerequisites += [tokenized, *references]
    launcher = job.launcher or LauncherEntry()
    return train_model.submit(str(config_path), nproc=job.nproc, launcher=launcher.name,
                              launcher_args=launcher.arguments(), wait_for=prerequisites)


def submit_evaluation(spec: PipelineConfig, name: str, trained: PrefectFuture, model_dir: Callable[[str], str],
                      dataset_dirs: dict[str, str]) -> PrefectFuture:
    """Evaluate job ``name``'s model once it is trained, against its starting model unless the job names
    another reference; into ``<output_dir>/evaluations/<job>/``."""
    entry = spec.jobs[name].evaluate
    evaluation = {
        **entry.model_dump(exclude={"datasets", "reward_model", "reference"}),
        "datasets": [dataset_dirs[dataset] for dataset in entry.datasets], "names": list(entry.datasets),
        "reward_model": model_dir(entry.reward_model) if entry.reward_model else None,
        "reference": model_dir(entry.reference or spec.jobs[name].model),
    }
    return evaluate_model.submit(trained, evaluation, str(Path(spec.output_dir) / "evaluations" / name))


def write_job_config(spec: PipelineConfig, name: str, model_dir: Callable[[str], str], dataset_dirs: dict[str, str]):
    """The job's full training config (its ``config`` sections + what the pipeline decides), written as YAML."""
    sections = job_sections(spec, name, model_dir, dataset_dirs)  # the sections check_pipeline built ahead
    train_config = build_config(sections, source=f"jobs.{name}.config")
    config_path = Path(spec.output_dir) / "configs" / f"{name}.yaml"
    atomic_write_text(config_path, dump_config(train_config))
    return config_path, train_config


DATASET_COLUMNS = ["dataset", "kind", "template", "rows", "quarantined", "shards", "contract report"]
JOB_COLUMNS = ["job", "algorithm", "steps", "metrics", "model", "run folder (TensorBoard, metrics.jsonl)"]


def publish_summary(spec: PipelineConfig, summary: dict[str, Any]) -> None:
    """The ``pipeline-summary`` artifact: every dataset and trained model, and where it is."""
    dataset_rows = []
    for name, folder in summary["datasets"].items():
        manifest = ShardDataset(folder).manifest
        report = Path(folder) / "report.html"
        counts = (manifest.rows, manifest.quarantined)
        dataset_rows.append((name, manifest.kind, manifest.template, *counts, f"`{folder}`", f"`{report}`"))
    job_rows = []
    for name, result in summary["jobs"].items():
        evaluation = {f"eval/{key}": value for key, value in result.get("eval", {}).items()}
        metrics = sorted({**result.get("final_train_metrics", {}), **evaluation}.items())
        shown = ", ".join(f"{key} {value:.4g}" for key, value in metrics if isinstance(value, (int, float)))
        run_dir = Path(spec.output_dir) / "jobs" / name
        algorithm = spec.jobs[name].algorithm
        job_rows.append((name, algorithm, result.get("steps"), shown, f"`{result['model_dir']}`", f"`{run_dir}`"))
    publish_markdown(
        key="pipeline-summary",
        description=f"pipeline outputs in {summary['output_dir']}",
        title=f"Pipeline `{summary['output_dir']}`",
        level=2,
        tables=[
            markdown_table(DATASET_COLUMNS, dataset_rows, right_aligned=(3, 4)),
            markdown_table(JOB_COLUMNS, job_rows),
        ],
    )


# What a run did: its steps as Prefect recorded them, as the table `alignflow pipeline run` prints.


@dataclass(frozen=True)
class StepRun:
    """One task run of a pipeline run, as Prefect recorded it."""

    task: str  # the task's name: "tokenize"
    tags: tuple[str, ...]  # what it ran for: ("job:sft", "dataset:alpaca")
    state_type: str  # Prefect's state type: "COMPLETED", "FAILED", "PENDING", ...
    state_name: str  # Prefect's state name: "Completed", "Cached", "NotReady", ...
    seconds: float | None = None  # start to end; None when it never started
    result: Any = None  # what it returned (completed runs only)
    flow: str | None = None  # the subflow it ran in ("materialize"); None for the pipeline's own tasks


class StepRow(NamedTuple):
    """A line of the table, as printed."""

    step: str
    state: str
    duration: str
    output: str


def read_steps(flow_run_id: UUID) -> list[StepRun]:
    """The task runs of a pipeline run, oldest first, each subflow's task runs in place of the subflow."""
    with get_client(sync_client=True) as client:
        return _read_steps(client, flow_run_id, flow=None)


def _read_steps(client, flow_run_id: UUID, flow: str | None) -> list[StepRun]:
    in_this_run = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
    task_runs = client.read_task_runs(task_run_filter=in_this_run)
    if not task_runs:
        return []
    # run order: a submitted task's run is created at once but starts once what it waits for is done
    task_runs.sort(key=lambda run: run.start_time or run.expected_start_time)
    # a subflow call is a placeholder task run in the parent; the subflow's run points back at it
    placeholders = FlowRunFilterParentTaskRunId(any_=[run.id for run in task_runs])
    subflow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_task_run_id=placeholders))
    subflow_run_of = {subflow_run.parent_task_run_id: subflow_run.id for subflow_run in subflow_runs}
    steps = []
    for run in task_runs:
        name = run.name.rsplit("-", 1)[0]  # Prefect names a run "<task or flow name>-<counter>"
        if run.id in subflow_run_of:
            steps += _read_steps(client, subflow_run_of[run.id], flow=name)
            continue
        result = _stored_result(run.state) if run.state.is_completed() else None
        seconds = (run.end_time - run.start_time).total_seconds() if run.start_time and run.end_time else None
        steps.append(StepRun(name, tuple(run.tags), run.state.type.value, run.state.name, seconds, result, flow))
    return steps


def _stored_result(state: State) -> Any:
    """What a completed run returned, read back from result storage; None where nothing was stored: a run
    without a cache key (validate-shards, reference-logps before their output exists) persists no result."""
    try:
        return state.result(raise_on_failure=False)
    except (MissingResult, ValueError, OSError):  # ValueError: Prefect's local storage has no such file
        return None


def step_rows(steps: list[StepRun], spec: PipelineConfig) -> list[StepRow]:
    """One row per step in run order, then a Skipped row for each dataset, tiny model and job of ``spec``
    that never started because something before it failed.

    A step Prefect left pending (``NotReady``: a task it waits for failed) is Skipped too; otherwise
    the state is Prefect's (Completed, Cached, Failed, Crashed, ...).
    """
    rows = [
        StepRow(
            step_label(step.task, step.tags, step.flow),
            "Skipped" if step.state_type in ("PENDING", "SCHEDULED") else step.state_name,
            format_seconds(step.seconds),
            shorten_output(step.result, spec.output_dir) if step.state_type == "COMPLETED" else "-",
        )
        for step in steps
    ]
    planned = [
        *(step_label(materialize.name, [f"dataset:{name}"]) for name in spec.datasets),
        *(step_label(build_tiny.name, [f"model:{name}"]) for name, entry in spec.models.items() if entry.tiny),
        *(step_label(train_model.name, [f"job:{name}"]) for name in spec.jobs),
        *(step_label(evaluate_model.name, [f"job:{name}"]) for name, job in spec.jobs.items() if job.evaluate),
    ]
    started = [row.step for row in rows]
    for label in planned:
        if not any(step == label or step.startswith(f"{label}/") for step in started):
            rows.append(StepRow(label, "Skipped", "-", "-"))
    return rows


def step_label(task: str, tags: tuple[str, ...] | list[str], flow: str | None = None) -> str:
    """``tokenize[sft/alpaca]``: the task and what it ran for (its job, dataset and model tags);
    a subflow's task reads ``materialize[alpaca]/build-shards``."""
    names = [tag.split(":", 1)[1] for kind in LABEL_KINDS for tag in tags if tag.startswith(f"{kind}:")]
    target = f"[{'/'.join(names)}]" if names else ""
    return f"{flow}{target}/{task}" if flow else f"{task}{target}"


def shorten_output(result: Any, output_dir: str | Path) -> str:
    """What a step made, short: a path relative to ``output_dir`` (when inside it) with digests cut
    to 12 characters, a contract's report, a trained model's folder, or a source's sha256."""
    if isinstance(result, SourceInfo):
        return f"sha256 {result.sha256[:12]}"
    if isinstance(result, ValidationResult):
        result = result.report_path
    elif isinstance(result, dict) and "contaminated" in result:  # a contamination check's
        return f"{result['contaminated']} of {result['rows']} rows overlap"
    elif isinstance(result, dict):  # a training result, or an evaluation's
        result = result.get("model_dir") or result.get("path")
    if not isinstance(result, (str, Path)):
        return "-"
    path = Path(result)
    if path.is_relative_to(output_dir):
        path = path.relative_to(output_dir)
    return DIGEST.sub(lambda match: match.group()[:12], str(path))


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def format_step_table(rows: list[StepRow]) -> str:
    """The rows as aligned columns under a header line (durations right-aligned)."""
    table = [StepRow("step", "state", "time", "output"), *rows]
    step, state, duration = (max(len(row[column]) for row in table) for column in range(3))
    lines = (f"{row.step:<{step}}  {row.state:<{state}}  {row.duration:>{duration}}  {row.output}" for row in table)
    return "\n".join(lines)
