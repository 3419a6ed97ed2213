"""Suites as versioned data: expansion, overrides, versions, and clear errors for bad suites."""

from __future__ import annotations

import textwrap

import pytest
from test_contracts_support import clean_samples, write_dataset

from align_core.errors import UsageError
from align_core.shards.schema import Kind
from data_contracts.runner import validate_dataset
from data_contracts.suite import available_suites, load_suite, normalize_overrides, parse_override_pairs


def test_every_kind_has_a_built_in_suite():
    assert available_suites() == sorted(kind.value for kind in Kind)


def test_conversation_checks_expand_per_column_and_media_checks_per_media_type():
    names = [spec.name for spec in load_suite(None, Kind.PREFERENCE, media=("image", "audio")).expectations]

    for column in ("prompt", "chosen", "rejected"):
        assert f"no_empty_text[{column}]" in names
    assert "placeholders_match_media[image]" in names
    assert "placeholders_match_media[audio]" in names
    assert "placeholders_match_media[image]" not in [s.name for s in load_suite(None, Kind.PREFERENCE).expectations]


def test_suite_overrides_of_included_checks_apply():
    preference = load_suite(None, Kind.PREFERENCE)
    unpaired = load_suite(None, Kind.UNPAIRED_PREFERENCE)

    assert preference.expectation("duplicate_prompts").mostly == 0.5
    assert preference.expectation("duplicate_prompts").severity == "warning"
    assert "duplicate_prompts" not in [spec.name for spec in unpaired.expectations]
    assert unpaired.expectation("duplicate_samples").severity == "error"


def test_user_overrides_address_a_group_or_one_expansion():
    suite = load_suite(
        None,
        Kind.PREFERENCE,
        overrides={"no_empty_text": {"mostly": 0.9}, "turns_in_bounds[chosen].max_value": 4, "row_count.min_value": 10},
    )

    assert [suite.expectation(f"no_empty_text[{c}]").mostly for c in ("prompt", "chosen", "rejected")] == [0.9] * 3
    assert suite.expectation("turns_in_bounds[chosen]").kwargs["max_value"] == 4
    assert suite.expectation("turns_in_bounds[prompt]").kwargs["max_value"] == 64
    assert suite.expectation("row_count").kwargs["min_value"] == 10


def test_disabling_a_check_removes_it():
    suite = load_suite(None, Kind.SUPERVISED, overrides={"duplicate_samples.enabled": False})

    assert "duplicate_samples" not in [spec.name for spec in suite.expectations]


def test_version_is_stable_and_moves_with_any_override():
    base = load_suite(None, Kind.SUPERVISED).version

    assert load_suite(None, Kind.SUPERVISED).version == base
    assert base.startswith("supervised-v1-")
    assert load_suite(None, Kind.SUPERVISED, overrides={"duplicate_prompts.mostly": 0.9}).version != base
    assert load_suite(None, Kind.SUPERVISED, overrides={"duplicate_prompts.severity": "warning"}).version != base


def test_override_pairs_parse_yaml_scalars():
    assert parse_override_pairs(["a.mostly=0.9", "a.severity=warning", "b[x].enabled=false"]) == {
        "a": {"mostly": 0.9, "severity": "warning"},
        "b[x]": {"enabled": False},
    }
    assert normalize_overrides({"a": {"mostly": 1}, "a.severity": "error"}) == {"a": {"mostly": 1, "severity": "error"}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"nope.mostly": 0.5}, "no expectation 'nope'"),
        ({"roles_alternate.colour": "red"}, "unknown setting 'colour'"),
        ({"roles_alternate.mostly": 1.5}, "mostly must be a number between 0 and 1"),
        ({"roles_alternate.severity": "fatal"}, "severity must be one of error, warning"),
        ({"roles_alternate.enabled": "no"}, "expected true or false"),
        ({"roles_alternate": 3}, "must be 'expectation.setting'"),
    ],
)
def test_bad_overrides_name_the_key_at_fault(overrides, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_suite(None, Kind.SUPERVISED, overrides=overrides)


def test_unknown_suite_lists_the_built_in_ones():
    with pytest.raises(UsageError, match="unknown suite 'strict'; built-in suites: preference, prompt_only"):
        load_suite("strict", Kind.SUPERVISED)


def test_suite_for_another_kind_is_refused():
    with pytest.raises(UsageError, match="is for 'preference' shards, the dataset holds 'supervised' shards"):
        load_suite("preference", Kind.SUPERVISED)


def write_suite(tmp_path, body: str):
    path = tmp_path / "custom.yaml"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_a_custom_suite_file_extends_the_built_in_fragments(tmp_path):
    suite = write_suite(
        tmp_path,
        """
        name: needs_system_prompt
        kind: supervised
        version: 3
        include: [common, conversation]
        expectations:
          - name: starts_with_system
            type: expect_column_values_to_be_in_set
            column: messages_first_role
            kwargs: {value_set: [system]}
            severity: warning
            description: Every conversation carries a system prompt.
        """,
    )
    dataset_dir = write_dataset(tmp_path, Kind.SUPERVISED, clean_samples(Kind.SUPERVISED))

    result = validate_dataset(dataset_dir, suite=suite)

    failed = {r.name: r for r in result.results if not r.success}
    assert list(failed) == ["starts_with_system"]
    assert failed["starts_with_system"].unexpected_count == 32  # clean samples carry a system turn in 1 of 5
    assert result.passed  # a warning
    assert result.suite_version.startswith("needs_system_prompt-v3-")


@pytest.mark.parametrize(
    "entry, message",
    [
        ("type: expect_column_median_to_be_between\n    column: messages_turns\n    kwargs: {min_value: 1}", "aggregate check"),
        ("type: expect_column_values_to_be_in_set\n    column: messages_colour\n    kwargs: {value_set: [1]}", "reads messages_colour, which is not derived"),
        ("type: expect_columns_to_dance\n    column: messages_turns", "GX has no expectation type 'expect_columns_to_dance'"),
        ("type: expect_column_values_to_be_between\n    column: messages_turns\n    kwargs: {minimum: 1}", "invalid arguments"),
        ("type: expect_column_values_to_be_between\n    kwargs: {min_value: 1}", "needs 'column', 'columns'"),
        ("type: expect_column_values_to_match_regex\n    column: messages_roles\n    kwargs: {regex: '(U'}", "'broken' could not run"),
    ],
)
def test_bad_suite_entries_are_reported_by_name(tmp_path, entry, message):
    suite = write_suite(tmp_path, f"name: bad\nkind: supervised\nversion: 1\nexpectations:\n  - name: broken\n    {entry}\n")
    dataset_dir = write_dataset(tmp_path, Kind.SUPERVISED, clean_samples(Kind.SUPERVISED, rows=3))

    with pytest.raises(UsageError, match=message):
        validate_dataset(dataset_dir, suite=suite)
