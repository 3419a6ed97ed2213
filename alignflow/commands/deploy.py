"""``alignflow deploy [PIPELINE.yaml] --name NAME --cron CRON [--pool POOL]``: a scheduled deployment.

``flow.serve`` registers the deployment with its schedule on the Prefect server and then keeps
running: this process is the one that starts the scheduled (and manually triggered) runs, each in a
subprocess in the current folder. Stopping it (Ctrl-C, SIGTERM) pauses the schedule.
Schedules need a real server, so the command refuses to run against Prefect's temporary one.

With ``--pool`` the deployment is registered to a process work pool instead and the command returns:
``alignflow worker start --pool POOL`` processes, on this machine or any other that reaches the server
and has the code at the same path, pick up its runs (``alignflow/commands/worker.py``).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from align_core.errors import UsageError
from alignflow.commands.data import parse_options
from alignflow.server import api_is_healthy, use_recorded_server

# The project's flows by name: `runs retry` finds a run's code here when the run has no deployment.
PROJECT_FLOWS = {
    "pipeline": "flows.pipeline:pipeline",
    "materialize": "flows.materialize:materialize",
}
PIPELINE_ENTRYPOINT = PROJECT_FLOWS["pipeline"]


def is_file_entrypoint(entrypoint: str) -> bool:
    """``path/to/file.py:func`` (loaded as a script) rather than ``package.module:func`` (imported)."""
    return entrypoint.rpartition(":")[0].endswith(".py")


def load_flow(entrypoint: str):
    """The Prefect flow at ``path/file.py:func``, ``package.module:func`` or ``package.module.func``."""
    from prefect.flows import Flow, load_flow_from_entrypoint

    # Prefect reads `a.b:c` as a file path; a module path is spelled `a.b.c`.
    target = entrypoint if is_file_entrypoint(entrypoint) else entrypoint.replace(":", ".")
    try:
        loaded = load_flow_from_entrypoint(target, use_placeholder_flow=False)
    except Exception as error:  # a missing file, module or name, or the module raising on import
        raise UsageError(f"cannot load the flow {entrypoint!r} (expected path/file.py:func or package.module:func): {error}") from error
    if not isinstance(loaded, Flow):
        raise UsageError(f"{entrypoint!r} is not a Prefect flow")
    return loaded


def check_parameters(flow, parameters: dict[str, Any]) -> None:
    """Fail before serving when a parameter is unknown or a required one is missing."""
    signature = inspect.signature(flow.fn)
    accepted = list(signature.parameters)
    unknown = sorted(set(parameters) - set(accepted))
    if unknown:
        raise UsageError(f"flow {flow.name!r} has no parameter {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    missing = [name for name, p in signature.parameters.items() if p.default is inspect.Parameter.empty and name not in parameters]
    if missing:
        raise UsageError(f"flow {flow.name!r} needs {', '.join(missing)}: pass --param NAME=VALUE (or the config file for `config`)")


def require_real_server() -> str:
    """The API URL of a running Prefect server; a clear error when only the temporary one would start."""
    explicit = bool(os.environ.get("PREFECT_API_URL"))
    use_recorded_server()  # before Prefect is imported: it reads PREFECT_API_URL once
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url  # the environment, the recorded server or a Prefect profile
    if not api_url:
        raise UsageError(
            "schedules need a running Prefect server, and none is configured (only Prefect's temporary "
            "server would start, which cannot schedule runs): run `alignflow server start` first, or export PREFECT_API_URL"
        )
    # Our own server answers /api/health; a URL the user chose (Prefect Cloud, say) may need credentials for it.
    if not explicit and not api_is_healthy(api_url):
        raise UsageError(f"the Prefect server at {api_url} does not answer; check `alignflow server status`")
    return api_url


def build_schedule(cron: str, timezone: str):
    from prefect.schedules import Cron

    try:
        ZoneInfo(timezone)
        return Cron(cron, timezone=timezone)
    except ZoneInfoNotFoundError:
        raise UsageError(f"--timezone {timezone!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
    except ValueError as error:
        raise UsageError(f"--cron {cron!r}: {error} (expected five fields: minute hour day month weekday)") from None


def deploy_command(
    config: Path | None = typer.Argument(None, help="pipeline YAML; passed to the flow as config=<absolute path>"),
    name: str = typer.Option(..., "--name", help="deployment name (the deployment is FLOW/NAME)"),
    cron: str | None = typer.Option(None, "--cron", help='schedule, e.g. "0 3 * * *"; omit to trigger runs by hand'),
    timezone: str = typer.Option("UTC", "--timezone", help="time zone the cron schedule is read in"),
    flow_entrypoint: str = typer.Option(PIPELINE_ENTRYPOINT, "--flow", help="the flow to serve: path/file.py:func or package.module:func"),
    param: list[str] = typer.Option([], "--param", help="flow parameter key=value (repeatable; values read as YAML)"),
    pool: str | None = typer.Option(None, "--pool", help="register to this process work pool and return; "
                                    "`alignflow worker start --pool NAME` processes run it (created if missing)"),
) -> None:
    """Serve a flow as deployment NAME on the running Prefect server (runs until stopped), or with --pool
    register it to a work pool whose workers, here or on any machine that reaches the server, run it."""
    parameters = parse_options(param)
    if config is not None:
        if not config.is_file():
            raise UsageError(f"pipeline config {config} is not a file")
        parameters["config"] = str(config.absolute())
    api_url = require_real_server()

    from prefect.types.entrypoint import EntrypointType

    flow = load_flow(flow_entrypoint)
    check_parameters(flow, parameters)
    schedule = build_schedule(cron, timezone) if cron else None
    when = f"cron {cron!r} ({timezone})" if cron else "no schedule (trigger runs by hand)"
    if pool is not None:
        deploy_to_pool(flow_entrypoint, name, pool, schedule, parameters)
        typer.echo(f"deployment '{flow.name}/{name}' on work pool {pool!r} at {api_url}, {when}.\n"
                   f"Start workers to run it: alignflow worker start --pool {pool}", err=True)
        return
    typer.echo(
        f"serving deployment '{flow.name}/{name}' on {api_url}, {when}.\n"
        "This process starts the deployment's runs: keep it running (Ctrl-C stops it and pauses the schedule).",
        err=True,
    )
    flow.serve(
        name=name,
        schedule=schedule,
        parameters=parameters,
        entrypoint_type=EntrypointType.FILE_PATH if is_file_entrypoint(flow_entrypoint) else EntrypointType.MODULE_PATH,
    )


def code_location(entrypoint: str) -> tuple[Path, str]:
    """(folder, ``file.py:func`` relative to it) of a flow: a worker's run starts in that folder and loads the
    flow from the file, so the folder must exist at the same path wherever a worker runs (a shared checkout)."""
    if is_file_entrypoint(entrypoint):
        path, _, function = entrypoint.rpartition(":")
        file = Path(path).absolute()
        return file.parent, f"{file.name}:{function}"
    module, _, function = entrypoint.partition(":")
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UsageError(f"cannot find the module of the flow {entrypoint!r}")
    root = Path(spec.origin).parents[module.count(".")]  # the folder the top-level package sits in
    return root, f"{Path(spec.origin).relative_to(root)}:{function}"


def deploy_to_pool(entrypoint: str, name: str, pool: str, schedule, parameters: dict[str, Any]) -> None:
    """Register deployment ``name`` of the flow to process work pool ``pool`` (made if missing)."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        except ObjectAlreadyExists:
            if client.read_work_pool(pool).type != "process":
                raise UsageError(f"work pool {pool!r} exists with type {client.read_work_pool(pool).type!r}; "
                                 "alignflow deploys to process pools") from None
    folder, relative = code_location(entrypoint)
    flow = Flow.from_source(source=str(folder), entrypoint=relative)
    flow.deploy(name=name, work_pool_name=pool, schedule=schedule, parameters=parameters, print_next_steps=False,
                build=False, push=False)


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy_command)
