"""The end-to-end pipeline on tiny models under a real Prefect server: outputs, caching, failure + resume,
and the table of steps ``alignflow pipeline run`` prints for each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from align_core.errors import UsageError
from alignflow.cli import app
from alignflow.samples import write_samples
from flows.pipeline import read_steps, step_rows
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


STEPS = [
    *(
        f"materialize[{dataset}]/{task}"
        for dataset in ("alpaca", "hh")
        for task in ("fingerprint-source", "build-shards", "validate-shards")
    ),
    "tiny-model[tiny]",
    "tokenize[sft/alpaca]",
    "train-model[sft]",
    "tokenize[rm/hh]",
    "train-model[rm]",
]


def step_states(flow_run_id, config: Path) -> dict[str, str]:
    """Step -> state, as the table of the run shows them (read from Prefect)."""
    return {row.step: row.state for row in step_rows(read_steps(flow_run_id), load_pipeline(config))}


def run_cli(config: Path):
    """``alignflow pipeline run CONFIG`` in this process (so on the test server); the table is parsed from stderr."""
    result = CliRunner().invoke(app, ["pipeline", "run", str(config)])
    lines = result.stderr.split("steps of pipeline run", 1)[1].splitlines()[2:]  # after the run id and the header
    table = {}
    for line in lines:
        if not line.strip() or line.startswith("error:"):
            break
        step, state = line.split()[:2]
        table[step] = state
    return result, table


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


def test_a_jobs_launcher_section_becomes_the_launchers_flags_and_is_checked_first(tmp_path):
    from flows.pipeline_config import check_pipeline

    path = pipeline_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["jobs"]["rm"].update(nproc=8, launcher={"hostfile": "hosts", "num_nodes": 2, "master_addr": "node-a"})
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match=r"jobs.rm.launcher: hostfile .*/hosts does not exist"):
        check_pipeline(load_pipeline(path))
    (tmp_path / "hosts").write_text("node-a slots=8\nnode-b slots=8\n")
    spec = load_pipeline(path)  # the hostfile is relative to the YAML file
    assert spec.jobs["rm"].launcher.arguments() == ["--hostfile", str(tmp_path / "hosts"), "--num_nodes", "2",
                                                    "--master_addr", "node-a"]


@pytest.mark.parametrize("key, value", [("modality", "text")])  # reward_model is read now: tests/test_rl_pipeline.py
def test_job_keys_that_nothing_reads_are_unknown_keys(tmp_path, key, value):
    path = pipeline_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["jobs"]["rm"][key] = value
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(UsageError, match=rf"jobs\.rm\.{key}: Extra inputs are not permitted"):
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

    assert step_states(state.state_details.flow_run_id, config) == dict.fromkeys(STEPS, "Completed")

    # the rerun, as a user runs it: every step is a cache hit, shown on stderr; stdout ends with the output folder
    rerun, table = run_cli(config)
    assert rerun.exit_code == 0, rerun.stderr
    *summary_lines, output_dir = rerun.stdout.strip().splitlines()
    assert output_dir == str(tmp_path / "out")
    assert json.loads("\n".join(summary_lines))["jobs"]["rm"]["model_dir"] == rm["model_dir"]
    assert table == dict.fromkeys(STEPS, "Cached")


def test_failed_training_rerun_caches_finished_steps_and_resumes(tmp_path):
    from flows.pipeline import pipeline

    # sft dies abruptly after step 3 (its last checkpoint is step 2), failing the flow run
    config = pipeline_yaml(tmp_path, sft_train={"debug_stop_after_steps": 3})
    failed, table = run_cli(config)
    assert failed.exit_code == 1
    assert table == {
        **dict.fromkeys(STEPS[:8], "Completed"),
        "train-model[sft]": "Failed",
        "train-model[rm]": "Skipped",  # never submitted: it trains from sft's model
    }
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: pipeline failed: training of {tmp_path}")
    assert failed.stdout == ""
    metrics = tmp_path / "out" / "jobs" / "sft" / "metrics.jsonl"
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    assert not (tmp_path / "out" / "jobs" / "rm").exists()  # never started: it depends on sft

    # the fix: drop the injected failure and run again
    data = yaml.safe_load(config.read_text())
    del data["jobs"]["sft"]["config"]["train_cfgs"]["debug_stop_after_steps"]
    config.write_text(yaml.safe_dump(data))
    rerun = pipeline(config=str(config), return_state=True)
    summary = rerun.result()
    assert step_states(rerun.state_details.flow_run_id, config) == {
        **dict.fromkeys(STEPS[:8], "Cached"),
        "train-model[sft]": "Completed",  # resumed
        "tokenize[rm/hh]": "Completed",
        "train-model[rm]": "Completed",
    }
    assert summary["jobs"]["sft"]["steps"] == 4
    log = (tmp_path / "out" / "jobs" / "sft" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in log] == [1, 2, 3, 4]
    assert summary["jobs"]["sft"].get("resumed_from_step") == 2


@pytest.mark.parametrize("multimodal", [False, True], ids=["demo", "multimodal"])
def test_the_shipped_demo_pipelines_pass_the_checks_a_run_makes_first(tmp_path, multimodal):
    from alignflow.demo import prepare
    from flows.pipeline_config import check_pipeline

    spec = load_pipeline(prepare(tmp_path, rows=40, multimodal=multimodal))
    check_pipeline(spec)
    if not multimodal:  # the demo's reward model drives a PPO job with a PTX term
        assert spec.jobs["ppo"].reward_model == "rm" and spec.job_order()[-1] == ["ppo"]
