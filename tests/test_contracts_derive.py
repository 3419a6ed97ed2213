"""Derived columns against values worked out by hand from small conversations."""

from __future__ import annotations

import json
import random
import string

import numpy as np
import pyarrow as pa
from test_contracts_support import IMAGE, image_item, msg

from align_core.shards.schema import Kind, shard_schema
from align_core.shards.writer import SampleBatch
from data_contracts.derive import RowDeriver, SeenHashes, derived_columns
from data_contracts.text_checks import trigram_similarity


def record_batch(kind: Kind, samples: list[dict], media: tuple[str, ...] = ()) -> pa.RecordBatch:
    batch = SampleBatch(kind, media)
    for index, sample in enumerate(samples):
        batch.add(sample.get("id", f"id-{index}"), index, sample)
    return batch.to_record_batch(shard_schema(kind, media))


PREFERENCE_SAMPLES = [
    {  # system + user with an image; a blank rejected answer
        "prompt": [msg("system", "be nice"), msg("user", "hi", IMAGE)],
        "chosen": [msg("assistant", "hello there")],
        "rejected": [msg("assistant", "  ")],
        "images": [image_item(0)],
    },
    {  # identical continuations; a placeholder without an image
        "prompt": [msg("user", "hi", IMAGE)],
        "chosen": [msg("assistant", "yo")],
        "rejected": [msg("assistant", "yo")],
        "images": [],
    },
    {  # no prompt turns; a two-part user turn inside chosen
        "prompt": [],
        "chosen": [msg("assistant", "x"), msg("user", "abc", "de")],
        "rejected": [msg("user", "q")],
        "images": [],
    },
]


def test_conversation_columns_are_flattened_per_row():
    frame = RowDeriver(Kind.PREFERENCE, ("image",)).frame(record_batch(Kind.PREFERENCE, PREFERENCE_SAMPLES, ("image",)))

    assert frame["prompt_turns"].tolist() == [2, 1, 0]
    assert frame["prompt_roles"].tolist() == ["SU", "U", ""]
    assert frame["chosen_roles"].tolist() == ["A", "A", "AU"]
    assert frame["rejected_roles"].tolist() == ["A", "A", "U"]
    assert frame["prompt_first_role"].tolist() == ["system", "user", ""]
    assert frame["prompt_last_role"].tolist() == ["user", "user", ""]
    assert frame["chosen_last_role"].tolist() == ["assistant", "assistant", "user"]
    assert frame["rejected_empty_parts"].tolist() == [1, 0, 0]  # "  " is blank
    assert frame["chosen_empty_parts"].tolist() == [0, 0, 0]
    # longest message: "be nice" (7) vs "hi" (2); "abc" + "de" (5) vs "x" (1)
    assert frame["prompt_max_turn_chars"].tolist() == [7, 2, 0]
    assert frame["chosen_max_turn_chars"].tolist() == [11, 2, 5]
    assert frame["image_placeholders"].tolist() == [1, 1, 0]
    assert frame["image_count"].tolist() == [1, 0, 0]
    assert frame["chosen_equals_rejected"].tolist() == [False, True, False]


def test_supervised_prompt_is_everything_before_the_last_message():
    samples = [
        {"messages": [msg("user", "q"), msg("assistant", "a1")]},
        {"messages": [msg("user", "q"), msg("assistant", "a2")]},  # same prompt, other answer
        {"messages": [msg("user", "q"), msg("assistant", "a1")]},  # same prompt and answer
        {"messages": [msg("user", "other"), msg("assistant", "a1")]},
    ]
    frame = RowDeriver(Kind.SUPERVISED).frame(record_batch(Kind.SUPERVISED, samples))

    assert frame["prompt_repeat"].tolist() == [False, True, True, False]
    assert frame["sample_repeat"].tolist() == [False, False, True, False]


def test_repeats_are_remembered_across_batches():
    deriver = RowDeriver(Kind.PROMPT_ONLY)
    first = [{"id": "a", "prompt": [msg("user", "p1")]}, {"id": "b", "prompt": [msg("user", "p2")]}]
    second = [{"id": "c", "prompt": [msg("user", "p2")]}, {"id": "a", "prompt": [msg("user", "p3")]}]

    deriver.frame(record_batch(Kind.PROMPT_ONLY, first))
    frame = deriver.frame(record_batch(Kind.PROMPT_ONLY, second))

    assert frame["prompt_repeat"].tolist() == [True, False]
    assert frame["id_repeat"].tolist() == [False, True]


