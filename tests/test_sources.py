"""Source readers: format detection, fingerprints, streaming in chunks, and per-row rejections."""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa
import pytest
from rows import (
    ALPACA_ROWS,
    SOURCE_WRITERS,
    many_alpaca_rows,
    usage_error_message,
    write_hf_disk,
    write_jsonl,
    write_source,
)

from align_core import sources
from align_core.errors import UNDECODABLE, WRONG_TYPE, RowRejected
from align_core.sources import detect_format, fingerprint_source, iter_chunks, read_source_rows


def indexed_rows(path, source_format=None) -> list[tuple[int, object]]:
    """``(source_index, row)`` pairs; a rejected row as ``(reason, raw)``."""
    return [
        (index, (row.reason, raw) if isinstance(row, RowRejected) else row)
        for index, row, raw in read_source_rows(path, source_format)
    ]


# --- every format reads the same rows -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SOURCE_WRITERS))
def test_every_reader_returns_the_rows_in_order_with_their_positions(tmp_path, name):
    path = write_source(name, ALPACA_ROWS, tmp_path)
    assert detect_format(path) == SOURCE_WRITERS[name][2]
    assert indexed_rows(path) == list(enumerate(ALPACA_ROWS))


@pytest.mark.parametrize("name", ["json_array", "jsonl", "parquet", "arrow_file", "arrow_stream"])
def test_a_file_without_a_suffix_is_recognised_by_its_first_bytes(tmp_path, name):
    path = write_source(name, ALPACA_ROWS[:2], tmp_path)
    bare = path.rename(tmp_path / "download")
    assert detect_format(bare) == SOURCE_WRITERS[name][2]
    assert indexed_rows(bare) == list(enumerate(ALPACA_ROWS[:2]))


def test_arrow_and_hf_folders_with_many_batches_keep_counting_across_them(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "ARROW_CHUNK_ROWS", 2)
    rows = many_alpaca_rows(11)
    folder = write_hf_disk(rows, tmp_path / "hf")
    assert len(list(folder.glob("data-*.arrow"))) == 2
    chunks = list(iter_chunks(folder, "hf_disk"))
    # 6 + 5 rows in the two data files, 2 rows a chunk: the second file carries on from index 6.
    assert [chunk.start_index for chunk in chunks] == [0, 2, 4, 6, 8, 10]
    assert indexed_rows(folder) == list(enumerate(rows))


# --- streaming -----------------------------------------------------------------------------------


def test_jsonl_larger_than_one_chunk_is_streamed_with_line_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 700)  # a few rows per chunk
    rows = many_alpaca_rows(40)
    path = write_jsonl(rows, tmp_path / "big.jsonl")
    chunks = list(iter_chunks(path, "jsonl"))
    assert len(chunks) > 10
    assert all(len(chunk.jsonl) <= 700 + 600 for chunk in chunks)  # a chunk never holds the whole file
    assert indexed_rows(path) == list(enumerate(rows))


def test_jsonl_line_longer_than_a_chunk_is_kept_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 64)
    rows = [{"instruction": "short", "output": "a"}, {"instruction": "long " * 100, "output": "b"}, {"instruction": "end", "output": "c"}]
    path = write_jsonl(rows, tmp_path / "long.jsonl")
    assert indexed_rows(path) == list(enumerate(rows))


def test_jsonl_final_line_without_newline_blank_lines_and_crlf(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 16)  # boundaries fall inside lines and blank runs
    path = tmp_path / "ragged.jsonl"
    path.write_bytes(b'{"a": 1}\r\n\r\n{"a": 2}\n   \n\n{"a": 3}\n{"a": 4}')
    # Blank lines are skipped but still counted: the index is the line number a user can find.
    assert indexed_rows(path) == [(0, {"a": 1}), (2, {"a": 2}), (5, {"a": 3}), (6, {"a": 4})]


def test_json_array_spanning_several_reads_yields_every_row(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 50)
    rows = many_alpaca_rows(30)
    path = tmp_path / "array.json"
    path.write_text("\ufeff" + json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    assert indexed_rows(path) == list(enumerate(rows))


def test_json_array_number_cut_by_a_read_boundary_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 8)
    path = tmp_path / "numbers.json"
    path.write_text("[" + ", ".join(["12345"] * 6) + ", true, null]")
    values = [raw for _, _, raw in read_source_rows(path)]
    assert values == [12345] * 6 + [True, None]


# --- rows that cannot be read become rejections, the rest stays -----------------------------------


def test_jsonl_invalid_json_invalid_utf8_and_non_objects_are_rejected_in_place(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'{"instruction": "first", "output": "1"}\n'
        b'{"instruction": "broken", "output": \n'
        b'{"instruction": "caf\xe9 latin-1", "output": "2"}\n'
        b'["an", "array"]\n'
        b'"a string"\n'
        b'{"instruction": "last", "output": "3"}\n'
    )
    result = indexed_rows(path)
    assert result[0] == (0, {"instruction": "first", "output": "1"})
    assert [(index, reason) for index, (reason, _) in result[1:5]] == [
        (1, UNDECODABLE),
        (2, UNDECODABLE),
        (3, WRONG_TYPE),
        (4, WRONG_TYPE),
    ]
    assert result[1][1][1] == '{"instruction": "broken", "output": '  # the raw line, for the quarantine
    assert result[2][1][1] == '{"instruction": "caf\ufffd latin-1", "output": "2"}'
    assert result[3][1][1] == ["an", "array"]
    assert result[5] == (5, {"instruction": "last", "output": "3"})


