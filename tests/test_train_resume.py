"""A run that dies mid-way resumes from its last checkpoint and reproduces the uninterrupted losses exactly."""

from __future__ import annotations

import pytest
from train_data import launch, read_jsonl, sft_data, tiny_model, write_config  # noqa: F401

from align_core.launch import run

SETTINGS = {
    "train_cfgs": {
        "max_steps": 8,
        "save_interval": 3,
        "gradient_accumulation_steps": 2,  # the data position must land mid-epoch, between micro-batches
        "length_grouping": True,
        "zero_stage": 1,
    }
}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_loss_sequence(tmp_path, tiny_model, sft_data):
    uninterrupted = write_config(tmp_path / "a.yaml", tiny_model, [sft_data], tmp_path / "a", SETTINGS)
    run(uninterrupted)  # in-process: the same computation as a launched single rank

    interrupted = write_config(tmp_path / "b.yaml", tiny_model, [sft_data], tmp_path / "b", SETTINGS)
    # os._exit right after step 5 is logged: no cleanup, no atexit, like a SIGKILL; last checkpoint is step 3
    crashed = launch(interrupted, "train_cfgs.debug_stop_after_steps=5")
    assert crashed.returncode == 17, crashed.stdout[-3000:]
    assert [r["step"] for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir() if p.name.startswith("step-")) == [
        "step-00000003"
    ]
    assert not (tmp_path / "b" / "model").exists()

    resumed = launch(interrupted)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    expected = [(r["step"], r["loss"], r["lr"], r["tokens"]) for r in read_jsonl(tmp_path / "a" / "metrics.jsonl")]
    actual = [(r["step"], r["loss"], r["lr"], r["tokens"]) for r in read_jsonl(tmp_path / "b" / "metrics.jsonl")]
    assert len(expected) == 8
    assert actual == expected  # bit-for-bit: steps 4-5 were redone from the step-3 checkpoint


def test_a_pipeline_sets_a_run_of_other_settings_aside_and_keeps_its_own(tmp_path):
    from align_core.config import build_config
    from align_core.trainers.rundir import RUN_CONFIG_NAME, check_previous_run, set_aside_other_run

    def config(epochs: int):
        return build_config({"train_cfgs": {"epochs": epochs}, "data_cfgs": {"train_datasets": ["d"]},
                             "model_cfgs": {"model_name_or_path": "m"}, "logger_cfgs": {"output_dir": str(tmp_path / "sft")}})

    assert set_aside_other_run(config(1)) is None  # nothing there yet
    check_previous_run(config(1))  # a run starts: its settings are recorded
    (tmp_path / "sft" / "checkpoints" / "step-00000002").mkdir(parents=True)
    assert set_aside_other_run(config(1)) is None  # the same run: it resumes in place
    aside = set_aside_other_run(config(2))
    assert aside == tmp_path / "sft.superseded-1" and not (tmp_path / "sft").exists()
    assert (aside / RUN_CONFIG_NAME).is_file() and (aside / "checkpoints" / "step-00000002").is_dir()
    check_previous_run(config(1))
    assert set_aside_other_run(config(2)) == tmp_path / "sft.superseded-2"  # earlier ones are kept


def test_a_run_config_of_another_version_is_a_clear_refusal_not_a_crash(tmp_path):
    from align_core.config import build_config
    from align_core.trainers.rundir import RUN_CONFIG_NAME, check_previous_run

    config = build_config({"data_cfgs": {"train_datasets": ["d"]}, "model_cfgs": {"model_name_or_path": "m"},
                           "logger_cfgs": {"output_dir": str(tmp_path)}})
    (tmp_path / "checkpoints" / "step-00000001").mkdir(parents=True)
    (tmp_path / RUN_CONFIG_NAME).write_text("train_cfgs: {algorithm: sft, score_regularization: 0.0}\n")
    reason = check_previous_run(config)
    assert isinstance(reason, str) and "run_config.yaml no longer loads" in reason and "sft does not read" in reason
