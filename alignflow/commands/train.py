"""``alignflow train CONFIG.yaml [section.key=value ...] [--nproc N]``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer


def train_command(
    config: Path = typer.Argument(..., help="YAML training config (train_cfgs / data_cfgs / model_cfgs / logger_cfgs)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="dotted overrides, e.g. train_cfgs.epochs=2"),
    nproc: int = typer.Option(1, "--nproc", help="local ranks; more than 1 goes through the launcher"),
    launcher: str = typer.Option("deepspeed", help="deepspeed | torchrun (used when --nproc > 1)"),
) -> None:
    """Train on validated datasets; resumes from the last checkpoint in output_dir. Prints the model folder last."""
    from align_core.errors import UsageError

    try:
        result = _train(config, list(overrides or []), nproc, launcher)
    except UsageError as error:
        from alignflow.cli import fail_usage

        fail_usage(str(error))
    print(f"trained {result['steps']} steps; eval: {result.get('eval') or '-'}", file=sys.stderr)
    typer.echo(result["model_dir"])


def _train(config: Path, overrides: list[str], nproc: int, launcher: str) -> dict:
    from align_core.config import load_config
    from align_core.launch import launch_command, launch_env, parse_result, run, run_streaming
    from data_contracts.gate import require_validated

    train_config = load_config(config, overrides)  # a bad key fails here, before any process starts
    for dataset_dir in [*train_config.data_cfgs.train_datasets, *train_config.data_cfgs.eval_datasets]:
        require_validated(dataset_dir)
    if nproc == 1:
        return run(config, overrides)
    lines: list[str] = []

    def echo(line: str) -> None:
        lines.append(line)
        typer.echo(line)

    exit_code = run_streaming(launch_command(config, overrides, nproc, launcher), echo, launch_env(nproc))
    if exit_code != 0:
        typer.echo(f"error: training exited with code {exit_code}", err=True)
        raise typer.Exit(exit_code)
    return parse_result(lines)


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
