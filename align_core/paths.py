"""Where alignflow keeps its state, and the environment Prefect and friends get by default.

Everything lives under the project's state folder (``$ALIGNFLOW_HOME``, default ``./.alignflow``)
so nothing writes to the user's home unless they ask. Explicit environment settings always win.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("ALIGNFLOW_HOME", ".alignflow")).absolute()


def configure_environment() -> None:
    """Set defaults (never overrides) for Prefect, DeepSpeed and the HF libraries. Call before importing them."""
    home = state_dir()
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    defaults = {
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "prefect" / "storage"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # A fresh PREFECT_HOME migrates its database on the temporary server's first start: 25-40 s
        # on two busy cores, past Prefect's 20 s default, which failed `make demo` on a new machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "DS_ACCELERATOR": "cpu" if not _has_cuda_device() else "",
        "TORCH_EXTENSIONS_DIR": str(home / "torch_extensions"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        if value:
            os.environ.setdefault(key, value)
    from align_core.server_record import use_recorded_server

    use_recorded_server()  # a server started by `alignflow server start` serves every later command


def _has_cuda_device() -> bool:
    # Cheap check that does not import torch: a CUDA driver exposes /proc/driver/nvidia or a visible-devices var.
    return Path("/proc/driver/nvidia").exists() or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))


def prefect_result_storage() -> Path:
    """Where cached Prefect task results live (a Path, not a str: a str is read as a block name)."""
    path = state_dir() / "prefect" / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path
