"""The bookkeeping of a run's output folder: who writes it, what identifies a run, whether it is finished
or resumable.

    <output_dir>/.alignflow.lock     held by rank 0 for the whole run: one run writes the folder at a time
                 run_config.yaml     the settings the checkpoints were made with
                 checkpoints/step-N  DeepSpeed state + data position + RNG (see checkpoint.py)
                 metrics.jsonl, loss_curve.png, tensorboard/
                 model/              the final export of the policy in Hugging Face format
                 model-<name>/       of any other trained model (a critic, ...)
                 train_result.json   written last: the run is complete
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align_core.config import TrainConfig, dump_config, load_config
from align_core.errors import UsageError
from align_core.io import FolderLock, atomic_write_text
from align_core.trainers.checkpoint import complete_checkpoint_steps

if TYPE_CHECKING:
    from align_core.trainers.engine import DistInfo

RUN_CONFIG_NAME = "run_config.yaml"
RESULT_NAME = "train_result.json"
MODEL_DIR_NAME = "model"
CHECKPOINTS_DIR_NAME = "checkpoints"
POLICY = "policy"

# Settings a resumed run may change: they do not alter the sequence of updates.
RESUME_SAFE_KEYS = (
    "train_cfgs.save_interval",
    "train_cfgs.keep_checkpoints",
    "train_cfgs.eval_interval",
    "train_cfgs.per_device_eval_batch_size",
    "train_cfgs.debug_stop_after_steps",
    "data_cfgs.num_workers",
    "data_cfgs.token_cache_dir",
    "logger_cfgs.log_type",
    "logger_cfgs.progress_bar",
)


def model_dir(output_dir: str | Path, name: str = POLICY) -> Path:
    """Where a trained model of the run is exported: ``model/`` for the policy, ``model-<name>/`` else."""
    return Path(output_dir) / (MODEL_DIR_NAME if name == POLICY else f"{MODEL_DIR_NAME}-{name}")


@contextlib.contextmanager
def run_dir_lock(output_dir: str | Path, dist: DistInfo) -> Iterator[None]:
    """Rank 0 holds ``output_dir``'s lock for the run; every rank raises the same ``UsageError`` when
    another run (a second ``alignflow train``, a pipeline job) holds it. Collective: all ranks call it."""
    import torch

    lock, refusal = None, [None]
    if dist.is_main:
        try:
            lock = FolderLock(output_dir, "a training run").acquire()
        except UsageError as error:
            refusal[0] = str(error)
    torch.distributed.broadcast_object_list(refusal, src=0)
    if refusal[0] is not None:
        raise UsageError(refusal[0])
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


def run_digest(config: TrainConfig) -> str:
    """What identifies a run: every setting except those a resume may change."""
    return config.digest(ignore=RESUME_SAFE_KEYS)


def finished_result(config: TrainConfig) -> dict[str, Any] | None:
    """The result of a completed run of this same config in its output_dir, if there is one."""
    path = Path(config.logger_cfgs.output_dir) / RESULT_NAME
    if path.is_file():
        result = json.loads(path.read_text())
        if result.get("config_digest") == run_digest(config):
            return result
    return None


def check_previous_run(config: TrainConfig) -> int | str | None:
    """Step to resume ``config``'s output_dir from, None for a fresh run, or why it cannot be resumed.

    A fresh or resumable run records its config in ``run_config.yaml`` for the next check.
    """
    output_dir = Path(config.logger_cfgs.output_dir)
    steps = complete_checkpoint_steps(output_dir / CHECKPOINTS_DIR_NAME)
    latest = steps[-1] if steps else None
    saved_config = output_dir / RUN_CONFIG_NAME
    if latest is not None and saved_config.is_file():
        previous = _previous_config(saved_config)
        if isinstance(previous, str) or previous.digest(ignore=RESUME_SAFE_KEYS) != run_digest(config):
            changed = previous if isinstance(previous, str) else ", ".join(_changed_keys(previous.to_dict(), config.to_dict()))
            return (
                f"{output_dir} holds checkpoints of a run with other settings "
                f"({changed}); resume it unchanged or choose a new logger_cfgs.output_dir"
            )
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved_config, dump_config(config))
    return latest


def _previous_config(saved_config: Path) -> TrainConfig | str:
    """The recorded config, or why it no longer loads (written by another alignflow version)."""
    try:
        return load_config(saved_config)
    except UsageError as error:
        return f"its {RUN_CONFIG_NAME} no longer loads: {error}"


def set_aside_other_run(config: TrainConfig) -> Path | None:
    """Move a run of other settings out of ``config``'s output_dir, whole, to ``<name>.superseded-N``;
    where it went, or None when the folder holds no run or this same one (which then resumes or is done).

    For the pipeline, whose job folders follow its YAML: a changed input means a new run, and the old
    one is kept aside rather than refused (``alignflow train`` refuses instead) or overwritten. A run
    still training there holds the folder's lock, and this refuses to move it.
    """
    output_dir = Path(config.logger_cfgs.output_dir)
    saved_config = output_dir / RUN_CONFIG_NAME
    if not saved_config.is_file():
        return None
    previous = _previous_config(saved_config)
    if not isinstance(previous, str) and previous.digest(ignore=RESUME_SAFE_KEYS) == run_digest(config):
        return None
    number = 1
    while (aside := output_dir.with_name(f"{output_dir.name}.superseded-{number}")).exists():
        number += 1
    with FolderLock(output_dir, "a pipeline setting a superseded run aside"):
        output_dir.rename(aside)
    return aside


def _changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    changed = []
    for section, values in after.items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted not in RESUME_SAFE_KEYS and before.get(section, {}).get(key) != value:
                changed.append(f"{dotted}: {before.get(section, {}).get(key)!r} -> {value!r}")
    return changed
