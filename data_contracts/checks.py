"""Great Expectations over derived-column DataFrames, one chunk at a time, with counts summed.

GX judges each chunk; the verdict for the dataset comes from the summed counts with the same rule
GX applies (``mostly`` of the non-null rows must meet the expectation), so a dataset split into
many chunks gets the verdict it would get as one frame. Only row-wise ("map") expectations add up
like this; whole-table row counts are judged by ``table_result`` over the total, and column means
(``expect_column_mean_to_be_between``, e.g. the share of pairs whose longer answer is chosen) by
``MeanTally`` from a sum and a count that add up over chunks: GX would judge each chunk's mean alone.
The share of near-duplicate prompts (``prompt_near_duplicate``, a dataset column) is a column mean too,
judged from the clusters found at the end (``near_duplicate_result``).

GX is imported lazily: it takes seconds, and the gate and the CLI's other commands never need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from align_core.errors import UsageError
from data_contracts.derive import DATASET_COLUMNS
from data_contracts.near_duplicates import NearDuplicates
from data_contracts.results import ExpectationResult
from data_contracts.suite import ExpectationSpec, Suite
from data_contracts.text_checks import SCRIPTS

SAMPLE_IDS = 5
GX_SEVERITY = {"error": "critical", "warning": "warning"}
# kwargs that set how a dataset column is derived, not GX arguments: the similarity above which prompts
# are near-duplicates (estimated Jaccard of word bigrams)
DERIVATION_KWARGS = ("similarity",)
DEFAULT_SIMILARITY = 0.8


@dataclass
class Tally:
    """Counts of one expectation summed over chunks."""

    spec: ExpectationSpec
    element_count: int = 0
    missing_count: int = 0
    unexpected_count: int = 0
    sample_ids: list[str] = field(default_factory=list)

    def add(self, gx_result: dict[str, Any], frame: pd.DataFrame) -> None:
        """Add one chunk's GX result; ``frame`` is the chunk with its ``id``/``source_index`` columns."""
        self.element_count += int(gx_result.get("element_count") or 0)
        self.missing_count += int(gx_result.get("missing_count") or 0)
        self.unexpected_count += int(gx_result.get("unexpected_count") or 0)
        rows = gx_result.get("unexpected_rows")
        if rows is not None and len(self.sample_ids) < SAMPLE_IDS:
            failing = frame.loc[rows.index]  # GX keeps the chunk's index on the rows it returns
            self.sample_ids += [_sample_label(i, s) for i, s in zip(failing["id"], failing["source_index"])]
            del self.sample_ids[SAMPLE_IDS:]

    def result(self) -> ExpectationResult:
        judged = self.element_count - self.missing_count
        # GX's rule: vacuously true without judged rows, else at least `mostly` of them must pass.
        success = judged == 0 or (judged - self.unexpected_count) >= self.spec.mostly * judged - 1e-9
        return _result(
            self.spec,
            success=success,
            element_count=self.element_count,
            unexpected_count=self.unexpected_count,
            unexpected_percent=100.0 * self.unexpected_count / judged if judged else 0.0,
            sample_ids=self.sample_ids,
        )


@dataclass
class MeanTally:
    """A column's sum and count of non-null values over chunks: its mean over the whole dataset."""

    spec: ExpectationSpec
    total: float = 0.0
    count: int = 0
    element_count: int = 0

    def add(self, frame: pd.DataFrame) -> None:
        values = frame[self.spec.columns[0]].dropna()
        self.total += float(values.astype(float).sum())
        self.count += len(values)
        self.element_count += len(frame)

    def result(self) -> ExpectationResult:
        """GX's rule on the dataset's mean: within [min_value, max_value] (strict_min/strict_max
        exclude the bound); vacuously true without any value."""
        if not self.count:
            return _result(self.spec, success=True, element_count=0, unexpected_count=0, unexpected_percent=0.0)
        mean = self.total / self.count
        observed = kto_balance(mean) if self.spec.columns == ["label"] else round(mean, 4)
        return _result(
            self.spec,
            success=_mean_within(mean, self.spec.kwargs),
            element_count=self.count,
            unexpected_count=0,
            unexpected_percent=0.0,
            observed_value=observed,
        )


def _mean_within(mean: float, kwargs: dict[str, Any]) -> bool:
    """GX's rule for a mean: within [min_value, max_value] (strict_min/strict_max exclude the bound)."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    above_low = low is None or (mean > low if kwargs.get("strict_min") else mean >= low)
    return above_low and (high is None or (mean < high if kwargs.get("strict_max") else mean <= high))


def near_duplicate_result(spec: ExpectationSpec, found: NearDuplicates | None, rows: int) -> ExpectationResult:
    """The share of rows whose prompt is a near-duplicate of an earlier row's (beyond the first of its
    cluster), judged with GX's column-mean rule; the observed value also counts the clusters."""
    flagged = found.near_duplicates if found else 0
    fraction = flagged / rows if rows else 0.0
    return _result(
        spec,
        success=_mean_within(fraction, spec.kwargs),
        element_count=rows,
        unexpected_count=flagged,
        unexpected_percent=100.0 * fraction,
        sample_ids=found.sample_ids if found else [],
        observed_value={"fraction": round(fraction, 4), "clusters": found.cluster_count if found else 0},
    )


