"""Prefect's settings for alignflow: its home, quiet defaults, the recorded server, the result storage.

Standard library only, because ``configure_prefect`` must run before Prefect is imported (Prefect
reads its settings, ``PREFECT_API_URL`` included, once at import); ``tasks``, ``flows`` and
``alignflow`` call it from their ``__init__``. Explicit environment settings always win. Starting
and stopping the server lives in ``alignflow/server.py``; this module only reads its record.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from align_core.io import pid_alive
from align_core.paths import configure_environment, state_dir
from tasks.crashed_runs import HEARTBEAT_SECONDS


def configure_prefect() -> None:
    """Set Prefect's defaults (never overrides) and the library's, and point Prefect at a recorded live server."""
    configure_environment()
    home = state_dir() / "prefect"
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # A fresh PREFECT_HOME migrates its database on the temporary server's first start: 25-40 s
        # on two busy cores, past Prefect's 20 s default, which failed `make demo` on a new machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        # A killed run's heartbeats stop: Prefect's zombie detection crashes it after three missed ones.
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Importing Prefect creates PREFECT_HOME but not its parents (it warns, then cannot open its database).
    Path(os.environ["PREFECT_HOME"]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    use_recorded_server()  # a server started by `alignflow server start` serves every later command


def prefect_result_storage() -> Path:
    """Where cached task results live (a Path, not a str: a str is read as a block name).

    Not created here: Prefect's local storage makes the folder on its first write.
    """
    return state_dir() / "prefect" / "results"


@dataclass(frozen=True)
class ServerRecord:
    """What ``server.json`` holds about a started server."""

    host: str
    port: int
    pid: int
    log: str
    started: str

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"


def record_path(home: Path | None = None) -> Path:
    return (home or state_dir()) / "server.json"


def read_record(home: Path | None = None) -> ServerRecord | None:
    """The recorded server, or None when nothing was recorded (or the record is unreadable)."""
    try:
        fields = json.loads(record_path(home).read_text())
        return ServerRecord(**{name: fields[name] for name in ServerRecord.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recorded_api_url(home: Path | None = None) -> str | None:
    """The API URL of the recorded server if its process is alive; None otherwise (stale records are ignored)."""
    record = read_record(home)
    if record is None or not is_prefect_server(record.pid):
        return None
    return record.api_url


def use_recorded_server(environ: dict | None = None) -> str | None:
    """Default ``PREFECT_API_URL`` to the recorded live server; an explicit setting always wins.

    Returns the API URL now in effect (None: Prefect will start a temporary server). Call before
    importing Prefect.
    """
    environ = os.environ if environ is None else environ
    if not environ.get("PREFECT_API_URL"):
        url = recorded_api_url()
        if url:
            environ["PREFECT_API_URL"] = url
    return environ.get("PREFECT_API_URL") or None


def is_prefect_server(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) ``prefect server`` process, so a recycled pid is never mistaken for it."""
    if not pid_alive(pid):
        return False
    proc = Path("/proc") / str(pid)
    if not proc.is_dir():  # no procfs (macOS): existence is all we can check
        return True
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, IndexError):
        return False
    return state != "Z" and b"prefect" in command and b"server" in command
