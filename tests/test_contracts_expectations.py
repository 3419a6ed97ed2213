"""Each expectation of each kind's suite: a clean dataset passes; the same dataset with one planted
defect fails that expectation alone, with the exact unexpected count and the planted sample's id.

Datasets have 40 rows in 3 shards of 7-row record batches, so the repeat checks (ids, prompts,
samples) must see across shards to catch a defect planted in a later shard.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from test_contracts_support import IMAGE, clean_samples, image_item, msg, write_dataset

from align_core.shards.schema import Kind
from data_contracts.runner import validate_dataset

Samples = list[dict[str, Any]]


def replace_column(row: int, column: str, messages: list) -> Callable[[Samples], None]:
    def plant(samples: Samples) -> None:
        samples[row][column] = messages

    return plant


def set_field(row: int, field: str, value: Any) -> Callable[[Samples], None]:
    def plant(samples: Samples) -> None:
        samples[row][field] = value

    return plant


def copy_field(source_row: int, target_row: int, field: str) -> Callable[[Samples], None]:
    def plant(samples: Samples) -> None:
        samples[target_row][field] = copy.deepcopy(samples[source_row][field])

    return plant


def copy_sample(source_row: int, target_row: int) -> Callable[[Samples], None]:
    """An exact copy of another sample under the target's own id."""

    def plant(samples: Samples) -> None:
        keep = {key: samples[target_row][key] for key in ("id", "source_index")}
        samples[target_row] = {**copy.deepcopy(samples[source_row]), **keep}

    return plant


def repeat_prompts(rows: list[int]) -> Callable[[Samples], None]:
    """Give each row the prompt of row 0 (supervised: the messages before the answer)."""

    def plant(samples: Samples) -> None:
        for row in rows:
            if "messages" in samples[row]:
                samples[row]["messages"] = [*copy.deepcopy(samples[0]["messages"][:-1]), msg("assistant", f"other answer {row}")]
            else:
                samples[row]["prompt"] = copy.deepcopy(samples[0]["prompt"])

    return plant


def set_meta(rows: list[int], **meta: Any) -> Callable[[Samples], None]:
    def plant(samples: Samples) -> None:
        for row in rows:
            samples[row]["meta"] = json.dumps({**json.loads(samples[row].get("meta") or "{}"), **meta})

    return plant


def planted(*plants: Callable[[Samples], None]) -> Callable[[Samples], None]:
    def plant(samples: Samples) -> None:
        for each in plants:
            each(samples)

    return plant


def nearly_copy_chosen(row: int) -> Callable[[Samples], None]:
    """Rejected = chosen with its final "." made "!": trigram Jaccard 25/27 (0.93) for a 28-character answer."""

    def plant(samples: Samples) -> None:
        text = samples[row]["chosen"][-1]["content"][0]["text"]
        samples[row]["rejected"] = [msg("assistant", text[:-1] + "!")]

    return plant


EVERY_ROW = list(range(40))
SCORED = set_meta(EVERY_ROW, score_chosen=8.0, score_rejected=5.5)  # UltraFeedback's meta
CHOSEN_AS_SAFER = set_meta(EVERY_ROW, chosen_by="safer_response_id", is_chosen_safe=True, is_rejected_safe=False)

LONG_TEXT = "x" * 40_000
MANY_TURNS = [msg(role, f"turn {i}") for i in range(33) for role in ("user", "assistant")]  # 66 turns

