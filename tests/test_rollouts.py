"""Rollouts as data: the per-step summary, the rollout contract (GX) and its gate, and ``alignflow rollouts``."""

from __future__ import annotations

import math
import sys

import pyarrow as pa
import pytest
from test_grpo import rl_config
from train_data import materialize_validated, tiny_model, write_config  # noqa: F401
from typer.testing import CliRunner

from align_core.errors import UsageError
from align_core.rollouts import summarize_steps, write_rollouts
from alignflow.cli import app
from data_contracts.rollouts import gate_rollouts, require_valid_rollouts, validate_rollouts


def rollout_table(**overrides) -> pa.Table:
    columns = {
        "step": [1, 1, 2, 2],
        "prompt_id": ["a", "b", "a", "b"],
        "completion": ["red", " ", "blue", "green"],
        "reward": [1.0, 0.0, 0.5, 0.5],
        "reward/rule": [1.0, 0.0, 1.0, 0.0],
        "advantage": [0.7, -0.7, 0.0, 0.0],
        "old_logps": [[-1.0, -2.0], [-0.5], [-0.1], [-3.0]],
    }
    columns.update(overrides)
    return pa.table(columns)


def test_rollouts_are_summarised_per_step_with_empty_completions_counted():
    steps = summarize_steps(rollout_table())
    assert [(s.step, s.rows, s.empty) for s in steps] == [(1, 2, 1), (2, 2, 0)]
    assert steps[0].means() == {"reward": 0.5, "reward/rule": 0.5} and steps[1].means() == {"reward": 0.5, "reward/rule": 0.5}


def test_finite_rollouts_pass_the_contract_with_empty_completions_flagged_as_a_warning(tmp_path):
    write_rollouts(tmp_path, 1, 0, rollout_table())
    result = validate_rollouts(tmp_path)
    assert result.passed and result.rows == 4
    assert [(r.name, r.status, r.unexpected_count, r.sample_ids) for r in result.results if r.status != "PASS"] == [
        ("completions_not_empty", "WARN", 1, ["step 1 / prompt b"])]
    assert (tmp_path / "rollouts" / "report.html").is_file() and (tmp_path / "rollouts" / "validation.json").is_file()


def test_a_non_finite_reward_advantage_or_log_prob_fails_the_contract_naming_the_rollouts(tmp_path):
    table = rollout_table(**{"reward/rule": [1.0, math.nan, 1.0, 0.0], "advantage": [0.7, -0.7, math.inf, 0.0],
                             "old_logps": [[-1.0, -2.0], [-0.5], [-0.1], [-math.inf]],
                             "cost_advantages": [[0.1, 0.2], [0.0], [None], [0.3]]})
    write_rollouts(tmp_path, 1, 0, table)
    failures = {r.name: r.sample_ids for r in validate_rollouts(tmp_path).failures}
    assert failures == {"rewards_finite": ["step 1 / prompt b"], "advantages_finite": ["step 2 / prompt a"],
                        "token_values_finite": ["step 2 / prompt b"]}
    with pytest.raises(UsageError, match=r"rollout contract failed: rewards_finite \(1 rollouts, e.g. step 1 / prompt b\)"):
        require_valid_rollouts(tmp_path)


def test_the_gate_revalidates_when_a_step_is_added_and_only_then(tmp_path):
    write_rollouts(tmp_path, 1, 0, rollout_table())
    first = require_valid_rollouts(tmp_path)
    assert require_valid_rollouts(tmp_path).validated_at == first.validated_at  # the record still describes the files
    write_rollouts(tmp_path, 2, 0, rollout_table(reward=[1.0, math.inf, 0.0, 0.0]))
    with pytest.raises(UsageError, match="rewards_finite"):
        require_valid_rollouts(tmp_path)


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_model):
    from align_core.launch import run

    root = tmp_path_factory.mktemp("rollouts")
    rows = [{"prompt": [{"role": "user", "content": f"Say something about {index}."}]} for index in range(8)]
    data = materialize_validated(rows, "prompt_only", root, "prompts")
    run(rl_config(root, tiny_model, data, "out", "grpo", max_steps=2))
    return root / "out"


@pytest.mark.slow
def test_the_rollouts_command_summarises_each_step_and_shows_the_last_ones(grpo_run):
    result = CliRunner().invoke(app, ["rollouts", str(grpo_run), "-n", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("step     1  16 rollouts  ") and lines[1].startswith("step     2  16 rollouts  ")
    assert "reward/test_letter_share" in lines[0]
    assert sum(line.startswith("  completion: ") for line in lines) == 2
    assert any(line.startswith("PASSED") for line in lines) and "rewards_finite" in result.stdout


@pytest.mark.slow
def test_shards_head_shows_a_runs_rollouts_readably(grpo_run):
    for folder in (grpo_run, grpo_run / "rollouts"):
        result = CliRunner().invoke(app, ["shards", "head", str(folder), "-n", "2"])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert len(lines) == 6 and lines[0].startswith("[step 1 / ") and "reward/test_letter_share" in lines[0]
        assert lines[2].startswith("  completion: ")


@pytest.mark.slow
def test_a_finished_grpo_run_passes_the_gate_and_an_sft_run_has_none(grpo_run, tiny_model, tmp_path):
    from align_core.config import load_config

    assert gate_rollouts(load_config(grpo_run.parent / "out.yaml")).passed
    sft = write_config(tmp_path / "sft.yaml", tiny_model, [tmp_path / "data"], tmp_path / "sft")
    assert gate_rollouts(load_config(sft)) is None


@pytest.mark.slow
def test_a_changed_rollout_file_is_refused_in_one_line_naming_it(grpo_run, monkeypatch, capsys):
    from alignflow.cli import main

    path = next((grpo_run / "rollouts").glob("step-000001-*.arrow"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(sys, "argv", ["alignflow", "rollouts", str(grpo_run)])
    with pytest.raises(SystemExit) as exited:
        main()
    stderr = capsys.readouterr().err
    assert exited.value.code != 0
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and path.name in stderr
