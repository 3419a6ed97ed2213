"""The table of a pipeline run's steps, built from hand-made records of Prefect task runs (no server)."""

from __future__ import annotations

import pytest

from align_core.sources import SourceInfo
from data_contracts.results import ValidationResult
from flows.pipeline import StepRow, StepRun, format_seconds, format_step_table, shorten_output, step_rows
from flows.pipeline_config import PipelineConfig

OUT = "/runs/demo"
SHARDS = f"{OUT}/shards/3f9c0e12ab34cd56ef7890123456789a"
SOURCE = "/data/alpaca.jsonl"
SPEC = PipelineConfig.model_validate(
    {
        "output_dir": OUT,
        "models": {"tiny": {"tiny": {}}},
        "datasets": {
            "alpaca": {"source": SOURCE, "template": "Alpaca", "kind": "supervised"},
            "hh": {"source": "/data/hh.jsonl", "template": "HH-RLHF", "kind": "preference"},
        },
        "jobs": {
            "sft": {"algorithm": "sft", "model": "tiny", "train": ["alpaca"]},
            "dpo": {"algorithm": "dpo", "model": "sft", "train": ["hh"]},
        },
    }
)


def cached(task: str, tags: tuple[str, ...], result, flow: str | None = None) -> StepRun:
    return StepRun(task, tags, "COMPLETED", "Cached", 0.04, result, flow)


def completed(task: str, tags: tuple[str, ...], seconds: float, result) -> StepRun:
    return StepRun(task, tags, "COMPLETED", "Completed", seconds, result)


def validation(dataset_dir: str) -> ValidationResult:
    return ValidationResult(
        dataset_dir, "3f9c0e12ab34", "supervised", "supervised", "1", {}, [], 21, True, [], "2026-11-27", 0.1, "0.1"
    )


def test_steps_are_labelled_by_what_they_ran_for_with_their_prefect_state_duration_and_output():
    steps = [
        cached("fingerprint-source", ("dataset:alpaca",), SourceInfo(SOURCE, "jsonl", "ab" * 32, 10), "materialize"),
        cached("build-shards", ("dataset:alpaca",), SHARDS, "materialize"),
        cached("validate-shards", ("dataset:alpaca",), validation(SHARDS), "materialize"),
        cached("build-shards", ("dataset:hh",), f"{OUT}/shards/hh", "materialize"),
        cached("tiny-model", ("model:tiny",), f"{OUT}/models/tiny-0123456789ab"),
        completed("tokenize", ("dataset:alpaca", "job:sft"), 12.4, f"{OUT}/token_cache/{'c' * 64}"),
        completed("train-model", ("job:sft",), 185.0, {"model_dir": f"{OUT}/jobs/sft/final", "steps": 4}),
        cached("reference-logps", ("job:dpo", "dataset:hh"), f"{OUT}/token_cache/{'d' * 64}/reference/{'e' * 64}"),
        completed("train-model", ("job:dpo",), 61.0, {"model_dir": f"{OUT}/jobs/dpo/final"}),
    ]
    assert step_rows(steps, SPEC) == [
        StepRow("materialize[alpaca]/fingerprint-source", "Cached", "0.0s", "sha256 abababababab"),
        StepRow("materialize[alpaca]/build-shards", "Cached", "0.0s", "shards/3f9c0e12ab34"),
        StepRow("materialize[alpaca]/validate-shards", "Cached", "0.0s", "shards/3f9c0e12ab34/report.html"),
        StepRow("materialize[hh]/build-shards", "Cached", "0.0s", "shards/hh"),
        StepRow("tiny-model[tiny]", "Cached", "0.0s", "models/tiny-0123456789ab"),
        StepRow("tokenize[sft/alpaca]", "Completed", "12s", "token_cache/cccccccccccc"),
        StepRow("train-model[sft]", "Completed", "3m05s", "jobs/sft/final"),
        StepRow("reference-logps[dpo/hh]", "Cached", "0.0s", "token_cache/dddddddddddd/reference/eeeeeeeeeeee"),
        StepRow("train-model[dpo]", "Completed", "1m01s", "jobs/dpo/final"),
    ]


