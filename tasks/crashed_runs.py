"""Flow runs whose process died are marked Crashed, so ``alignflow runs retry`` and the UI treat them as over.

A process killed with SIGKILL (a kill -9, the OOM killer, a lost machine) never reports a final state,
and Prefect shows its run as Running forever. Two ways out, both setting the run Crashed:

- Prefect's own zombie detection: every flow run sends a heartbeat event every
  ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (30 here, set by ``configure_prefect``), and the
  automation ``ensure_crash_automation`` installs crashes a run that missed three. It needs a server
  that outlives the killed process (``alignflow server start``), and a run whose first heartbeat
  reached it: one killed in its first seconds starts no countdown.
- Ours, for those and for the temporary server that dies with the process: a run records its process
  (``infrastructure_pid``, ``host:pid`` as Prefect's process worker writes it); the next start of the
  same pipeline and ``alignflow runs retry`` crash a Running run whose process is gone.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from typing import Any

from align_core.io import pid_alive

HEARTBEAT_SECONDS = 30  # Prefect's minimum; its default, 180, would leave a dead run Running for 9 minutes
CRASH_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS  # silent this long after a heartbeat: crashed
CRASH_AUTOMATION = "alignflow: crash flow runs without heartbeats"


def this_process() -> str:
    """``host:pid`` of this process, the form Prefect's process worker records in ``infrastructure_pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(infrastructure_pid: str | None) -> bool:
    """Whether the recorded ``host:pid`` is known dead: on this host and no longer running. A process on
    another host, or none recorded, cannot be checked and counts as alive."""
    host, _, pid = (infrastructure_pid or "").rpartition(":")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def record_this_process(client: Any, flow_run_id: Any) -> None:
    """Record this process in the flow run, for ``crash_if_gone`` to check later."""
    client.update_flow_run(flow_run_id, infrastructure_pid=this_process())


def crash_if_gone(client: Any, flow_run: Any) -> bool:
    """Set a Running ``flow_run`` whose recorded process is dead, and its Running subflow runs (they ran
    in that process), to Crashed. True if it did."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    if not (flow_run.state and flow_run.state.is_running() and process_gone(flow_run.infrastructure_pid)):
        return False
    message = f"its process ({flow_run.infrastructure_pid}) died without reporting a final state"
    running = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    subflows = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id]), state=running)
    )
    for run in [*subflows, flow_run]:
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return True


def crash_dead_runs_like(client: Any, flow_run: Any) -> list[Any]:
    """Crash every other Running run of ``flow_run``'s flow, with the same parameters, whose process is
    dead: the earlier, killed starts of the same pipeline. Returns them."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_run.flow_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))),
    )
    same = [run for run in runs if run.id != flow_run.id and run.parameters == flow_run.parameters]
    return [run for run in same if crash_if_gone(client, run)]


def ensure_crash_automation(client: Any, within_seconds: float = CRASH_AFTER_SECONDS) -> None:
    """Install Prefect's zombie detection once per database: a flow run that sends no heartbeat and no
    final state for ``within_seconds`` after a heartbeat is set to Crashed."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    if client.read_automations_by_name(CRASH_AUTOMATION):
        return
    final = [f"prefect.flow-run.{name}" for name in ("Completed", "Failed", "Cancelled", "Crashed")]
    client.create_automation(
        AutomationCore(
            name=CRASH_AUTOMATION,
            description="A flow run's process died (no heartbeat): mark the run Crashed so it can be retried.",
            trigger=EventTrigger(
                match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
                after={"prefect.flow-run.heartbeat"},
                expect={"prefect.flow-run.heartbeat", *final},
                for_each={"prefect.resource.id"},
                posture=Posture.Proactive,
                threshold=1,
                within=timedelta(seconds=within_seconds),
            ),
            actions=[
                ChangeFlowRunState(
                    state=StateType.CRASHED,
                    message=f"no heartbeat for {within_seconds:.0f} s: its process died",
                    force=True,
                )
            ],
        )
    )


def start_of_run(flow_run: Any) -> None:
    """Bookkeeping at the start of a flow run: record its process, crash the dead earlier starts of the
    same flow and parameters, and make sure Prefect's zombie detection is installed."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import PrefectHTTPStatusError
    from prefect.logging import get_run_logger

    with get_client(sync_client=True) as client:
        record_this_process(client, flow_run.id)
        for crashed in crash_dead_runs_like(client, flow_run):
            get_run_logger().warning("run %s (%s) was still Running with its process gone: marked Crashed", crashed.name, crashed.id)
        try:
            ensure_crash_automation(client)
        except PrefectHTTPStatusError as error:  # a server without automations still runs pipelines
            get_run_logger().warning("could not install the crash automation: %s", error)
