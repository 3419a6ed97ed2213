"""The library stays free of Prefect: importing it pulls in no Prefect and creates no folder; the
Prefect layer's result storage is a path that Prefect creates on its first write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

IMPORT_ALL = """
import importlib, json, pkgutil, sys
import align_core
from align_core.paths import configure_environment
for module in pkgutil.walk_packages(align_core.__path__, "align_core."):
    importlib.import_module(module.name)
configure_environment()
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] == "prefect")))
"""


def test_importing_every_align_core_module_imports_no_prefect_and_creates_no_folder(tmp_path):
    home = tmp_path / "home"
    workdir = tmp_path / "work"
    workdir.mkdir()
    environ = {key: value for key, value in os.environ.items() if not key.startswith(("PREFECT_", "TORCH_EXTENSIONS"))}
    environ.update(ALIGNFLOW_HOME=str(home), PYTHONPATH=str(REPO))
    completed = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], check=False, cwd=workdir, env=environ, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.splitlines()[-1]) == []
    assert not home.exists() and list(workdir.iterdir()) == []


def test_result_storage_is_a_path_under_the_state_folder_that_is_not_created(tmp_path, monkeypatch):
    from tasks.prefect_env import prefect_result_storage

    monkeypatch.setenv("ALIGNFLOW_HOME", str(tmp_path / "home"))
    assert prefect_result_storage() == tmp_path / "home" / "prefect" / "results"
    assert not (tmp_path / "home").exists()


def _remember_key(context, parameters) -> str:
    return f"remember-{parameters['value']}"


@pytest.mark.slow
def test_prefect_creates_the_result_storage_folder_on_its_first_write(tmp_path, prefect_harness):
    from prefect import flow, task

    storage = tmp_path / "state" / "prefect" / "results"

    @task(cache_key_fn=_remember_key, persist_result=True, result_storage=storage)
    def remember(value: int) -> int:
        return value

    @flow
    def remember_flow() -> int:
        return remember(41)

    assert remember_flow() == 41
    assert (storage / "remember-41").is_file()
