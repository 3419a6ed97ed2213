"""``launch_and_wait``, the one way training is launched: exit 2 is a usage error said once, a crash names
where to resume, and a run that printed no result is answered from its ``train_result.json``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from train_data import sft_data, write_config  # noqa: F401
from typer.testing import CliRunner

from align_core import launch
from align_core.config import load_config
from align_core.errors import TrainingFailed, UsageError
from align_core.trainers.rundir import RESULT_NAME, run_digest
from alignflow.cli import app


def fake_child(monkeypatch, script: str) -> None:
    """Launch ``python -c script`` instead of training: what the caller sees depends only on its output and exit code."""
    monkeypatch.setattr(launch, "launch_command", lambda *args, **kwargs: [sys.executable, "-c", script])


def test_a_bad_config_key_exits_2_and_raises_the_childs_error_message(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"train_cfgs": {"algorithm": "sft", "max_step": 3}}))
    lines: list[str] = []
    with pytest.raises(UsageError) as raised:
        launch.launch_and_wait(config, emit=lines.append)
    assert str(raised.value) == f"{config}: unknown config key 'train_cfgs.max_step' (did you mean 'max_steps'?) (sft reads liger_kernel, packing, torch_compile and the common keys)"
    assert lines[0].startswith("launching: ") and not any(line.startswith("error:") for line in lines)


def test_a_rank_writes_its_error_line_in_one_write_so_ranks_failing_alike_cannot_interleave_it(tmp_path):
    # Under `python -u` each write reaches the pipe at once; a line written in one piece stays whole beside another
    # rank's. Run as a rank is (python -u, its own process: main configures the process environment).
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"train_cfgs": {"algorithm": "sft", "max_step": 3}}))
    script = (
        "import json, sys\n"
        "from align_core import launch\n"
        "writes = []\n"
        "class Recorder:\n"
        "    def write(self, text): writes.append(text); return len(text)\n"
        "    def flush(self): pass\n"
        "sys.stderr = Recorder()\n"
        f"code = launch.main([{str(config)!r}])\n"
        "print(json.dumps({'code': code, 'writes': writes}))\n"
    )
    child = subprocess.run([sys.executable, "-u", "-c", script], capture_output=True, text=True, check=True)
    outcome = json.loads(child.stdout.strip().splitlines()[-1])
    assert outcome["code"] == 2
    message = (f"{config}: unknown config key 'train_cfgs.max_step' (did you mean 'max_steps'?) "
               "(sft reads liger_kernel, packing, torch_compile and the common keys)")
    assert outcome["writes"] == [f"error: {message}\n"]


def test_the_cli_prints_one_error_line_when_the_launched_run_exits_2(tmp_path, sft_data):
    # The config loads and its data passed its contract, so only the child finds that the model is missing.
    config = write_config(tmp_path / "c.yaml", tmp_path / "no-model", [sft_data], tmp_path / "out")
    outcome = CliRunner().invoke(app, ["train", str(config)])
    assert outcome.exit_code == 2, outcome.output
    errors = [line for line in outcome.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / "no-model") in errors[0], outcome.output
    assert outcome.stdout == ""  # stdout is for the model folder only


def test_a_missing_result_line_falls_back_to_train_result_json(tmp_path, monkeypatch, sft_data):
    config = write_config(tmp_path / "c.yaml", tmp_path / "model", [sft_data], tmp_path / "out")
    recorded = {"config_digest": run_digest(load_config(config)), "model_dir": str(tmp_path / "out" / "model"), "steps": 8}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / RESULT_NAME).write_text(json.dumps(recorded))
    fake_child(monkeypatch, "print('step 8/8 loss 0.5')")
    lines: list[str] = []
    assert launch.launch_and_wait(config, emit=lines.append) == recorded
    assert lines[1:] == ["step 8/8 loss 0.5"]


def test_the_result_line_is_returned_not_emitted(tmp_path, monkeypatch):
    fake_child(monkeypatch, f"print('step 1/1'); print({launch.RESULT_PREFIX!r} + '{{\"steps\": 1}}')")
    lines: list[str] = []
    assert launch.launch_and_wait(tmp_path / "unread.yaml", emit=lines.append) == {"steps": 1}
    assert lines[1:] == ["step 1/1"]


def test_a_crash_names_the_exit_code_the_output_dir_to_resume_from_and_the_last_output(tmp_path, monkeypatch, sft_data):
    config = write_config(tmp_path / "c.yaml", tmp_path / "model", [sft_data], tmp_path / "out")
    fake_child(monkeypatch, "import sys; print('step 3/8'); print('Traceback: boom', file=sys.stderr); sys.exit(17)")
    with pytest.raises(TrainingFailed) as raised:
        launch.launch_and_wait(config, emit=lambda line: None)
    failure = raised.value
    assert failure.exit_code == 17 and failure.tail == ["step 3/8", "Traceback: boom"]
    assert failure.summary == f"training of {config} exited with code 17; rerun to resume from the last checkpoint in {tmp_path / 'out'}"
    assert str(failure).endswith("Last output:\nstep 3/8\nTraceback: boom")


def test_an_exit_0_without_any_result_is_a_failure(tmp_path, monkeypatch, sft_data):
    config = write_config(tmp_path / "c.yaml", tmp_path / "model", [sft_data], tmp_path / "out")
    fake_child(monkeypatch, "print('done?')")
    with pytest.raises(TrainingFailed, match=r"exited 0 but printed no result, and .*/out holds no train_result.json"):
        launch.launch_and_wait(config, emit=lambda line: None)
