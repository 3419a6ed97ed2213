"""The materialise library without Prefect: shards from every format, quarantine, content addressing,
verification, atomic publishing and usage errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rows import (
    ALPACA_ROWS,
    SOURCE_WRITERS,
    many_alpaca_rows,
    pku_saferlhf_row,
    usage_error_message,
    write_csv,
    write_jsonl,
    write_source,
)

from align_core import sources
from align_core.errors import (
    EMPTY_TEXT,
    IDENTICAL_PAIR,
    MISSING_FIELD,
    TEMPLATE_EXCEPTION,
    UNDECODABLE,
    WRONG_TYPE,
)
from align_core.materialize import MaterializeSpec, build_dataset, materialize_dataset
from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import Kind
from align_core.sources import fingerprint_source


def user(text: str) -> dict:
    return {"role": "user", "content": [{"type": "text", "text": text}]}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def quarantine_rows(dataset: ShardDataset) -> list[tuple[int, str]]:
    return [(row["source_index"], row["reason"]) for row in dataset.read_quarantine().to_pylist()]


def file_stamps(root: Path) -> dict[str, int]:
    """Every path under ``root`` with its modification time in ns."""
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in sorted(root.rglob("*"))}


USER_TEMPLATES = '''
import os
import signal

from align_core.templates import Template, register_template

_rows_formatted = 0


@register_template("OddOneOutBug")
class OddOneOutBug(Template):
    """Alpaca-like, with a bug a user might ship: a KeyError on every 'Identify...' row."""

    def format_supervised_sample(self, raw):
        if raw["instruction"].startswith("Identify"):
            raise KeyError("odd one")
        return [{"role": "user", "content": raw["instruction"]}, {"role": "assistant", "content": raw["output"]}], None


@register_template("DiesMidway")
class DiesMidway(Template):
    """Alpaca-like; SIGKILLs its own process after DIE_AFTER_ROWS rows, like an OOM kill or a power cut."""

    def format_supervised_sample(self, raw):
        global _rows_formatted
        _rows_formatted += 1
        if _rows_formatted > float(os.environ.get("DIE_AFTER_ROWS", "inf")):
            os.kill(os.getpid(), signal.SIGKILL)
        return [{"role": "user", "content": raw["instruction"]}, {"role": "assistant", "content": raw["output"]}], None
'''


@pytest.fixture
def user_templates(tmp_path) -> str:
    path = tmp_path / "my_templates.py"
    path.write_text(USER_TEMPLATES)
    return str(path)


# --- the same rows give the same shards whatever the source format --------------------------------


def test_every_source_format_gives_the_same_shard_content(tmp_path):
    tables = {}
    for name in SOURCE_WRITERS:
        source = write_source(name, ALPACA_ROWS, tmp_path / name)
        dataset = ShardDataset(materialize_dataset(source, "Alpaca", "supervised", tmp_path / "out"))
        assert (dataset.manifest.rows, dataset.manifest.quarantined) == (len(ALPACA_ROWS), 0)
        prefix = fingerprint_source(source).sha256[:16]
        table = dataset.read_table()
        assert table.column("id").to_pylist() == [f"{prefix}-{index}" for index in range(len(ALPACA_ROWS))]
        tables[name] = table.drop_columns(["id"])
    reference = tables.pop("jsonl")
    for name, table in tables.items():
        assert table.equals(reference), f"{name} shards differ from jsonl shards"
    messages = reference.column("messages").to_pylist()
    assert messages[3] == [user("Identify the odd one out.\n\nTwitter, Instagram, Telegram"), assistant("Telegram")]
    assert messages[5] == [user('Translate "thank you" into French and Japanese.'), assistant("Merci — ありがとう (arigatō) 🙏")]


def test_shards_roll_over_at_rows_per_shard_and_read_back_in_order(tmp_path):
    source = write_jsonl(many_alpaca_rows(10), tmp_path / "rows.jsonl")
    dataset = ShardDataset(materialize_dataset(source, "Alpaca", "supervised", tmp_path / "out", rows_per_shard=4))
    assert [(entry.path, entry.rows) for entry in dataset.manifest.shards] == [
        ("shards/shard-00000.arrow", 4),
        ("shards/shard-00001.arrow", 4),
        ("shards/shard-00002.arrow", 2),
    ]
    assert dataset.read_table(["source_index"]).column(0).to_pylist() == list(range(10))


# --- bad rows go to the quarantine with their reason; every good row stays ------------------------


def test_each_bad_jsonl_row_is_quarantined_with_its_reason_and_raw_row(tmp_path):
    good = many_alpaca_rows(3)
    lines = [
        json.dumps(good[0]).encode(),
        b'{"instruction": "Name a color.", "output": ',  # cut off: invalid JSON
        json.dumps(good[1]).encode(),
        '{"instruction": "Caf\u00e9?", "input": "", "output": "Oui."}'.encode("latin-1"),  # not UTF-8
        b'["Name a color.", "", "Red"]',  # not an object
        json.dumps({"instruction": "Name a color.", "input": ""}).encode(),
        json.dumps({"instruction": "Name a color.", "input": "", "output": 42}).encode(),
        json.dumps({"instruction": "Name a color.", "input": "", "output": "  \n"}).encode(),
        json.dumps(good[2]).encode(),
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    dataset = ShardDataset(materialize_dataset(source, "Alpaca", "supervised", tmp_path / "out"))
    assert dataset.read_table(["source_index"]).column(0).to_pylist() == [0, 2, 8]
    expected = [(1, UNDECODABLE), (3, UNDECODABLE), (4, WRONG_TYPE), (5, MISSING_FIELD), (6, WRONG_TYPE), (7, EMPTY_TEXT)]
    assert quarantine_rows(dataset) == expected
    assert dataset.manifest.quarantine_reasons == {UNDECODABLE: 2, WRONG_TYPE: 2, MISSING_FIELD: 1, EMPTY_TEXT: 1}
    quarantine = dataset.read_quarantine().to_pylist()
    assert quarantine[0]["raw"] == '{"instruction": "Name a color.", "output": '
    assert [json.loads(row["raw"]) for row in quarantine[2:]] == [json.loads(line) for line in lines[4:8]]
    assert "'output'" in quarantine[3]["detail"] and "int" in quarantine[4]["detail"]


def test_csv_row_with_invalid_utf8_is_quarantined_between_good_rows(tmp_path):
    source = write_csv(ALPACA_ROWS[:3], tmp_path / "rows.csv")
    text = source.read_bytes()
    source.write_bytes(text.replace(b"primary colors?", b"primary colo\xe9rs?"))
    dataset = ShardDataset(materialize_dataset(source, "Alpaca", "supervised", tmp_path / "out"))
    assert dataset.read_table(["source_index"]).column(0).to_pylist() == [0, 2]
    assert quarantine_rows(dataset) == [(1, UNDECODABLE)]
    raw = json.loads(dataset.read_quarantine().column("raw")[0].as_py())
    assert raw["instruction"] == "What are the three primary colo\ufffdrs?" and raw["output"] == ALPACA_ROWS[1]["output"]


def test_identical_chosen_and_rejected_is_quarantined(tmp_path):
    rows = [
        pku_saferlhf_row("I can't help you access a network without permission.", "Ask your neighbour politely."),
        pku_saferlhf_row("Ask your neighbour politely.", "Ask your neighbour politely."),
        pku_saferlhf_row("Try common passwords.", "Ask them, or use a public hotspot.", better=1, safer=1),
    ]
    source = write_jsonl(rows, tmp_path / "pku.jsonl")
    dataset = ShardDataset(materialize_dataset(source, "PKUSafeRLHF", "preference", tmp_path / "out"))
    assert quarantine_rows(dataset) == [(1, IDENTICAL_PAIR)]
    table = dataset.read_table().to_pylist()
    assert [row["source_index"] for row in table] == [0, 2]
    assert table[1]["chosen"] == [assistant("Ask them, or use a public hotspot.")]
    assert table[1]["rejected"] == [assistant("Try common passwords.")]
    assert json.loads(table[1]["meta"])["is_chosen_safe"] is True


def test_user_template_raising_any_exception_loses_only_that_row(tmp_path, user_templates):
    source = write_jsonl(ALPACA_ROWS, tmp_path / "rows.jsonl")
    folder = materialize_dataset(source, "OddOneOutBug", "supervised", tmp_path / "out", template_module=user_templates)
    dataset = ShardDataset(folder)
    assert dataset.read_table(["source_index"]).column(0).to_pylist() == [0, 1, 2, 4, 5, 6]
    [quarantined] = dataset.read_quarantine().to_pylist()
    assert (quarantined["source_index"], quarantined["reason"]) == (3, TEMPLATE_EXCEPTION)
    assert quarantined["detail"] == "KeyError: 'odd one'"
    assert json.loads(quarantined["raw"]) == ALPACA_ROWS[3]


def test_lone_surrogates_in_a_json_array_are_quarantined_as_undecodable(tmp_path):
    rows = [json.dumps(row) for row in ALPACA_ROWS[:3]]
    rows.insert(1, '{"instruction": "Name the emoji \\ud83d.", "input": "", "output": "A face."}')  # half a pair
    source = tmp_path / "surrogates.json"
    source.write_bytes(("[" + ",\n".join(rows) + "]").encode().replace(b"Describe", b"Describ\xff"))
    dataset = ShardDataset(materialize_dataset(source, "Alpaca", "supervised", tmp_path / "out"))
    assert dataset.read_table(["source_index"]).column(0).to_pylist() == [0, 2]
    assert quarantine_rows(dataset) == [(1, UNDECODABLE), (3, UNDECODABLE)]
    quarantine = dataset.read_quarantine().to_pylist()
    assert json.loads(quarantine[0]["raw"])["instruction"] == "Name the emoji \ud83d."  # the row, unchanged
    assert json.loads(quarantine[1]["raw"])["instruction"].startswith("Describ\udcff")
    assert dataset.verify() == []


# --- content addressing ---------------------------------------------------------------------------


def test_same_inputs_are_a_cache_hit_that_rewrites_nothing(tmp_path):
    source = write_jsonl(ALPACA_ROWS, tmp_path / "rows.jsonl")
    out = tmp_path / "out"
    first = materialize_dataset(source, "Alpaca", "supervised", out)
    stamps = file_stamps(out)
    second = materialize_dataset(source, "Alpaca", "supervised", out)
    assert second == first
    assert file_stamps(out) == stamps


def test_one_changed_byte_option_or_kind_makes_a_new_folder(tmp_path):
    out = tmp_path / "out"
    alpaca = write_jsonl(ALPACA_ROWS, tmp_path / "rows.jsonl")
    supervised = materialize_dataset(alpaca, "Alpaca", "supervised", out)
    prompt_only = materialize_dataset(alpaca, "Alpaca", "prompt_only", out)
    alpaca.write_bytes(alpaca.read_bytes().replace(b"red, blue", b"red, Blue"))
    changed = materialize_dataset(alpaca, "Alpaca", "supervised", out)
    assert len({supervised, prompt_only, changed}) == 3
    assert ShardDataset(changed).read_table(["messages"]).column(0)[1].as_py()[1] == assistant(
        "The three primary colors are red, Blue, and yellow."
    )

    pku = write_jsonl([pku_saferlhf_row("Sure, here is how to crack WPA2.", "I can't help with that.", better=0, safer=1)], tmp_path / "pku.jsonl")
    better = ShardDataset(materialize_dataset(pku, "PKUSafeRLHF", "preference", out, template_options={"preference": "better"}))
    safer = ShardDataset(materialize_dataset(pku, "PKUSafeRLHF", "preference", out, template_options={"preference": "safer"}))
    assert better.path != safer.path
    assert better.read_table().column("chosen")[0].as_py() == [assistant("Sure, here is how to crack WPA2.")]
    assert safer.read_table().column("chosen")[0].as_py() == [assistant("I can't help with that.")]
    assert sorted(path.name for path in out.iterdir()) == sorted(
        path.name for path in (supervised, prompt_only, changed, better.path, safer.path)
    )


def test_two_workers_write_byte_identical_shards_and_quarantine(tmp_path, monkeypatch, user_templates):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 2_000)  # ~5 rows a chunk: many chunks to share out
    rows = many_alpaca_rows(40)
    rows[7] = {"instruction": "Name a color.", "input": ""}
    source = write_jsonl(rows, tmp_path / "rows.jsonl")
    source.write_bytes(source.read_bytes() + b'{"instruction": \n')
    folders = [
        materialize_dataset(
            source, "OddOneOutBug", "supervised", tmp_path / f"out{workers}",
            template_module=user_templates, rows_per_shard=7, workers=workers,
        )
        for workers in (1, 2)
    ]
    assert folders[0].name == folders[1].name
    one = ShardDataset(folders[0])
    assert one.manifest.rows == 33 and len(one.shard_paths) == 5  # 40 rows - 6 'Identify' rows - 1 without output
    assert quarantine_rows(one) == [(index, TEMPLATE_EXCEPTION) for index in (3, 7, 10, 17, 24, 31, 38)] + [(40, UNDECODABLE)]
    for relative in [entry.path for entry in one.manifest.shards] + ["quarantine.arrow"]:
        assert (folders[0] / relative).read_bytes() == (folders[1] / relative).read_bytes(), relative


# --- verification ----------------------------------------------------------------------------------


@pytest.fixture
def dataset_with_quarantine(tmp_path) -> ShardDataset:
    source = tmp_path / "rows.jsonl"
    write_jsonl(many_alpaca_rows(6), source)
    source.write_bytes(source.read_bytes() + b"not json\n")
    return ShardDataset(materialize_dataset(source, "Alpaca", "supervised", tmp_path / "out", rows_per_shard=4))


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_passes_an_intact_dataset(dataset_with_quarantine):
    assert dataset_with_quarantine.verify() == []


def test_verify_catches_a_flipped_byte_in_a_shard(dataset_with_quarantine):
    flip_byte(dataset_with_quarantine.shard_paths[1])
    [problem] = dataset_with_quarantine.verify()
    assert problem.startswith("shards/shard-00001.arrow: sha256")


def test_verify_catches_a_flipped_byte_in_the_quarantine(dataset_with_quarantine):
    flip_byte(dataset_with_quarantine.path / "quarantine.arrow")
    [problem] = dataset_with_quarantine.verify()
    assert problem.startswith("quarantine.arrow: sha256")


def test_verify_catches_a_truncated_and_a_missing_shard(dataset_with_quarantine):
    first, second = dataset_with_quarantine.shard_paths
    first.write_bytes(first.read_bytes()[:100])
    second.unlink()
    problems = dataset_with_quarantine.verify()
    assert [problem.split(":")[0] for problem in problems] == ["shards/shard-00000.arrow", "shards/shard-00001.arrow"]
    assert problems[1].endswith("missing")


# --- atomic publishing ------------------------------------------------------------------------------


KILLED_RUN = """
import sys
from align_core import sources
from align_core.materialize import MaterializeSpec, build_dataset, materialize_dataset

