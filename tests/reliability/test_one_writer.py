"""One writer per folder: a second training run or pipeline run on a folder in use fails at once, naming the
first one's pid, instead of overwriting its metrics or deleting its checkpoint staging; a killed holder
never leaves a stale lock; start-up cleanup removes only the staging folders of dead writers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from train_data import REPO, launch, read_jsonl, sft_data, tiny_model, write_config  # noqa: F401
from typer.testing import CliRunner

from align_core.errors import UsageError
from align_core.io import LOCK_NAME, FolderLock, remove_stale_staging
from align_core.trainers.checkpoint import CheckpointManager
from align_core.trainers.engine import setup_distributed

HOLD_LOCK = """
import sys, time
from align_core.io import FolderLock
FolderLock(sys.argv[1], "a test holder").acquire()
print("held", flush=True)
time.sleep(600)
"""


def wait_for_holder(folder: Path, pid: int, timeout: float = 120) -> None:
    """Until ``folder``'s lock file names ``pid`` as its holder."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads((folder / LOCK_NAME).read_text())["pid"] == pid:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"pid {pid} never took the lock of {folder}")


def start_holder(folder: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


# ----- the lock ------------------------------------------------------------------------------------


def test_a_second_taker_fails_naming_the_holders_pid_and_a_sigkilled_holder_frees_the_lock(tmp_path):
    holder = start_holder(tmp_path / "run")
    try:
        with pytest.raises(UsageError) as refused:
            FolderLock(tmp_path / "run", "a training run").acquire()
        message = str(refused.value)
        assert message == (
            f"{tmp_path / 'run'} is in use by a test holder (pid {holder.pid} on {socket.gethostname()}); "
            "wait for it to finish or stop it"
        )
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with FolderLock(tmp_path / "run", "a training run"):  # at once: the kernel dropped the killed holder's lock
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    with FolderLock(tmp_path / "run", "a training run"):  # released on exit
        pass


# ----- training ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_second_training_run_on_a_folder_in_use_exits_2_and_leaves_the_first_ones_metrics(tmp_path, tiny_model, sft_data):
    settings = {"train_cfgs": {"max_steps": 2000, "save_interval": 5}}
    config = write_config(tmp_path / "run.yaml", tiny_model, [sft_data], tmp_path / "out", settings)
    from align_core.launch import launch_command, launch_env

    first = subprocess.Popen(
        launch_command(config, []), cwd=REPO, env=launch_env(1), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_holder(tmp_path / "out", first.pid)
        second = launch(config)
        assert first.poll() is None, "the first run ended before the second started: nothing was tested"
    finally:
        first.send_signal(signal.SIGKILL)  # a kill -9 mid-run: its lock must not outlive it
        first.wait()
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'out'} is in use by a training run (pid {first.pid} on {socket.gethostname()}); "
        "wait for it to finish or stop it"
    )
    steps = [record["step"] for record in read_jsonl(tmp_path / "out" / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1))  # the first run's lines alone, none rewritten by the second

    resumed = launch(config, "train_cfgs.max_steps=12")  # not a resume-safe change: refused by the settings check,
    assert resumed.returncode == 2 and "other settings" in resumed.stderr  # which it reaches: the lock was free