def test_missing_ids_and_unknown_roles_are_visible():
    samples = [
        {"id": None, "prompt": [msg("user", "p1")]},
        {"id": "", "prompt": [msg("user", "p2")]},
        {"id": "ok", "prompt": [msg("tool", "p3"), msg("user", "p4")]},  # a role the schema does not know
    ]
    frame = RowDeriver(Kind.PROMPT_ONLY).frame(record_batch(Kind.PROMPT_ONLY, samples))

    assert frame["id_missing"].tolist() == [True, True, False]
    assert frame["prompt_roles"].tolist() == ["U", "U", "?U"]


def test_unpaired_preference_samples_differ_by_label():
    samples = [
        {"prompt": [msg("user", "p")], "completion": [msg("assistant", "c")], "label": True},
        {"prompt": [msg("user", "p")], "completion": [msg("assistant", "c")], "label": False},
        {"prompt": [msg("user", "p")], "completion": [msg("assistant", "c")], "label": True},
    ]
    frame = RowDeriver(Kind.UNPAIRED_PREFERENCE).frame(record_batch(Kind.UNPAIRED_PREFERENCE, samples))

    assert frame["sample_repeat"].tolist() == [False, False, True]
    assert frame["label"].tolist() == [True, False, True]


def test_seen_hashes_finds_members_across_merged_runs():
    seen = SeenHashes()
    for start in range(0, 1000, 100):  # ten additions merge into a handful of sorted runs
        seen.add(np.arange(start, start + 100, dtype=np.uint64) * np.uint64(7))

    probe = np.array([0, 7, 6993, 6994, 7000, 2**63], dtype=np.uint64)
    assert seen.contains(probe).tolist() == [True, True, True, False, False, False]
    assert len(seen.runs) < 10
    assert sum(len(run) for run in seen.runs) == 1000


def test_derived_column_names_follow_the_kind_and_media():
    columns = derived_columns(Kind.PREFERENCE, ("image",))

    for column in ("prompt_roles", "chosen_last_role", "rejected_empty_parts", "image_placeholders", "image_count"):
        assert column in columns
    assert "messages_roles" not in derived_columns(Kind.PREFERENCE)


def test_registered_media_columns_can_be_checked_by_a_suite(tmp_path, monkeypatch):
    import pyarrow.compute as pc
    from test_contracts_support import clean_samples, write_dataset

    from data_contracts import derive
    from data_contracts.runner import validate_dataset

    monkeypatch.setattr(derive, "MEDIA_COLUMN_DERIVERS", {})  # registrations are process-wide

    @derive.register_media_columns("image")
    def longest_image_path(items: pa.Array) -> dict[str, np.ndarray]:
        sizes = pc.utf8_length(pc.list_flatten(items).field("path")).to_numpy(zero_copy_only=False)
        rows = pc.list_parent_indices(items).to_numpy()
        largest = np.zeros(len(items), np.int64)
        np.maximum.at(largest, rows, sizes)
        return {"image_max_path_length": largest}

    suite = tmp_path / "images.yaml"
    suite.write_text(
        "name: images\nkind: preference\nversion: 1\ninclude: [common]\nexpectations:\n"
        "  - name: image_size\n    type: expect_column_values_to_be_between\n    column: image_max_path_length\n"
        "    kwargs: {min_value: 1, max_value: 12}\n"
    )
    samples = clean_samples(Kind.PREFERENCE, media=("image",))  # "img-N.png": 9-10 characters
    samples[33]["images"] = [image_item(10**9)]  # "img-1000000000.png": 18 characters

    result = validate_dataset(write_dataset(tmp_path, Kind.PREFERENCE, samples, media=("image",)), suite=str(suite))

    failed = {r.name: r for r in result.results if not r.success}
    assert list(failed) == ["image_size"]
    assert failed["image_size"].unexpected_count == 1
    assert failed["image_size"].sample_ids == ["s-033"]


