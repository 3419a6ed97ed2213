"""``alignflow pipeline run PIPELINE.yaml`` and ``alignflow pipeline check PIPELINE.yaml``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from align_core.errors import UsageError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State

    from flows.pipeline_config import PipelineConfig

pipeline_app = typer.Typer(
    help="Run end-to-end pipelines (materialise -> validate -> train jobs).", no_args_is_help=True
)


@pipeline_app.command("check")
def check_command(config: Path = typer.Argument(..., help="pipeline YAML")) -> None:
    """Check everything `pipeline run` needs (sources, templates, kinds, training configs, output paths)
    and print the job order, without running anything."""
    from flows.pipeline_config import check_pipeline, load_pipeline

    spec = load_pipeline(config)
    check_pipeline(spec)
    typer.echo(f"output_dir {spec.output_dir}")
    typer.echo(f"datasets   {', '.join(spec.datasets)}")
    typer.echo(f"models     {', '.join(spec.models) or '-'}")
    for number, wave in enumerate(spec.job_order(), 1):
        jobs = ", ".join(f"{name} ({spec.jobs[name].algorithm} from {spec.jobs[name].model})" for name in wave)
        typer.echo(f"wave {number}     {jobs}")


@pipeline_app.command("run")
def run_command(config: Path = typer.Argument(..., help="pipeline YAML")) -> None:
    """Run the pipeline; a rerun after a failure skips finished steps (Cached) and resumes training.

    Prints the summary as JSON, the table of steps (stderr), and the output folder last; a failed run
    prints the table and its error instead, and exits non-zero."""
    from alignflow.cli import failure_logs_off_console
    from flows.pipeline_config import check_pipeline, load_pipeline

    spec = load_pipeline(config)
    check_pipeline(spec)  # a bad config or input fails here, before a Prefect server starts
    from flows.pipeline import pipeline

    with failure_logs_off_console():  # report_run says a failure in one line
        state = pipeline(config=str(config.absolute()), return_state=True)
    if state.is_completed():
        typer.echo(json.dumps(state.result(), indent=2, default=str))
    report_run(state, spec)
    typer.echo(spec.output_dir)


def report_run(state: State, spec: PipelineConfig) -> None:
    """Print the table of a pipeline run's steps, read from Prefect's record of the run, to stderr;
    when the run failed, then print its error in one line and exit 1 (2 for a usage error)."""
    from flows.pipeline import format_step_table, read_steps, step_rows

    sys.stdout.flush()  # the table follows whatever the caller printed
    rows = step_rows(read_steps(state.state_details.flow_run_id), spec)
    typer.echo(f"\nsteps of pipeline run {state.state_details.flow_run_id}:\n{format_step_table(rows)}", err=True)
    if state.is_completed():
        return
    error = state.result(raise_on_failure=False)
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    typer.echo(f"error: pipeline failed: {message}", err=True)
    raise SystemExit(2 if isinstance(error, UsageError) else 1)


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
