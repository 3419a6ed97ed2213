"""Tiny, learnable training inputs shared by the training tests: an offline model and validated datasets.

Session-scoped fixtures (import them into a test module): ``tiny_model`` (a 2-layer Llama with its
own BPE tokenizer), ``sft_data`` (supervised), ``preference_data`` (train, eval). The data is
materialised through the real pipeline and passes its data contract, as production data must.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "black", "white"]


def supervised_rows(count: int) -> list[dict[str, Any]]:
    """Short two-turn chats with a fixed answer pattern a tiny model can memorise."""
    rows = []
    for index in range(count):
        a, b = index % 7, (index * 3) % 5
        colour = COLOURS[index % len(COLOURS)]
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {NUMBERS[a]} plus {NUMBERS[b]}? Say it with {colour}."},
                    {"role": "assistant", "content": f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}, {colour}."},
                ]
            }
        )
    return rows


def preference_rows(count: int, offset: int = 0) -> list[dict[str, Any]]:
    """Pairs whose chosen answer is helpful and rejected one is curt: separable by a small reward model."""
    rows = []
    for index in range(offset, offset + count):
        colour, number = COLOURS[index % len(COLOURS)], NUMBERS[index % len(NUMBERS)]
        prompt = f"Tell me about the {colour} box number {index}."
        rows.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": f"Gladly! The {colour} box holds {number} apples. Happy to help."}],
                "rejected": [{"role": "assistant", "content": f"No. Go away, I will not talk about {colour}."}],
            }
        )
    return rows


def materialize_validated(rows: list[dict[str, Any]], kind: str, root: Path, name: str) -> Path:
    """Rows -> JSONL -> shards (Messages template) -> validated against the kind's suite."""
    from align_core.materialize import materialize_dataset
    from data_contracts.runner import validate_dataset

    source = root / f"{name}.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset_dir = materialize_dataset(source, "Messages", kind, root / "datasets", workers=1)
    result = validate_dataset(dataset_dir)
    assert result.passed, f"{name}: test data must pass its contract"
    return dataset_dir


def write_config(path: Path, model: Path, train: Sequence[Path], output_dir: Path, overrides: dict[str, dict] | None = None,
                 eval_sets: Sequence[Path] = ()) -> Path:
    """A training YAML with small settings; ``overrides`` merges into its sections."""
    sections: dict[str, dict[str, Any]] = {
        "train_cfgs": {
            "algorithm": "sft",
            "max_steps": 8,
            "per_device_train_batch_size": 4,
            "learning_rate": 3e-3,
            "lr_scheduler_type": "cosine",
            "lr_warmup_ratio": 0.1,
            "save_interval": 4,
            "seed": 11,
        },
        "data_cfgs": {
            "train_datasets": [str(p) for p in train],
            "eval_datasets": [str(p) for p in eval_sets],
            "max_length": 96,
            "token_cache_dir": str(path.parent / "token_cache"),
        },
        "model_cfgs": {"model_name_or_path": str(model)},
        "logger_cfgs": {"output_dir": str(output_dir), "progress_bar": False},
    }
    for section, values in (overrides or {}).items():
        sections[section].update(values)
    path.write_text(yaml.safe_dump(sections))
    return path


def launch(config: Path, *overrides: str, nproc: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run training as the launcher would, in a fresh process with a clean distributed environment."""
    from align_core.launch import launch_command, launch_env, release_shared_memory

    command = launch_command(config, list(overrides), nproc=nproc)
    try:
        return subprocess.run(command, check=False, env=launch_env(nproc), cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)
    finally:
        release_shared_memory(command)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from align_core.models.tiny import build_tiny_model

    return build_tiny_model(
        tmp_path_factory.mktemp("model") / "tiny-llama",
        vocab_size=384, hidden_size=64, num_layers=2, num_heads=4, max_position_embeddings=256,
    )


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    return materialize_validated(supervised_rows(48), "supervised", tmp_path_factory.mktemp("sft"), "sft")


@pytest.fixture(scope="session")
def preference_data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("preference")
    train = materialize_validated(preference_rows(48), "preference", root, "train")
    evaluation = materialize_validated(preference_rows(16, offset=1000), "preference", root, "eval")
    return train, evaluation


@contextlib.contextmanager
def trainer_registry_restored() -> Iterator[None]:
    """Algorithms registered inside (by a trainer module) are gone afterwards, and so is their module, so
    later tests see the built-in registry (error messages list it) and a later import registers anew."""
    from align_core import trainers

    saved, modules = dict(trainers.TRAINERS), set(sys.modules)
    try:
        yield
    finally:
        trainers.TRAINERS.clear()
        trainers.TRAINERS.update(saved)
        for name in set(sys.modules) - modules:
            if name.startswith("alignflow_user_"):
                del sys.modules[name]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


__all__ = [
    "launch", "materialize_validated", "preference_data", "read_jsonl", "sft_data", "tiny_model", "trainer_registry_restored",
    "write_config",
]
