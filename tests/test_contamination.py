"""Train/eval contamination: planted copies found with exact counts and ids, and the datasets a pipeline
job is checked against."""

from __future__ import annotations

import copy

import yaml
from train_data import materialize_validated, supervised_rows

from data_contracts.contamination import find_contamination, ngram_hashes, row_words
from flows.pipeline_config import load_pipeline

LONG = "the quick brown fox jumps over the lazy dog while the farmer counts thirteen sheep in the old barn"


def test_words_ignore_case_and_punctuation_and_no_ngram_spans_two_messages():
    row = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hello, World!"}]},
                        {"role": "assistant", "content": [{"type": "text", "text": "hi there"}]}]}
    words = row_words(row, ("messages",))
    assert words == ["hello", "world", "\x00", "hi", "there", "\x00"]
    assert list(ngram_hashes(words, 2)) and len(list(ngram_hashes(words, 2))) == 2  # (hello world), (hi there)
    assert list(ngram_hashes(words, 3)) == []


def test_copied_evaluation_rows_are_found_with_their_ids(tmp_path):
    evaluation = supervised_rows(6)
    for index, row in enumerate(evaluation):
        row["messages"][1]["content"] = " ".join(f"{word}{index}" for word in LONG.split())  # its own 13-grams
    train = supervised_rows(30)[6:]  # 24 rows of their own
    leaked = copy.deepcopy(evaluation[:3])
    leaked[0]["messages"][1]["content"] = leaked[0]["messages"][1]["content"].upper().replace(" ", "  ")  # case and spaces
    leaked[1]["messages"][0]["content"] += " (reworded prompt)"  # the answer alone still overlaps
    train += leaked
    train_dir = materialize_validated(train, "supervised", tmp_path, "train")
    eval_dir = materialize_validated(evaluation, "supervised", tmp_path, "eval")
    found = find_contamination(train_dir, [eval_dir])
    assert (found.train_rows, found.contaminated_rows) == (27, 3)
    assert set(found.pairs) == {(ids_at(train_dir)[24 + i], ids_at(eval_dir)[i]) for i in range(3)}
    # 12 shared words are not a 13-gram: the same rows with the long answer cut short are clean
    for row in leaked:
        row["messages"][1]["content"] = " ".join(row["messages"][1]["content"].split()[:12])
    clean_dir = materialize_validated(supervised_rows(30)[6:] + leaked, "supervised", tmp_path, "clean")
    assert find_contamination(clean_dir, [eval_dir]).contaminated_rows == 0


def ids_at(dataset_dir) -> dict[int, str]:
    """Source row index -> sample id."""
    from align_core.shards.dataset import ShardDataset

    return {row["source_index"]: row["id"] for row in ShardDataset(dataset_dir).read_table(["id", "source_index"]).to_pylist()}


def test_a_job_is_checked_against_its_eval_datasets_and_every_benchmark_but_not_its_own_training_data(tmp_path):
    (tmp_path / "a.jsonl").write_text("")
    config = {
        "output_dir": "out", "models": {"tiny": {"tiny": {}}},
        "datasets": {name: {"source": "a.jsonl", "template": "Alpaca", "kind": "supervised", **extra}
                     for name, extra in (("train", {}), ("held", {}), ("bench", {"benchmark": True}))},
        "jobs": {"sft": {"algorithm": "sft", "model": "tiny", "train": ["train"], "eval": ["held", "train"]},
                 "bench-sft": {"algorithm": "sft", "model": "tiny", "train": ["bench"]}},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(config))
    spec = load_pipeline(tmp_path / "p.yaml")
    assert spec.jobs["sft"].contamination_sources(spec) == ["held", "bench"]
    assert spec.jobs["bench-sft"].contamination_sources(spec) == []  # a benchmark is not checked against itself
