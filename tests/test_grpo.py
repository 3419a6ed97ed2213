"""GRPO and RLOO on the shared loop: a tiny model learns a rule reward, metas reach the reward functions,
rollouts are written as verified Arrow files, and a killed run resumes to the same rollouts and weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_data import launch, materialize_validated, read_jsonl, tiny_model, write_config  # noqa: F401

from align_core.errors import UsageError
from align_core.launch import run as run_in_process
from align_core.rollouts import read_rollouts
from align_core.trainers.grpo import completion_tokens_mask

REWARD_MODULE = '''
from align_core.rewards import register_reward


@register_reward("test_letter_share")
def letter_share(prompts, completions, metas, letter="e"):
    """The share of the completion's characters that are ``letter``: a dense reward a tiny model can climb."""
    return [text.count(letter) / max(len(text), 1) for text in completions]
'''


def test_the_completion_mask_ends_at_the_first_eos_inclusive():
    eos = 9
    completion = torch.tensor([[5, 6, 9, 9, 9], [5, 6, 7, 8, 4], [9, 9, 9, 9, 9]])
    assert completion_tokens_mask(completion, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"Write a few words about the number {index}."}]} for index in range(32)]
    return materialize_validated(rows, "prompt_only", tmp_path_factory.mktemp("prompts"), "prompts")


def rl_config(tmp_path: Path, model: Path, data: Path, out: str, algorithm: str, **train_cfgs) -> Path:
    module = tmp_path / "letter_reward.py"
    module.write_text(REWARD_MODULE)
    settings = {
        "train_cfgs": {"algorithm": algorithm, "max_steps": 30, "per_device_train_batch_size": 4, "learning_rate": 3e-3,
                       "lr_warmup_ratio": 0.0, "save_interval": 100, "num_generations": 4, "max_new_tokens": 12,
                       "beta": 0.01, "reward_module": str(module), "rewards": [{"name": "test_letter_share"}], **train_cfgs},
        "data_cfgs": {"max_length": 64},
    }
    return write_config(tmp_path / f"{out}.yaml", model, [data], tmp_path / out, settings)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_the_mean_reward_of_a_tiny_model_rises_on_a_rule_reward(tmp_path, tiny_model, prompts, algorithm):
    run_in_process(rl_config(tmp_path, tiny_model, prompts, "out", algorithm))
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    rewards = [record["reward"] for record in records]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert all(record["entropy"] > 0 and record["rollout_tokens_per_second"] > 0 and record["update_tokens_per_second"] > 0
               and record["generated_tokens"] == 16 * record["response_length"] for record in records)
    assert last > first + 0.05, rewards  # the share of "e" climbs
    rollouts = read_rollouts(tmp_path / "out")
    assert rollouts.num_rows == 30 * 4 * 4  # steps x prompts x generations
    by_step = {}
    for row in rollouts.select(["step", "reward"]).to_pylist():
        by_step.setdefault(row["step"], []).append(row["reward"])
    assert [round(sum(v) / len(v), 5) for _, v in sorted(by_step.items())] == [round(r, 5) for r in rewards]


@pytest.mark.slow
def test_a_killed_grpo_run_resumes_to_the_same_rollouts_losses_and_weights(tmp_path, tiny_model, prompts):
    settings = {"max_steps": 6, "save_interval": 2}
    run_in_process(rl_config(tmp_path, tiny_model, prompts, "whole", "grpo", **settings))  # in this process: only the crash needs a process of its own
    interrupted = rl_config(tmp_path, tiny_model, prompts, "resumed", "grpo", **settings)
    crashed = launch(interrupted, "train_cfgs.debug_stop_after_steps=3")
    assert crashed.returncode == 17, crashed.stderr[-3000:]
    run_in_process(interrupted)
    keys = ("step", "loss", "reward", "kl", "lr")
    expected = [[record[key] for key in keys] for record in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]
    assert [[record[key] for key in keys] for record in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")] == expected
    assert read_rollouts(tmp_path / "resumed").equals(read_rollouts(tmp_path / "whole"))
    before, after = load_file(str(tmp_path / "whole" / "model" / "model.safetensors")), load_file(
        str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert all(torch.equal(before[key], after[key]) for key in before)


@pytest.mark.slow
def test_gsm8k_metas_reach_the_exact_match_reward(tmp_path, tiny_model):
    from align_core.materialize import materialize_dataset

    rows = [{"question": f"Tom has {n} apples and buys {n} more. How many apples does he have?", "answer": f"He has {2 * n}.\n#### {2 * n}"}
            for n in range(1, 9)]
    source = tmp_path / "gsm8k.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = materialize_dataset(source, "GSM8K", "prompt_only", tmp_path / "datasets")
    config = rl_config(tmp_path, tiny_model, Path(data), "out", "grpo", max_steps=2,
                       rewards=[{"name": "gsm8k_exact_match"}, {"name": "test_letter_share", "weight": 0.5}])
    run_in_process(config)
    rollouts = read_rollouts(tmp_path / "out").to_pylist()
    assert len(rollouts) == 2 * 4 * 4
    assert all(row["reward/gsm8k_exact_match"] in (0.0, 1.0) for row in rollouts)
    assert all(abs(row["reward"] - row["reward/gsm8k_exact_match"] - 0.5 * row["reward/test_letter_share"]) < 1e-6
               for row in rollouts)


def test_a_grpo_config_without_rewards_or_with_an_unknown_one_fails_before_training(tmp_path, tiny_model, prompts):
    from align_core.config import load_config
    from align_core.trainers import get_trainer

    with pytest.raises(UsageError, match="rewards: name at least one reward source"):
        load_config(rl_config(tmp_path, tiny_model, prompts, "none", "grpo", rewards=[]))
    config = load_config(rl_config(tmp_path, tiny_model, prompts, "unknown", "grpo", rewards=[{"name": "no_such_reward"}]))
    with pytest.raises(UsageError, match="no_such_reward"):
        get_trainer("grpo")(config)


@pytest.mark.slow
def test_two_ranks_roll_out_their_own_prompts_and_train_one_model(tmp_path, tiny_model, prompts):
    config = rl_config(tmp_path, tiny_model, prompts, "out", "grpo", max_steps=3, per_device_train_batch_size=2)
    trained = launch(config, nproc=2)
    assert trained.returncode == 0, trained.stderr[-3000:]
    rollouts = read_rollouts(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "rollouts").glob("manifest-rank*.json")) == [
        "manifest-rank0.json", "manifest-rank1.json"]
    assert rollouts.num_rows == 3 * 2 * 2 * 4  # steps x ranks x prompts per rank x generations
    per_step = {}
    for row in rollouts.select(["step", "prompt_id"]).to_pylist():
        per_step.setdefault(row["step"], set()).add(row["prompt_id"])
    assert all(len(ids) == 4 for ids in per_step.values())  # the ranks drew different prompts
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert [record["step"] for record in records] == [1, 2, 3]
    by_step = {}
    for row in rollouts.select(["step", "reward"]).to_pylist():
        by_step.setdefault(row["step"], []).append(row["reward"])
    # the logged mean is over both ranks' completions
    assert [round(sum(v) / len(v), 5) for _, v in sorted(by_step.items())] == [round(r["reward"], 5) for r in records]


@pytest.mark.slow
def test_image_prompts_roll_out_through_the_same_trainer(tmp_path):
    from media_files import png_bytes

    from align_core.materialize import materialize_dataset
    from align_core.models.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "llava", arch="llava", vocab_size=384, hidden_size=64, num_layers=2, num_heads=4,
                             max_position_embeddings=512)
    (tmp_path / "media").mkdir()
    colours = [(230, 30, 30), (30, 30, 230)]
    rows = []
    for index in range(8):
        (tmp_path / "media" / f"{index}.png").write_bytes(png_bytes(colours[index % 2], 16))
        rows.append({"question": "What colour is the picture?", "image": f"{index}.png", "response_1": "red", "response_2": "blue",
                     "overall_response": 1})
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = materialize_dataset(tmp_path / "rows.jsonl", "AA_TI2T", "prompt_only", tmp_path / "datasets", media_root=tmp_path / "media")
    config = rl_config(tmp_path, model, Path(data), "out", "grpo", max_steps=2, per_device_train_batch_size=2,
                       max_new_tokens=6)
    run_in_process(config)
    rollouts = read_rollouts(tmp_path / "out")
    assert rollouts.num_rows == 2 * 2 * 4
    assert all(len(ids) >= 1 for ids in rollouts.column("completion_ids").to_pylist())


@pytest.mark.slow
def test_at_zero3_generation_gathers_the_weights_and_matches_zero0(tmp_path, tiny_model, prompts):
    runs = {}
    for stage in (0, 3):
        run_in_process(rl_config(tmp_path, tiny_model, prompts, f"zero{stage}", "grpo", max_steps=3, zero_stage=stage))
        runs[stage] = [value for r in read_jsonl(tmp_path / f"zero{stage}" / "metrics.jsonl") for value in (r["reward"], r["loss"])]
    assert runs[3] == pytest.approx(runs[0], rel=1e-5, abs=1e-9)  # the same completions sampled, the same updates
    assert read_rollouts(tmp_path / "zero3").column("completion").equals(read_rollouts(tmp_path / "zero0").column("completion"))
