"""``alignflow server start|stop|status``: a real Prefect server on 127.0.0.1 for schedules and the UI."""

from __future__ import annotations

import typer

from alignflow import server

server_app = typer.Typer(help="Run a Prefect server in the background (needed for scheduled deployments).", no_args_is_help=True)


@server_app.command("start")
def start(
    port: int = typer.Option(server.DEFAULT_PORT, help="port on 127.0.0.1"),
    timeout: float = typer.Option(120.0, help="seconds to wait for /api/health (the first start migrates the database)"),
) -> None:
    """Start `prefect server start` in the background and wait until it is healthy."""
    record, started = server.start_server(port=port, timeout=timeout)
    typer.echo(f"{'started' if started else 'already running'}: Prefect server pid {record.pid}, log {record.log}")
    typer.echo(f"UI          {record.ui_url}")
    typer.echo(f"API         {record.api_url}")
    typer.echo(f"alignflow commands use it automatically; for other tools: export PREFECT_API_URL={record.api_url}")


@server_app.command("status")
def status() -> None:
    """Running or not, URL, pid and health; exit 0 only when running and healthy."""
    current = server.server_status()
    record = current.record
    if not current.running:
        stale = f" (stale record of pid {record.pid})" if record else ""
        typer.echo(f"not running{stale}")
        raise typer.Exit(1)
    typer.echo(f"running     pid {record.pid} since {record.started}")
    typer.echo(f"health      {'healthy' if current.healthy else 'NOT answering ' + record.api_url + '/health'}")
    typer.echo(f"UI          {record.ui_url}")
    typer.echo(f"API         {record.api_url}")
    typer.echo(f"log         {record.log}")
    if not current.healthy:
        raise typer.Exit(1)


@server_app.command("stop")
def stop(timeout: float = typer.Option(20.0, help="seconds to wait after SIGTERM before SIGKILL")) -> None:
    """Terminate the server's process group and remove its pid file; does nothing if none runs."""
    stopped = server.stop_server(timeout=timeout)
    typer.echo(f"stopped Prefect server pid {stopped.pid} ({stopped.ui_url})" if stopped else "not running")


def register(app: typer.Typer) -> None:
    app.add_typer(server_app, name="server")
