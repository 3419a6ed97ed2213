"""The end-to-end pipeline on tiny models under a real Prefect server: outputs, caching, failure + resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentTaskRunId, TaskRunFilter, TaskRunFilterFlowRunId

from align_core.errors import UsageError
from alignflow.samples import write_samples
from flows.pipeline_config import load_pipeline

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

TRAIN = {"max_steps": 4, "save_interval": 2, "per_device_train_batch_size": 4, "learning_rate": 1.0e-3}


def pipeline_yaml(folder: Path, sft_train: dict | None = None) -> Path:
    write_samples(folder / "data", rows=24, seed=0)
    config = {
        "output_dir": "out",
        "models": {"tiny": {"tiny": {"arch": "llama", "seed": 0, "hidden_size": 64, "num_layers": 2, "num_heads": 4}}},
        "datasets": {
            "alpaca": {"source": "data/alpaca.jsonl", "template": "Alpaca", "kind": "supervised"},
            "hh": {"source": "data/hh_rlhf.jsonl", "template": "HH-RLHF", "kind": "preference"},
        },
        "jobs": {
            "sft": {"algorithm": "sft", "model": "tiny", "train": ["alpaca"], "eval": ["alpaca"],
                    "config": {"train_cfgs": {**TRAIN, **(sft_train or {})}, "data_cfgs": {"max_length": 128}}},
            "rm": {"algorithm": "rm", "model": "sft", "train": ["hh"], "eval": ["hh"],
                   "config": {"train_cfgs": TRAIN, "data_cfgs": {"max_length": 128}}},
        },
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def all_task_states(flow_run_id) -> dict[str, str]:
    """Task name -> state name, across the flow run and its subflows (materialise runs as one)."""
    states: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        pending = [flow_run_id]
        while pending:
            run_id = pending.pop()
            for task_run in client.read_task_runs(task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))):
                key = task_run.name.rsplit("-", 1)[0]
                states.setdefault(key, set()).add(task_run.state.name)
                children = client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[task_run.id])))
                pending.extend(child.id for child in children)
    return {key: "/".join(sorted(values)) for key, values in states.items()}


def test_pipeline_config_errors_name_the_key(tmp_path):
    path = pipeline_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["jobs"]["rm"]["model"] = "nope"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match=r"jobs.rm.model: 'nope' is neither a models entry nor a job"):
        load_pipeline(path)
    data["jobs"]["rm"]["model"] = "sft"
    data["jobs"]["sft"]["model"] = "rm"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match="cycle"):
        load_pipeline(path)


def test_pipeline_trains_in_order_evaluates_and_a_rerun_is_all_cached(tmp_path):
    from flows.pipeline import pipeline

    config = pipeline_yaml(tmp_path)
    state = pipeline(config=str(config), return_state=True)
    summary = state.result()
    assert set(summary["jobs"]) == {"sft", "rm"}
    sft, rm = summary["jobs"]["sft"], summary["jobs"]["rm"]
    assert sft["steps"] == rm["steps"] == 4
    assert "eval/loss" in sft["eval"] and "eval/accuracy" in rm["eval"]
    # rm started from sft's trained model, not from the tiny base model
    rm_config = yaml.safe_load((tmp_path / "out" / "configs" / "rm.yaml").read_text())
    assert rm_config["model_cfgs"]["model_name_or_path"] == sft["model_dir"]
    assert (Path(rm["model_dir"]) / "config.json").is_file()
    assert all((Path(d) / "validation.json").is_file() for d in summary["datasets"].values())

    first = all_task_states(state.state_details.flow_run_id)
    assert first["train-model"] == "Completed"
    assert first["validate-shards"] == "Completed"

    rerun = pipeline(config=str(config), return_state=True)
    assert rerun.result()["jobs"]["rm"]["model_dir"] == rm["model_dir"]
    states = all_task_states(rerun.state_details.flow_run_id)
    for task in ("fingerprint-source", "build-shards", "tiny-model", "train-model"):
        assert states[task] == "Cached", (task, states)


def test_failed_training_rerun_caches_finished_steps_and_resumes(tmp_path):
    from flows.pipeline import pipeline

    # sft dies abruptly after step 3 (its last checkpoint is step 2), failing the flow run
    config = pipeline_yaml(tmp_path, sft_train={"debug_stop_after_steps": 3})
    failed = pipeline(config=str(config), return_state=True)
    assert failed.is_failed()
    metrics = tmp_path / "out" / "jobs" / "sft" / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    assert not (tmp_path / "out" / "jobs" / "rm").exists()  # never started: it depends on sft

    # the fix: drop the injected failure and run again
    data = yaml.safe_load(config.read_text())
    del data["jobs"]["sft"]["config"]["train_cfgs"]["debug_stop_after_steps"]
    config.write_text(yaml.safe_dump(data))
    rerun = pipeline(config=str(config), return_state=True)
    summary = rerun.result()
    states = all_task_states(rerun.state_details.flow_run_id)
    for task in ("fingerprint-source", "build-shards", "tiny-model"):
        assert states[task] == "Cached", (task, states)
    assert summary["jobs"]["sft"]["steps"] == 4
    log = (tmp_path / "out" / "jobs" / "sft" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]
    assert summary["jobs"]["sft"].get("resumed_from_step") == 2
