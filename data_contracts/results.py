"""What a validation found: per expectation, and for the dataset (``validation.json``'s content)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from align_core.errors import UsageError

VALIDATION_NAME = "validation.json"
REPORT_NAME = "report.html"
# Bump when validation.json changes shape; the gate treats other versions as missing.
RESULT_FORMAT_VERSION = 1


@dataclass
class ExpectationResult:
    name: str
    type: str
    columns: list[str]
    kwargs: dict[str, Any]
    severity: str  # "error" | "warning"
    mostly: float
    description: str
    success: bool
    element_count: int  # rows checked
    unexpected_count: int  # rows that broke the expectation
    unexpected_percent: float  # of the rows with a value (nulls are not judged, as in GX)
    sample_ids: list[str] = field(default_factory=list)  # a few failing samples, in dataset order
    observed_value: Any = None  # table-level expectations: what was measured (e.g. the row count)

    @property
    def status(self) -> str:
        """PASS, FAIL (error severity) or WARN (a failed warning)."""
        if self.success:
            return "PASS"
        return "FAIL" if self.severity == "error" else "WARN"


@dataclass
class ValidationResult:
    dataset_dir: str
    dataset_digest: str
    kind: str
    suite: str
    suite_version: str
    overrides: dict[str, dict[str, Any]]
    shard_digests: list[str]
    rows: int
    passed: bool  # every error-severity expectation succeeded
    results: list[ExpectationResult]
    validated_at: str
    seconds: float
    alignflow_version: str
    format_version: int = RESULT_FORMAT_VERSION
    # the report's extras (absent from results recorded before them): the largest clusters of near-duplicate
    # prompts ({prompts, ids, sample}) and histograms of derived columns (``distributions.Distributions``)
    near_duplicate_clusters: list[dict[str, Any]] = field(default_factory=list)
    distributions: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> list[ExpectationResult]:
        """Failed error-severity expectations: the reasons the dataset is refused."""
        return [r for r in self.results if r.status == "FAIL"]

    @property
    def warnings(self) -> list[ExpectationResult]:
        return [r for r in self.results if r.status == "WARN"]

    @property
    def validation_path(self) -> Path:
        return Path(self.dataset_dir) / VALIDATION_NAME

    @property
    def report_path(self) -> Path:
        return Path(self.dataset_dir) / REPORT_NAME

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationResult:
        data = dict(data)
        data["results"] = [ExpectationResult(**item) for item in data["results"]]
        return cls(**data)


def read_validation(dataset_dir: str | Path) -> ValidationResult | None:
    """The recorded ``validation.json`` of a dataset folder; None when there is none.

    Raises ``UsageError`` when the file exists but cannot be read as a validation result.
    """
    path = Path(dataset_dir) / VALIDATION_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format_version") != RESULT_FORMAT_VERSION:
            raise ValueError(f"format_version {data.get('format_version')!r}, expected {RESULT_FORMAT_VERSION}")
        return ValidationResult.from_dict(data)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise UsageError(f"{path}: unreadable validation result ({error})") from error
