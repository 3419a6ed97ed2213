"""A real `prefect server start`, a served deployment with a cron schedule, run inspection and retry.

The end-to-end test drives the real `alignflow` CLI in subprocesses with a fresh ALIGNFLOW_HOME and
no PREFECT_API_URL, so the commands must find the server through the record `server start` wrote.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect import flow, task
from typer.testing import CliRunner

from align_core.errors import UsageError
from align_core.shards.dataset import ShardDataset
from alignflow import server
from alignflow.cli import app
from tasks.prefect_env import prefect_result_storage

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well, sleep, move."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Summarise the text.", "input": "Cats sleep a lot.", "output": ""},  # quarantined: empty_text
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((server.LOOPBACK, 0))
        return probe.getsockname()[1]


def cli_environment(home: Path) -> dict[str, str]:
    """The test process's environment for a fresh state folder, with no Prefect server configured."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    environ.update(ALIGNFLOW_HOME=str(home), PREFECT_RUNNER_POLL_FREQUENCY="1")  # the served runner polls every second
    return environ


def alignflow(environ: dict[str, str], *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alignflow", *args], check=False, env=environ, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=timeout)


def wait_for(describe: str, probe, timeout: float, interval: float = 0.5):
    """Poll ``probe`` until it returns something truthy; fail naming ``describe`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := probe():
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {describe}")


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@pytest.mark.slow
def test_server_serves_a_scheduled_deployment_whose_run_completes_then_stops(tmp_path):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    home, port = tmp_path / "home", free_port()
    environ = cli_environment(home)
    source = tmp_path / "alpaca.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in ALPACA_ROWS))
    serve = None
    try:
        started = alignflow(environ, "server", "start", "--port", str(port))
        api_url = f"http://127.0.0.1:{port}/api"
        assert started.returncode == 0, started.stderr
        assert f"export PREFECT_API_URL={api_url}" in started.stdout
        record = json.loads((home / "server.json").read_text())
        assert record["api_url"] == api_url and int((home / "server.pid").read_text()) == record["pid"]
        status = alignflow(environ, "server", "status")
        assert status.returncode == 0 and "healthy" in status.stdout and api_url in status.stdout

        with open(tmp_path / "serve.log", "w") as serve_log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "alignflow", "deploy", "--flow", "flows/materialize.py:materialize",
                 "--name", "nightly", "--cron", "0 3 * * *",
                 "--param", f"source={source}", "--param", "template=Alpaca", "--param", "kind=supervised",
                 "--param", f"out={tmp_path / 'out'}", "--param", "validate_contract=false"],
                env=environ, cwd=PROJECT_ROOT, stdout=serve_log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        with SyncPrefectClient(api_url) as client:

            def served_deployment():
                assert serve.poll() is None, f"deploy exited early:\n{(tmp_path / 'serve.log').read_text()}"
                try:
                    return client.read_deployment_by_name("materialize/nightly")
                except ObjectNotFound:
                    return None

            deployment = wait_for("the served deployment", served_deployment, timeout=60)
            assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in deployment.schedules] == [("0 3 * * *", "UTC", True)]
            of_deployment = FlowRunFilterDeploymentId(any_=[deployment.id])
            upcoming = wait_for(
                "the scheduler to create the cron runs",
                lambda: client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=of_deployment, state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))),
                timeout=30,
            )
            assert all((run.expected_start_time.hour, run.expected_start_time.minute) == (3, 0) for run in upcoming)

            triggered = client.create_flow_run_from_deployment(deployment.id)
            finished = wait_for(
                "the triggered run to finish",
                lambda: (run := client.read_flow_run(triggered.id)).state.is_final() and run,
                timeout=90,
            )
        assert finished.state.is_completed(), finished.state
        (manifest,) = (tmp_path / "out").glob("*/manifest.json")
        assert ShardDataset(manifest.parent).manifest.rows == 2

        listed = alignflow(environ, "runs", "list", "--flow", "materialize")
        assert listed.returncode == 0, listed.stderr
        (row,) = [line for line in listed.stdout.splitlines() if line.startswith(str(triggered.id))]
        assert row.split()[1:4] == ["materialize", finished.name, "Completed"]

        stop_process_group(serve)
        stopped = alignflow(environ, "server", "stop")
        assert stopped.returncode == 0 and f"stopped Prefect server pid {record['pid']}" in stopped.stdout
        assert not server.is_prefect_server(record["pid"]) and not server.api_is_healthy(api_url)
        assert not (home / "server.pid").exists() and not (home / "server.json").exists()
        after = alignflow(environ, "server", "status")
        assert after.returncode == 1 and after.stdout.strip() == "not running"
    finally:
        if serve is not None:
            stop_process_group(serve)
        server.stop_server(home=home)


@pytest.mark.slow
def test_start_reports_a_crashing_server_with_its_log_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "nosuchdialect://nowhere")
    with pytest.raises(UsageError, match=r"(?s)the Prefect server exited with code \d+; last lines of .*server.log:\n.*nosuchdialect"):
        server.start_server(port=free_port(), timeout=60)
    assert not (tmp_path / "server.json").exists() and not (tmp_path / "server.pid").exists()


def test_start_refuses_a_port_in_use_without_starting_anything(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path))
    with socket.socket() as occupant:
        occupant.bind((server.LOOPBACK, 0))
        occupant.listen()
        port = occupant.getsockname()[1]
        with pytest.raises(UsageError, match=f"port {port} on 127.0.0.1 is in use"):
            server.start_server(port=port)
    assert not (tmp_path / "server.log").exists()


def test_status_and_stop_are_safe_when_nothing_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path))
    runner = CliRunner()
    status = runner.invoke(app, ["server", "status"])
    assert (status.exit_code, status.output) == (1, "not running\n")
    for _ in range(2):
        stop = runner.invoke(app, ["server", "stop"])
        assert (stop.exit_code, stop.output) == (0, "not running\n")


def write_record(home: Path, pid: int) -> None:
    record = {"host": server.LOOPBACK, "port": 4999, "pid": pid, "log": str(home / "server.log"), "started": "2026-11-25T00:00:00+00:00"}
    (home / "server.json").write_text(json.dumps(record))


def test_a_record_whose_process_is_gone_or_not_a_prefect_server_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    exited = subprocess.Popen(["true"])
    exited.wait()
    write_record(tmp_path, exited.pid)
    assert server.recorded_api_url() is None
    status = CliRunner().invoke(app, ["server", "status"])
    assert (status.exit_code, status.output) == (1, f"not running (stale record of pid {exited.pid})\n")

    unrelated = subprocess.Popen(["sleep", "30"])  # alive, but a recycled pid must not count as our server
    try:
        write_record(tmp_path, unrelated.pid)
        environ: dict[str, str] = {}
        assert server.use_recorded_server(environ) is None and environ == {}
    finally:
        unrelated.kill()
        unrelated.wait()


def test_use_recorded_server_sets_the_url_of_a_live_server_but_never_overrides(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path))
    # A live process whose command line is a prefect server's (it only sleeps): what the record check looks at.
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "prefect", "server"])
    try:
        write_record(tmp_path, impostor.pid)
        environ: dict[str, str] = {}
        assert server.use_recorded_server(environ) == "http://127.0.0.1:4999/api"
        assert environ == {"PREFECT_API_URL": "http://127.0.0.1:4999/api"}
        explicit = {"PREFECT_API_URL": "http://127.0.0.1:5000/api"}
        assert server.use_recorded_server(explicit) == "http://127.0.0.1:5000/api"
    finally:
        impostor.kill()
        impostor.wait()


def test_deploy_without_a_server_says_to_start_one(tmp_path):
    # A subprocess: in this process the session's Prefect harness may already configure a server.
    result = alignflow(cli_environment(tmp_path), "deploy", "--flow", "flows/materialize.py:materialize", "--name", "nightly", "--cron", "0 3 * * *", timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: schedules need a running Prefect server") and "run `alignflow server start` first" in result.stderr
    assert not (tmp_path / "prefect" / "prefect.db").exists()  # no temporary server was started either


def test_deploy_checks_parameters_cron_and_entrypoint_before_serving():
    from alignflow.commands.deploy import build_schedule, check_parameters, load_flow

    materialize = load_flow("flows/materialize.py:materialize")
    assert load_flow("flows.materialize:materialize").name == materialize.name == "materialize"
    with pytest.raises(UsageError, match=r"flow 'materialize' has no parameter colour; it takes: source, template, kind, out"):
        check_parameters(materialize, {"source": "a.jsonl", "template": "Alpaca", "kind": "supervised", "out": "o", "colour": "red"})
    with pytest.raises(UsageError, match=r"flow 'materialize' needs kind, out: pass --param"):
        check_parameters(materialize, {"source": "a.jsonl", "template": "Alpaca"})
    with pytest.raises(UsageError, match=r"cannot load the flow 'flows.nowhere:pipeline'"):
        load_flow("flows.nowhere:pipeline")
    with pytest.raises(UsageError, match=r"--cron '0 3 \* \*'"):
        build_schedule("0 3 * *", "UTC")
    with pytest.raises(UsageError, match=r"--timezone 'Mars/Olympus'"):
        build_schedule("0 3 * * *", "Mars/Olympus")
    assert build_schedule("30 2 * * 1", "Europe/Berlin").cron == "30 2 * * 1"


# A flow whose second step fails while a marker file exists: the retry must take the first step from the cache.
def _prepare_key(context, parameters) -> str:
    return f"test-server-prepare-{parameters['workdir']}"


@task(cache_key_fn=_prepare_key, persist_result=True, result_storage=prefect_result_storage())
def prepare(workdir: str) -> int:
    with open(Path(workdir) / "prepare.calls", "a") as calls:
        calls.write("called\n")
    return 41


@task
def finish(workdir: str, prepared: int) -> int:
    if (Path(workdir) / "fail").exists():
        raise RuntimeError("injected failure in finish")
    return prepared + 1


@flow(name="test-server-flaky")
def flaky(workdir: str) -> int:
    return finish(workdir, prepare(workdir))


@pytest.mark.slow
def test_retry_reruns_a_failed_run_with_finished_steps_cached(tmp_path, prefect_harness):
    (tmp_path / "fail").touch()
    failed = flaky(workdir=str(tmp_path), return_state=True)
    assert failed.is_failed()
    (tmp_path / "fail").unlink()
    run_id = str(failed.state_details.flow_run_id)

    wrong_code = CliRunner().invoke(app, ["runs", "retry", run_id, "--entrypoint", "flows/materialize.py:materialize"])
    assert isinstance(wrong_code.exception, UsageError)
    assert f"holds flow 'materialize', but run {run_id} is of flow 'test-server-flaky'" in str(wrong_code.exception)

    result = CliRunner().invoke(app, ["runs", "retry", run_id, "--entrypoint", f"{__file__}:flaky"])
    assert result.exit_code == 0, result.output
    task_lines = [line.split() for line in result.stdout.splitlines() if line.startswith("  ")]
    task_states = {name.rsplit("-", 1)[0]: state for name, state in task_lines}  # task run names end in a random suffix
    assert task_states == {"prepare": "Cached", "finish": "Completed"}
    assert result.stdout.splitlines()[-1] == "state: Completed"
    assert (tmp_path / "prepare.calls").read_text() == "called\n"  # the cached step did not run again

    listed = CliRunner().invoke(app, ["runs", "list", "--flow", "test-server-flaky", "--state", "completed"])
    assert run_id in listed.output
    again = CliRunner().invoke(app, ["runs", "retry", run_id])  # not a project flow: the entrypoint is needed
    assert isinstance(again.exception, UsageError) and "pass --entrypoint" in str(again.exception)


def test_runs_list_rejects_an_unknown_state_type():
    result = CliRunner().invoke(app, ["runs", "list", "--state", "finished"])
    assert isinstance(result.exception, UsageError) and "one of: scheduled, pending, running" in str(result.exception)


def test_report_of_a_folder_prints_each_validated_dataset_report(tmp_path):
    validated, unvalidated = tmp_path / "a", tmp_path / "b"
    for dataset in (validated, unvalidated):
        dataset.mkdir()
        (dataset / "manifest.json").write_text("{}")
    (validated / "report.html").write_text("<html></html>")
    runner = CliRunner()
    whole_root = runner.invoke(app, ["report", str(tmp_path)])
    assert whole_root.exit_code == 0
    assert whole_root.stdout == f"report: {validated / 'report.html'}\n"
    assert f"no report.html in {unvalidated}" in whole_root.stderr
    single = runner.invoke(app, ["report", str(unvalidated)])
    assert single.exit_code == 1 and single.stdout == ""
    missing = runner.invoke(app, ["report", str(tmp_path / "nothing-here")])
    assert isinstance(missing.exception, UsageError) and "is not a folder" in str(missing.exception)


def test_reports_named_in_artifacts_are_found_through_files_or_dataset_folders(tmp_path):
    from alignflow.commands.report import reports_named_in

    dataset = tmp_path / "ds"
    dataset.mkdir()
    (dataset / "report.html").write_text("<html></html>")
    other = tmp_path / "other.html"
    other.write_text("<html></html>")
    texts = [f"- folder: `{dataset}`\n- missing: `{tmp_path / 'gone'}`", f"[the report]({other}) and again `{dataset / 'report.html'}`"]
    assert reports_named_in(texts) == [dataset / "report.html", other]


@pytest.mark.slow
def test_a_pool_deployment_is_run_by_workers_that_share_its_queue(tmp_path):
    """`deploy --pool` registers and returns; two workers with a limit of one run each take one of two
    triggered runs, and both complete."""
    from prefect.client.orchestration import SyncPrefectClient

    home, port = tmp_path / "home", free_port()
    environ = {**cli_environment(home), "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "0",
               "PREFECT_LOGGING_LEVEL": "INFO"}  # the workers log the runs they submit
    source = tmp_path / "alpaca.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in ALPACA_ROWS))
    workers = []
    try:
        assert alignflow(environ, "server", "start", "--port", str(port)).returncode == 0
        api_url = f"http://127.0.0.1:{port}/api"
        deployed = alignflow(environ, "deploy", "--flow", "flows.materialize:materialize", "--name", "pooled", "--pool", "cpu",
                             "--param", f"source={source}", "--param", "template=Alpaca", "--param", "kind=supervised",
                             "--param", f"out={tmp_path / 'out'}", "--param", "validate_contract=false")
        assert deployed.returncode == 0, deployed.stderr
        assert "alignflow worker start --pool cpu" in deployed.stderr
        for index in range(2):
            log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 - the worker writes it until stopped
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "alignflow", "worker", "start", "--pool", "cpu", "--limit", "1", "--name", f"w{index}"],
                env=environ, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        with SyncPrefectClient(api_url) as client:
            deployment = client.read_deployment_by_name("materialize/pooled")
            assert deployment.work_pool_name == "cpu" and client.read_work_pool("cpu").type == "process"
            wait_for("two workers polling the pool", lambda: len(client.read_workers_for_work_pool("cpu")) == 2, timeout=60)
            runs = [client.create_flow_run_from_deployment(deployment.id, parameters={"out": str(tmp_path / f"out{i}")})
                    for i in range(2)]
            finished = [wait_for(f"run {run.name} to finish", lambda run=run: (r := client.read_flow_run(run.id)).state.is_final() and r,
                                 timeout=150) for run in runs]
        assert all(run.state.is_completed() for run in finished), [run.state for run in finished]
        assert all(ShardDataset(next((tmp_path / f"out{i}").glob("*/manifest.json")).parent).manifest.rows == 2 for i in range(2))
        logs = [(tmp_path / f"worker{index}.log").read_text() for index in range(2)]
        # both workers may try a run; the one the server lets through logs it submitted (the other: aborted)
        taken = [[f"Flow run '{run.name}' submitted to infrastructure" in log for run in finished] for log in logs]
        assert sorted(map(sum, taken)) == [1, 1], taken  # one run each: the limit sent the second run to the other worker
    finally:
        for worker in workers:
            stop_process_group(worker)
        server.stop_server(home=home)
