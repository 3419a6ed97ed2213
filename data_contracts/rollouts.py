"""The rollout contract: Great Expectations over an online RL run's rollouts, as over shards.

    rollouts/*.arrow (verified) --> one derived row per rollout --> GX (suites/rollouts.yaml)
        --> rollouts/report.html + rollouts/validation.json

Derived columns: ``rewards_finite`` (the reward, every ``reward/*`` source, the cost and its sources),
``advantages_finite`` (the per-completion advantage and any per-token advantages), ``token_values_finite``
(every other per-token float list: old/reference log-probs, values, returns) and ``completion_empty``.
A rollout is named ``step S / prompt P`` in the report. ``require_valid_rollouts`` is the gate a
training task applies before its model is handed on (``gate_rollouts``); it re-validates only when the
files changed.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

import align_core
from align_core.errors import UsageError
from align_core.io import atomic_write_json, atomic_write_text, sha256_json
from align_core.rollouts import ROLLOUTS_DIR, read_rollouts, rollout_files
from align_core.shards.schema import Kind
from data_contracts.checks import GXChecks
from data_contracts.report import render_html
from data_contracts.results import ValidationResult, read_validation
from data_contracts.suite import SUITES_DIR, Suite, load_fragment

SUITE_PATH = SUITES_DIR / "rollouts.yaml"
DERIVED = ["rewards_finite", "advantages_finite", "token_values_finite", "completion_empty"]
SCORE_PREFIXES = ("reward", "cost")  # the column itself and its per-source columns ("reward/rule")


def rollout_suite() -> Suite:
    specs = tuple(load_fragment(SUITE_PATH, Kind.PROMPT_ONLY, ()))
    version = "rollouts-" + sha256_json({"expectations": [spec.to_dict() for spec in specs], "derived": DERIVED})[:12]
    # rollouts answer prompt_only shards: the kind the report names
    return Suite(name="rollouts", kind=Kind.PROMPT_ONLY, version=version, expectations=specs, source=str(SUITE_PATH))


def derive_rollout_frame(table: pa.Table) -> pd.DataFrame:
    """One row per rollout: the contract's columns, plus ``id``/``source_index`` for the report's samples."""
    def finite(names: list[str]) -> np.ndarray:
        ok = np.ones(table.num_rows, dtype=bool)
        for name in names:
            column = table.column(name).combine_chunks()
            if pa.types.is_list(column.type):
                values = pc.fill_null(pc.is_finite(column.flatten()), False).to_numpy(zero_copy_only=False)
                parents = pc.list_parent_indices(column).to_numpy()
                ok &= np.bincount(parents[~values], minlength=table.num_rows) == 0
                ok &= column.is_valid().to_numpy(zero_copy_only=False)
            else:
                ok &= pc.fill_null(pc.is_finite(column), False).to_numpy(zero_copy_only=False)
        return ok

    float_lists = [field.name for field in table.schema
                   if pa.types.is_list(field.type) and pa.types.is_floating(field.type.value_type)]
    scores = [name for name in table.column_names if name.split("/")[0] in SCORE_PREFIXES]
    advantages = [name for name in table.column_names if name == "advantage" or name.endswith("advantages")]
    completions = table.column("completion").to_pylist()
    return pd.DataFrame({
        "id": [f"step {step} / prompt {prompt}" for step, prompt in zip(table.column("step").to_pylist(),
                                                                      table.column("prompt_id").to_pylist())],
        "source_index": np.arange(table.num_rows),
        "rewards_finite": finite(scores),
        "advantages_finite": finite(advantages),
        "token_values_finite": finite([name for name in float_lists if name not in advantages]),
        "completion_empty": [not text.strip() for text in completions],
    })


def rollouts_digest(output_dir: str | Path) -> str:
    """What a validation of the rollouts describes: their files and sha256s."""
    return sha256_json({path.name: digest for path, digest in rollout_files(output_dir).items()})


def validate_rollouts(output_dir: str | Path) -> ValidationResult:
    """Run the contract on every rollout of ``output_dir`` (verified against the manifests); writes
    ``report.html`` and ``validation.json`` (last) into ``rollouts/``."""
    started = time.perf_counter()
    folder = Path(output_dir) / ROLLOUTS_DIR
    files = rollout_files(output_dir)
    table = read_rollouts(output_dir)
    suite = rollout_suite()
    checks = GXChecks(suite, DERIVED)
    checks.validate(derive_rollout_frame(table))
    results = checks.results(table.num_rows)
    result = ValidationResult(
        dataset_dir=str(folder.absolute()),
        dataset_digest=rollouts_digest(output_dir),
        kind="rollouts",
        suite=str(SUITE_PATH),
        suite_version=suite.version,
        overrides={},
        shard_digests=list(files.values()),
        rows=table.num_rows,
        passed=all(r.success for r in results if r.severity == "error"),
        results=results,
        validated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 3),
        alignflow_version=align_core.__version__,
    )
    atomic_write_text(result.report_path, render_html(result))
    atomic_write_json(result.validation_path, result.to_dict())
    return result


def rollout_validation(output_dir: str | Path) -> ValidationResult:
    """The recorded validation when it still describes these files and this suite, else a new one."""
    recorded = read_validation(Path(output_dir) / ROLLOUTS_DIR)
    if recorded is not None and recorded.dataset_digest == rollouts_digest(output_dir) \
            and recorded.suite_version == rollout_suite().version:
        return recorded
    return validate_rollouts(output_dir)


def require_valid_rollouts(output_dir: str | Path) -> ValidationResult:
    """``rollout_validation``; raises ``UsageError`` naming the failed checks and the report when an
    error-severity check failed."""
    result = rollout_validation(output_dir)
    if not result.passed:
        failed = "; ".join(f"{r.name} ({r.unexpected_count} rollouts, e.g. {', '.join(r.sample_ids[:2])})"
                           for r in result.failures)
        raise UsageError(f"{result.dataset_dir}: rollout contract failed: {failed}; see {result.report_path}")
    return result


def gate_rollouts(config) -> ValidationResult | None:
    """An online RL run's rollouts must pass the contract before its model is handed on (None: the
    algorithm writes no rollouts)."""
    from align_core.trainers import get_trainer

    if not get_trainer(config.train_cfgs.algorithm).writes_rollouts:
        return None
    return require_valid_rollouts(config.logger_cfgs.output_dir)
