"""Prefect task of the data contract: validate a dataset folder, publish the report, gate the run.

Cached by the folder, its shard digests and the suite version, but only while the folder's
``validation.json`` still records exactly that validation: a deleted or outdated record makes the
key ``None`` (no cache), so the file the training gate reads is always rewritten when needed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from align_core.io import sha256_json
from align_core.shards.dataset import ShardDataset
from data_contracts.gate import require_validated
from data_contracts.report import render_markdown, verdict
from data_contracts.results import ValidationResult
from data_contracts.runner import current_result, validate_dataset
from data_contracts.suite import load_suite
from tasks.caching import disk_output_key
from tasks.parallel import parts_mapper
from tasks.prefect_env import prefect_result_storage


def artifact_key(dataset_digest: str) -> str:
    """Prefect artifact key for a dataset's contract report: lowercase letters, digits, dashes."""
    return "contract-" + re.sub(r"[^a-z0-9-]", "-", dataset_digest.lower())[:48]


def _validation_key(context, parameters: dict[str, Any]) -> str:
    """The content key (folder, shard digests, suite version) always, so the first run already stores
    its result; a stored result whose validation record is gone or stale is dropped first."""
    dataset_dir, suite, overrides = parameters["dataset_dir"], parameters.get("suite"), parameters.get("overrides")
    dataset = ShardDataset(dataset_dir)
    wanted = load_suite(suite, dataset.kind, tuple(dataset.manifest.media), overrides)
    key = "validate-" + sha256_json(
        {"folder": str(Path(dataset_dir).absolute()), "shards": dataset.shard_digests, "suite": wanted.version}
    )
    return disk_output_key(key, current_result(dataset_dir, suite, overrides) is not None)


@task(
    name="validate-shards",
    cache_key_fn=_validation_key,
    persist_result=True,
    result_storage=prefect_result_storage(),
)
def validate_shards(
    dataset_dir: str | Path,
    suite: str | None = None,
    overrides: dict[str, Any] | None = None,
    runner: str = "local",
) -> ValidationResult:
    """Validate ``dataset_dir`` against its suite and publish the report as an artifact keyed by
    the dataset; raises ``ValidationGateError`` (failing the task and its flow run) when an
    error-severity expectation failed. The record batches are derived on ``runner``'s cluster when it
    names one (``tasks.parallel``), in this process's threads otherwise; the result is the same."""
    with parts_mapper(runner) as map_parts:  # one cluster for every window of record batches
        result = current_result(dataset_dir, suite, overrides) or validate_dataset(
            dataset_dir, suite, overrides, map_parts=map_parts)
    create_markdown_artifact(
        key=artifact_key(result.dataset_digest),
        markdown=render_markdown(result),
        description=f"data contract of {result.kind} dataset {result.dataset_digest[:16]}: {verdict(result)}",
    )
    get_run_logger().info("data contract %s: %s rows, report %s", verdict(result), result.rows, result.report_path)
    require_validated(dataset_dir)
    return result
