"""Shared test setup: offline hubs, a throwaway state folder, and a session-wide Prefect server."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports Prefect or transformers: fail fast on any hub call, keep state out of $HOME.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("ALIGNFLOW_HOME", tempfile.mkdtemp(prefix="alignflow-test-home-"))
# DeepSpeed JIT-compiles a comm op on first use (25-35 s): share the compiled op across test
# sessions through the project's own (git-ignored) state folder rather than each throwaway home.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[1] / ".alignflow" / "torch_extensions"))
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from tasks.prefect_env import configure_prefect

configure_prefect()

import pytest


@pytest.fixture(scope="session")
def prefect_harness():
    """A real temporary Prefect server for the whole session (~9 s once); flows run against it."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
