"""``alignflow rollouts RUN_DIR``: an online RL run's rollouts, verified, summarised per step, a few shown."""

from __future__ import annotations

from pathlib import Path

import typer


def rollouts_command(
    run_dir: Path = typer.Argument(..., help="a grpo/rloo run's output folder (the one holding rollouts/)"),
    head: int = typer.Option(3, "-n", "--head", help="rollouts to show in full, from the last step"),
) -> None:
    """Check every rollout file against its sha256 and every reward, advantage and log-prob for being
    finite; print per step the rows, empty completions and mean rewards, then the last step's first rows.
    Exit 1 when a value is not finite."""
    from align_core.rollouts import check_rollouts
    from align_core.trainers.grpo import read_rollouts

    table = read_rollouts(run_dir)
    problems, steps = check_rollouts(table)
    for summary in steps:
        means = "  ".join(f"{name} {value:.4g}" for name, value in summary.means().items())
        typer.echo(f"step {summary.step:>5}  {summary.rows} rollouts  {summary.empty} empty  {means}")
    last = table.filter(table.column("step").to_numpy() == steps[-1].step).slice(0, head).to_pylist()
    for row in last:
        typer.echo(f"\n[{row['prompt_id']}] reward {row['reward']:.4g}  advantage {row['advantage']:.4g}")
        typer.echo(f"  prompt:     {row['prompt'][-200:]!r}")
        typer.echo(f"  completion: {row['completion'][:200]!r}")
    for problem in problems:
        typer.echo(f"error: {problem}", err=True)
    if problems:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("rollouts")(rollouts_command)
