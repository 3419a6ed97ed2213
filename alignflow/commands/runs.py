"""``alignflow runs list`` and ``alignflow runs retry RUN_ID``: inspect and rerun flow runs.

They talk to the recorded ``alignflow server`` (or ``PREFECT_API_URL``); with neither, to Prefect's
temporary server, which reads the same database under ``PREFECT_HOME``, so past runs are listed too.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from uuid import UUID

import typer

from align_core.errors import UsageError
from alignflow.commands.data import print_table  # the table layout `shards ls` uses
from alignflow.commands.deploy import PROJECT_FLOWS, load_flow
from alignflow.server import use_recorded_server
from tasks.crashed_runs import CRASH_AFTER_SECONDS, crash_if_gone

runs_app = typer.Typer(help="List and retry Prefect flow runs.", no_args_is_help=True)

TERMINAL_STATES = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@runs_app.callback()
def use_server() -> None:
    """Every runs command talks to the recorded server; set before any Prefect import (Prefect reads PREFECT_API_URL once)."""
    use_recorded_server()


def prefect_client():
    """A synchronous client for the recorded server, PREFECT_API_URL, or the temporary server."""
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def read_flow_run(client, id_or_name: str):
    """The flow run with this UUID or (unique) name; a clear error otherwise."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_flow_run(UUID(id_or_name))
    except ValueError:  # not a UUID: look it up by name
        matches = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[id_or_name])), limit=2)
    except ObjectNotFound:
        matches = []
    if len(matches) != 1:
        problem = "no flow run" if not matches else "more than one flow run"
        raise UsageError(f"{problem} with id or name {id_or_name!r} (see `alignflow runs list`; ids are the first column)")
    return matches[0]


