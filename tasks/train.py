"""Prefect task: train a model from a config in a subprocess, its output streamed into the run's log.

``align_core.launch.launch_and_wait`` runs ``python -m align_core.launch`` (one rank) or the
``deepspeed``/``torchrun`` launcher (several), so a crash in training never takes the orchestrating
process with it. A rerun
with the same output_dir resumes from the last checkpoint (the trainer does that), and a run that
already finished returns its result without launching anything.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.logging.loggers import PrefectLogAdapter

from align_core.config import load_config
from align_core.errors import UsageError
from align_core.io import sha256_json
from align_core.launch import launch_and_wait
from align_core.markdown import markdown_table
from align_core.trainers.rundir import finished_result, run_digest
from tasks.artifacts import publish_markdown
from tasks.caching import disk_output_key
from tasks.prefect_env import prefect_result_storage


def _finished_key(context, parameters: dict[str, Any]) -> str | None:
    """Keyed by the run's config digest; an unfinished run (never started, or interrupted) is always
    relaunched, and resumes from its last checkpoint."""
    try:
        config = load_config(parameters["config_path"], parameters.get("overrides", ()))
    except UsageError:  # a bad config is reported by the task itself, not by its cache key
        return None
    key = f"train-{run_digest(config)}-{sha256_json(config.logger_cfgs.output_dir)[:12]}"
    return disk_output_key(key, finished_result(config) is not None)


@task(name="train-model", cache_key_fn=_finished_key, persist_result=True, result_storage=prefect_result_storage())
def train_model(
    config_path: str | Path,
    overrides: Sequence[str] = (),
    nproc: int = 1,
    launcher: str = "deepspeed",
    launcher_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Train ``config_path`` (with ``section.key=value`` overrides) on ``nproc`` local ranks; returns the
    result (``model_dir``, ``steps``, final metrics). Refuses datasets that have not passed their contract,
    and fails an online RL run whose rollouts break the rollout contract."""
    from data_contracts.gate import require_validated
    from data_contracts.report import verdict
    from data_contracts.rollouts import gate_rollouts

    logger = _training_logger()
    config = load_config(config_path, overrides)
    for dataset_dir in config.data_cfgs.all_datasets():
        require_validated(dataset_dir)
    result = finished_result(config)
    if result is not None:
        logger.info("already trained in %s; nothing to do", config.logger_cfgs.output_dir)
    else:
        result = launch_and_wait(config_path, overrides, nproc, launcher, launcher_args, emit=logger.info)
        _publish_summary(config.train_cfgs.algorithm, run_digest(config), result)
    rollouts = gate_rollouts(config)  # an RL run whose rollouts break their contract fails here
    if rollouts is not None:
        logger.info("rollout contract %s: %s", verdict(rollouts), rollouts.report_path)
    return result


def _training_logger() -> logging.LoggerAdapter:
    """This task run's logger at INFO, whatever PREFECT_LOGGING_LEVEL quiets: the training log is the point.

    A child of ``prefect.task_runs`` inherits its API handler, so the lines land in the run's logs.
    """
    run_logger = get_run_logger()
    training = logging.getLogger("prefect.task_runs.training")
    training.setLevel(logging.INFO)
    return PrefectLogAdapter(training, extra=run_logger.extra)


def _publish_summary(algorithm: str, digest: str, result: dict[str, Any]) -> None:
    metrics = {**result.get("final_train_metrics", {}), **result.get("eval", {})}
    rows = [(name, f"{value:.6g}") for name, value in sorted(metrics.items()) if isinstance(value, (int, float))]
    publish_markdown(
        key=f"train-{algorithm}-{digest[:16]}",
        description=f"{algorithm} training result",
        title=f"{algorithm} run `{digest[:16]}`",
        bullets=[f"model: `{result['model_dir']}`", f"steps: {result['steps']}", f"ranks: {result.get('world_size')}"],
        tables=[markdown_table(["metric", "value"], rows)],
    )
