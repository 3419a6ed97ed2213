"""Rollouts as data: the checks on an RL run's rollout files and ``alignflow rollouts``."""

from __future__ import annotations

import math
import sys

import pyarrow as pa
import pytest
from test_grpo import rl_config
from train_data import materialize_validated, tiny_model  # noqa: F401
from typer.testing import CliRunner

from align_core.rollouts import check_rollouts
from alignflow.cli import app


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


def test_finite_rollouts_pass_and_are_summarised_per_step_with_empty_completions_counted():
    problems, steps = check_rollouts(rollout_table())
    assert problems == []
    assert [(s.step, s.rows, s.empty) for s in steps] == [(1, 2, 1), (2, 2, 0)]
    assert steps[0].means() == {"reward": 0.5, "reward/rule": 0.5} and steps[1].means() == {"reward": 0.5, "reward/rule": 0.5}


def test_a_non_finite_reward_advantage_or_log_prob_is_named_with_its_step_and_prompt():
    table = rollout_table(**{"reward/rule": [1.0, math.nan, 1.0, 0.0], "advantage": [0.7, -0.7, math.inf, 0.0],
                             "old_logps": [[-1.0, -2.0], [-0.5], [-0.1], [-math.inf]]})
    problems, _ = check_rollouts(table)
    assert problems == [
        "step 1, prompt b: reward/rule is nan",
        "step 2, prompt a: advantage is inf",
        "step 2, prompt b: old_logps holds a non-finite value",
    ]


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
