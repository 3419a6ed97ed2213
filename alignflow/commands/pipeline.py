"""``alignflow pipeline run PIPELINE.yaml`` and ``alignflow pipeline check PIPELINE.yaml``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

pipeline_app = typer.Typer(help="Run end-to-end pipelines (materialise -> validate -> train jobs).", no_args_is_help=True)


@pipeline_app.command("check")
def check_command(config: Path = typer.Argument(..., help="pipeline YAML")) -> None:
    """Validate the YAML and print the job order, without running anything."""
    from flows.pipeline_config import load_pipeline

    spec = load_pipeline(config)
    typer.echo(f"output_dir {spec.output_dir}")
    typer.echo(f"datasets   {', '.join(spec.datasets)}")
    typer.echo(f"models     {', '.join(spec.models) or '-'}")
    for number, wave in enumerate(spec.job_order(), 1):
        typer.echo(f"wave {number}     " + ", ".join(f"{name} ({spec.jobs[name].algorithm} from {spec.jobs[name].model})" for name in wave))


@pipeline_app.command("run")
def run_command(config: Path = typer.Argument(..., help="pipeline YAML")) -> None:
    """Run the pipeline; a rerun after a failure skips finished steps (Cached) and resumes training.
    Prints the summary as JSON, and the output folder last."""
    from flows.pipeline_config import load_pipeline

    load_pipeline(config)  # a bad config fails here, before a Prefect server starts
    from flows.pipeline import pipeline

    summary = pipeline(config=str(config.absolute()))
    typer.echo(json.dumps(summary, indent=2, default=str))
    typer.echo(summary["output_dir"])


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