# (kind, defect, the one expectation that must fail, unexpected count, planted rows)
CASES = [
    (Kind.SUPERVISED, set_field(33, "id", None), "id_present", 1, [33]),
    (Kind.SUPERVISED, set_field(34, "id", ""), "id_present", 1, [34]),
    (Kind.SUPERVISED, copy_field(2, 31, "id"), "id_unique", 1, [31]),
    (Kind.SUPERVISED, repeat_prompts([17, 29, 38]), "duplicate_prompts", 3, [17, 29, 38]),
    (Kind.SUPERVISED, copy_sample(3, 36), "duplicate_samples", 1, [36]),
    (Kind.SUPERVISED, replace_column(20, "messages", [msg("assistant", "hi"), msg("user", "q"), msg("assistant", "a")]), "roles_alternate", 1, [20]),
    (Kind.SUPERVISED, replace_column(21, "messages", [msg("user", "q"), msg("user", "q again"), msg("assistant", "a")]), "roles_alternate", 1, [21]),
    (Kind.SUPERVISED, replace_column(22, "messages", [msg("user", "q"), msg("assistant", "a"), msg("user", "and?")]), "ends_with_assistant", 1, [22]),
    (Kind.SUPERVISED, replace_column(23, "messages", [msg("user", "q 23"), msg("assistant", "")]), "no_empty_text[messages]", 1, [23]),
    (Kind.SUPERVISED, replace_column(24, "messages", [msg("user", "q 24"), msg("assistant", "  \n ")]), "no_empty_text[messages]", 1, [24]),
    (Kind.SUPERVISED, replace_column(25, "messages", MANY_TURNS), "turns_in_bounds[messages]", 1, [25]),
    (Kind.SUPERVISED, replace_column(26, "messages", [msg("user", "q 26"), msg("assistant", LONG_TEXT)]), "turn_chars_in_bounds[messages]", 1, [26]),
    # preference bound: mostly 0.5 (warning) -> 21 of 40 repeated prompts is over it
    (Kind.PREFERENCE, repeat_prompts(list(range(1, 22))), "duplicate_prompts", 21, [1, 2, 3, 4, 5]),
    (Kind.PREFERENCE, lambda s: s[30].update(rejected=copy.deepcopy(s[30]["chosen"])), "chosen_differs_from_rejected", 1, [30]),
    (Kind.PREFERENCE, replace_column(31, "prompt", [msg("user", "q 31"), msg("assistant", "a")]), "prompt_ends_with_user", 1, [31]),
    (Kind.PREFERENCE, replace_column(32, "prompt", [msg("assistant", "hello"), msg("user", "q 32")]), "roles_alternate", 1, [32]),
    (Kind.PREFERENCE, replace_column(33, "chosen", [msg("user", "hm"), msg("assistant", "a 33")]), "responses_alternate[chosen_roles]", 1, [33]),
    (Kind.PREFERENCE, replace_column(34, "rejected", [msg("assistant", "a 34"), msg("user", "more?")]), "ends_with_assistant[rejected_last_role]", 1, [34]),
    (Kind.PREFERENCE, replace_column(35, "rejected", [msg("assistant", "")]), "no_empty_text[rejected]", 1, [35]),
    (Kind.PREFERENCE, replace_column(36, "prompt", [*MANY_TURNS[:-1]]), "turns_in_bounds[prompt]", 1, [36]),
    # 1 of 40 near-identical pairs is over the 1% allowed
    (Kind.PREFERENCE, nearly_copy_chosen(10), "near_identical_pairs", 1, [10]),
    (Kind.PREFERENCE, replace_column(12, "chosen", [msg("assistant", "good answer 12: use sorted(), itâ€™s cafÃ© grade.")]), "text_damage", 1, [12]),
    (Kind.PREFERENCE, replace_column(19, "prompt", [msg("user", "question 19: how do I sort a \ufffd list?")]), "text_damage", 1, [19]),
    (Kind.SUPERVISED, replace_column(27, "messages", [msg("user", "q 27"), msg("assistant", "naÃ¯ve \ufffd")]), "text_damage", 1, [27]),
    (Kind.PREFERENCE, planted(SCORED, set_meta([7], score_chosen=3.0)), "chosen_score_not_lower", 1, [7]),
    # 3 ties among 40 scored pairs are over the 5% allowed
    (Kind.PREFERENCE, planted(SCORED, set_meta([4, 16, 28], score_rejected=8)), "score_ties", 3, [4, 16, 28]),
    # row 11 was chosen as the more helpful answer: its safety labels may disagree
    (
        Kind.PREFERENCE,
        planted(CHOSEN_AS_SAFER, set_meta([9, 11], is_chosen_safe=False, is_rejected_safe=True), set_meta([11], chosen_by="better_response_id")),
        "safety_labels_consistent",
        1,
        [9],
    ),
    (Kind.PROMPT_ONLY, replace_column(10, "prompt", [msg("user", "q 10"), msg("assistant", "a 10")]), "prompt_ends_with_user", 1, [10]),
    (Kind.PROMPT_ONLY, replace_column(11, "prompt", [msg("system", "s"), msg("assistant", "a"), msg("user", "q 11")]), "roles_alternate", 1, [11]),
    (Kind.PROMPT_ONLY, replace_column(12, "prompt", [msg("user", " ")]), "no_empty_text[prompt]", 1, [12]),
    (Kind.UNPAIRED_PREFERENCE, set_field(13, "label", None), "label_not_null", 1, [13]),  # an undesirable one: the balance holds
    (Kind.UNPAIRED_PREFERENCE, copy_sample(6, 37), "duplicate_samples", 1, [37]),
    (Kind.UNPAIRED_PREFERENCE, replace_column(15, "completion", [msg("user", "oops"), msg("assistant", "a 15")]), "responses_alternate", 1, [15]),
]


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_clean_dataset_passes_every_expectation(tmp_path, kind):
    result = validate_dataset(write_dataset(tmp_path, kind, clean_samples(kind)))

    assert result.passed
    assert result.rows == 40
    assert [r.name for r in result.results if not r.success or r.unexpected_count] == []


