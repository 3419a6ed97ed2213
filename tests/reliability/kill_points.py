"""kill -9 at seeded random points of a materialisation and of a training run, then rerun.

A trial kills the process (``SIGKILL``: no cleanup, no atexit) at a time drawn from the length of
an uninterrupted run, checks that nothing visible is partial, reruns to completion and compares the
result with the uninterrupted one: the same dataset digest and shard bytes, or the same loss
sequence and bit-identical weights. ``tests/reliability/test_kill_points.py`` runs a few trials;
``bench/reliability.py`` runs more and prints the totals.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MATERIALIZE_SCRIPT = """
import sys
from align_core.materialize import materialize_dataset
print(materialize_dataset(sys.argv[1], "Alpaca", "supervised", sys.argv[2], rows_per_shard=2000, workers=2))
"""


@dataclass
class KillTrial:
    """One kill point: when, whether the process was still running, what was found, and the rerun's verdict."""

    what: str
    seconds: float
    killed_while_running: bool
    partial_artifacts: list[str]
    rerun_equal: bool
    detail: str = ""  # why the rerun differs: its error output, or the first differing step


def _kill_at(command: list[str], seconds: float, env: dict[str, str] | None = None) -> bool:
    """Start ``command``, SIGKILL it after ``seconds`` (the process alone: its children must die with it);
    True if it was still running. Leftover children are reaped afterwards so trials stay independent."""
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True
    finally:
        time.sleep(0.5)
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _visible_partial_datasets(root: Path) -> list[str]:
    """Dataset folders that look published but are not complete and intact."""
    from align_core.shards.dataset import ShardDataset

    partial = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if folder.name.startswith("."):
            continue  # staging folders are hidden and never read
        try:
            ShardDataset(folder).verify()
        except Exception as error:  # noqa: BLE001  (any failure to read a visible folder is the finding)
            partial.append(f"{folder.name}: {error}")
    return partial


def _shard_digests(dataset_dir: Path) -> list[str]:
    manifest = json.loads((dataset_dir / "manifest.json").read_text())
    return [entry["sha256"] for entry in manifest["shards"]] + [manifest["quarantine"]["sha256"]]


def materialize_trials(source: Path, workdir: Path, seed: int, trials: int) -> list[KillTrial]:
    """Kill a two-worker materialisation of ``source`` (an Alpaca JSON Lines file) ``trials`` times."""
    command = [sys.executable, "-c", MATERIALIZE_SCRIPT, str(source)]
    started = time.perf_counter()
    reference = Path(subprocess.run([*command, str(workdir / "reference")], cwd=REPO, check=True,
                                    capture_output=True, text=True).stdout.strip().splitlines()[-1])
    duration = time.perf_counter() - started
    rng = random.Random(seed)
    results = []
    for number in range(trials):
        root = workdir / f"trial-{number}"
        seconds = rng.uniform(0.2, duration)
        running = _kill_at([*command, str(root)], seconds)
        partial = _visible_partial_datasets(root)
        rerun = subprocess.run([*command, str(root)], cwd=REPO, capture_output=True, text=True, check=False)
        dataset = Path(rerun.stdout.strip().splitlines()[-1]) if rerun.returncode == 0 else None
        equal = dataset is not None and dataset.name == reference.name and _shard_digests(dataset) == _shard_digests(reference)
        results.append(KillTrial("materialize", round(seconds, 2), running, partial, equal))
    return results


def _launch_command(config: Path, *overrides: str) -> list[str]:
    from align_core.launch import launch_command

    return launch_command(config, list(overrides))


def _run_record(output_dir: Path) -> tuple[list[tuple], dict[str, bytes]]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["step"], r["loss"], r["lr"], r["tokens"]) for r in records]
    model = output_dir / "model"
    weights = {path.name: path.read_bytes() for path in sorted(model.glob("*.safetensors"))}
    return steps, weights


def _visible_partial_run(output_dir: Path) -> list[str]:
    """Checkpoints or an export that look published but miss a part."""
    partial = []
    for checkpoint in sorted((output_dir / "checkpoints").glob("step-*")):
        if not (checkpoint / "policy").is_dir() or not (checkpoint / "rng_state_rank0.pt").is_file():
            partial.append(f"{checkpoint.name}: incomplete")
    model = output_dir / "model"
    if model.exists() and not ((model / "config.json").is_file() and list(model.glob("*.safetensors"))):
        partial.append("model/: incomplete")
    return partial


def training_trials(config_for, workdir: Path, seed: int, trials: int) -> list[KillTrial]:
    """Kill a training run ``trials`` times. ``config_for(output_dir) -> config path`` writes the run's config."""
    from align_core.launch import launch_env

    env = launch_env(1)
    reference_dir = workdir / "reference"
    started = time.perf_counter()
    subprocess.run(_launch_command(config_for(reference_dir)), cwd=REPO, env=env, check=True, capture_output=True)
    duration = time.perf_counter() - started
    expected = _run_record(reference_dir)
    rng = random.Random(seed)
    results = []
    for number in range(trials):
        output_dir = workdir / f"trial-{number}"
        config = config_for(output_dir)
        seconds = rng.uniform(1.0, duration)
        running = _kill_at(_launch_command(config), seconds, env)
        partial = _visible_partial_run(output_dir)
        rerun = subprocess.run(_launch_command(config), cwd=REPO, env=env, capture_output=True, text=True, check=False)
        detail = rerun.stderr[-2000:] if rerun.returncode else ""
        equal = False
        if rerun.returncode == 0:
            steps, weights = _run_record(output_dir)
            equal = (steps, weights) == expected
            differing = [(a, b) for a, b in zip(steps, expected[0]) if a != b]
            detail = f"steps {differing[:2]}, weights equal {weights == expected[1]}" if not equal else ""
        results.append(KillTrial("train", round(seconds, 2), running, partial, equal, detail))
    return results
