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