def format_duration(duration: timedelta | None) -> str:
    if duration is None:
        return "-"
    seconds = duration.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def format_time(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


@runs_app.command("list")
def list_runs(
    limit: int = typer.Option(20, "--limit", "-n", help="how many runs, newest first"),
    flow_name: str | None = typer.Option(None, "--flow", help="only runs of this flow, e.g. materialize"),
    state: str | None = typer.Option(None, "--state", help="only runs in this state type, e.g. failed, completed, scheduled"),
) -> None:
    """Flow runs: id, flow, name, state, start, duration."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterId,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    run_filter = None
    if state:
        try:
            state_type = StateType(state.upper())
        except ValueError:
            raise UsageError(f"--state {state!r} is not a state type; one of: {', '.join(t.value.lower() for t in StateType)}") from None
        run_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[state_type])))
    with prefect_client() as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])) if flow_name else None,
            flow_run_filter=run_filter,
            sort=FlowRunSort.START_TIME_DESC,
            limit=limit,
        )
        flow_names = {flow.id: flow.name for flow in client.read_flows(flow_filter=FlowFilter(id=FlowFilterId(any_=list({run.flow_id for run in runs}))))} if runs else {}
    rows = [
        (
            str(run.id),
            flow_names.get(run.flow_id, "?"),
            run.name,
            run.state.name if run.state else "-",
            format_time(run.start_time) if run.start_time else f"{format_time(run.expected_start_time)} (expected)",
            format_duration(run.total_run_time if run.end_time else run.estimated_run_time if run.start_time else None),
        )
        for run in runs
    ]
    if not rows:
        typer.echo("(no flow runs)")
        return
    print_table(("id", "flow", "name", "state", "start", "duration"), rows)


@runs_app.command("retry")
def retry_run(
    run_id: str = typer.Argument(..., help="flow run id (or unique name) from `alignflow runs list`"),
    entrypoint: str | None = typer.Option(None, "--entrypoint", help="run here with this flow code, path/file.py:func or package.module:func (default: the project flow of that name; a deployment's run goes to its serving process)"),
    timeout: float = typer.Option(3600.0, help="seconds to wait for a deployment's run to finish"),
) -> None:
    """Rerun a finished flow run with its parameters: steps whose results are cached show as Cached.

    A run of a deployment is rescheduled for its `alignflow deploy` process to pick up (unless
    --entrypoint is given); any other run executes here, in this process.
    """
    from prefect.states import Scheduled

    with prefect_client() as client:
        flow_run = read_flow_run(client, run_id)
        if crash_if_gone(client, flow_run):  # killed: Running in Prefect, its process gone
            typer.echo(f"run {flow_run.id} was Running, but its process ({flow_run.infrastructure_pid}) is gone: marked Crashed", err=True)
            flow_run = client.read_flow_run(flow_run.id)
        if flow_run.state is None or flow_run.state.type.value not in TERMINAL_STATES:
            raise UsageError(_not_finished(flow_run))
        flow_name = client.read_flow(flow_run.flow_id).name
        flow = _flow_to_run_here(entrypoint, flow_run, flow_name)
        client.set_flow_run_state(flow_run.id, Scheduled(message="Retried by alignflow runs retry"), force=True)
        typer.echo(f"retrying {flow_name} run {flow_run.name} ({flow_run.id})", err=True)
        if flow is None:
            final = _wait_for_deployment_run(client, flow_run.id, timeout)
        else:
            _run_here(flow, client.read_flow_run(flow_run.id))
            final = client.read_flow_run(flow_run.id)
        _print_task_states(client, final, settle_seconds=10.0 if flow is None else 2.0)
    typer.echo(f"state: {final.state.name if final.state else 'unknown'}")
    if not (final.state and final.state.is_completed()):
        raise typer.Exit(1)


def _not_finished(flow_run) -> str:
    current = flow_run.state.name if flow_run.state else "no state"
    finished = ", ".join(s.lower() for s in TERMINAL_STATES)
    where = f" in process {flow_run.infrastructure_pid}" if flow_run.infrastructure_pid else ""
    return (
        f"flow run {flow_run.id} is {current}{where}; only a finished run ({finished}) can be retried "
        f"(a killed run is marked Crashed here once its recorded process is gone from this host, or by Prefect "
        f"after {CRASH_AFTER_SECONDS} s without heartbeats while a server runs)"
    )


def _flow_to_run_here(entrypoint: str | None, flow_run, flow_name: str):
    """The flow to run in this process; None when the run goes back to its deployment's serving process."""
    if not entrypoint:
        if flow_run.deployment_id:
            return None
        if flow_name not in PROJECT_FLOWS:
            raise UsageError(f"run {flow_run.id} is of flow {flow_name!r}, not a project flow and not from a deployment: pass --entrypoint path/file.py:func")
        entrypoint = PROJECT_FLOWS[flow_name]
    flow = load_flow(entrypoint)
    if flow.name != flow_name:
        raise UsageError(f"{entrypoint!r} holds flow {flow.name!r}, but run {flow_run.id} is of flow {flow_name!r}")
    return flow


def _run_here(flow, flow_run) -> None:
    """Run ``flow`` as the existing ``flow_run``, with the parameters that run was given (as Prefect's own retry does)."""
    from prefect.flow_engine import run_flow
    from prefect.utilities.callables import get_call_parameters, parameters_to_args_kwargs

    try:
        args, kwargs = parameters_to_args_kwargs(flow.fn, flow_run.parameters or {})
        parameters = get_call_parameters(flow.fn, args, kwargs)
    except Exception as error:
        raise UsageError(f"the run's parameters no longer fit the flow {flow.name!r} (has its signature changed?): {error}") from error
    run_flow(flow=flow, flow_run=flow_run, parameters=parameters, return_type="state")


def _wait_for_deployment_run(client, flow_run_id, timeout: float):
    deadline = time.monotonic() + timeout
    while True:
        flow_run = client.read_flow_run(flow_run_id)
        if flow_run.state and flow_run.state.type.value in TERMINAL_STATES:
            return flow_run
        if time.monotonic() > deadline:
            typer.echo(f"still {flow_run.state.name} after {timeout:.0f} s: is the `alignflow deploy` process for its deployment running?", err=True)
            return flow_run
        time.sleep(1.0)


def _print_task_states(client, flow_run, settle_seconds: float) -> None:
    """Each task of the latest attempt with its state (Cached: its result came from an earlier attempt).

    Task run states reach the server as events, a moment after the flow run's own final state
    when the run executed elsewhere; ``settle_seconds`` bounds the wait for them.
    """
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + settle_seconds
    previous = None
    while True:
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        latest = [run for run in task_runs if run.flow_run_run_count == flow_run.run_count]
        snapshot = sorted((str(run.id), run.state.name if run.state else "") for run in latest)
        # settled: every task final, and nothing changed over the last poll
        if (snapshot == previous and all(run.state and run.state.is_final() for run in latest)) or time.monotonic() > deadline:
            break
        previous = snapshot
        time.sleep(1.0)
    for task_run in sorted(latest, key=lambda run: run.expected_start_time or run.created):
        typer.echo(f"  {task_run.name:<40} {task_run.state.name if task_run.state else '-'}")


def register(app: typer.Typer) -> None:
    app.add_typer(runs_app, name="runs")
