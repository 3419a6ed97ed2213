"""The gate: nothing trains on shards whose ``validation.json`` is missing, failed or stale.

Stale means the record no longer describes what is on disk: the manifest's dataset or shard
digests differ from the validated ones, or the suite it was validated with has changed since.
``require_validated`` also checks the shard files against the manifest's digests (each hashed once
per process) and raises ``IntegrityError`` naming a damaged one; ``check_validation`` reads only the
manifest and the record, so ``shards ls``/``show`` stay instant. Imports no GX.
"""

from __future__ import annotations

from itertools import zip_longest
from pathlib import Path

from align_core.errors import UsageError
from align_core.shards.dataset import ShardDataset
from data_contracts.results import REPORT_NAME, ValidationResult, read_validation
from data_contracts.suite import load_suite

STATUSES = ("passed", "failed", "missing", "stale")


class ValidationGateError(UsageError):
    """A dataset folder the gate refuses; ``status`` is "failed", "missing" or "stale"."""

    def __init__(self, dataset_dir: str | Path, status: str, reason: str):
        super().__init__(f"{dataset_dir}: data contract {status}: {reason}")
        self.dataset_dir = str(dataset_dir)
        self.status = status
        self.reason = reason


def check_validation(dataset_dir: str | Path) -> tuple[str, str]:
    """``(status, reason)``: status is one of ``STATUSES``; reason says why it is not "passed"."""
    dataset = ShardDataset(dataset_dir)  # UsageError when the folder is not a complete dataset
    try:
        recorded = read_validation(dataset_dir)
    except UsageError as error:
        return "missing", str(error)
    if recorded is None:
        return "missing", f"no validation.json; run `alignflow validate {dataset_dir}`"
    stale = _staleness(dataset, recorded)
    if stale:
        return "stale", f"{stale}; run `alignflow validate {dataset_dir}` again"
    if not recorded.passed:
        return "failed", _failure_summary(recorded, Path(dataset_dir))
    return "passed", ""


def validation_status(dataset_dir: str | Path) -> str:
    """"passed", "failed", "missing" or "stale" (for ``shards show`` / ``shards ls``)."""
    return check_validation(dataset_dir)[0]


def require_validated(dataset_dir: str | Path) -> None:
    """Return quietly if the dataset passed its contract, the record is current and the shard files
    match the manifest. Else raise ``ValidationGateError`` naming the folder and why (which
    expectations / which digest), or ``IntegrityError`` naming a damaged shard."""
    status, reason = check_validation(dataset_dir)
    if status != "passed":
        raise ValidationGateError(dataset_dir, status, reason)
    ShardDataset(dataset_dir).require_intact()  # last: only a dataset that would pass is hashed


def _staleness(dataset: ShardDataset, recorded: ValidationResult) -> str:
    manifest = dataset.manifest
    if recorded.dataset_digest != manifest.dataset_digest:
        return f"validated dataset {recorded.dataset_digest[:16]}, manifest says {manifest.dataset_digest[:16]}"
    for entry, validated in zip_longest(manifest.shards, recorded.shard_digests):
        if entry is None or validated is None:
            return f"validated {len(recorded.shard_digests)} shard(s), manifest lists {len(manifest.shards)}"
        if entry.sha256 != validated:
            return f"{entry.path}: validated sha256 {validated[:16]}, manifest says {entry.sha256[:16]}"
    try:
        current = load_suite(recorded.suite, manifest.kind, tuple(manifest.media), recorded.overrides).version
    except UsageError as error:
        return f"suite {recorded.suite!r} can no longer be loaded ({error})"
    if current != recorded.suite_version:
        return f"suite {recorded.suite!r} changed since validation ({recorded.suite_version} -> {current})"
    return ""


def _failure_summary(recorded: ValidationResult, dataset_dir: Path) -> str:
    failures = [
        f"{r.name} (observed {r.observed_value})"
        if r.observed_value is not None
        else f"{r.name} ({r.unexpected_count} of {r.element_count} rows, e.g. {', '.join(r.sample_ids[:3])})"
        for r in recorded.failures
    ]
    return f"failed {'; '.join(failures)}; see {dataset_dir / REPORT_NAME}"
