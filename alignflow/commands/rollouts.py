"""``alignflow rollouts RUN_DIR``: an online RL run's rollouts, verified, summarised per step, a few shown,
and judged by the rollout contract."""

from __future__ import annotations

from pathlib import Path

import typer


def rollouts_command(
    run_dir: Path = typer.Argument(..., help="an online RL run's output folder (the one holding rollouts/)"),
    head: int = typer.Option(3, "-n", "--head", help="rollouts to show in full, from the last step"),
) -> None:
    """Check every rollout file against its sha256; print per step the rollouts, empty completions and
    mean rewards, then the last step's first rollouts, then the rollout contract's table (finite rewards,
    advantages and log-probs; empty completions flagged), written to rollouts/report.html. Exit 1 when
    the contract fails."""
    from align_core.errors import UsageError
    from align_core.rollouts import read_rollouts, summarize_steps
    from data_contracts.report import render_text
    from data_contracts.rollouts import require_valid_rollouts, rollout_validation

    table = read_rollouts(run_dir)
    steps = summarize_steps(table)
    for summary in steps:
        means = "  ".join(f"{name} {value:.4g}" for name, value in summary.means().items())
        typer.echo(f"step {summary.step:>5}  {summary.rows} rollouts  {summary.empty} empty  {means}")
    last = table.filter(table.column("step").to_numpy() == steps[-1].step).slice(0, head).to_pylist()
    for row in last:
        typer.echo("\n" + format_rollout(row))
    typer.echo("\n" + render_text(rollout_validation(run_dir)))
    try:
        require_valid_rollouts(run_dir)
    except UsageError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def format_rollout(row: dict) -> str:
    """A rollout in three lines: step, prompt id, rewards per source and advantage; the prompt's end; the completion."""
    scores = "  ".join(f"{name} {row[name]:.4g}" for name in row
                       if name in ("reward", "cost", "advantage") or name.startswith(("reward/", "cost/")))
    return "\n".join([f"[step {row['step']} / {row['prompt_id']}] {scores}",
                      f"  prompt:     {row['prompt'][-200:]!r}", f"  completion: {row['completion'][:200]!r}"])


def register(app: typer.Typer) -> None:
    app.command("rollouts")(rollouts_command)
