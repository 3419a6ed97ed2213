"""Issue 14's dataset-level checks on real dataset folders and real GX: near-duplicate prompts (MinHash LSH)
and the expected script. Each planted defect fails its check alone, with the exact count and ids."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from datasketch import MinHash
from test_contracts_support import clean_samples, msg, write_dataset

from align_core.errors import UsageError
from align_core.shards.schema import Kind
from data_contracts.near_duplicates import NUM_PERM, SEED, shingle_hashes, signatures
from data_contracts.runner import validate_dataset

Samples = list[dict[str, Any]]

# Row 3's prompt and three rewrites that differ only in case, punctuation and spacing: the same word bigrams.
NEAR_COPIES = {
    3: "How do I reverse a linked list in place?",
    6: "how do i reverse a linked list in place",
    20: "HOW DO I REVERSE A LINKED LIST IN PLACE!!",
    32: "How do I reverse a linked-list, in place?",
}


def set_prompt(samples: Samples, row: int, text: str) -> None:
    """Give ``row`` a one-turn prompt ``text`` (supervised: the user turn before the answer)."""
    if "messages" in samples[row]:
        samples[row]["messages"] = [msg("user", text), msg("assistant", f"answer {row}: use sorted().")]
    else:
        samples[row]["prompt"] = [msg("user", text)]


def failed(result) -> dict:
    return {r.name: r for r in result.results if not r.success}


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_near_duplicate_prompts_fail_that_check_alone_and_are_listed_as_a_cluster(tmp_path, kind):
    samples = clean_samples(kind)
    for row, text in NEAR_COPIES.items():
        set_prompt(samples, row, text)

    result = validate_dataset(write_dataset(tmp_path, kind, samples))

    assert list(failed(result)) == ["near_duplicate_prompts"]  # 3 of 40 rows: 7.5%, over the 5% allowed
    check = failed(result)["near_duplicate_prompts"]
    assert (check.unexpected_count, check.sample_ids, check.severity) == (3, ["s-006", "s-020", "s-032"], "warning")
    assert check.observed_value == {"fraction": 0.075, "clusters": 1}
    assert result.near_duplicate_clusters == [
        {"prompts": 4, "ids": ["s-003", "s-006", "s-020", "s-032"], "sample": NEAR_COPIES[3]}
    ]
    assert result.passed


def test_exact_repeats_are_left_to_duplicate_prompts(tmp_path):
    samples = clean_samples(Kind.SUPERVISED)
    for row in (3, 6, 20, 32):
        set_prompt(samples, row, NEAR_COPIES[3])  # byte-identical prompts

    result = validate_dataset(write_dataset(tmp_path, Kind.SUPERVISED, samples))

    assert {name: r.unexpected_count for name, r in failed(result).items()} == {"duplicate_prompts": 3}
    assert {r.name: r for r in result.results}["near_duplicate_prompts"].unexpected_count == 0


def test_near_duplicates_do_not_depend_on_the_chunk_size_or_threads(tmp_path):
    samples = clean_samples(Kind.PREFERENCE)
    for row, text in NEAR_COPIES.items():
        set_prompt(samples, row, text)
    dataset_dir = write_dataset(tmp_path, Kind.PREFERENCE, samples)

    whole, in_chunks_of_seven = validate_dataset(dataset_dir), validate_dataset(dataset_dir, chunk_rows=7, workers=1)

    assert in_chunks_of_seven.near_duplicate_clusters == whole.near_duplicate_clusters
    check = {r.name: r for r in in_chunks_of_seven.results}["near_duplicate_prompts"]
    assert (check.unexpected_count, check.sample_ids) == (3, ["s-006", "s-020", "s-032"])


def test_near_duplicate_share_and_similarity_are_overridable_and_checked(tmp_path):
    samples = clean_samples(Kind.PREFERENCE)
    for row, text in NEAR_COPIES.items():
        set_prompt(samples, row, text)
    dataset_dir = write_dataset(tmp_path, Kind.PREFERENCE, samples)

    allowed = validate_dataset(dataset_dir, overrides={"near_duplicate_prompts.max_value": 0.1})
    assert failed(allowed) == {}
    with pytest.raises(UsageError, match=r"similarity must be a number between 0 and 1 \(exclusive\), got 1.5$"):
        validate_dataset(dataset_dir, overrides={"near_duplicate_prompts.similarity": 1.5})


def test_prompt_signatures_are_datasketchs_minhash_of_the_word_bigrams():
    texts = pa.array(["Hello, world! How are you?", "one", "", None, "a b c d e f g h"])

    hashes, offsets = shingle_hashes(texts)
    ours = signatures(hashes, offsets)

    assert offsets.tolist() == [0, 4, 5, 5, 5, 12]  # 4 bigrams, a one-word row's word, no words, no text, 7 bigrams
    for row in range(len(texts)):
        theirs = MinHash(num_perm=NUM_PERM, seed=SEED, scheme="affine32", hashfunc=int)
        theirs.update_batch(hashes[offsets[row] : offsets[row + 1]].tolist())
        assert np.array_equal(ours[row], theirs.hashvalues)
    same_words = signatures(*shingle_hashes(pa.array(["HELLO world -- how ARE you"])))
    assert np.array_equal(same_words[0], ours[0])


RUSSIAN = "вопрос {row}: как отсортировать список? хороший ответ: используйте sorted()."


def set_russian(samples: Samples, row: int) -> None:
    """Every text of ``row`` in Russian (Cyrillic letters, one Latin word)."""
    text = RUSSIAN.format(row=row)
    if "messages" in samples[row]:
        samples[row]["messages"] = [msg("user", text), msg("assistant", text)]
        return
    samples[row]["prompt"] = [msg("user", text)]
    for column in ("chosen", "rejected", "completion"):
        if column in samples[row]:
            samples[row][column] = [msg("assistant", f"{column} {row}: {text}")]


@pytest.mark.parametrize("kind", list(Kind), ids=lambda k: k.value)
def test_a_row_in_another_script_fails_the_expected_script_alone(tmp_path, kind):
    samples = clean_samples(kind)
    set_russian(samples, 14)  # 1 of 40: 2.5%, over the 1% allowed
    # English with accents, dashes and a short Chinese phrase is still mostly Latin
    set_prompt(samples, 27, "Translate “naïve café” — and 你好 — into French, please.")

    result = validate_dataset(write_dataset(tmp_path, kind, samples))

    assert list(failed(result)) == ["expected_script"]
    check = failed(result)["expected_script"]
    assert (check.unexpected_count, check.sample_ids, check.severity) == (1, ["s-014"], "warning")
    assert result.passed


def test_expected_script_is_overridable_and_unknown_scripts_are_refused(tmp_path):
    samples = clean_samples(Kind.SUPERVISED)
    set_russian(samples, 14)
    dataset_dir = write_dataset(tmp_path, Kind.SUPERVISED, samples)

    assert failed(validate_dataset(dataset_dir, overrides={"expected_script.value_set": ["Latin", "Cyrillic"]})) == {}
    assert failed(validate_dataset(dataset_dir, overrides={"expected_script.enabled": False})) == {}
    russian_only = failed(validate_dataset(dataset_dir, overrides={"expected_script.value_set": ["Cyrillic"]}))
    assert russian_only["expected_script"].unexpected_count == 39
    with pytest.raises(UsageError, match=r"^expectation 'expected_script': unknown script\(s\) Latn; scripts: Latin, Greek"):
        validate_dataset(dataset_dir, overrides={"expected_script.value_set": ["Latn"]})
