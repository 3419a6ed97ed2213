"""``alignflow validate DIR``: run a dataset folder's data contract and print what it found."""

from __future__ import annotations

from pathlib import Path

import typer

from align_core.errors import UsageError


def validate_command(
    dataset_dir: Path = typer.Argument(..., help="a dataset folder (OUT/<digest>) holding manifest.json"),
    suite: str | None = typer.Option(None, "--suite", "-s", help="suite name or .yaml path (default: the dataset kind's suite)"),
    overrides: list[str] = typer.Option(
        [], "--set", help="override a threshold, e.g. duplicate_prompts.mostly=0.9 or turn_chars_in_bounds.severity=error"
    ),
) -> None:
    """Validate every shard against its expectation suite: prints a table of expectations with counts,
    writes validation.json and report.html beside the manifest, exits 0 on pass and 1 on fail."""
    from data_contracts.report import render_text
    from data_contracts.runner import validate_dataset
    from data_contracts.suite import parse_override_pairs

    try:
        result = validate_dataset(dataset_dir, suite=suite, overrides=parse_override_pairs(overrides))
    except UsageError as error:
        from alignflow.cli import fail_usage

        fail_usage(str(error))
    typer.echo(render_text(result))
    typer.echo(f"report: {result.report_path}")
    raise typer.Exit(0 if result.passed else 1)


def register(app: typer.Typer) -> None:
    app.command("validate")(validate_command)
