"""The Prefect training task under a real (temporary) Prefect server: gate, log streaming, crash, resume."""

from __future__ import annotations

import json

import pytest
from prefect import flow
from train_data import read_jsonl, sft_data, supervised_rows, tiny_model, write_config  # noqa: F401

from tasks.train import train_model


@flow(name="train-test")
def train_flow(config: str, overrides: list[str]):
    return train_model(config, overrides)


def flow_run_logs(state) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # send queued log lines before reading them back
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    return [log.message for log in logs]


@pytest.mark.slow
def test_task_streams_the_log_fails_on_a_crash_and_resumes_on_rerun(prefect_harness, tmp_path, tiny_model, sft_data):
    config = str(write_config(tmp_path / "t.yaml", tiny_model, [sft_data], tmp_path / "out", {"train_cfgs": {"max_steps": 6, "save_interval": 2}}))

    crashed = train_flow(config, ["train_cfgs.debug_stop_after_steps=3"], return_state=True)
    assert crashed.is_failed()
    with pytest.raises(RuntimeError, match=r"exited with code 17; rerun to resume from the last checkpoint"):
        crashed.result()
    assert [r["step"] for r in read_jsonl(tmp_path / "out" / "metrics.jsonl")] == [1, 2, 3]

    resumed = train_flow(config, [], return_state=True)
    assert resumed.is_completed()
    result = resumed.result()
    assert result["steps"] == 6
    assert [r["step"] for r in read_jsonl(tmp_path / "out" / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]
    logs = flow_run_logs(resumed)
    assert any(line.startswith("launching: ") for line in logs)
    assert any("step 6/6" in line for line in logs), logs[-20:]  # the trainer's own output, streamed

    model_file = tmp_path / "out" / "model" / "model.safetensors"
    written = model_file.stat().st_mtime_ns
    again = train_flow(config, [], return_state=True)
    assert again.result() == result
    assert model_file.stat().st_mtime_ns == written  # finished: nothing launched
    assert not any(line.startswith("launching: ") for line in flow_run_logs(again))


def test_task_refuses_a_dataset_that_failed_or_lacks_its_contract(prefect_harness, tmp_path, tiny_model):
    from align_core.materialize import materialize_dataset
    from data_contracts.gate import ValidationGateError

    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in supervised_rows(4)))
    never_validated = materialize_dataset(source, "Messages", "supervised", tmp_path / "datasets", workers=1)
    config = str(write_config(tmp_path / "t.yaml", tiny_model, [never_validated], tmp_path / "out"))
    with pytest.raises(ValidationGateError, match=r"data contract missing"):
        train_flow(config, [])
    assert not (tmp_path / "out").exists()