@pytest.mark.parametrize(
    "kind, plant, expectation, count, rows",
    CASES,
    ids=[f"{case[0].value}-{case[2]}-{index}" for index, case in enumerate(CASES)],
)
def test_planted_defect_fails_that_expectation_alone(tmp_path, kind, plant, expectation, count, rows):
    samples = clean_samples(kind)
    plant(samples)

    result = validate_dataset(write_dataset(tmp_path, kind, samples))

    failed = {r.name: r for r in result.results if not r.success}
    assert list(failed) == [expectation]
    assert failed[expectation].unexpected_count == count
    assert failed[expectation].sample_ids == [samples[row]["id"] or f"<missing id, source row {row}>" for row in rows][:5]
    # a failed warning is reported but does not fail the dataset
    assert result.passed is (failed[expectation].severity == "warning")


def test_media_placeholders_must_match_media_items(tmp_path):
    samples = clean_samples(Kind.PREFERENCE, media=("image",))
    samples[8]["images"] = []  # a placeholder with no image
    samples[27]["images"] = [image_item(27), image_item(99)]  # an image nothing refers to
    samples[28]["prompt"] = [msg("user", IMAGE, IMAGE, "compare")]  # two placeholders, one image

    result = validate_dataset(write_dataset(tmp_path, Kind.PREFERENCE, samples, media=("image",)))

    failed = {r.name: r for r in result.results if not r.success}
    assert list(failed) == ["placeholders_match_media[image]"]
    assert failed["placeholders_match_media[image]"].unexpected_count == 3
    assert failed["placeholders_match_media[image]"].sample_ids == ["s-008", "s-027", "s-028"]
    assert not result.passed


def test_duplicate_prompt_rate_at_the_bound_passes_and_above_it_fails(tmp_path):
    # supervised bound: mostly 0.95 of 40 rows -> at most 2 repeated prompts
    at_bound, above = clean_samples(Kind.SUPERVISED), clean_samples(Kind.SUPERVISED)
    repeat_prompts([10, 20])(at_bound)
    repeat_prompts([10, 20, 30])(above)

    at_bound_result = validate_dataset(write_dataset(tmp_path / "a", Kind.SUPERVISED, at_bound))
    above_result = validate_dataset(write_dataset(tmp_path / "b", Kind.SUPERVISED, above))

    duplicates = {r.name: r for r in at_bound_result.results}["duplicate_prompts"]
    assert (duplicates.success, duplicates.unexpected_count, duplicates.unexpected_percent) == (True, 2, 5.0)
    duplicates = {r.name: r for r in above_result.results}["duplicate_prompts"]
    assert (duplicates.success, duplicates.unexpected_count, duplicates.unexpected_percent) == (False, 3, 7.5)


def test_empty_dataset_fails_the_row_count(tmp_path):
    result = validate_dataset(write_dataset(tmp_path, Kind.SUPERVISED, []))

    failed = {r.name: r for r in result.results if not r.success}
    assert list(failed) == ["row_count"]
    assert failed["row_count"].observed_value == 0
    assert not result.passed


def test_verdicts_do_not_depend_on_the_chunk_size_or_threads(tmp_path):
    samples = clean_samples(Kind.SUPERVISED)
    for plant in (copy_field(2, 31, "id"), repeat_prompts([17, 29, 38]), set_field(5, "id", None)):
        plant(samples)
    dataset_dir = write_dataset(tmp_path, Kind.SUPERVISED, samples)

    whole = validate_dataset(dataset_dir)
    in_chunks_of_seven = validate_dataset(dataset_dir, chunk_rows=7, workers=1)

    def summary(result):
        return [(r.name, r.success, r.element_count, r.unexpected_count, r.sample_ids) for r in result.results]

    assert summary(in_chunks_of_seven) == summary(whole)
    assert {r.name: r.unexpected_count for r in whole.results if r.unexpected_count} == {
        "id_present": 1,
        "id_unique": 1,
        "duplicate_prompts": 3,
    }


