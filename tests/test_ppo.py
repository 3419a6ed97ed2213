"""PPO and PPO-Lagrangian on the shared loop: a tiny model climbs a rule reward with a critic, a critic
starts from the reward model, lambda follows the cost, and killed runs resume to the same metrics,
rollouts and weights of every trained model (lambda included)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_grpo import REWARD_MODULE, prompts  # noqa: F401
from train_data import launch, materialize_validated, read_jsonl, supervised_rows, tiny_model, write_config  # noqa: F401

from align_core.launch import run as run_in_process
from align_core.losses.rl import masked_whiten
from align_core.rollouts import read_rollouts
from align_core.trainers.ppo import whiten_over_step

LETTER_COST = {"name": "test_letter_share", "label": "letter_a", "kwargs": {"letter": "a"}}


def ppo_config(tmp_path: Path, model: Path, data: Path, out: str, algorithm: str = "ppo", data_cfgs: dict | None = None,
               **train_cfgs) -> Path:
    module = tmp_path / "letter_reward.py"
    module.write_text(REWARD_MODULE)
    settings = {
        # weight 10: sequence scores near the scale of a fresh critic's values, which would drown a 0.05 share
        "train_cfgs": {"rewards": [{"name": "test_letter_share", "weight": 10.0}], "algorithm": algorithm, "max_steps": 30, "per_device_train_batch_size": 8, "learning_rate": 3e-3,
                       "lr_warmup_ratio": 0.0, "save_interval": 100, "max_new_tokens": 12, "beta": 0.01,
                       "reward_module": str(module), **train_cfgs},
        "data_cfgs": {"max_length": 64, **(data_cfgs or {})},
    }
    return write_config(tmp_path / f"{out}.yaml", model, [data], tmp_path / out, settings)


@pytest.fixture(scope="module")
def ptx_data(tmp_path_factory) -> Path:
    """Two micro-batches of four: the PTX order wraps into a new epoch within a short run."""
    return materialize_validated(supervised_rows(8), "supervised", tmp_path_factory.mktemp("ptx"), "ptx")


def test_whitening_over_the_step_equals_masked_whiten_of_all_its_tokens_together():
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randn(3, 5, generator=generator), torch.randn(2, 7, generator=generator)
    first_mask, second_mask = torch.rand(3, 5, generator=generator) > 0.3, torch.rand(2, 7, generator=generator) > 0.3
    whitened = whiten_over_step([first, second], [first_mask, second_mask], all_reduce=lambda tensor: None)
    together = torch.cat([first.flatten(), second.flatten()])
    together_mask = torch.cat([first_mask.flatten(), second_mask.flatten()])
    expected = masked_whiten(together[None], together_mask[None])[0]
    assert torch.allclose(torch.cat([whitened[0].flatten(), whitened[1].flatten()]), expected, atol=1e-6)
    assert float(whitened[0][~first_mask].abs().sum()) == 0.0


@pytest.mark.slow
def test_ppo_raises_the_mean_reward_of_a_tiny_model_on_a_rule_reward(tmp_path, tiny_model, prompts):
    run_in_process(ppo_config(tmp_path, tiny_model, prompts, "out"))
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    shares = [record["reward/test_letter_share"] for record in records]
    first, last = sum(shares[:5]) / 5, sum(shares[-5:]) / 5
    print(f"ppo share of 'e': first 5 steps {first:.4f}, last 5 steps {last:.4f}")
    assert last > first + 0.03, shares  # the share of "e" climbs (0.050 -> 0.092 measured)
    for key in ("kl", "value_loss", "clip_fraction", "value_clip_fraction", "advantage_mean", "advantage_std", "returns_mean",
                "response_length", "reward/test_letter_share"):
        assert all(key in record for record in records), key
    rollouts = read_rollouts(tmp_path / "out").to_pylist()
    assert len(rollouts) == 30 * 8  # steps x prompts, one completion each
    for row in rollouts:
        length = len(row["completion_ids"])
        assert len(row["values"]) == len(row["returns"]) == len(row["advantages"]) == len(row["old_logps"]) == length
    assert (tmp_path / "out" / "model-critic" / "model.safetensors").is_file()


@pytest.mark.slow
def test_ppo_with_a_reward_model_source_starts_its_critic_from_the_reward_model(tmp_path, tiny_model, prompts):
    from align_core.config import load_config
    from align_core.models.registry import load_score_model, load_tokenizer
    from align_core.trainers import get_trainer

    torch.manual_seed(3)
    reward_model = tmp_path / "reward-model"
    load_score_model(tiny_model).save_pretrained(reward_model)
    load_tokenizer(tiny_model).save_pretrained(reward_model)
    config = ppo_config(tmp_path, tiny_model, prompts, "out", max_steps=2, rewards=[{"name": "reward_model", "kwargs": {"path": str(reward_model)}}])
    trainer = get_trainer("ppo")(load_config(config))
    critic = next(role for role in trainer.models() if role.name == "critic").load()
    saved = load_file(str(reward_model / "model.safetensors"))
    weights = critic.state_dict()
    assert set(weights) == set(saved) and "score_head.weight" in saved
    assert all(torch.equal(weights[key], saved[key]) for key in saved)  # the base and the trained head
    run_in_process(config)
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert len(records) == 2 and all("reward/reward_model" in record for record in records)


def assert_resumes_exactly(tmp_path: Path, model: Path, data: Path, algorithm: str, keys: tuple[str, ...],
                           models: tuple[str, ...], data_cfgs: dict | None = None, **train_cfgs) -> list[dict]:
    settings = {"max_steps": 4, "save_interval": 2, "per_device_train_batch_size": 4, "ppo_epochs": 2, **train_cfgs}
    run_in_process(ppo_config(tmp_path, model, data, "whole", algorithm, data_cfgs, **settings))  # in this process: only the crash needs a process of its own
    interrupted = ppo_config(tmp_path, model, data, "resumed", algorithm, data_cfgs, **settings)
    crashed = launch(interrupted, "train_cfgs.debug_stop_after_steps=3")
    assert crashed.returncode == 17, crashed.stderr[-3000:]
    run_in_process(interrupted)
    expected = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    got = read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [[record[key] for key in keys] for record in got] == [[record[key] for key in keys] for record in expected]
    assert read_rollouts(tmp_path / "resumed").equals(read_rollouts(tmp_path / "whole"))
    for folder in models:
        before = load_file(str(tmp_path / "whole" / folder / "model.safetensors"))
        after = load_file(str(tmp_path / "resumed" / folder / "model.safetensors"))
        assert all(torch.equal(before[key], after[key]) for key in before), folder
    return expected


@pytest.mark.slow
def test_a_killed_ppo_run_with_a_ptx_term_resumes_to_the_same_metrics_rollouts_and_weights(
    tmp_path, tiny_model, prompts, ptx_data
):
    records = assert_resumes_exactly(
        tmp_path, tiny_model, prompts, "ppo", ("step", "loss", "reward", "kl", "value_loss", "ptx_loss", "lr"),
        ("model", "model-critic"), data_cfgs={"ptx_datasets": [str(ptx_data)]}, ptx_coef=1.0, critic_learning_rate=1e-3,
    )
    ptx = [record["ptx_loss"] for record in records]  # 8 updates over 2 PTX batches: 4 epochs of them
    assert ptx[-1] < ptx[0] - 0.5, ptx  # the policy learns the supervised answers beside the reward (5.75 -> 4.84)


@pytest.mark.slow
def test_ppo_lag_moves_lambda_with_the_cost_and_resumes_with_the_same_lambda(tmp_path, tiny_model, prompts):
    threshold = 0.06
    records = assert_resumes_exactly(
        tmp_path, tiny_model, prompts, "ppo_lag", ("step", "loss", "reward", "cost", "lambda", "cost_value_loss"),
        ("model", "model-critic", "model-cost_critic"), costs=[LETTER_COST], cost_threshold=threshold, lambda_lr=0.5,
    )
    lambdas = [1.0] + [record["lambda"] for record in records]  # lambda_init, then after each step's dual update
    for step, record in enumerate(records):
        assert (lambdas[step + 1] > lambdas[step]) == (record["cost"] > threshold), (lambdas, records)
        assert record["cost_violation"] == pytest.approx(record["cost"] - threshold)
    assert any(record["cost"] > threshold for record in records), records  # lambda rose at least once
    rollouts = read_rollouts(tmp_path / "whole").to_pylist()
    assert all(len(row["cost_values"]) == len(row["completion_ids"]) for row in rollouts)
    assert all(row["cost"] == pytest.approx(row["completion"].count("a") / max(len(row["completion"]), 1)) for row in rollouts)


@pytest.mark.slow
def test_ppo_lag_with_ptx_at_zero3_learns_exactly_as_at_zero0(tmp_path, tiny_model, prompts, ptx_data):
    runs = {}
    keys = ("reward", "loss", "value_loss", "cost", "cost_value_loss", "lambda", "ptx_loss")
    for stage in (0, 3):
        run_in_process(ppo_config(tmp_path, tiny_model, prompts, f"zero{stage}", "ppo_lag", {"ptx_datasets": [str(ptx_data)]},
                                  max_steps=3, zero_stage=stage, costs=[LETTER_COST], ptx_coef=1.0))
        runs[stage] = [record[key] for record in read_jsonl(tmp_path / f"zero{stage}" / "metrics.jsonl") for key in keys]
    assert runs[3] == pytest.approx(runs[0], rel=1e-4, abs=1e-7)  # partitioned policy, critics and reference alike
    assert read_rollouts(tmp_path / "zero3").column("completion").equals(read_rollouts(tmp_path / "zero0").column("completion"))


@pytest.mark.slow
def test_two_ranks_at_zero3_train_ppo_lag_with_one_lambda_from_both_ranks_costs(tmp_path, tiny_model, prompts, ptx_data):
    config = ppo_config(tmp_path, tiny_model, prompts, "out", "ppo_lag", {"ptx_datasets": [str(ptx_data)]}, max_steps=2,
                        per_device_train_batch_size=2, zero_stage=3, costs=[LETTER_COST], ptx_coef=1.0, lambda_lr=0.5)
    trained = launch(config, nproc=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    rollouts = read_rollouts(tmp_path / "out").to_pylist()
    assert len(rollouts) == 2 * 2 * 2  # steps x ranks x prompts per rank
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    log_lambda = 0.0  # lambda_init 1: each step's dual update uses the mean cost over both ranks' rollouts
    for record in records:
        costs = [row["cost"] for row in rollouts if row["step"] == record["step"]]
        assert record["cost"] == pytest.approx(sum(costs) / len(costs), abs=1e-6)
        log_lambda += 0.5 * (record["cost"] - 0.0) * math.exp(log_lambda)
        assert record["lambda"] == pytest.approx(math.exp(log_lambda), rel=1e-5)
    for folder in ("model", "model-critic", "model-cost_critic"):
        assert (tmp_path / "out" / folder / "model.safetensors").is_file()