@pytest.mark.slow
def test_every_rank_of_a_two_rank_run_stops_when_its_folder_is_in_use(tmp_path, tiny_model, sft_data):
    config = write_config(tmp_path / "run.yaml", tiny_model, [sft_data], tmp_path / "out", {"train_cfgs": {"max_steps": 2}})
    from align_core.launch import launch_and_wait

    holder = start_holder(tmp_path / "out")
    try:
        with pytest.raises(UsageError) as refused:  # what `alignflow train --nproc 2` reports, once, exit 2
            launch_and_wait(config, nproc=2, emit=lambda line: None)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert str(refused.value) == (
        f"{tmp_path / 'out'} is in use by a test holder (pid {holder.pid} on {socket.gethostname()}); "
        "wait for it to finish or stop it"
    )
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
    trained = launch(config, nproc=2)  # the holder is gone: both ranks train
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert [record["step"] for record in read_jsonl(tmp_path / "out" / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_a_jit_build_lock_left_by_a_killed_run_does_not_hang_the_next_one(tmp_path, tiny_model, sft_data):
    from align_core.launch import launch_command, launch_env
    from align_core.trainers.engine import load_comm_op

    load_comm_op()  # built once in the shared folder (a minute on a fresh machine) and copied: no second build
    op = tmp_path / "torch_extensions" / "deepspeed_shm_comm"
    if not (Path(os.environ["TORCH_EXTENSIONS_DIR"]) / op.name).is_dir():
        pytest.skip("DeepSpeed's accelerator here JIT-builds no comm op")
    shutil.copytree(os.environ["TORCH_EXTENSIONS_DIR"], op.parent)
    (op / "lock").touch()  # torch's build baton, as a loader killed with SIGKILL leaves it: only its holder deletes it
    config = write_config(tmp_path / "run.yaml", tiny_model, [sft_data], tmp_path / "out", {"train_cfgs": {"max_steps": 1}})
    env = {**launch_env(1), "TORCH_EXTENSIONS_DIR": str(op.parent)}
    run = subprocess.run(launch_command(config, []), check=False, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]  # before: waited for the baton forever
    assert not (op / "lock").exists()


# ----- pipelines -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_second_pipeline_run_on_an_output_dir_in_use_exits_2_naming_the_first(tmp_path):
    from alignflow.cli import app
    from alignflow.samples import write_samples

    write_samples(tmp_path / "data", rows=12, seed=0)
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": "out",
        "datasets": {"alpaca": {"source": "data/alpaca.jsonl", "template": "Alpaca", "kind": "supervised"}},
    }))
    holder = start_holder(tmp_path / "out")  # the first run of this pipeline, still going
    try:
        result = CliRunner().invoke(app, ["pipeline", "run", str(config)])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: pipeline failed: {tmp_path / 'out'} is in use by a test holder (pid {holder.pid} on "
        f"{socket.gethostname()}); wait for it to finish or stop it"
    )
    assert not (tmp_path / "out" / "shards").exists()  # it touched nothing

    again = CliRunner().invoke(app, ["pipeline", "run", str(config)])  # the holder was killed: the lock is free
    assert again.exit_code == 0, again.output


# ----- staging folders ----------------------------------------------------------------------------


def staging_owned_by(root: Path, name: str, pid: int, host: str | None = None) -> Path:
    folder = root / f".staging-{name}-0123abcd-{pid}@{host or socket.gethostname()}"
    folder.mkdir(parents=True)
    return folder


def exited_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_checkpoint_staging_names_carry_a_random_part_and_rank_0s_pid_and_host(tmp_path):
    dist = setup_distributed()
    first = CheckpointManager(tmp_path, keep=2, dist=dist)
    second = CheckpointManager(tmp_path, keep=2, dist=dist)
    assert first.owner != second.owner
    assert first.owner.endswith(f"-{os.getpid()}@{socket.gethostname()}")


def test_checkpoint_startup_cleanup_removes_dead_writers_staging_only(tmp_path):
    dist = setup_distributed()
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead = staging_owned_by(tmp_path, "step-00000004", exited_pid())
        alive = staging_owned_by(tmp_path, "step-00000004", live.pid)  # another run saving right now
        elsewhere = staging_owned_by(tmp_path, "step-00000006", exited_pid(), host="another-node")  # cannot be probed
        unowned = tmp_path / ".staging-step-00000002"  # written by a version that named no owner
        unowned.mkdir()
        CheckpointManager(tmp_path, keep=2, dist=dist).remove_incomplete()
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name])
        assert not dead.exists() and not unowned.exists()
    finally:
        live.kill()
        live.wait()


def test_dataset_staging_cleanup_keeps_a_live_writers_and_another_hosts_folders(tmp_path):
    live = subprocess.Popen(["sleep", "60"])
    try:
        dead = staging_owned_by(tmp_path, "3f9c0e", exited_pid())
        alive = staging_owned_by(tmp_path, "3f9c0e", live.pid)
        elsewhere = staging_owned_by(tmp_path, "3f9c0e", exited_pid(), host="another-node")
        remove_stale_staging(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, elsewhere.name])
        assert not dead.exists()
    finally:
        live.kill()
        live.wait()
