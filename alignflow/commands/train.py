"""``alignflow train CONFIG.yaml [section.key=value ...] [--nproc N] [--hostfile F --num-nodes N ...]``."""

from __future__ import annotations

import sys
from pathlib import Path

import typer


def train_command(
    config: Path = typer.Argument(..., help="YAML training config (train_cfgs / data_cfgs / model_cfgs / logger_cfgs)"),
    overrides: list[str] | None = typer.Argument(None, help="dotted overrides, e.g. train_cfgs.epochs=2"),
    nproc: int = typer.Option(1, "--nproc", help="local ranks; more than 1 goes through the launcher"),
    launcher: str = typer.Option("deepspeed", help="deepspeed | torchrun (used when --nproc > 1 or over nodes)"),
    hostfile: Path | None = typer.Option(None, help="deepspeed: the nodes ('hostname slots=N' lines), started over ssh"),
    num_nodes: int | None = typer.Option(None, help="nodes of the run"),
    node_rank: int | None = typer.Option(None, help="torchrun: this node's rank (run the command on every node)"),
    master_addr: str | None = typer.Option(None, help="the address of node 0, reachable from every node"),
    master_port: int | None = typer.Option(None, help="a free port on node 0 (default: one is picked)"),
    launcher_arg: list[str] | None = typer.Option(None, "--launcher-arg", help="any other launcher flag, verbatim (repeat)"),
) -> None:
    """Train on validated datasets in a subprocess; resumes from the last checkpoint in output_dir. Prints the model
    folder last. --nproc ranks per node; with --hostfile / --num-nodes the launcher spreads them over nodes."""
    from align_core.errors import TrainingFailed, UsageError
    from align_core.launch import multinode_arguments

    try:
        nodes = multinode_arguments(launcher, hostfile, num_nodes, master_addr, master_port, node_rank)
        result = _train(config, list(overrides or []), nproc, launcher, [*nodes, *(launcher_arg or [])])
    except UsageError as error:
        from alignflow.cli import fail_usage

        fail_usage(str(error))
    except TrainingFailed as error:  # its output was streamed above: one line says what failed
        typer.echo(f"error: {error.summary}", err=True)
        raise typer.Exit(error.exit_code or 1) from error
    print(f"trained {result['steps']} steps; eval: {result.get('eval') or '-'}", file=sys.stderr)
    typer.echo(result["model_dir"])


def _train(config: Path, overrides: list[str], nproc: int, launcher: str, launcher_args: list[str]) -> dict:
    from align_core.config import load_config
    from align_core.launch import launch_and_wait
    from data_contracts.gate import require_validated
    from data_contracts.rollouts import gate_rollouts

    train_config = load_config(config, overrides)  # a bad key fails here, before any process starts
    for dataset_dir in train_config.data_cfgs.all_datasets():
        require_validated(dataset_dir)
    # The training log goes to stderr: stdout carries only the model folder, for scripts.
    result = launch_and_wait(config, overrides, nproc, launcher, launcher_args, emit=lambda line: typer.echo(line, err=True))
    gate_rollouts(train_config)  # an RL run whose rollouts break their contract is an error
    return result


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
