"""Online RL jobs in a pipeline: a GRPO job scored by another job's trained reward model (and a rule),
after it, with the reward model's folder passed as a reward source, and a PTX term on a supervised dataset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from align_core.errors import UsageError
from alignflow.samples import write_samples
from flows.pipeline_config import check_pipeline, job_sections, load_pipeline

TRAIN = {"max_steps": 3, "save_interval": 10, "per_device_train_batch_size": 4, "learning_rate": 1.0e-3}


def rl_pipeline(folder: Path, reward_job: str = "grpo", algorithm: str = "grpo") -> Path:
    write_samples(folder / "data", rows=24, seed=0)
    config = {
        "output_dir": "out",
        "models": {"tiny": {"tiny": {"arch": "llama", "seed": 0, "hidden_size": 64, "num_layers": 2, "num_heads": 4}}},
        "datasets": {
            "hh": {"source": "data/hh_rlhf.jsonl", "template": "HH-RLHF", "kind": "preference"},
            "questions": {"source": "data/gsm8k.jsonl", "template": "GSM8K", "kind": "prompt_only"},
            "alpaca": {"source": "data/alpaca.jsonl", "template": "Alpaca", "kind": "supervised"},
        },
        "jobs": {
            "rm": {"algorithm": "rm", "model": "tiny", "train": ["hh"], "config": {"train_cfgs": TRAIN, "data_cfgs": {"max_length": 128}}},
            reward_job: {
                "algorithm": algorithm, "model": "tiny", "train": ["questions"], "reward_model": "rm",
                "ptx": ["alpaca"] if algorithm == "grpo" else [],
                **({"evaluate": {"datasets": ["questions", "hh"], "reward_model": "rm", "max_new_tokens": 8, "max_length": 160}}
                   if algorithm == "grpo" else {}),
                "config": {"train_cfgs": {**TRAIN, "max_steps": 2, "num_generations": 2, "max_new_tokens": 8, "ptx_coef": 0.1,
                                          "rewards": [{"name": "gsm8k_exact_match"}]} if algorithm == "grpo" else TRAIN,
                           "data_cfgs": {"max_length": 160}},
            },
        },
    }
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_reward_model_job_is_a_dependency_and_a_reward_source(tmp_path):
    spec = load_pipeline(rl_pipeline(tmp_path))
    assert spec.job_order() == [["rm"], ["grpo"]]
    rewards = job_sections(spec, "grpo")["train_cfgs"]["rewards"]
    assert rewards == [{"name": "gsm8k_exact_match"},
                       {"name": "reward_model", "kwargs": {"path": str(tmp_path / "out" / "jobs" / "rm" / "model")}}]
    assert job_sections(spec, "grpo")["data_cfgs"]["ptx_datasets"] == [str(tmp_path / "out" / "shards" / "alpaca")]


def test_a_ptx_dataset_must_be_supervised_and_is_set_by_the_pipeline_only(tmp_path):
    path = rl_pipeline(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["jobs"]["grpo"]["ptx"] = ["questions"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UsageError, match=r"jobs.grpo: dataset 'questions' is prompt_only; the PTX term reads supervised datasets"):
        check_pipeline(load_pipeline(path))
    config["jobs"]["grpo"]["ptx"] = ["alpaca"]
    config["jobs"]["grpo"]["config"]["data_cfgs"]["ptx_datasets"] = ["elsewhere"]
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UsageError, match=r"jobs.grpo.config.data_cfgs.ptx_datasets: set by the pipeline \(from ptx\)"):
        check_pipeline(load_pipeline(path))


def test_a_reward_model_on_an_algorithm_without_rewards_is_refused_naming_the_job(tmp_path):
    spec = load_pipeline(rl_pipeline(tmp_path, reward_job="sft", algorithm="sft"))
    with pytest.raises(UsageError, match=r"jobs.sft.reward_model: sft takes no rewards \(grpo, ppo, ppo_lag, rloo do\)"):
        check_pipeline(spec)


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_grpo_job_is_scored_by_the_reward_model_job_it_names(tmp_path):
    from align_core.rollouts import read_rollouts
    from flows.pipeline import pipeline

    summary = pipeline(config=str(rl_pipeline(tmp_path)), return_state=True).result()
    assert summary["jobs"]["grpo"]["steps"] == 2
    rollouts = read_rollouts(tmp_path / "out" / "jobs" / "grpo").to_pylist()
    assert len(rollouts) == 2 * 4 * 2  # steps x prompts x generations
    assert len({row["reward/reward_model"] for row in rollouts}) > 1  # the trained reward model scored them
    assert all(row["reward"] == pytest.approx(row["reward/reward_model"] + row["reward/gsm8k_exact_match"], abs=1e-5)
               for row in rollouts)
    assert summary["jobs"]["grpo"]["final_train_metrics"]["ptx_loss"] > 0  # the PTX term read the alpaca shards
    # the evaluation step: the trained policy against its starting model, judged by the rm job's model
    evaluation = summary["evaluations"]["grpo"]
    questions, hh = evaluation["metrics"]["questions"], evaluation["metrics"]["hh"]
    from align_core.shards.dataset import ShardDataset

    assert 0 < questions["prompts"] <= ShardDataset(summary["datasets"]["questions"]).manifest.rows
    assert questions["win_rate"] + questions["tie_rate"] + questions["loss_rate"] == pytest.approx(1)
    assert 0 <= questions["length_controlled_win_rate"] <= 1 and hh["measured_by"].startswith("implicit reward")
    assert (Path(evaluation["path"]) / "report.html").is_file()
    assert Path(evaluation["path"]).parent == tmp_path / "out" / "evaluations" / "grpo"
    from typer.testing import CliRunner

    from alignflow.cli import app

    compared = CliRunner().invoke(app, ["report", "--compare", str(tmp_path / "out" / "jobs" / "rm"),
                                        str(tmp_path / "out" / "jobs" / "grpo"), evaluation["path"]])
    assert compared.exit_code == 0, compared.output
    lines = compared.stdout.splitlines()
    assert lines[0].split()[1:3] == ["rm", "grpo"] and any(line.startswith("questions/win_rate ") for line in lines)
    assert any(line.startswith("train/loss ") and len(line.split()) == 4 for line in lines)


def test_a_cost_model_job_is_a_dependency_and_a_cost_source_of_a_ppo_lag_job(tmp_path):
    path = rl_pipeline(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["jobs"]["cm"] = {**config["jobs"]["rm"]}
    config["jobs"]["grpo"].update(algorithm="ppo_lag", cost_model="cm")
    path.write_text(yaml.safe_dump(config))
    spec = load_pipeline(path)
    assert spec.job_order() == [["cm", "rm"], ["grpo"]]
    assert job_sections(spec, "grpo")["train_cfgs"]["costs"] == [
        {"name": "reward_model", "kwargs": {"path": str(tmp_path / "out" / "jobs" / "cm" / "model")}}]
    config["jobs"]["grpo"]["algorithm"] = "grpo"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UsageError, match=r"jobs.grpo.cost_model: grpo takes no costs \(ppo_lag do\)"):
        check_pipeline(load_pipeline(path))


def test_an_evaluation_is_checked_before_the_run_and_waits_for_the_models_it_names(tmp_path):
    path = rl_pipeline(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["jobs"]["sft"] = {"algorithm": "sft", "model": "tiny", "train": ["alpaca"],
                             "evaluate": {"datasets": ["questions"], "reward_model": "rm"}}
    path.write_text(yaml.safe_dump(config))
    assert load_pipeline(path).job_order() == [["rm"], ["grpo", "sft"]]  # the judge is trained first
    config["jobs"]["sft"]["evaluate"] = {"datasets": ["questions"]}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UsageError, match="jobs.sft.evaluate: prompt set 'questions' needs a reward_model"):
        check_pipeline(load_pipeline(path))
    config["jobs"]["sft"]["evaluate"] = {"datasets": ["alpaca"], "reference": "nowhere"}
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(UsageError, match="jobs.sft.evaluate.reference: 'nowhere' is neither a models entry nor a job"):
        load_pipeline(path)