def test_preference_pairs_get_length_and_similarity_columns():
    frame = RowDeriver(Kind.PREFERENCE, ("image",)).frame(record_batch(Kind.PREFERENCE, PREFERENCE_SAMPLES, ("image",)))

    # "hello there" (11) - "  " (2); identical; "x" + "abc" + "de" (6) - "q" (1)
    assert frame["length_difference_chars"].tolist() == [9, 0, 5]
    assert frame["longer_is_chosen"].tolist() == [True, None, True]  # a tie carries no length signal
    # no trigram in "  " or "q"; identical pairs are chosen_differs_from_rejected's to report
    assert frame["pair_similarity"].fillna(-1).tolist() == [0.0, -1, 0.0]
    assert frame["score_margin"].isna().all() and frame["safety_label_conflict"].isna().all()  # no meta


def test_trigram_similarity_is_the_jaccard_similarity_of_trigram_sets():
    left = pa.array(["hello world", "abcd", "aaaa", "", "café", None])
    right = pa.array(["hello world!", "bcde", "aaa", "", "cafe", "xyz"])

    # 9 shared of 10; {abc, bcd} vs {bcd, cde}; {aaa} both; nothing; "é" is 2 bytes: {caf, af\\xc3, f\\xc3\\xa9} vs {caf, afe}
    assert trigram_similarity(left, right).tolist() == [0.9, 1 / 3, 1.0, 0.0, 0.25, 0.0]


def test_trigram_similarity_of_long_texts_is_estimated_from_a_sample():
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(2000)]
    texts = [" ".join(words[start : start + 400]) for start in range(0, 1600, 400)]  # ~2,400 characters each
    # the same text with its last 0, 5, 10, 25, 50 or 100 of 400 words replaced
    edited = [" ".join(text.split()[: 400 - n] + words[:n]) for text in texts for n in (0, 5, 10, 25, 50, 100)]
    originals = [text for text in texts for _ in range(6)]

    def exact(a: str, b: str) -> float:
        grams_a, grams_b = ({s[i : i + 3] for i in range(len(s) - 2)} for s in (a, b))
        return len(grams_a & grams_b) / len(grams_a | grams_b)

    estimated = trigram_similarity(pa.array(originals), pa.array(edited))

    assert estimated[::6].tolist() == [1.0] * 4  # identical texts: exactly 1
    assert np.abs(estimated - [exact(a, b) for a, b in zip(originals, edited)]).max() < 0.15  # sd ~0.05 on such text


def test_scores_and_safety_labels_come_from_meta():
    def pair(meta: dict | None) -> dict:
        return {"prompt": [msg("user", "q")], "chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")], "meta": json.dumps(meta) if meta else None}

    safety = {"is_chosen_safe": False, "is_rejected_safe": True}
    samples = [
        pair({"prompt_id": "p", "score_chosen": 7, "score_rejected": 7.5}),
        pair({"chosen_by": "safer_response_id", **safety}),
        pair({"chosen_by": "better_response_id", **safety}),  # helpfulness may pick the unsafe answer
        pair({"chosen_by": "safer_response_id", "is_chosen_safe": True, "is_rejected_safe": False}),
        pair(None),
    ]
    frame = RowDeriver(Kind.PREFERENCE).frame(record_batch(Kind.PREFERENCE, samples))

    assert frame["score_margin"].fillna(99).tolist() == [-0.5, 99, 99, 99, 99]
    assert frame["safety_label_conflict"].tolist() == [None, True, None, False, None]


def test_damaged_text_parts_count_mojibake_and_replacement_characters():
    samples = [
        {"messages": [msg("user", "caf\u00c3\u00a9", "ok"), msg("assistant", "it\u00e2\u20ac\u2122s \ufffd")]},
        {"messages": [msg("user", "S\u00e3o Paulo, \u00bfqu\u00e9?"), msg("assistant", "na\u00efve \u00e9t\u00e9 \u2019 \u00a9")]},  # clean
    ]
    frame = RowDeriver(Kind.SUPERVISED).frame(record_batch(Kind.SUPERVISED, samples))

    assert frame["damaged_text_parts"].tolist() == [2, 0]