def test_after_a_failure_steps_that_never_ran_are_skipped():
    steps = [
        cached("build-shards", ("dataset:alpaca",), SHARDS, "materialize"),
        cached("build-shards", ("dataset:hh",), f"{OUT}/shards/hh", "materialize"),
        cached("tiny-model", ("model:tiny",), f"{OUT}/models/tiny"),
        StepRun("tokenize", ("job:sft", "dataset:alpaca"), "FAILED", "Failed", 0.5, None),
        # Prefect leaves a task whose upstream failed pending, named NotReady
        StepRun("train-model", ("job:sft",), "PENDING", "NotReady", None, None),
    ]
    assert [(row.step, row.state, row.duration, row.output) for row in step_rows(steps, SPEC)[3:]] == [
        ("tokenize[sft/alpaca]", "Failed", "0.5s", "-"),
        ("train-model[sft]", "Skipped", "-", "-"),
        ("train-model[dpo]", "Skipped", "-", "-"),  # never submitted: it trains from sft's model
    ]


def test_a_dataset_whose_materialisation_never_started_is_one_skipped_row():
    steps = [StepRun("validate-shards", ("dataset:alpaca",), "FAILED", "Failed", 1.0, None, "materialize")]
    assert [(row.step, row.state) for row in step_rows(steps, SPEC)] == [
        ("materialize[alpaca]/validate-shards", "Failed"),
        ("materialize[hh]", "Skipped"),
        ("tiny-model[tiny]", "Skipped"),
        ("train-model[sft]", "Skipped"),
        ("train-model[dpo]", "Skipped"),
    ]


def test_an_output_outside_the_output_folder_keeps_its_absolute_path_with_digests_cut():
    outside = f"/home/me/.alignflow/token_cache/{'a1' * 32}"
    assert shorten_output(outside, OUT) == "/home/me/.alignflow/token_cache/a1a1a1a1a1a1"
    assert shorten_output(None, OUT) == "-"


def test_durations_read_in_seconds_then_minutes():
    assert [format_seconds(s) for s in (None, 0.04, 9.94, 10.2, 59.4, 60.0, 3725.0)] == [
        "-", "0.0s", "9.9s", "10s", "59s", "1m00s", "62m05s",
    ]


def test_the_table_aligns_its_columns_under_a_header():
    rows = [
        StepRow("tiny-model[tiny]", "Cached", "0.0s", "models/tiny"),
        StepRow("train-model[sft]", "Completed", "3m05s", "jobs/sft/final"),
    ]
    assert format_step_table(rows).splitlines() == [
        "step              state       time  output",
        "tiny-model[tiny]  Cached      0.0s  models/tiny",
        "train-model[sft]  Completed  3m05s  jobs/sft/final",
    ]


def test_a_dataset_entry_takes_a_media_root_relative_to_the_yaml_and_checks_it(tmp_path):
    import yaml

    from align_core.errors import UsageError
    from flows.pipeline_config import check_pipeline, load_pipeline

    (tmp_path / "data.jsonl").write_text('{"instruction": "Say hi.", "output": "Hi."}\n')
    config = tmp_path / "pipeline.yaml"
    entry = {"source": "data.jsonl", "template": "Alpaca", "kind": "supervised", "media_root": "media"}
    config.write_text(yaml.safe_dump({"output_dir": "out", "datasets": {"alpaca": entry}}))
    spec = load_pipeline(config)
    assert spec.datasets["alpaca"].media_root == str(tmp_path / "media")
    with pytest.raises(UsageError, match=f"datasets.alpaca: media root {tmp_path / 'media'} is not a folder"):
        check_pipeline(spec)
    (tmp_path / "media").mkdir()
    check_pipeline(spec)
