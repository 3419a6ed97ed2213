"""kill -9 at seeded random points of materialise and of training: nothing visible is ever partial,
and the rerun gives the uninterrupted result exactly (dataset digest and shard bytes; losses and weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kill_points import materialize_trials, training_trials
from train_data import sft_data, tiny_model, write_config  # noqa: F401


@pytest.mark.slow
def test_a_killed_materialisation_leaves_nothing_partial_and_reruns_to_the_same_dataset(tmp_path):
    from alignflow.samples import write_samples

    source = write_samples(tmp_path / "data", rows=6000, seed=3)["alpaca"]
    trials = materialize_trials(Path(source), tmp_path / "out", seed=7, trials=3)
    assert [trial.partial_artifacts for trial in trials] == [[], [], []]
    assert all(trial.rerun_equal for trial in trials), trials


@pytest.mark.slow
def test_a_killed_training_run_resumes_to_the_same_losses_and_weights(tmp_path, tiny_model, sft_data):
    settings = {"train_cfgs": {"max_steps": 6, "save_interval": 2, "gradient_accumulation_steps": 2, "zero_stage": 1}}

    def config_for(output_dir: Path) -> Path:
        return write_config(tmp_path / f"{output_dir.name}.yaml", tiny_model, [sft_data], output_dir, settings)

    trials = training_trials(config_for, tmp_path / "runs", seed=11, trials=2)
    assert [trial.partial_artifacts for trial in trials] == [[], []]
    assert all(trial.rerun_equal for trial in trials), trials
