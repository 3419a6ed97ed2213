"""Nothing outlives a process killed with SIGKILL: a materialise's worker processes die with it, and its
Prefect flow run, Running forever otherwise, is marked Crashed (by Prefect's heartbeat automation while a
server runs, else when the same pipeline starts again or ``alignflow runs retry`` finds its process
gone), so it can be retried."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from train_data import REPO
from typer.testing import CliRunner

linux_only = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state letter) of every process."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(stat.parent.name)] = (int(fields[1]), fields[0])
    return table


def descendants(pid: int) -> set[int]:
    table, found, frontier = process_table(), set(), {pid}
    while frontier:
        frontier = {child for child, (parent, _) in table.items() if parent in frontier} - found
        found |= frontier
    return found


def running(pids: set[int]) -> set[int]:
    """Those still running (a zombie has exited: only its parent has not collected it yet)."""
    table = process_table()
    return {pid for pid in pids if pid in table and table[pid][1] != "Z"}


# ----- materialise workers ------------------------------------------------------------------------

SLOW_TEMPLATE = '''
import time
from align_core.templates import Template, register_template


@register_template("SlowAlpaca")
class SlowAlpaca(Template):
    def format_supervised_sample(self, raw):
        time.sleep(0.05)  # keeps both workers busy for minutes
        return [{"role": "user", "content": raw["instruction"]}, {"role": "assistant", "content": raw["output"]}], None
'''

MATERIALIZE_WITH_WORKERS = """
import sys
from align_core import sources
from align_core.materialize import materialize_dataset

sources.JSONL_CHUNK_BYTES = 2_000  # many small chunks: both workers get some at once
materialize_dataset(sys.argv[1], "SlowAlpaca", "supervised", sys.argv[2], template_module=sys.argv[3], workers=2)
"""


@linux_only
def test_materialise_workers_die_within_seconds_when_their_parent_is_killed(tmp_path):
    from rows import many_alpaca_rows, write_jsonl

    source = write_jsonl(many_alpaca_rows(4000), tmp_path / "rows.jsonl")
    template = tmp_path / "slow_template.py"
    template.write_text(SLOW_TEMPLATE)
    parent = subprocess.Popen(
        [sys.executable, "-c", MATERIALIZE_WITH_WORKERS, str(source), str(tmp_path / "out"), str(template)],
        cwd=REPO, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while len(workers := descendants(parent.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + resource tracker
            time.sleep(0.1)
        assert len(workers) >= 3, f"workers never started: {workers}"
        time.sleep(1.0)  # formatting is under way
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while running(workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running(workers) == set()
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # whatever survived, so the test leaves nothing behind
        except ProcessLookupError:
            pass


# ----- Prefect runs of killed processes -----------------------------------------------------------


def small_pipeline(folder: Path, rows: int = 3000, train_until_killed: bool = False) -> Path:
    """Materialise and validate ``rows`` rows (3000 take a few seconds); with ``train_until_killed``, then
    train a tiny model for a million steps, so the run lasts however fast the machine is."""
    from alignflow.samples import write_samples

    write_samples(folder / "data", rows=rows, seed=0)
    pipeline = {
        "output_dir": "out",
        "datasets": {"alpaca": {"source": "data/alpaca.jsonl", "template": "Alpaca", "kind": "supervised"}},
    }
    if train_until_killed:
        pipeline["models"] = {"tiny": {"tiny": {"arch": "llama", "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                                                "vocab_size": 384}}}
        pipeline["jobs"] = {"sft": {"algorithm": "sft", "model": "tiny", "train": ["alpaca"], "config": {
            "train_cfgs": {"max_steps": 1_000_000, "save_interval": 1_000_000, "per_device_train_batch_size": 2},
            "data_cfgs": {"max_length": 64}}}}
    config = folder / "pipeline.yaml"
    config.write_text(yaml.safe_dump(pipeline))
    return config


def has_heartbeat(client, flow_run_id) -> bool:
    """Whether the server has received a heartbeat event of the flow run."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    page = client.read_events(EventFilter(
        event=EventNameFilter(name=["prefect.flow-run.heartbeat"]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    ), limit=1)  # the client's default, 100, is over the server's maximum
    return bool(page.events)


def running_runs():
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))


def start_and_kill_pipeline(config: Path, after_heartbeat: bool = False):
    """Run ``alignflow pipeline run CONFIG`` in a process of its own against the test server, SIGKILL it
    once its flow run is Running with its process recorded (and, with ``after_heartbeat``, once the
    server has its first heartbeat); returns that flow run."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    process = subprocess.Popen(
        [sys.executable, "-m", "alignflow", "pipeline", "run", str(config)],
        cwd=REPO, env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    recorded = f"{socket.gethostname()}:{process.pid}"
    try:
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                runs = [run for run in client.read_flow_runs(flow_run_filter=running_runs()) if run.infrastructure_pid == recorded]
                if runs and runs[0].state.is_running() and (not after_heartbeat or has_heartbeat(client, runs[0].id)):
                    break
                assert process.poll() is None, "the pipeline ended before it could be killed"
                time.sleep(0.2)
            else:
                raise AssertionError("the pipeline's flow run never showed Running with its process")
            process.send_signal(signal.SIGKILL)
            process.wait()
            killed = client.read_flow_run(runs[0].id)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert killed.state.is_running()  # what Prefect believes until someone notices
    return killed


def flow_run_state(flow_run_id) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.name


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_retry_of_a_killed_pipeline_run_marks_it_crashed_and_reruns_it(tmp_path):
    from alignflow.cli import app

    killed = start_and_kill_pipeline(small_pipeline(tmp_path))
    result = CliRunner().invoke(app, ["runs", "retry", str(killed.id)])
    assert result.exit_code == 0, result.output
    assert f"run {killed.id} was Running, but its process ({killed.infrastructure_pid}) is gone: marked Crashed" in result.stderr
    assert result.stdout.strip().splitlines()[-1] == "state: Completed"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_next_start_of_the_same_pipeline_marks_its_killed_run_crashed(tmp_path):
    from alignflow.cli import app

    config = small_pipeline(tmp_path)
    killed = start_and_kill_pipeline(config)
    result = CliRunner().invoke(app, ["pipeline", "run", str(config)])
    assert result.exit_code == 0, result.output
    assert flow_run_state(killed.id) == "Crashed"


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_prefects_heartbeat_automation_crashes_a_killed_run_on_its_own(tmp_path):
    from prefect.client.orchestration import get_client

    from tasks.crashed_runs import CRASH_AUTOMATION, ensure_crash_automation

    with get_client(sync_client=True) as client:
        for automation in client.read_automations_by_name(CRASH_AUTOMATION):
            client.delete_automation(automation.id)
        ensure_crash_automation(client, within_seconds=12)  # production waits 90 s: three missed heartbeats
    try:
        # a run killed before its first heartbeat reaches the server starts no countdown: only the
        # recorded process (the other tests) catches that one
        # a run that trains until killed: alive when its first heartbeat lands, on a fast machine too (a
        # pipeline that only materialised 30,000 rows once finished first)
        killed = start_and_kill_pipeline(small_pipeline(tmp_path, rows=300, train_until_killed=True), after_heartbeat=True)
        deadline = time.monotonic() + 90
        while flow_run_state(killed.id) == "Running" and time.monotonic() < deadline:
            time.sleep(2)
        assert flow_run_state(killed.id) == "Crashed"
    finally:
        with get_client(sync_client=True) as client:  # later tests get the production window back
            for automation in client.read_automations_by_name(CRASH_AUTOMATION):
                client.delete_automation(automation.id)