sources.JSONL_CHUNK_BYTES = 1_500  # small chunks, so shards are on disk before the kill
materialize_dataset(sys.argv[1], "DiesMidway", "supervised", sys.argv[2], template_module=sys.argv[3], rows_per_shard=8)
"""


def test_run_killed_mid_write_leaves_only_staging_which_the_next_run_replaces(tmp_path, user_templates):
    source = write_jsonl(many_alpaca_rows(60), tmp_path / "rows.jsonl")
    out = tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(source), str(out), user_templates],
        check=False,
        env={**os.environ, "DIE_AFTER_ROWS": "30"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [staging] = out.iterdir()
    assert staging.name.startswith(".staging-")
    assert list(out.rglob("manifest.json")) == []
    assert sorted(path.name for path in (staging / "shards").iterdir())[:3] == [
        "shard-00000.arrow", "shard-00001.arrow", "shard-00002.arrow",
    ]  # killed after writing shards: a half-built dataset, never published

    folder = materialize_dataset(source, "DiesMidway", "supervised", out, template_module=user_templates, rows_per_shard=8)
    assert [path.name for path in out.iterdir()] == [folder.name]
    dataset = ShardDataset(folder)
    assert dataset.num_rows == 60 and dataset.verify() == []


def test_run_that_loses_the_publish_race_returns_the_winners_folder(tmp_path):
    source = write_jsonl(ALPACA_ROWS, tmp_path / "rows.jsonl")
    winner = materialize_dataset(source, "Alpaca", "supervised", tmp_path / "winner")
    out = tmp_path / "out"

    def concurrent_run_publishes(rows: int, quarantined: int) -> None:
        if not (out / winner.name).exists():
            shutil.copytree(winner, out / winner.name)

    spec = MaterializeSpec(template="Alpaca", kind=Kind.SUPERVISED)
    result = build_dataset(fingerprint_source(source), spec, out, workers=1, on_progress=concurrent_run_publishes)
    assert (result.path, result.cache_hit) == (out / winner.name, True)
    assert [path.name for path in out.iterdir()] == [winner.name]  # the loser's staging is gone
    assert ShardDataset(result.path).verify() == []


# --- usage errors ---------------------------------------------------------------------------------


def test_unreadable_source_is_a_usage_error_that_writes_nothing(tmp_path):
    source = tmp_path / "rows.parquet"
    source.write_bytes(b"PAR1 not really parquet")
    out = tmp_path / "out"
    message = usage_error_message(lambda: materialize_dataset(source, "Alpaca", "supervised", out))
    assert str(source) in message and "parquet" in message
    assert not out.exists()  # refused by the source check, before the output root is touched


def test_json_array_broken_after_good_rows_writes_nothing(tmp_path):
    source = tmp_path / "rows.json"
    source.write_text(json.dumps(ALPACA_ROWS)[:-40])
    out = tmp_path / "out"
    assert "invalid JSON array" in usage_error_message(lambda: materialize_dataset(source, "Alpaca", "supervised", out))
    assert list(out.iterdir()) == []


def test_unknown_format_dataset_dict_and_template_errors_name_what_is_expected(tmp_path):
    import datasets

    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    assert "expected one of: jsonl, json, csv" in usage_error_message(
        lambda: materialize_dataset(notes, "Alpaca", "supervised", tmp_path / "out")
    )
    datasets.disable_progress_bars()
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_list(ALPACA_ROWS), "test": datasets.Dataset.from_list(ALPACA_ROWS)})
    splits.save_to_disk(str(tmp_path / "dd"))
    assert "point at one split folder: train, test" in usage_error_message(
        lambda: materialize_dataset(tmp_path / "dd", "Alpaca", "supervised", tmp_path / "out")
    )
    rows = write_jsonl(ALPACA_ROWS, tmp_path / "rows.jsonl")
    assert "known templates: " in usage_error_message(lambda: materialize_dataset(rows, "Alpacca", "supervised", tmp_path / "out"))
    assert "it supports: supervised, prompt_only" in usage_error_message(
        lambda: materialize_dataset(rows, "Alpaca", "preference", tmp_path / "out")
    )
    assert "expected one of: supervised, preference" in usage_error_message(
        lambda: materialize_dataset(rows, "Alpaca", "sft", tmp_path / "out")
    )
    assert not (tmp_path / "out").exists()
