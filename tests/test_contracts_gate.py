"""The gate refuses shards whose validation is missing, failed or stale, and says why."""

from __future__ import annotations

import json

import pytest
from test_contracts_support import clean_samples, msg, write_dataset

from align_core.errors import IntegrityError, UsageError
from align_core.shards.manifest import MANIFEST_NAME
from align_core.shards.schema import Kind
from data_contracts.gate import ValidationGateError, check_validation, require_validated, validation_status
from data_contracts.results import VALIDATION_NAME
from data_contracts.runner import current_result, validate_dataset


@pytest.fixture
def clean_dataset(tmp_path):
    return write_dataset(tmp_path, Kind.SUPERVISED, clean_samples(Kind.SUPERVISED))


def test_unvalidated_dataset_is_missing(clean_dataset):
    assert validation_status(clean_dataset) == "missing"
    with pytest.raises(ValidationGateError, match=f"{clean_dataset}: data contract missing: no validation.json") as caught:
        require_validated(clean_dataset)
    assert isinstance(caught.value, UsageError)  # the CLI prints it as one line and exits 2
    assert caught.value.status == "missing"


def test_passed_dataset_goes_through(clean_dataset):
    validate_dataset(clean_dataset)

    assert validation_status(clean_dataset) == "passed"
    require_validated(clean_dataset)


def test_failed_dataset_names_the_failed_expectations(tmp_path):
    samples = clean_samples(Kind.SUPERVISED)
    samples[20]["messages"] = [msg("assistant", "hi"), msg("user", "q"), msg("assistant", "a")]
    samples[23]["messages"] = [msg("user", "q 23"), msg("assistant", "")]
    dataset_dir = write_dataset(tmp_path, Kind.SUPERVISED, samples)
    validate_dataset(dataset_dir)

    with pytest.raises(ValidationGateError) as caught:
        require_validated(dataset_dir)

    assert caught.value.status == "failed"
    assert "no_empty_text[messages] (1 of 40 rows, e.g. s-023)" in caught.value.reason
    assert "roles_alternate (1 of 40 rows, e.g. s-020)" in caught.value.reason
    assert str(dataset_dir / "report.html") in caught.value.reason


def test_a_failed_warning_does_not_close_the_gate(tmp_path):
    samples = clean_samples(Kind.SUPERVISED)
    samples[36] = {**samples[3], "id": "s-036", "source_index": 36}  # an exact copy: a warning
    dataset_dir = write_dataset(tmp_path, Kind.SUPERVISED, samples)

    result = validate_dataset(dataset_dir)

    assert [r.name for r in result.warnings] == ["duplicate_samples"]
    require_validated(dataset_dir)


def rewrite_manifest(dataset_dir, change):
    path = dataset_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_changed_shard_digest_makes_the_record_stale(clean_dataset):
    validate_dataset(clean_dataset)

    rewrite_manifest(clean_dataset, lambda m: m["shards"][1].update(sha256="f" * 64))

    status, reason = check_validation(clean_dataset)
    assert status == "stale"
    assert reason.startswith("shards/shard-00001.arrow: validated sha256 ")
    assert "manifest says ffffffffffffffff" in reason
    with pytest.raises(ValidationGateError, match="data contract stale: shards/shard-00001.arrow"):
        require_validated(clean_dataset)


def test_changed_dataset_digest_makes_the_record_stale(clean_dataset):
    validate_dataset(clean_dataset)

    rewrite_manifest(clean_dataset, lambda m: m.update(dataset_digest="0" * 32))

    assert check_validation(clean_dataset)[0] == "stale"
    assert "manifest says 0000000000000000" in check_validation(clean_dataset)[1]


def test_shard_bytes_changed_behind_the_manifest_close_the_gate(clean_dataset):
    validate_dataset(clean_dataset)
    shard = clean_dataset / "shards" / "shard-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")

    assert validation_status(clean_dataset) == "passed"  # the status line reads only the manifest and record
    with pytest.raises(IntegrityError, match=f"{shard}: sha256 mismatch"):
        require_validated(clean_dataset)


def test_changed_suite_makes_the_record_stale(tmp_path, clean_dataset):
    suite = tmp_path / "team.yaml"
    suite.write_text("name: team\nkind: supervised\nversion: 1\ninclude: [common]\n")
    validate_dataset(clean_dataset, suite=str(suite))
    assert validation_status(clean_dataset) == "passed"

    suite.write_text("name: team\nkind: supervised\nversion: 2\ninclude: [common, conversation]\n")

    status, reason = check_validation(clean_dataset)
    assert status == "stale"
    assert f"suite '{suite}' changed since validation (team-v1-" in reason


def test_unreadable_record_counts_as_missing(clean_dataset):
    validate_dataset(clean_dataset)
    (clean_dataset / VALIDATION_NAME).write_text("{not json")

    status, reason = check_validation(clean_dataset)
    assert status == "missing"
    assert "unreadable validation result" in reason


def test_current_result_is_reused_only_for_the_same_suite_version(clean_dataset):
    recorded = validate_dataset(clean_dataset)

    assert current_result(clean_dataset).validated_at == recorded.validated_at
    assert current_result(clean_dataset, overrides={"duplicate_prompts.mostly": 0.9}) is None
    (clean_dataset / VALIDATION_NAME).unlink()
    assert current_result(clean_dataset) is None


def test_folder_without_manifest_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no manifest.json"):
        validation_status(tmp_path)