def longer_chosen(rows: list[int]) -> Callable[[Samples], None]:
    """Make chosen the longer answer in ``rows`` (clean samples: rejected is longer in the odd rows)."""

    def plant(samples: Samples) -> None:
        for row in rows:
            samples[row]["rejected"] = [msg("assistant", f"bad answer {row}: no.")]

    return plant


@pytest.mark.parametrize("chosen_longer, passes", [(30, True), (31, False)])
def test_length_bias_warns_above_three_quarters_of_pairs_with_the_longer_answer_chosen(tmp_path, chosen_longer, passes):
    samples = clean_samples(Kind.PREFERENCE)  # the chosen answer is the longer one in the 20 even rows
    longer_chosen([1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21][: chosen_longer - 20])(samples)

    result = validate_dataset(write_dataset(tmp_path, Kind.PREFERENCE, samples))

    failed = [r.name for r in result.results if not r.success]
    assert failed == ([] if passes else ["length_bias"])
    length_bias = {r.name: r for r in result.results}["length_bias"]
    assert length_bias.observed_value == round(chosen_longer / 40, 4)
    assert result.passed  # a warning


def test_length_bias_leaves_out_ties_and_holds_over_chunks(tmp_path):
    samples = clean_samples(Kind.PREFERENCE)
    longer_chosen([1, 3, 5, 7, 9, 11, 13, 15])(samples)  # 28 of 40 chosen longer: 0.70
    for row in (17, 19, 21, 23):  # 4 pairs where rejected was longer now tie: 28 of 36 -> 0.78, over 0.75
        samples[row]["rejected"] = [msg("assistant", "x" * len(samples[row]["chosen"][0]["content"][0]["text"]))]
    dataset_dir = write_dataset(tmp_path, Kind.PREFERENCE, samples)

    whole, in_chunks_of_seven = validate_dataset(dataset_dir), validate_dataset(dataset_dir, chunk_rows=7, workers=1)

    for result in (whole, in_chunks_of_seven):
        length_bias = {r.name: r for r in result.results}["length_bias"]
        assert (length_bias.success, length_bias.element_count, length_bias.observed_value) == (False, 36, round(28 / 36, 4))


def test_length_bias_threshold_is_overridable(tmp_path):
    samples = clean_samples(Kind.PREFERENCE)
    longer_chosen([1, 3, 5, 7, 9, 11, 13, 15, 17, 19])(samples)  # 30 of 40

    result = validate_dataset(write_dataset(tmp_path, Kind.PREFERENCE, samples), overrides={"length_bias.max_value": 0.7})

    assert [r.name for r in result.results if not r.success] == ["length_bias"]


def set_labels(rows: list[int], label: bool) -> Callable[[Samples], None]:
    def plant(samples: Samples) -> None:
        for row in rows:
            samples[row]["label"] = label

    return plant


@pytest.mark.parametrize(
    "plant, observed",
    [
        # 24 desirable of 40: 1.5 per undesirable, over 4/3 -> weigh undesirable ones 1.5 * 3/4 = 1.125, rounded up
        (
            set_labels([1, 3, 5, 7], True),
            {"desirable_fraction": 0.6, "desirable_per_undesirable": 1.5, "kto_desirable_weight": 1.0, "kto_undesirable_weight": 1.13},
        ),
        # 10 desirable of 40: 1 per 3 undesirable -> weigh desirable ones 3
        (
            set_labels([0, 2, 4, 6, 8, 10, 12, 14, 16, 18], False),
            {"desirable_fraction": 0.25, "desirable_per_undesirable": 0.3333, "kto_desirable_weight": 3.0, "kto_undesirable_weight": 1.0},
        ),
    ],
)
def test_kto_balance_warns_outside_the_papers_range_and_suggests_weights(tmp_path, plant, observed):
    samples = clean_samples(Kind.UNPAIRED_PREFERENCE)  # 20 desirable, 20 undesirable
    plant(samples)

    result = validate_dataset(write_dataset(tmp_path, Kind.UNPAIRED_PREFERENCE, samples))

    failed = {r.name: r for r in result.results if not r.success}
    assert list(failed) == ["kto_balance"]
    assert failed["kto_balance"].observed_value == observed
    assert failed["kto_balance"].element_count == 40
    assert result.passed  # a warning
