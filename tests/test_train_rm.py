"""Reward model end to end: pairwise loss falls, eval accuracy rises above chance, the head is exported."""

from __future__ import annotations

import pytest
import torch
from train_data import preference_data, read_jsonl, tiny_model, write_config  # noqa: F401

from align_core.launch import run


@pytest.fixture(scope="module")
def rm_run(tmp_path_factory, tiny_model, preference_data):
    train, evaluation = preference_data
    root = tmp_path_factory.mktemp("rm-run")
    config = write_config(
        root / "rm.yaml", tiny_model, [train], root / "out",
        {
            "train_cfgs": {
                "algorithm": "rm", "max_steps": 16, "eval_interval": 2, "save_interval": 16,
                "learning_rate": 2e-3, "score_regularization": 0.01, "zero_stage": 2,
            },
        },
        eval_sets=[evaluation],
    )
    return run(config), root / "out", evaluation


@pytest.mark.slow
def test_rm_loss_falls_and_eval_accuracy_rises_above_chance(rm_run):
    result, out, _ = rm_run
    records = read_jsonl(out / "metrics.jsonl")
    assert records[-1]["loss"] < 0.5 * records[0]["loss"]
    assert [r["step"] for r in records if "eval/accuracy" in r] == list(range(2, 17, 2))
    assert result["eval"]["eval/accuracy"] >= 0.9  # 16 held-out pairs; chance is 0.5
    assert result["eval"]["eval/rewards/margin"] > 0
    assert {"rewards/chosen", "rewards/rejected", "rewards/margin", "accuracy"} <= set(records[-1])
    assert {"eval/loss", "eval/reward_mean", "eval/reward_std"} <= set(result["eval"])


@pytest.mark.slow
def test_exported_reward_model_scores_chosen_above_rejected(rm_run):
    from align_core.data import TokenDataset, tokenize_dataset
    from align_core.models.registry import load_score_model

    result, out, evaluation = rm_run
    model = load_score_model(result["model_dir"]).eval()
    rows = TokenDataset(tokenize_dataset(evaluation, result["model_dir"], 96, cache_root=out / "cache"))
    batch = rows.collator()([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        chosen, rejected = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).end_scores.chunk(2)
    accuracy = (chosen > rejected).float().mean().item()
    assert accuracy == pytest.approx(result["eval"]["eval/accuracy"], abs=1e-6)
