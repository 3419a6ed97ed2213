"""The ``alignflow`` command. Each area adds its commands in ``alignflow/commands/<area>.py`` with a
``register(app)`` function, so the CLI grows without one file everyone edits."""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from align_core.errors import UsageError
from alignflow import commands

app = typer.Typer(
    name="alignflow",
    help="Materialise, validate and train on preference data as cached, resumable Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
    importlib.import_module(f"{commands.__name__}.{module_info.name}").register(app)


def fail_usage(message: str) -> None:
    """Bad usage or an unreadable input: one line on stderr, exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def main() -> None:
    try:
        app()
    except UsageError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
