"""Evaluation: win rates and the length-controlled win rate on hand-computed values, and ``evaluate`` on
tiny models: per-kind measures, a content-addressed folder found again, completions and a report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from train_data import materialize_validated, preference_data, sft_data, tiny_model  # noqa: F401

from align_core.errors import UsageError
from align_core.evaluation.evaluate import EvalSpec, evaluate
from align_core.evaluation.winrate import length_controlled_win_rate, outcomes, win_rates
from align_core.generation import SamplingSettings


def test_outcomes_and_win_rates_count_ties_apart():
    results = outcomes([1.0, 0.5, 2.0, 0.0], [0.5, 0.5, 2.05, 1.0], tie_margin=0.1)
    assert results.tolist() == [1.0, 0.5, 0.5, 0.0]
    assert win_rates(results) == {"win_rate": 0.25, "tie_rate": 0.5, "loss_rate": 0.25, "win_rate_with_ties": 0.5}


def test_the_length_controlled_win_rate_is_the_fitted_rate_at_equal_lengths():
    # 6 longer completions win 4, 2 shorter ones win 1: raw rate 5/8. With lengths +-1 the two groups' x are
    # symmetric (+-tanh(1/std)), so the fit's intercept is the mean of their logits, (ln 2 + 0) / 2, and the
    # length-controlled rate sigmoid(ln 2 / 2) = sqrt(2) / (1 + sqrt(2))
    results = torch.tensor([1, 1, 1, 1, 0, 0, 1, 0], dtype=torch.float64)
    lengths = [1, 1, 1, 1, 1, 1, -1, -1]
    assert win_rates(results)["win_rate"] == 0.625
    assert length_controlled_win_rate(results, lengths) == pytest.approx(math.sqrt(2) / (1 + math.sqrt(2)), abs=1e-3)
    # no length spread: the plain rate, ties as half
    assert length_controlled_win_rate(torch.tensor([1.0, 0.5, 0.0, 1.0]), [3, 3, 3, 3]) == 0.625


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"Tell me about the number {index}."}]} for index in range(6)]
    return materialize_validated(rows, "prompt_only", tmp_path_factory.mktemp("eval-prompts"), "prompts")


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory, tiny_model) -> Path:
    from align_core.models.registry import load_score_model, load_tokenizer

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("rm") / "rm"
    load_score_model(tiny_model).save_pretrained(folder)
    load_tokenizer(tiny_model).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_model_evaluated_on_every_kind_against_itself_ties_everywhere(tmp_path, tiny_model, sft_data, preference_data,
                                                                         prompts, reward_model):
    train, _ = preference_data
    spec = EvalSpec(str(tiny_model), (str(sft_data), str(train), str(prompts)), reward_model=str(reward_model),
                    reference=str(tiny_model), sampling=SamplingSettings(max_new_tokens=8, temperature=0.0), max_length=96)
    result = evaluate(spec, tmp_path / "evals")
    supervised, preference, generation = (result.metrics[Path(folder).name] for folder in spec.datasets)
    assert supervised["kind"] == "supervised" and math.isclose(supervised["perplexity"], math.exp(supervised["loss"]))
    assert 5.0 < supervised["loss"] < 6.5  # an untrained model over a 384-token vocabulary: about ln 384 = 5.95
    assert preference["margin"] == 0.0 and preference["accuracy"] == 0.0  # its implicit reward against itself is 0
    assert generation["prompts"] == 6 and generation["tie_rate"] == 1.0  # greedy: the same completions, the same scores
    assert generation["length_controlled_win_rate"] == 0.5
    completions = pa.ipc.open_file(pa.memory_map(str(result.path / f"completions-{Path(prompts).name}.arrow"))).read_all()
    assert completions.column("model_completion").equals(completions.column("reference_completion"))
    assert json.loads((result.path / "eval.json").read_text())["datasets"] == result.metrics
    assert "reference_completion" not in (result.path / "report.html").read_text()  # the page shows text, not columns
    again = evaluate(spec, tmp_path / "evals")
    assert again.cache_hit and again.path == result.path


@pytest.mark.slow
def test_a_reward_model_is_measured_by_its_scores_and_a_policy_needs_a_reference(tmp_path, tiny_model, preference_data,
                                                                                 prompts, reward_model):
    train, _ = preference_data
    result = evaluate(EvalSpec(str(reward_model), (str(train),), max_length=96), tmp_path / "evals")
    metrics = result.metrics[Path(train).name]
    assert metrics["measured_by"] == "score" and metrics["pairs"] > 0 and 0.0 <= metrics["accuracy"] <= 1.0
    with pytest.raises(UsageError, match="give the reference"):
        evaluate(EvalSpec(str(tiny_model), (str(train),), max_length=96), tmp_path / "evals")
    with pytest.raises(UsageError, match="give one \\(--reward-model\\)"):
        evaluate(EvalSpec(str(tiny_model), (str(prompts),), max_length=96), tmp_path / "evals")
    different = evaluate(EvalSpec(str(reward_model), (str(train),), max_length=128), tmp_path / "evals")
    assert different.path != result.path and not different.cache_hit  # a setting is in the address
