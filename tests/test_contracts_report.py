"""What a person reads: validation.json, the offline HTML page, the markdown artifact, the CLI."""

from __future__ import annotations

import json
import re

import pytest
from test_contracts_support import clean_samples, msg, write_dataset
from typer.testing import CliRunner

from align_core.shards.schema import Kind
from alignflow.cli import app
from data_contracts.report import render_markdown
from data_contracts.results import VALIDATION_NAME, read_validation
from data_contracts.runner import validate_dataset


@pytest.fixture
def failing_dataset(tmp_path):
    samples = clean_samples(Kind.SUPERVISED)
    samples[20]["messages"] = [msg("assistant", "hi"), msg("user", "q"), msg("assistant", "a")]
    samples[20]["id"] = "<script>alert(1)</script>"  # ids come from data: the page must escape them
    samples[26]["messages"] = [msg("user", "q 26"), msg("assistant", "x" * 40_000)]
    return write_dataset(tmp_path, Kind.SUPERVISED, samples)


def test_validation_json_records_every_expectation_and_the_digests(failing_dataset):
    result = validate_dataset(failing_dataset)

    recorded = json.loads((failing_dataset / VALIDATION_NAME).read_text())
    assert recorded["passed"] is False
    assert recorded["dataset_digest"] == failing_dataset.name
    assert len(recorded["shard_digests"]) == 3
    assert recorded["suite_version"] == result.suite_version
    by_name = {r["name"]: r for r in recorded["results"]}
    assert by_name["roles_alternate"]["unexpected_count"] == 1
    assert by_name["roles_alternate"]["sample_ids"] == ["<script>alert(1)</script>"]
    assert by_name["turn_chars_in_bounds[messages]"]["severity"] == "warning"
    assert read_validation(failing_dataset) == result


def test_html_report_is_self_contained_and_escapes_data(failing_dataset):
    validate_dataset(failing_dataset)
    page = (failing_dataset / "report.html").read_text()

    assert not re.search(r"https?://|<link|<script src|@import", page)  # nothing fetched from a CDN
    assert "<style>" in page
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "FAILED: 1 error(s), 1 warning(s)" in page
    for name in ("id_unique", "roles_alternate", "turn_chars_in_bounds[messages]", "row_count"):
        assert f"<code>{name}</code>" in page
    assert page.count('<tr class="FAIL">') == 1
    assert page.count('<tr class="WARN">') == 1


def test_markdown_artifact_has_one_table_row_per_expectation(failing_dataset):
    result = validate_dataset(failing_dataset)

    markdown = render_markdown(result)

    table_rows = [line for line in markdown.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(table_rows) == len(result.results)
    assert "| FAIL | `roles_alternate` | error | 1 | 40 | 2.50% | 1 |" in markdown
    assert markdown.startswith("### Data contract FAILED: 1 error(s), 1 warning(s)")


def test_gx_progress_bars_stay_silent(failing_dataset, capfd):
    validate_dataset(failing_dataset)

    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out


runner = CliRunner()


def test_cli_passes_a_clean_dataset_with_exit_0(tmp_path):
    dataset_dir = write_dataset(tmp_path, Kind.PREFERENCE, clean_samples(Kind.PREFERENCE))

    outcome = runner.invoke(app, ["validate", str(dataset_dir)])

    assert outcome.exit_code == 0, outcome.output
    lines = outcome.output.splitlines()
    assert lines[0].split() == ["status", "expectation", "severity", "unexpected", "rows", "%", "mostly", "sample", "ids"]
    assert any(line.split()[:2] == ["PASS", "chosen_differs_from_rejected"] for line in lines)
    assert "PASSED  (40 rows, preference, suite preference-v2-" in outcome.output
    assert f"report: {dataset_dir / 'report.html'}" in outcome.output


def test_cli_fails_a_broken_dataset_with_exit_1_and_shows_samples(failing_dataset):
    outcome = runner.invoke(app, ["validate", str(failing_dataset)])

    assert outcome.exit_code == 1
    row = next(line for line in outcome.output.splitlines() if line.startswith("FAIL"))
    assert row.split()[:6] == ["FAIL", "roles_alternate", "error", "1", "40", "2.50%"]
    assert row.endswith("<script>alert(1)</script>")
    assert "FAILED: 1 error(s), 1 warning(s)" in outcome.output


def test_cli_overrides_turn_an_error_into_a_warning(failing_dataset):
    outcome = runner.invoke(app, ["validate", str(failing_dataset), "--set", "roles_alternate.severity=warning"])

    assert outcome.exit_code == 0, outcome.output
    assert "PASSED (2 warning(s))" in outcome.output


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--set", "roles_alternate.mostly"], "must look like expectation.setting=value"),
        (["--suite", "strict"], "unknown suite 'strict'"),
    ],
)
def test_cli_bad_usage_exits_2_with_one_line(failing_dataset, arguments, message):
    outcome = runner.invoke(app, ["validate", str(failing_dataset), *arguments])

    assert outcome.exit_code == 2
    assert message in outcome.output
    assert not (failing_dataset / VALIDATION_NAME).exists()


def test_cli_not_a_dataset_exits_2(tmp_path):
    outcome = runner.invoke(app, ["validate", str(tmp_path)])

    assert outcome.exit_code == 2
    assert "no manifest.json" in outcome.output