def near_duplicate_similarity(suite: Suite) -> float | None:
    """The similarity above which prompts are near-duplicates, from the suite's expectation on
    ``prompt_near_duplicate`` (the lowest, if several); None when no expectation reads it."""
    values = [spec.kwargs.get("similarity", DEFAULT_SIMILARITY) for spec in suite.expectations if "prompt_near_duplicate" in spec.columns]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
            raise UsageError(f"suite {suite.name}: near-duplicate similarity must be a number between 0 and 1 (exclusive), got {value!r}")
    return min(values) if values else None


def check_scripts(suite: Suite) -> None:
    """Expectations on ``text_script`` name scripts the derivation knows."""
    for spec in suite.expectations:
        if spec.columns == ["text_script"]:
            unknown = [name for name in spec.kwargs.get("value_set") or [] if name not in SCRIPTS]
            if unknown:
                raise UsageError(f"expectation {spec.name!r}: unknown script(s) {', '.join(map(str, unknown))}; scripts: {', '.join(SCRIPTS)}")


def kto_balance(desirable_fraction: float) -> dict[str, Any]:
    """The desirable share of KTO rows, the desirable:undesirable ratio, and the loss weights that bring
    lambda_D * n_D / (lambda_U * n_U) into [1, 4/3], the range the KTO paper recommends (Ethayarajh et
    al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", section 4.2): the smallest
    change from 1.0 each (``kto_desirable_weight``/``kto_undesirable_weight`` of the KTO trainer)."""
    observed: dict[str, Any] = {"desirable_fraction": round(desirable_fraction, 4)}
    if desirable_fraction in (0.0, 1.0):
        return observed | {"note": "only one label: no weights balance it"}
    ratio = desirable_fraction / (1.0 - desirable_fraction)
    desirable_weight = math.ceil(100 / ratio) / 100 if ratio < 1 else 1.0  # rounded up: the ratio stays >= 1
    undesirable_weight = math.ceil(75 * ratio) / 100 if ratio > 4 / 3 else 1.0  # rounded up: <= 4/3
    return observed | {
        "desirable_per_undesirable": round(ratio, 4),
        "kto_desirable_weight": desirable_weight,
        "kto_undesirable_weight": undesirable_weight,
    }



class GXChecks:
    """A suite's row-wise expectations as a GX suite, run on successive DataFrame chunks."""

    def __init__(self, suite: Suite, derived_columns: list[str]):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.suite = suite
        row_wise = [spec for spec in suite.expectations if not spec.table_level and not spec.dataset_aggregate]
        self.tallies = {spec.name: Tally(spec) for spec in row_wise}
        self.dataset_columns = {spec.name for spec in suite.expectations if set(spec.columns) & set(DATASET_COLUMNS)}
        for name in self.dataset_columns:
            if not suite.expectation(name).dataset_aggregate:
                raise UsageError(f"expectation {name!r}: {', '.join(DATASET_COLUMNS)} can only be checked with expect_column_mean_to_be_between")
        self.means = {spec.name: MeanTally(spec) for spec in suite.expectations if spec.dataset_aggregate and spec.name not in self.dataset_columns}
        for spec in suite.expectations:
            missing = [column for column in spec.columns if column not in derived_columns]
            if missing:
                raise UsageError(
                    f"suite {suite.name}: expectation {spec.name!r} reads {', '.join(missing)}, which is not derived "
                    f"for {suite.kind.value} shards; derived columns: {', '.join(derived_columns)}"
                )
        # GX fingerprints every column it is given (a hash per string): give it only what it reads.
        self._columns = sorted({column for tally in self.tallies.values() for column in tally.spec.columns})
        # An ephemeral context per run: nothing on disk, no shared state between concurrent runs.
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)  # its bar ignores TQDM_DISABLE
        asset = context.data_sources.add_pandas("alignflow").add_dataframe_asset("derived")
        self._batch_definition = asset.add_batch_definition_whole_dataframe("chunk")
        expectations = [_gx_expectation(tally.spec) for tally in self.tallies.values()]
        for spec in [mean.spec for mean in self.means.values()] + [suite.expectation(name) for name in self.dataset_columns]:
            _gx_expectation(spec)  # checks its arguments; the runner judges it over the dataset
        self._gx_suite = gx.ExpectationSuite(name=suite.version, expectations=expectations)

    def validate(self, frame: pd.DataFrame) -> None:
        """Run every row-wise expectation on ``frame`` and add its counts (and the sums of the means)."""
        if frame.empty:
            return
        for mean in self.means.values():
            mean.add(frame)
        if not self.tallies:
            return
        # The validator Batch.validate makes, given the batch definition: it loads (and fingerprints) the frame
        # once, where getting a Batch first and validating it loads it twice (~0.07 s per 200k rows).
        from great_expectations.validator.v1_validator import Validator

        validator = Validator(
            batch_definition=self._batch_definition,
            batch_parameters={"dataframe": frame[self._columns]},
            # BASIC + a few unexpected rows: GX's SUMMARY walks every unexpected row in Python (seconds).
            result_format={"result_format": "BASIC", "include_unexpected_rows": True, "partial_unexpected_count": SAMPLE_IDS},
        )
        outcome = validator.validate_expectation_suite(self._gx_suite)
        for gx_result in outcome.results:
            name = gx_result.expectation_config.meta["alignflow_name"]
            error = _gx_error(gx_result.exception_info)
            if error:
                raise UsageError(f"suite {self.suite.name}: expectation {name!r} could not run: {error}")
            self.tallies[name].add(gx_result.result, frame)

    def results(self, rows: int, near_duplicates: NearDuplicates | None = None) -> list[ExpectationResult]:
        """Every expectation's verdict, in suite order; ``rows`` is the dataset's total row count."""
        return [
            table_result(spec, rows) if spec.table_level
            else near_duplicate_result(spec, near_duplicates, rows) if spec.name in self.dataset_columns
            else (self.means.get(spec.name) or self.tallies[spec.name]).result()
            for spec in self.suite.expectations
        ]


