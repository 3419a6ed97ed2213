"""Batch formatting (a template's rows formatted column-wise) writes exactly what the row path writes:
the same sample for every row it takes, the same quarantine reason for every row it leaves, and so the
same dataset digest and the same shard and quarantine bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from rows import many_alpaca_rows, write_jsonl

from align_core import sources
from align_core.errors import RowRejected
from align_core.materialize import MaterializeSpec, build_dataset
from align_core.shards.schema import Kind, shard_schema
from align_core.shards.writer import SampleBatch
from align_core.sources import fingerprint_source
from align_core.templates import get_template, register_template
from align_core.templates.text import Alpaca

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from test_bad_input import GROUPS, row_cases  # the generated bad-row corpus


def group_rows(name: str) -> list[dict]:
    """A group's good row, then each of its malformed rows followed by the good row again."""
    group = next(group for group in GROUPS if group.name == name)
    rows = [group.good]
    for case in (case for case in row_cases() if case.group == name):
        rows += [case.row, group.good]
    return rows


def ipc_bytes(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


@pytest.mark.parametrize("name", [group.name for group in GROUPS])
def test_batch_method_formats_each_row_it_takes_as_the_row_method_does(name):
    group = next(group for group in GROUPS if group.name == name)
    template, kind = get_template(group.template), Kind(group.kind)
    rows = group_rows(name)
    batch = template.format_batch(kind, rows)
    assert batch is not None, f"{name} has no batch method"
    assert batch.positions[0] == 0, "the good row is formatted in the batch"
    by_row, by_batch = SampleBatch(kind, ()), SampleBatch(kind, ())
    for position in batch.positions:
        by_row.add(str(position), position, template.format(kind, rows[position]))  # raises if the row is bad
    turns = {column: value.slice(0, len(batch)) for column, value in batch.conversations.items()}
    by_batch.add_turns([str(p) for p in batch.positions], batch.positions, turns, batch.metas, batch.labels)
    schema = shard_schema(kind)
    assert ipc_bytes(by_batch.to_record_batch(schema)) == ipc_bytes(by_row.to_record_batch(schema))
    left = [position for position in range(len(rows)) if position not in set(batch.positions)]
    for position in left:  # every row left to the row method is one it rejects (the corpus has no odd good rows)
        with pytest.raises(RowRejected):
            template.format(kind, rows[position])


def planted_rows(name: str) -> list[dict | str]:
    """A group's rows (good, malformed, good, ...) repeated, with lines no template formats planted
    among them: invalid JSON, a blank line, an array, a value nested 150 deep."""
    rows: list[dict | str] = group_rows(name) * 3
    rows[5:5] = ["{not json", "", "[1, 2]", json.dumps({"deep": json.loads("[" * 150 + "]" * 150)})]
    return rows


def write_lines(rows: list[dict | str], path: Path) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) for row in rows]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def dataset_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*.arrow"))}


PLANTED_GROUPS = ["Alpaca/supervised", "Alpaca/prompt_only", "HH-RLHF/preference", "PKUSafeRLHF/preference"]


@pytest.mark.parametrize("name", [*PLANTED_GROUPS, "Messages/unpaired_preference"])
def test_batch_and_row_paths_write_the_same_dataset_bytes(tmp_path, monkeypatch, name):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 1_500)  # many chunks, clean ones and ones with bad lines
    group = next(group for group in GROUPS if group.name == name)
    source = fingerprint_source(write_lines(planted_rows(name), tmp_path / "rows.jsonl"))
    spec = MaterializeSpec.checked(group.template, group.kind, rows_per_shard=7)
    fast = build_dataset(source, spec, tmp_path / "fast", workers=1)
    slow = build_dataset(source, spec, tmp_path / "slow", workers=1, batch_formatting=False)
    assert fast.path.name == slow.path.name
    assert fast.manifest.quarantined > 10 and fast.manifest.rows > 10
    assert (fast.manifest.shards, fast.manifest.quarantine) == (slow.manifest.shards, slow.manifest.quarantine)
    assert fast.manifest.quarantine_reasons == slow.manifest.quarantine_reasons
    assert dataset_files(fast.path) == dataset_files(slow.path)


def test_alpaca_batch_takes_the_clean_rows_of_a_large_source(tmp_path):
    rows = many_alpaca_rows(300)
    rows[10]["output"] = " \u3000"  # blank to Python's str.strip: the row method rejects it
    rows[11]["input"] = None
    batch = get_template("Alpaca").format_batch(Kind.SUPERVISED, rows)
    assert batch.positions == [position for position in range(300) if position != 10]
    source = fingerprint_source(write_jsonl(rows, tmp_path / "rows.jsonl"))
    result = build_dataset(source, MaterializeSpec.checked("Alpaca", "supervised"), tmp_path / "out", workers=1)
    assert (result.manifest.rows, result.manifest.quarantine_reasons) == (299, {"empty_text": 1})


def test_a_subclass_that_changes_the_row_method_does_not_inherit_the_batch_method():
    @register_template("ShoutingAlpaca")
    class ShoutingAlpaca(Alpaca):
        def format_supervised_sample(self, raw: dict):
            messages, meta = super().format_supervised_sample(raw)
            return [{**message, "content": message["content"][0]["text"].upper()} for message in messages], meta

    rows = many_alpaca_rows(3)
    assert get_template("Alpaca").format_batch(Kind.SUPERVISED, rows) is not None
    assert ShoutingAlpaca().format_batch(Kind.SUPERVISED, rows) is None
