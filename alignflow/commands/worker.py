"""``alignflow worker start --pool POOL [--limit N] [--name NAME]``: a Prefect process worker for a work pool.

The worker polls the server for the pool's scheduled and triggered runs and starts each in a subprocess
(in the folder the deployment names). Run as many as you like, on as many machines as reach the server:
they share the pool's queue, each taking at most ``--limit`` runs at once. It is Prefect's own worker
(``prefect worker start --type process``), pointed at the server ``alignflow server start`` recorded.
"""

from __future__ import annotations

import os
import sys

import typer

worker_app = typer.Typer(help="Prefect workers that run work-pool deployments.", no_args_is_help=True)


@worker_app.command("start")
def worker_start(
    pool: str = typer.Option(..., "--pool", help="the work pool to take runs from (alignflow deploy --pool)"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="runs at once at most (default: no limit)"),
    name: str | None = typer.Option(None, "--name", help="the worker's name in the UI (default: Prefect's)"),
) -> None:
    """Run a process worker for POOL until stopped (Ctrl-C)."""
    from alignflow.commands.deploy import require_real_server

    api_url = require_real_server()  # also exports the recorded server's URL for the worker
    os.environ["PREFECT_API_URL"] = api_url
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
               "--install-policy", "never", *(["--limit", str(limit)] if limit else []), *(["--name", name] if name else [])]
    typer.echo(f"worker for pool {pool!r} on {api_url}", err=True)
    sys.stdout.flush()
    os.execv(sys.executable, command)  # Prefect's worker is the process: signals reach it directly


def register(app: typer.Typer) -> None:
    app.add_typer(worker_app, name="worker")
