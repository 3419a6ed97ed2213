"""Where alignflow keeps its state, and the environment defaults the training libraries get.

Everything lives under the project's state folder (``$ALIGNFLOW_HOME``, default ``./.alignflow``)
so nothing writes to the user's home unless they ask. Explicit environment settings always win.
Prefect's settings belong to the Prefect layer (``tasks/prefect_env.py``), never to this library.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    return Path(os.environ.get("ALIGNFLOW_HOME", ".alignflow")).absolute()


def configure_environment() -> None:
    """Set defaults (never overrides) for DeepSpeed and the HF libraries; creates nothing. Call before importing them."""
    defaults = {
        "DS_ACCELERATOR": "" if _has_cuda_device() else "cpu",
        "TORCH_EXTENSIONS_DIR": str(state_dir() / "torch_extensions"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        if value:
            os.environ.setdefault(key, value)


def _has_cuda_device() -> bool:
    # Cheap check that does not import torch: a CUDA driver exposes /proc/driver/nvidia or a visible-devices var.
    return Path("/proc/driver/nvidia").exists() or bool(os.environ.get("CUDA_VISIBLE_DEVICES"))
