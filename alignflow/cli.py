"""The ``alignflow`` command. Each area adds its commands in ``alignflow/commands/<area>.py`` with a
``register(app)`` function, so the CLI grows without one file everyone edits."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

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


def one_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def run_flow(flow: Any, **parameters: Any) -> Any:
    """Run a Prefect flow for a command and return its result.

    A failed run is one line on stderr, ``error: ...``, and exit 2 for a usage error (bad input found
    inside the run: a truncated file, a bad row count), 1 for anything else, whose line names the run
    so its traceback can be read (``prefect flow-run logs``). Prefect's own log of the traceback is
    kept off the terminal at the default log level (``failure_logs_off_console``).
    """
    with failure_logs_off_console():
        state = flow(**parameters, return_state=True)
    if state.is_completed():
        return state.result()
    error = state.result(raise_on_failure=False)
    if isinstance(error, UsageError):
        fail_usage(one_line(error))
    run_id = state.state_details.flow_run_id
    typer.echo(f"error: {flow.name} failed: {one_line(error)} (traceback: prefect flow-run logs {run_id})", err=True)
    raise typer.Exit(1)


class _NoRunFailures(logging.Filter):
    """Drops the error records of flow and task runs (a failure and its traceback, 60-200 lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno >= logging.ERROR and record.name.startswith(("prefect.flow_runs", "prefect.task_runs")))


@contextmanager
def failure_logs_off_console() -> Iterator[None]:
    """While a command runs a flow, a failing run's error records stay off the console: the command says
    the error in one line. They still reach the run's logs on the server (Prefect's API handler sits on
    the run loggers, not on the console), and ``PREFECT_LOGGING_LEVEL=INFO`` or lower shows them again."""
    if logging.getLogger("prefect").getEffectiveLevel() < logging.WARNING:
        yield
        return
    handlers = list(logging.getLogger().handlers)  # the console handler: run loggers propagate to the root
    quiet = _NoRunFailures()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def main() -> None:
    try:
        app()
    except UsageError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
