"""The materialise flow under a real Prefect server: cache hits, new digests, artifacts, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from typer.testing import CliRunner

from align_core.shards.dataset import ShardDataset

pytestmark = pytest.mark.usefixtures("prefect_harness")

ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "", "output": "1. Eat well. 2. Sleep. 3. Move."},
    {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
    {"instruction": "Summarise the text.", "input": "Cats sleep a lot.", "output": ""},  # empty_text
    {"instruction": "Name a prime number.", "output": "7"},
    {"instruction": 42, "input": "", "output": "x"},  # wrong_type
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def task_states(flow_state) -> dict[str, str]:
    """Task name -> state name for the flow run behind ``flow_state``."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
    return {run.name.rsplit("-", 1)[0]: run.state.name for run in runs}


def run_flow(source: Path, out: Path, **kwargs):
    from flows.materialize import materialize

    state = materialize(source=str(source), template="Alpaca", kind="supervised", out=str(out), validate_contract=False, return_state=True, **kwargs)
    return state, state.result()


def shard_mtimes(dataset_dir: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in Path(dataset_dir).rglob("*") if p.is_file()}


def test_flow_writes_shards_and_quarantine_and_rerun_is_cached(tmp_path):
    source = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    state, dataset_dir = run_flow(source, tmp_path / "out")
    dataset = ShardDataset(dataset_dir)
    assert dataset.manifest.rows == 3
    assert dataset.manifest.quarantined == 2
    assert dataset.manifest.quarantine_reasons == {"empty_text": 1, "wrong_type": 1}
    assert Path(dataset_dir).parent == (tmp_path / "out").absolute()
    assert task_states(state) == {"fingerprint-source": "Completed", "build-shards": "Completed"}
    before = shard_mtimes(dataset_dir)

    rerun_state, rerun_dir = run_flow(source, tmp_path / "out")
    assert rerun_dir == dataset_dir
    assert task_states(rerun_state) == {"fingerprint-source": "Cached", "build-shards": "Cached"}
    assert shard_mtimes(dataset_dir) == before  # no shard rewritten


def test_changed_byte_or_option_gives_a_new_dataset(tmp_path):
    source = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    _, first = run_flow(source, tmp_path / "out")
    source.write_text(source.read_text().replace("Bonjour", "Bonjour!"))
    _, changed = run_flow(source, tmp_path / "out")
    _, resharded = run_flow(source, tmp_path / "out", rows_per_shard=1)
    assert len({first, changed, resharded}) == 3
    assert len(ShardDataset(resharded).manifest.shards) == 3
    assert "Bonjour!" in json.dumps(ShardDataset(changed).read_table().to_pylist())


def test_deleted_dataset_folder_is_rebuilt_not_served_from_cache(tmp_path):
    import shutil

    source = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    _, dataset_dir = run_flow(source, tmp_path / "out")
    shutil.rmtree(dataset_dir)
    state, rebuilt = run_flow(source, tmp_path / "out")
    assert rebuilt == dataset_dir
    assert task_states(state)["build-shards"] == "Completed"
    assert ShardDataset(rebuilt).verify() == []


def test_flow_publishes_a_dataset_artifact(tmp_path):
    source = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    _, dataset_dir = run_flow(source, tmp_path / "out")
    digest = ShardDataset(dataset_dir).digest
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts()
    keys = {a.key: a for a in artifact}
    assert f"dataset-{digest[:16]}" in keys
    assert "quarantined: **2**" in keys[f"dataset-{digest[:16]}"].data


# The CLI


def invoke(*args: str):
    from alignflow.cli import app

    return CliRunner().invoke(app, list(args))


def test_cli_materialize_prints_the_dataset_folder_last_and_shards_commands_read_it(tmp_path):
    source = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    result = invoke("materialize", str(source), "--template", "Alpaca", "--kind", "supervised", "--out", str(tmp_path / "out"), "--no-validate")
    assert result.exit_code == 0, result.output
    dataset_dir = result.stdout.strip().splitlines()[-1]
    assert (Path(dataset_dir) / "manifest.json").is_file()

    show = invoke("shards", "show", dataset_dir)
    assert show.exit_code == 0
    assert "rows         3 in 1 shard(s)" in show.stdout
    assert "empty_text                 1" in show.stdout

    head = invoke("shards", "head", dataset_dir, "-n", "1")
    assert "user: Give three tips for staying healthy." in head.stdout
    assert "assistant: 1. Eat well. 2. Sleep. 3. Move." in head.stdout

    listing = invoke("shards", "ls", str(tmp_path / "out"))
    assert Path(dataset_dir).name[:16] in listing.stdout

    assert invoke("shards", "verify", dataset_dir).exit_code == 0
    shard = next(Path(dataset_dir).glob("shards/*.arrow"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    verify = invoke("shards", "verify", dataset_dir)
    assert verify.exit_code == 1
    assert "MISMATCH shards/shard-00000.arrow" in verify.stdout


def test_cli_bad_usage_is_one_line_exit_2_and_writes_nothing(tmp_path):
    source = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cases = [
        [str(tmp_path / "missing.jsonl"), "-t", "Alpaca", "-k", "supervised"],
        [str(source), "-t", "NoSuchTemplate", "-k", "supervised"],
        [str(source), "-t", "Alpaca", "-k", "preference"],
        [str(source), "-t", "Alpaca", "-k", "sideways"],
        [str(source), "-t", "PKUSafeRLHF", "-k", "preference", "--option", "colour=blue"],
    ]
    for args in cases:
        completed = subprocess.run(
            [sys.executable, "-m", "alignflow", "materialize", *args, "--out", str(out)],
            check=False, capture_output=True, text=True, env=env, timeout=120,
        )
        assert completed.returncode == 2, (args, completed.stderr)
        assert completed.stderr.strip().count("\n") == 0 and completed.stderr.startswith("error: "), completed.stderr
    assert not out.exists()
