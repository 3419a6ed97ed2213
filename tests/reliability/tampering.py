"""Tampering with what a training run reads: one flipped byte in a shard, a token cache file, a reference
column or a checkpoint, each of which must stop the run before any training step, naming the file.

``tamper_trials(workdir, model, dataset)`` runs a DPO job with cached reference log-probs until its
step-2 checkpoint, then for each target flips a byte, resumes, records whether the run stopped with
the file named and without logging a step, and restores the byte. ``tests/reliability/test_tampering.py``
asserts every trial was detected; ``bench/reliability.py`` counts them.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT_STEP = 2


@dataclass
class TamperTrial:
    target: str
    path: str
    detected: bool  # the run stopped with the file named
    trained_after: bool  # a training step was logged after the tampering
    message: str


def _config(workdir: Path, model: Path, dataset: Path) -> Path:
    sections = {
        "train_cfgs": {"algorithm": "dpo", "max_steps": 4, "save_interval": CHECKPOINT_STEP,
                       "per_device_train_batch_size": 4, "learning_rate": 1e-3, "precision": "fp32"},
        "data_cfgs": {"train_datasets": [str(dataset)], "max_length": 96, "token_cache_dir": str(workdir / "token_cache")},
        "model_cfgs": {"model_name_or_path": str(model)},
        "logger_cfgs": {"output_dir": str(workdir / "run"), "progress_bar": False},
    }
    path = workdir / "dpo.yaml"
    path.write_text(yaml.safe_dump(sections))
    return path


def _launch(config: Path, *overrides: str) -> subprocess.CompletedProcess:
    from align_core.launch import launch_command, launch_env

    return subprocess.run(launch_command(config, list(overrides)), cwd=REPO, env=launch_env(1),
                          capture_output=True, text=True, check=False)


def _steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _targets(workdir: Path, dataset: Path) -> dict[str, Path]:
    cache = next(p for p in (workdir / "token_cache").iterdir() if (p / "manifest.json").is_file())
    checkpoint = workdir / "run" / "checkpoints" / f"step-{CHECKPOINT_STEP:08d}" / "policy"
    return {
        "shard": min((dataset / "shards").glob("*.arrow")),
        "token cache file": min((cache / "shards").glob("*.arrow")),
        "reference column": next((cache / "reference").glob("*/logps.arrow")),
        "checkpoint": max(checkpoint.glob("*model_states.pt"), key=lambda p: p.stat().st_size),
    }


def tamper_trials(workdir: Path, model: Path, dataset: Path) -> list[TamperTrial]:
    config = _config(workdir, model, dataset)
    first = _launch(config, f"train_cfgs.debug_stop_after_steps={CHECKPOINT_STEP}")
    if first.returncode != 17:
        raise RuntimeError(f"the run to tamper with did not reach its checkpoint: {first.stderr[-2000:]}")
    trials = []
    for target, path in _targets(workdir, dataset).items():
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[len(damaged) // 2] ^= 0x01
        path.write_bytes(bytes(damaged))
        try:
            resumed = _launch(config)
        finally:
            path.write_bytes(original)
        message = next((line for line in resumed.stderr.splitlines() if line.startswith("error:")), resumed.stderr[-300:])
        trials.append(TamperTrial(
            target, str(path), detected=resumed.returncode != 0 and path.name in message,
            trained_after=_steps(workdir / "run")[-1] > CHECKPOINT_STEP, message=message,
        ))
        if trials[-1].trained_after:  # start the next trial from the same checkpoint
            _launch(config, f"train_cfgs.debug_stop_after_steps={CHECKPOINT_STEP}")
    return trials
