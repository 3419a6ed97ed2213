"""One flipped byte in a shard, a token cache file, a reference column or a checkpoint stops a resumed
training run before any step, with the damaged file named."""

from __future__ import annotations

import pytest
from tampering import tamper_trials
from train_data import materialize_validated, preference_rows, tiny_model  # noqa: F401


@pytest.mark.slow
def test_every_tampered_input_stops_training_before_a_step_naming_the_file(tmp_path, tiny_model):
    dataset = materialize_validated(preference_rows(24), "preference", tmp_path, "prefs")
    trials = tamper_trials(tmp_path, tiny_model, dataset)
    assert [trial.target for trial in trials] == ["shard", "token cache file", "reference column", "checkpoint"]
    for trial in trials:
        assert trial.detected and not trial.trained_after, trial