def table_result(spec: ExpectationSpec, rows: int) -> ExpectationResult:
    """A whole-dataset row-count expectation, judged on the total over all shards."""
    if spec.type == "expect_table_row_count_to_equal":
        success = rows == spec.kwargs.get("value")
    else:
        low, high = spec.kwargs.get("min_value"), spec.kwargs.get("max_value")
        success = (low is None or rows >= low) and (high is None or rows <= high)
    return _result(spec, success=success, element_count=rows, unexpected_count=0, unexpected_percent=0.0, observed_value=rows)


def _result(spec: ExpectationSpec, **outcome: Any) -> ExpectationResult:
    return ExpectationResult(
        name=spec.name,
        type=spec.type,
        columns=spec.columns,
        kwargs=spec.kwargs,
        severity=spec.severity,
        mostly=spec.mostly,
        description=spec.description,
        **outcome,
    )


def _gx_expectation(spec: ExpectationSpec):
    from great_expectations.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.expectation import (
        ColumnMapExpectation,
        ColumnPairMapExpectation,
        MulticolumnMapExpectation,
    )
    from great_expectations.expectations.registry import get_expectation_impl

    try:
        expectation_class = get_expectation_impl(spec.type)
    except ExpectationNotFoundError:
        raise UsageError(f"expectation {spec.name!r}: GX has no expectation type {spec.type!r}") from None
    row_wise = issubclass(expectation_class, (ColumnMapExpectation, ColumnPairMapExpectation, MulticolumnMapExpectation))
    if not row_wise and not spec.dataset_aggregate:
        raise UsageError(
            f"expectation {spec.name!r}: {spec.type} is an aggregate check; validation streams the dataset in chunks, "
            "so only row-wise (column map) expectations, column means and table row counts are supported"
        )
    try:
        return expectation_class(
            **spec.domain,
            **{key: value for key, value in spec.kwargs.items() if key not in DERIVATION_KWARGS},
            **({"mostly": spec.mostly} if row_wise else {}),
            severity=GX_SEVERITY[spec.severity],
            meta={"alignflow_name": spec.name},
        )
    except Exception as error:  # pydantic's message names the bad argument
        raise UsageError(f"expectation {spec.name!r} ({spec.type}): invalid arguments: {error}") from error


def _gx_error(exception_info: dict[str, Any] | None) -> str | None:
    """GX's error message for a check that raised, or None. GX reports either one flat record or
    one record per failed metric (keyed by the metric's id)."""
    records = [exception_info] if exception_info and "raised_exception" in exception_info else (exception_info or {}).values()
    messages = [record.get("exception_message") for record in records if isinstance(record, dict) and record.get("raised_exception")]
    return "; ".join(str(message) for message in messages) or None


def _sample_label(sample_id: Any, source_index: Any) -> str:
    if not isinstance(sample_id, str) or not sample_id:  # null arrives from pandas as None or NaN
        return f"<missing id, source row {source_index}>"
    return sample_id