def test_csv_row_with_invalid_utf8_is_rejected_naming_the_field(tmp_path):
    path = tmp_path / "mixed.csv"
    path.write_bytes(b'instruction,input,output\nfirst,,one\n"caf\xe9, latin-1",,two\n"multi\nline",x,"say ""yes"""\n')
    [first, bad, multiline] = list(read_source_rows(path))
    assert first == (0, {"instruction": "first", "input": "", "output": "one"}, first[2])
    index, rejection, raw = bad
    assert (index, rejection.reason) == (1, UNDECODABLE)
    assert "'instruction'" in rejection.detail
    assert raw == {"instruction": "caf\ufffd, latin-1", "input": "", "output": "two"}
    assert multiline[:2] == (2, {"instruction": "multi\nline", "input": "x", "output": 'say "yes"'})


def test_csv_with_a_byte_order_mark_keeps_every_column_as_text(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(b"\xef\xbb\xbfid,output\r\n007,one\r\n010,two\r\n")
    assert indexed_rows(path) == [(0, {"id": "007", "output": "one"}), (1, {"id": "010", "output": "two"})]


# --- fingerprints --------------------------------------------------------------------------------


def test_fingerprint_is_the_sha256_of_the_file_bytes(tmp_path):
    path = write_jsonl(ALPACA_ROWS, tmp_path / "rows.jsonl")
    info = fingerprint_source(path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (info.format, info.bytes) == ("jsonl", path.stat().st_size)


def test_folder_fingerprint_changes_when_one_data_file_changes(tmp_path):
    folder = write_hf_disk(ALPACA_ROWS, tmp_path / "hf")
    before = fingerprint_source(folder).sha256
    data_file = min(folder.glob("data-*.arrow"))
    data = data_file.read_bytes()
    data_file.write_bytes(data.replace(b"healthy", b"Healthy"))  # one byte of a value: still a readable file
    assert data_file.read_bytes() != data
    assert fingerprint_source(folder).sha256 != before


# --- usage errors: one line naming the source and what was expected -------------------------------


def test_missing_source_is_a_usage_error_message(tmp_path):
    assert "does not exist" in usage_error_message(lambda: detect_format(tmp_path / "nope.jsonl"))


def test_unknown_format_lists_the_known_ones(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("just some notes\n")
    message = usage_error_message(lambda: detect_format(path))
    assert str(path) in message and "jsonl, json, csv, parquet, arrow, hf_disk" in message
    data = write_jsonl(ALPACA_ROWS, tmp_path / "rows.jsonl")
    assert "'xml'" in usage_error_message(lambda: fingerprint_source(data, "xml"))


def test_json_file_holding_one_pretty_printed_object_is_refused_not_quarantined_line_by_line(tmp_path):
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps({"data": ALPACA_ROWS[:2]}, indent=2))
    assert "neither a JSON array nor JSON Lines" in usage_error_message(lambda: detect_format(path))
    # Asked for explicitly, it is read line by line: every line is an undecodable row.
    assert {row.reason for _, row, _ in read_source_rows(path, "jsonl")} == {UNDECODABLE}


def test_dataset_dict_folder_asks_for_one_split(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    splits = {"train": datasets.Dataset.from_list(ALPACA_ROWS[:2]), "test": datasets.Dataset.from_list(ALPACA_ROWS[2:])}
    datasets.DatasetDict(splits).save_to_disk(str(tmp_path / "dd"))
    message = usage_error_message(lambda: detect_format(tmp_path / "dd"))
    assert "DatasetDict" in message and "train, test" in message


def test_plain_folder_is_not_a_source(tmp_path):
    (tmp_path / "folder").mkdir()
    assert "state.json" in usage_error_message(lambda: detect_format(tmp_path / "folder"))


@pytest.mark.parametrize(
    "file_name, content, expected",
    [
        ("bad.parquet", b"PAR1 this is not parquet", "as parquet"),
        ("bad.arrow", b"ARROW1\x00\x00 truncated", "as arrow"),
        ("bad.json", b'[{"instruction": "a"}, {"instruction": ', "invalid JSON array near item 1"),
    ],
)
def test_corrupt_file_is_a_usage_error_naming_it(tmp_path, file_name, content, expected):
    path = tmp_path / file_name
    path.write_bytes(content)
    message = usage_error_message(lambda: list(read_source_rows(path)))
    assert str(path) in message and expected in message


def test_nested_arrow_columns_arrive_as_python_values(tmp_path):
    table = pa.table({"messages": [[{"role": "user", "content": "hi"}]], "score": [1.5]})
    path = tmp_path / "nested.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    assert indexed_rows(path) == [(0, {"messages": [{"role": "user", "content": "hi"}], "score": 1.5})]
