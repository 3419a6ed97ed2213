"""A real Prefect server on the loopback interface, run in the background for this project.

``start_server`` launches ``prefect server start`` in its own process group with the project's
``PREFECT_HOME`` (so it shares the database the temporary server uses: earlier runs stay visible),
waits until ``/api/health`` answers, and records it in the state folder:

    $ALIGNFLOW_HOME/server.pid    the server's pid (= its process group)
    $ALIGNFLOW_HOME/server.log    its stdout and stderr, fresh at each start
    $ALIGNFLOW_HOME/server.json   host, port, api_url, ui_url, pid, log, started

``use_recorded_server`` (in ``tasks/prefect_env.py``) points ``PREFECT_API_URL`` at a recorded server
that is still alive, so later alignflow commands (and the flows they run) use it instead of a
temporary server. It must run before Prefect is imported: Prefect reads its settings at import.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from align_core.errors import UsageError
from align_core.io import atomic_write_json, atomic_write_text
from align_core.paths import state_dir
from tasks.prefect_env import (  # noqa: F401  (re-exported: the server's public API)
    ServerRecord,
    is_prefect_server,
    read_record,
    record_path,
    recorded_api_url,
    use_recorded_server,
)

LOOPBACK = "127.0.0.1"
DEFAULT_PORT = 4200
LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class ServerStatus:
    record: ServerRecord | None
    running: bool  # the recorded pid is a live Prefect server process
    healthy: bool  # its /api/health answered


def pid_path(home: Path | None = None) -> Path:
    return (home or state_dir()) / "server.pid"


def log_path(home: Path | None = None) -> Path:
    return (home or state_dir()) / "server.log"


def api_is_healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def server_status(home: Path | None = None) -> ServerStatus:
    record = read_record(home)
    running = record is not None and is_prefect_server(record.pid)
    return ServerStatus(record, running, running and api_is_healthy(record.api_url))


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_server(port: int = DEFAULT_PORT, timeout: float = 120.0, home: Path | None = None) -> tuple[ServerRecord, bool]:
    """Start the server (or find it running); returns its record and whether this call started it.

    The first start on a fresh state folder creates and migrates the database: 25-40 s measured on a
    busy 2-core machine, 8-15 s afterwards, hence the generous default ``timeout`` (seconds).
    """
    home = home or state_dir()
    status = server_status(home)
    if status.running:
        if status.record.port != port:
            raise UsageError(f"a server is already running at {status.record.ui_url} (pid {status.record.pid}); run `alignflow server stop` first")
        if not _wait_healthy(status.record, timeout):
            raise UsageError(f"the server at {status.record.ui_url} (pid {status.record.pid}) runs but /api/health does not answer; see {status.record.log}")
        return status.record, False
    if not port_is_free(LOOPBACK, port):
        raise UsageError(f"port {port} on {LOOPBACK} is in use by another program; pass --port with a free one")

    home.mkdir(parents=True, exist_ok=True)
    log = log_path(home)
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(port), "--analytics-off"],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_server_environment(port),
            start_new_session=True,  # its own process group: `stop` ends the server and everything it spawned
        )
    record = ServerRecord(LOOPBACK, port, process.pid, str(log), datetime.now(UTC).isoformat(timespec="seconds"))
    atomic_write_text(pid_path(home), f"{process.pid}\n")
    atomic_write_json(record_path(home), {**asdict(record), "api_url": record.api_url, "ui_url": record.ui_url})
    if not _wait_healthy(record, timeout, process):
        code = process.poll()
        _terminate_group(process.pid, grace=10.0)
        _remove_record(home)
        why = f"exited with code {code}" if code is not None else f"did not answer {record.api_url}/health within {timeout:.0f} s"
        raise UsageError(f"the Prefect server {why}; last lines of {log}:\n{log_tail(log)}")
    return record, True


def _server_environment(port: int) -> dict[str, str]:
    environ = dict(os.environ)
    environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # The UI calls the API at this URL; an inherited PREFECT_API_URL for another server would mislead it.
    environ["PREFECT_API_URL"] = f"http://{LOOPBACK}:{port}/api"
    return environ


def _wait_healthy(record: ServerRecord, timeout: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api_is_healthy(record.api_url, timeout=1.0):
            return True
        if process is not None and process.poll() is not None:
            return False
        time.sleep(0.25)
    return False


def stop_server(timeout: float = 20.0, home: Path | None = None) -> ServerRecord | None:
    """Terminate the recorded server's process group and remove its pid and record files.

    Returns the record of the server that was stopped, or None when none was running (safe to repeat).
    """
    home = home or state_dir()
    record = read_record(home)
    pid = record.pid if record else _read_pid(home)
    stopped = None
    if pid is not None and is_prefect_server(pid):
        _terminate_group(pid, grace=timeout)
        stopped = record
    _remove_record(home)
    return stopped


def _read_pid(home: Path) -> int | None:
    try:
        return int(pid_path(home).read_text().strip())
    except (OSError, ValueError):
        return None


def _terminate_group(pid: int, grace: float) -> None:
    """SIGTERM the process group led by ``pid``; SIGKILL it if the leader outlives ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _reap(pid)
            if not is_prefect_server(pid):
                return
            time.sleep(0.1)


def _reap(pid: int) -> None:
    # Only our own child can be reaped here; a server started by an earlier command is reaped by init.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _remove_record(home: Path) -> None:
    for path in (record_path(home), pid_path(home)):
        path.unlink(missing_ok=True)
