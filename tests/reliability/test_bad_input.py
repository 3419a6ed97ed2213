"""Bad input, generated from tables: malformed rows for every built-in template and kind, malformed
files for every reader. Each case asserts its exact quarantine reason or its exact one-line error,
and that the good rows around the bad ones all arrive.

The corpus is data: ``row_cases()`` and ``file_cases()`` return it; ``materialize_rows(cases, folder)``
and ``run_file_case(case, folder)`` run it in-process (``align_core.materialize``, no Prefect), so
``bench/reliability.py`` can count cases tried, crashes, hangs and good rows lost over the same cases.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align_core.errors import UsageError
from align_core.materialize import materialize_dataset
from align_core.shards.dataset import ShardDataset
from flows.pipeline_config import check_materialize

MISSING, WRONG, EMPTY, ROLES = "missing_field", "wrong_type", "empty_text", "bad_roles"
INVALID, IDENTICAL, UNSPLITTABLE, UNDECODABLE = "invalid_preference", "identical_pair", "unsplittable_transcript", "undecodable"
REPO = Path(__file__).resolve().parents[2]


# --- Malformed rows -------------------------------------------------------------------------------


class Deleted:
    """A field removed from the row."""

    def __repr__(self) -> str:
        return "<deleted>"


DELETE = Deleted()
Path_ = tuple[str | int, ...]  # keys and list indexes from the row to a value


@dataclass(frozen=True)
class RowCase:
    """One malformed row: ``group`` names the source file it shares with the other cases of its
    template and kind (and variant), ``what`` the malformed value, ``reason`` its quarantine reason."""

    group: str
    template: str
    kind: str
    what: str
    row: dict[str, Any]
    reason: str

    @property
    def id(self) -> str:
        return f"{self.group}: {self.what}"


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


# Tables: (value, reason) for each way a value of that sort can be wrong.
TEXT = [(DELETE, MISSING), (None, MISSING), (7, WRONG), (1.5, WRONG), (True, WRONG), (["Hi"], WRONG),
        ({"text": "Hi"}, WRONG), ("", EMPTY), (" \n\t", EMPTY)]
OPTIONAL_TEXT = [(7, WRONG), (True, WRONG), (["Hi"], WRONG), ({"text": "Hi"}, WRONG)]
CHOICE = [(DELETE, MISSING), (None, MISSING), ("first", WRONG), ("²", WRONG), (True, WRONG), (1.5, WRONG), ([1], WRONG),
          ({"id": 1}, WRONG), (7, INVALID), (-1, INVALID)]
OPTIONAL_CHOICE = CHOICE[2:]
BOOLEAN = [("maybe", WRONG), (1, WRONG), (1.5, WRONG), ([True], WRONG), ({"safe": True}, WRONG)]
INTEGER = [("high", WRONG), ("²", WRONG), (True, WRONG), ([3], WRONG)]
NUMBER = [(DELETE, MISSING), (None, MISSING), ("high", WRONG), (True, WRONG), ([8], WRONG), ({"score": 8}, WRONG)]
MAPPING = [("Violence", WRONG), (["Violence"], WRONG), (3, WRONG)]
MESSAGE_LIST = [(DELETE, MISSING), (None, MISSING), ("Hi", WRONG), (7, WRONG), ({"role": "user", "content": "Hi"}, WRONG),
                ([], EMPTY)]
MESSAGE = [(7, WRONG), ("Hi", WRONG), (None, WRONG), (["user", "Hi"], WRONG)]
ROLE = [(DELETE, MISSING), (None, MISSING), (7, WRONG), (["user"], WRONG), ({"name": "user"}, WRONG), ("robot", ROLES),
        ("User", ROLES), ("", ROLES)]
CONTENT = [(DELETE, MISSING), (None, MISSING), (7, WRONG), (True, WRONG), ({"text": "Hi"}, WRONG), ("", EMPTY),
           ("  ", EMPTY), ([], EMPTY)]
PART = [(7, WRONG), (None, WRONG), (["Hi"], WRONG), ({"text": "Hi"}, MISSING), ({"type": "text"}, MISSING),
        ({"type": "text", "text": None}, MISSING), ({"type": "text", "text": 7}, WRONG),
        ({"type": "text", "text": ["Hi"]}, WRONG), ({"type": "text", "text": ""}, EMPTY),
        ({"type": "html", "text": "Hi"}, WRONG), ({"type": ["text"], "text": "Hi"}, WRONG), ({"type": 7, "text": "Hi"}, WRONG)]
TURN = [(7, WRONG), ("Hi", WRONG), (None, WRONG), (["human", "Hi"], WRONG)]
SPEAKER = [(DELETE, MISSING), (None, MISSING), (7, WRONG), (["human"], WRONG), ({"from": "human"}, WRONG), ("bing", ROLES),
           ("Human", ROLES)]
TRANSCRIPT = [
    ("Hello there", UNSPLITTABLE),
    ("\n\nHuman: Hi", UNSPLITTABLE),
    ("Intro\n\nHuman: Hi\n\nAssistant: Hello", UNSPLITTABLE),
    ("\n\nUser: Hi\n\nBot: Hello", UNSPLITTABLE),
    ("\n\nAssistant: Hi\n\nHuman: Hey\n\nAssistant: Yo", ROLES),
    ("\n\nHuman: Hi\n\nHuman: Again\n\nAssistant: Yes", ROLES),
    ("\n\nHuman: \n\nAssistant: Hello", EMPTY),
    ("\n\nHuman: Hi\n\nAssistant: ", EMPTY),
]


def at(path: Path_, table: list[tuple[Any, str]], reasons: dict[str, str] | None = None) -> list[tuple[Path_, Any, str]]:
    """``(path, value, reason)`` for each row of ``table``; ``reasons`` overrides the reason by ``repr(value)``."""
    return [(path, value, (reasons or {}).get(repr(value), reason)) for value, reason in table]


def conversation(name: str, index: int = 0, reasons: dict[str, str] | None = None) -> list[tuple[Path_, Any, str]]:
    """Every way a message list, its ``index``-th message, that message's role, content and a content part
    can be malformed."""
    return [*at((name,), MESSAGE_LIST, reasons), *message(name, index)]


def message(name: str, index: int) -> list[tuple[Path_, Any, str]]:
    """Every way the ``index``-th message of a message list can be malformed."""
    return [
        *at((name, index), MESSAGE),
        *at((name, index, "role"), ROLE),
        *at((name, index, "content"), CONTENT),
        *[((name, index, "content"), [part], reason) for part, reason in PART],
    ]


def turns(name: str) -> list[tuple[Path_, Any, str]]:
    """ShareGPT's ``[{from, value}]``: the list, a turn, its speaker and its text."""
    return [*at((name,), MESSAGE_LIST), *at((name, 0), TURN), *at((name, 0, "from"), SPEAKER), *at((name, 0, "value"), TEXT)]


@dataclass(frozen=True)
class Group:
    """A template and kind, a good row, and how each of its fields can be malformed."""

    name: str
    template: str
    kind: str
    good: dict[str, Any]
    fields: list[tuple[Path_, Any, str]]
    rows: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)  # whole malformed rows: (what, row, reason)


ALPACA = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
AA_PAIR = {"question": "Say hi.", "response_1": "Hi!", "response_2": "No.", "overall_response": 1,
           "safety_rate_1": 3, "safety_rate_2": 1}
PKU = {"prompt": "How do I open a jar?", "response_0": "Twist the lid.", "response_1": "Smash it.",
       "better_response_id": 0, "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": False,
       "response_1_severity_level": 1, "response_1_harm_category": {"Violence": True}}
HH = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
UF = {"prompt": "Hi", "prompt_id": "p0", "chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("No.")],
      "score_chosen": 8.0, "score_rejected": 2.0}
SHAREGPT = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}
MESSAGES = {"messages": [user("Hi"), assistant("Hello!")]}
IMPLICIT = {"chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("No.")]}
EXPLICIT = {"prompt": [user("Hi")], "chosen": [assistant("Hello!")], "rejected": [assistant("No.")]}
UNPAIRED = {"prompt": [user("Hi")], "completion": [assistant("Hello!")], "label": True}
GSM8K = {"question": "What is 2 + 2?", "answer": "2 + 2 = 4.\n#### 4"}
# Where a field may be absent (an explicit prompt), leaving it out means the other layout.
ABSENT_PROMPT = {"<deleted>": ROLES, "None": ROLES}

GROUPS = [
    Group("Alpaca/supervised", "Alpaca", "supervised", ALPACA,
          [*at(("instruction",), TEXT), *at(("input",), OPTIONAL_TEXT), *at(("output",), TEXT)]),
    Group("Alpaca/prompt_only", "Alpaca", "prompt_only", ALPACA, [*at(("instruction",), TEXT), *at(("input",), OPTIONAL_TEXT)]),
    Group("AA_T2T/supervised", "AA_T2T", "supervised", {"prompt": "Say hi.", "response": "Hi!"},
          [*at(("prompt",), TEXT), *at(("response",), TEXT)]),
    Group("AA_T2T/prompt_only", "AA_T2T", "prompt_only", {"prompt": "Say hi."}, at(("prompt",), TEXT)),
    Group("AA_T2T/preference", "AA_T2T", "preference", AA_PAIR,
          [*at(("question",), TEXT), *at(("response_1",), TEXT), *at(("response_2",), TEXT),
           *at(("overall_response",), CHOICE), *at(("safety_rate_2",), INTEGER)],
          [("response_2 = response_1", {**AA_PAIR, "response_2": "Hi!"}, IDENTICAL)]),
    Group("PKUSafeRLHF/preference", "PKUSafeRLHF", "preference", PKU,
          [*at(("prompt",), TEXT), *at(("response_0",), TEXT), *at(("response_1",), TEXT),
           *at(("better_response_id",), CHOICE), *at(("safer_response_id",), OPTIONAL_CHOICE),
           *at(("is_response_0_safe",), BOOLEAN), *at(("response_1_severity_level",), INTEGER),
           *at(("response_1_harm_category",), MAPPING)],
          [("response_1 = response_0", {**PKU, "response_1": PKU["response_0"]}, IDENTICAL)]),
    Group("PKUSafeRLHF/prompt_only", "PKUSafeRLHF", "prompt_only", {"prompt": "How do I open a jar?"}, at(("prompt",), TEXT)),
    Group("HH-RLHF/preference", "HH-RLHF", "preference", HH,
          [*at(("chosen",), TEXT + TRANSCRIPT), *at(("rejected",), TEXT + TRANSCRIPT)],
          [("rejected answers another prompt", {**HH, "rejected": "\n\nHuman: Bye\n\nAssistant: Go away."}, UNSPLITTABLE),
           ("chosen ends with the human", {**HH, "chosen": HH["chosen"] + "\n\nHuman: More?"}, ROLES),
           ("rejected = chosen", {**HH, "rejected": HH["chosen"]}, IDENTICAL)]),
    Group("HH-RLHF/supervised", "HH-RLHF", "supervised", HH, at(("chosen",), TEXT + TRANSCRIPT),
          [("chosen ends with the human", {**HH, "chosen": HH["chosen"] + "\n\nHuman: More?"}, ROLES)]),
    Group("HH-RLHF/prompt_only", "HH-RLHF", "prompt_only", HH, at(("chosen",), TEXT + TRANSCRIPT)),
    Group("UltraFeedback/preference", "UltraFeedback", "preference", UF,
          [*conversation("chosen"), *conversation("rejected", 1), *at(("score_chosen",), NUMBER),
           *at(("score_rejected",), NUMBER), *at(("prompt_id",), OPTIONAL_TEXT)],
          [("chosen ends with the user", {**UF, "chosen": [*UF["chosen"], user("More?")]}, ROLES),
           ("rejected answers another prompt", {**UF, "rejected": [user("Bye"), assistant("No.")]}, UNSPLITTABLE),
           ("rejected = chosen", {**UF, "rejected": UF["chosen"]}, IDENTICAL)]),
    Group("UltraFeedback/supervised", "UltraFeedback", "supervised", UF, [*conversation("chosen", 1), *at(("prompt_id",), OPTIONAL_TEXT)],
          [("chosen ends with the user", {**UF, "chosen": [*UF["chosen"], user("More?")]}, ROLES),
           ("a system turn in the middle", {**UF, "chosen": [user("Hi"), {"role": "system", "content": "Be terse."}]}, ROLES)]),
    Group("UltraFeedback/prompt_only", "UltraFeedback", "prompt_only", UF, [*at(("prompt",), TEXT), *at(("prompt_id",), OPTIONAL_TEXT)]),
    Group("ShareGPT/supervised", "ShareGPT", "supervised", SHAREGPT, turns("conversations"),
          [("ends with the human", {"conversations": [*SHAREGPT["conversations"], {"from": "human", "value": "More?"}]}, ROLES),
           ("starts with gpt", {"conversations": SHAREGPT["conversations"][::-1]}, ROLES)]),
    Group("ShareGPT/prompt_only", "ShareGPT", "prompt_only", SHAREGPT, turns("conversations"),
          [("only a system turn", {"conversations": [{"from": "system", "value": "Be terse."}]}, ROLES)]),
    Group("Messages/supervised", "Messages", "supervised", MESSAGES, [*conversation("messages"), *message("messages", 1)],
          [("two user turns in a row", {"messages": [user("Hi"), user("Hi?"), assistant("Hello!")]}, ROLES),
           ("ends with the user", {"messages": [*MESSAGES["messages"], user("More?")]}, ROLES),
           ("a system turn after the user", {"messages": [user("Hi"), {"role": "system", "content": "x"}, assistant("Yo")]}, ROLES)]),
    Group("Messages/prompt_only", "Messages", "prompt_only", MESSAGES, conversation("messages"),
          [("only the assistant", {"messages": [assistant("Hello!")]}, ROLES),
           ("only a system turn", {"messages": [{"role": "system", "content": "Be terse."}]}, ROLES)]),
    Group("Messages/preference", "Messages", "preference", IMPLICIT, [*conversation("chosen", 1), *conversation("rejected")],
          [("rejected = chosen", {**IMPLICIT, "rejected": IMPLICIT["chosen"]}, IDENTICAL),
           ("rejected answers another prompt", {**IMPLICIT, "rejected": [user("Bye"), assistant("No.")]}, UNSPLITTABLE)]),
    Group("Messages/preference (explicit prompt)", "Messages", "preference", EXPLICIT,
          [*conversation("prompt", reasons=ABSENT_PROMPT), *conversation("chosen"), *conversation("rejected")],
          [("prompt ends with the assistant", {**EXPLICIT, "prompt": [user("Hi"), assistant("Yo")]}, ROLES),
           ("chosen starts with the user", {**EXPLICIT, "chosen": [user("Hello!")]}, ROLES),
           ("rejected = chosen", {**EXPLICIT, "rejected": EXPLICIT["chosen"]}, IDENTICAL)]),
    Group("Messages/unpaired_preference", "Messages", "unpaired_preference", UNPAIRED,
          [*conversation("prompt"), *conversation("completion"), *at(("label",), [(DELETE, MISSING), (None, MISSING), *BOOLEAN])],
          [("completion by the user", {**UNPAIRED, "completion": [user("Hello!")]}, ROLES),
           ("prompt ends with the assistant", {**UNPAIRED, "prompt": [user("Hi"), assistant("Yo")]}, ROLES)]),
    *(
        Group(f"GSM8K/{kind}", "GSM8K", kind, GSM8K, [*at(("question",), TEXT), *at(("answer",), TEXT)],
              [("no final answer", {**GSM8K, "answer": "2 + 2 = 4."}, MISSING),
               ("final answer not a number", {**GSM8K, "answer": "2 + 2 = 4.\n#### four"}, WRONG),
               ("empty final answer", {**GSM8K, "answer": "2 + 2 = 4.\n#### "}, WRONG)])
        for kind in ("supervised", "prompt_only")
    ),
]


def mutate(row: dict[str, Any], path: Path_, value: Any) -> dict[str, Any]:
    """A deep copy of ``row`` with the value at ``path`` replaced by ``value`` (removed for ``DELETE``)."""
    row = copy.deepcopy(row)
    parent = row
    for key in path[:-1]:
        parent = parent[key]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return row


def describe(path: Path_, value: Any) -> str:
    where = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in path).lstrip(".")
    return f"{where} = {value!r}"


def row_cases() -> list[RowCase]:
    """Every malformed row of every group: one per (field, table row), plus whole malformed rows."""
    cases = []
    for group in GROUPS:
        for path, value, reason in group.fields:
            what = describe(path, value)
            cases.append(RowCase(group.name, group.template, group.kind, what, mutate(group.good, path, value), reason))
        cases += [RowCase(group.name, group.template, group.kind, what, row, reason) for what, row, reason in group.rows]
    return cases


@dataclass
class GroupResult:
    """What materialising one group's source gave: the good rows' positions that arrived, and the
    quarantine reason by position."""

    good_expected: list[int]
    good_arrived: list[int]
    quarantined: dict[int, str]
    cases: dict[int, RowCase]  # position in the source -> the malformed row there


def materialize_rows(cases: list[RowCase], folder: Path) -> GroupResult:
    """One JSON Lines source of a group's cases, each between two good rows, materialised in-process."""
    first = cases[0]
    good = next(group.good for group in GROUPS if group.name == first.group)
    lines, placed, good_positions = [json.dumps(good)], {}, [0]
    for case in cases:
        placed[len(lines)] = case
        lines.append(json.dumps(case.row))
        good_positions.append(len(lines))
        lines.append(json.dumps(good))
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "rows.jsonl"
    source.write_text("\n".join(lines) + "\n")
    dataset = ShardDataset(materialize_dataset(source, first.template, first.kind, folder / "out", workers=1))
    arrived = [index for batch in dataset.iter_batches() for index in batch.column("source_index").to_pylist()]
    quarantine = dataset.read_quarantine().to_pylist()
    return GroupResult(good_positions, arrived, {row["source_index"]: row["reason"] for row in quarantine}, placed)


def cases_by_group() -> dict[str, list[RowCase]]:
    groups: dict[str, list[RowCase]] = {}
    for case in row_cases():
        groups.setdefault(case.group, []).append(case)
    return groups


@pytest.fixture(scope="module")
def group_results(tmp_path_factory) -> dict[str, GroupResult]:
    root = tmp_path_factory.mktemp("rows")
    return {name: materialize_rows(cases, root / f"group-{number}") for number, (name, cases) in enumerate(cases_by_group().items())}


def test_the_row_corpus_covers_every_template_and_kind_with_200_cases():
    from align_core.templates import get_template, known_templates

    cases = row_cases()
    assert len(cases) >= 200
    assert len({(case.group, json.dumps(case.row, sort_keys=True)) for case in cases}) == len(cases)  # all distinct
    built_in = {"Alpaca", "AA_T2T", "PKUSafeRLHF", "HH-RLHF", "UltraFeedback", "ShareGPT", "Messages", "GSM8K"}
    assert built_in <= set(known_templates())
    covered = {(case.template, case.kind) for case in cases}
    every = {(name, kind.value) for name in built_in for kind in get_template(name).supported_kinds()}
    assert covered == every


@pytest.mark.parametrize("case", row_cases(), ids=lambda case: case.id)
def test_a_malformed_row_is_quarantined_with_its_reason(case, group_results):
    result = group_results[case.group]
    position = next(index for index, placed in result.cases.items() if placed == case)
    assert result.quarantined.get(position) == case.reason


@pytest.mark.parametrize("group", list(cases_by_group()), ids=str)
def test_every_good_row_around_the_malformed_ones_arrives(group, group_results):
    result = group_results[group]
    assert result.good_arrived == result.good_expected
    assert set(result.quarantined) == set(result.cases)  # and nothing else was quarantined


# --- Malformed files ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileCase:
    """A source file (or folder) in some reader's format, with good and malformed parts.

    ``write(folder)`` writes the source (and anything else the case needs) into ``folder`` and returns
    its path. The outcome is either ``error``, the exact one-line message (``{source}``, ``{out}`` and
    ``{folder}`` filled in), or the rows: ``quarantined`` (position -> reason) and ``good``, the
    positions of the good rows, which must all arrive.
    """

    id: str
    write: Callable[[Path], Path]
    source_format: str | None = None
    error: str | None = None
    quarantined: dict[int, str] = field(default_factory=dict)
    good: tuple[int, ...] = ()
    template: str = "Alpaca"
    kind: str = "supervised"
    out: str = "out"  # the output root, relative to the case's folder (or absolute)


def good_row(number: int) -> dict[str, str]:
    return {"instruction": f"Name colour number {number}.", "input": "", "output": f"Colour {number} is blue."}


GOOD = object()  # a good row's place in a layout


def layout_positions(layout: list[Any], bad: Callable[[Any], bool] = lambda item: item is not GOOD) -> tuple[int, ...]:
    return tuple(position for position, item in enumerate(layout) if not bad(item))


def jsonl_case(case_id: str, lines: list[Any], quarantined: dict[int, str], *, prefix: bytes = b"", ending: bytes = b"\n",
               last_newline: bool = True, name: str = "rows.jsonl", **kwargs: Any) -> FileCase:
    """JSON Lines: ``GOOD`` is a good row, bytes a line as written. Good rows are the GOOD positions."""

    def write(folder: Path) -> Path:
        encoded = [json.dumps(good_row(n)).encode() if line is GOOD else line for n, line in enumerate(lines)]
        data = prefix + ending.join(encoded) + (ending if last_newline else b"")
        (folder / name).write_bytes(data)
        return folder / name

    return FileCase(case_id, write, quarantined=quarantined, good=layout_positions(lines), **kwargs)


def json_array_case(case_id: str, items: list[Any], quarantined: dict[int, str] | None = None, *, raw_tail: str = "",
                    prefix: bytes = b"", error: str | None = None, **kwargs: Any) -> FileCase:
    """A JSON array: ``GOOD`` is a good row, str an item's JSON text as written."""

    def write(folder: Path) -> Path:
        texts = [json.dumps(good_row(n)) if item is GOOD else item for n, item in enumerate(items)]
        (folder / "rows.json").write_bytes(prefix + ("[" + ",\n ".join(texts) + "]" + raw_tail).encode("utf-8", "surrogateescape"))
        return folder / "rows.json"

    good = () if error else layout_positions(items)
    return FileCase(case_id, write, error=error, quarantined=quarantined or {}, good=good, **kwargs)


def text_case(case_id: str, name: str, data: bytes, *, good: tuple[int, ...] = (), **kwargs: Any) -> FileCase:
    """A file written byte for byte."""

    def write(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name

    return FileCase(case_id, write, good=good, **kwargs)


def alpaca_table(count: int, **columns: list[Any]) -> pa.Table:
    """``count`` good Alpaca rows as a table, with ``columns`` replacing whole columns."""
    rows = [good_row(n) for n in range(count)]
    data = {name: [row[name] for row in rows] for name in ("instruction", "input", "output")}
    data.update(columns)
    return pa.table(data)


def write_arrow(table: pa.Table, path: Path, stream: bool = False, batch_rows: int = 2) -> Path:
    with pa.OSFile(str(path), "wb") as sink:
        opened = pa.ipc.new_stream if stream else pa.ipc.new_file
        with opened(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=batch_rows)
    return path


def table_case(case_id: str, table: pa.Table, writer: str, quarantined: dict[int, str] | None = None, *,
               cut: float | None = None, **kwargs: Any) -> FileCase:
    """A table as Parquet, an Arrow file or an Arrow stream; ``cut`` keeps that fraction of the bytes."""
    name = {"parquet": "rows.parquet", "arrow": "rows.arrow", "stream": "rows.arrow"}[writer]

    def write(folder: Path) -> Path:
        path = folder / name
        if writer == "parquet":
            pq.write_table(table, path, row_group_size=2)
        else:
            write_arrow(table, path, stream=writer == "stream")
        if cut is not None:
            path.write_bytes(path.read_bytes()[: int(path.stat().st_size * cut)])
        return path

    quarantined = quarantined or {}
    good = () if kwargs.get("error") else tuple(n for n in range(table.num_rows) if n not in quarantined)
    return FileCase(case_id, write, quarantined=quarantined, good=good, **kwargs)


def invalid_utf8_strings(values: list[bytes]) -> pa.Array:
    """A string array holding ``values`` as they are, invalid UTF-8 included (Arrow does not check on build)."""
    offsets = [0]
    for value in values:
        offsets.append(offsets[-1] + len(value))
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
                                                             pa.py_buffer(b"".join(values))])


def hf_folder(folder: Path, rows: int = 4, state: Any = None, files: int = 1, table: pa.Table | None = None) -> Path:
    """A ``save_to_disk`` folder as ``datasets`` writes it: Arrow streams and ``state.json`` (``state``
    replaces the listing when given)."""
    path = folder / "hf"
    path.mkdir()
    table = table if table is not None else alpaca_table(rows)
    names = []
    per_file = -(-table.num_rows // files)
    for number in range(files):
        name = f"data-{number:05d}-of-{files:05d}.arrow"
        write_arrow(table.slice(number * per_file, per_file), path / name, stream=True)
        names.append(name)
    listing = {"_data_files": [{"filename": name} for name in names], "_split": None} if state is None else state
    (path / "state.json").write_text(listing if isinstance(listing, str) else json.dumps(listing))
    (path / "dataset_info.json").write_text("{}")
    return path


def hf_case(case_id: str, change: Callable[[Path], Any] | None = None, *, error: str | None = None,
            folder: dict[str, Any] | None = None, quarantined: dict[int, str] | None = None,
            good: tuple[int, ...] = (0, 1, 2, 3)) -> FileCase:
    """A ``save_to_disk`` folder (``hf_folder(**folder)``), then ``change``d."""

    def write(root: Path) -> Path:
        path = hf_folder(root, **(folder or {}))
        if change:
            change(path)
        return path

    return FileCase(case_id, write, error=error, quarantined=quarantined or {}, good=() if error else good)


def state_json(text: str) -> Callable[[Path], None]:
    return lambda path: (path / "state.json").write_text(text)


def listing(*entries: Any) -> Callable[[Path], None]:
    return state_json(json.dumps({"_data_files": list(entries)}))


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def named_pipe(folder: Path) -> Path:
    return fifo(folder / "rows.jsonl")


def fifo(path: Path) -> Path:
    """A FIFO. A reader that opens it would block until a writer comes: a thread comes as one after 5 s,
    again and again, each time closing at once, so such a reader gets an empty file and the case ends
    (as a wrong answer, not a hang)."""
    os.mkfifo(path)
    threading.Thread(target=_unblock_readers, args=(path,), daemon=True).start()
    return path


def _unblock_readers(path: Path, after: float = 5.0, lasting: float = 120.0) -> None:
    time.sleep(after)
    deadline = time.monotonic() + lasting
    while path.exists() and time.monotonic() < deadline:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # ENXIO while no reader has it open
        except OSError:
            pass
        time.sleep(0.1)


def symlink_out(path: Path) -> None:
    outside = path.parent / "elsewhere.arrow"
    (path / "data-00000-of-00001.arrow").rename(outside)
    (path / "link.arrow").symlink_to(outside)
    listing({"filename": "link.arrow"})(path)


def corrupt(path: Path, start: int, stop: int) -> None:
    data = bytearray(path.read_bytes())
    for position in range(start, stop):
        data[position] ^= 0xFF
    path.write_bytes(bytes(data))


def with_file(name: str, write_source: Callable[[Path], Path]) -> Callable[[Path], Path]:
    """Also write a plain file ``name`` in the folder (an output root that is a file)."""

    def write(folder: Path) -> Path:
        (folder / name).write_text("not a folder\n")
        return write_source(folder)

    return write


def good_jsonl(folder: Path) -> Path:
    (folder / "rows.jsonl").write_text("".join(json.dumps(good_row(n)) + "\n" for n in range(3)))
    return folder / "rows.jsonl"


def a_folder(folder: Path) -> Path:
    (folder / "rows").mkdir()
    return folder / "rows"


READ = "cannot read {source} as "
UNDECODED = {1: UNDECODABLE}


def file_cases() -> list[FileCase]:
    """Malformed files for every reader (JSON Lines, JSON array, CSV, Parquet, Arrow file and stream,
    ``save_to_disk`` folders) and the source/output checks around them."""
    G = GOOD
    alpaca_csv_header = b"instruction,input,output\r\n"
    return [
        # JSON Lines
        jsonl_case("jsonl: invalid JSON", [G, b'{"instruction": "x", ', G], UNDECODED),
        jsonl_case("jsonl: invalid UTF-8", [G, b'{"instruction": "caf\xe9", "output": "x"}', G], UNDECODED),
        jsonl_case("jsonl: an array row", [G, b"[1, 2]", G], {1: WRONG}),
        jsonl_case("jsonl: a number row", [G, b"5", G], {1: WRONG}),
        jsonl_case("jsonl: a string row", [G, b'"text"', G], {1: WRONG}),
        jsonl_case("jsonl: a null row", [G, b"null", G], {1: WRONG}),
        jsonl_case("jsonl: NUL bytes", [G, b"\x00\x00", G], UNDECODED),
        jsonl_case("jsonl: a lone surrogate escape", [G, b'{"instruction": "\\ud800", "output": "x"}', G], UNDECODED),
        jsonl_case("jsonl: NaN", [G, b'{"instruction": NaN, "output": "x"}', G], UNDECODED),
        jsonl_case("jsonl: an integer past 64 bits", [G, b'{"instruction": 123456789012345678901234567890, "output": "x"}', G], {1: WRONG}),
        jsonl_case("jsonl: nested 50 deep", [G, b'{"instruction": ' + nested(50) + b', "output": "x"}', G], {1: WRONG}),
        jsonl_case("jsonl: nested 101 deep", [G, b'{"instruction": ' + nested(100) + b', "output": "x"}', G], UNDECODED),
        jsonl_case("jsonl: nested 900 deep", [G, b'{"instruction": ' + nested(900) + b', "output": "x"}', G], UNDECODED),
        jsonl_case("jsonl: nested 100000 deep", [G, b'{"instruction": ' + nested(100_000) + b', "output": "x"}', G], UNDECODED),
        jsonl_case("jsonl: a truncated last line", [G, G, b'{"instruction": "cut'], {2: UNDECODABLE}, last_newline=False),
        jsonl_case("jsonl: a byte-order mark", [G, G, G], {}, prefix=b"\xef\xbb\xbf"),
        jsonl_case("jsonl: CRLF line ends", [G, G, G], {}, ending=b"\r\n"),
        jsonl_case("jsonl: blank lines keep their line numbers", [G, b"", b"   ", G], {}),
        jsonl_case("jsonl: no final newline", [G, G], {}, last_newline=False),
        jsonl_case("jsonl: a .json file of JSON Lines", [G, b"{}", G], {1: MISSING}, name="rows.json"),
        text_case("jsonl: an empty file", "rows.jsonl", b""),
        FileCase("jsonl: a named pipe", named_pipe, error="{source} is a named pipe; a source must be a regular file or a save_to_disk folder"),
        # JSON array
        json_array_case("json: items that are not objects", [G, "5", '"text"', "null", "[1]", G], {1: WRONG, 2: WRONG, 3: WRONG, 4: WRONG}),
        json_array_case("json: a lone surrogate escape", [G, '{"instruction": "\\ud800", "output": "x"}', G], UNDECODED),
        json_array_case("json: invalid UTF-8", [G, '{"instruction": "caf\udce9", "output": "x"}', G], UNDECODED),
        json_array_case("json: nested 101 deep", [G, '{"instruction": ' + nested(100).decode() + ', "output": "x"}', G], UNDECODED),
        json_array_case("json: nested 100000 deep", [G, '{"instruction": ' + nested(100_000).decode() + ', "output": "x"}', G], UNDECODED),
        json_array_case("json: a byte-order mark", [G, G], prefix=b"\xef\xbb\xbf"),
        json_array_case("json: an empty array", []),
        json_array_case("json: invalid JSON mid-array", [G, '{"instruction": oops}', G],
                        error="{source}: invalid JSON array near item 1: Expecting value"),
        text_case("json: cut inside an item", "rows.json", b'[{"instruction": "a", "output": "b"}, {"instruction": "cu',
                  error="{source}: invalid JSON array near item 1: Unterminated string starting at"),
        json_array_case("json: text after the array", [G], raw_tail=' {"instruction": "lost"}',
                        error="{source}: text after the JSON array's closing ']' (after item 0); expected one array"),
        text_case("json: one pretty-printed object", "rows.json", b'{\n "data": [\n  {"instruction": "a"}\n ]\n}\n',
                  error="{source}: neither a JSON array nor JSON Lines (its first line is not a JSON value); if it is one "
                        "object holding the rows, save the rows as an array or as JSON Lines (or pass the format 'jsonl' "
                        "to read it line by line anyway)"),
        jsonl_case("json: JSON Lines read with format json", [G, G], {}, source_format="json",
                   error="{source}: a JSON source must be an array of objects (or JSON Lines: format 'jsonl')"),
        # CSV
        text_case("csv: a column named twice", "rows.csv", b"instruction,output,output\r\na,b,c\r\n",
                  error="{source}: the CSV header names column 'output' more than once; every column needs its own name"),
        text_case("csv: a row with a column too many", "rows.csv", alpaca_csv_header + b"a,,b\r\nc,,d,e\r\n",
                  error=READ + "csv: CSV parse error: Expected 3 columns, got 4: c,,d,e"),
        text_case("csv: an unterminated quote", "rows.csv", alpaca_csv_header + b'a,,b\r\n"c,,d\r\n',
                  error=READ + 'csv: CSV parse error: Expected 3 columns, got 1: "c,,d'),
        text_case("csv: invalid UTF-8 in a value", "rows.csv", alpaca_csv_header + b"a,,b\r\ncaf\xe9,,d\r\ne,,f\r\n",
                  quarantined=UNDECODED, good=(0, 2)),
        text_case("csv: a byte-order mark", "rows.csv", b"\xef\xbb\xbf" + alpaca_csv_header + b"a,,b\r\nc,,d\r\n", good=(0, 1)),
        text_case("csv: an empty file", "rows.csv", b"", error="{source}: CSV has no header row"),
        text_case("csv: only the header", "rows.csv", alpaca_csv_header),
        text_case("csv: newlines inside quoted values", "rows.csv", alpaca_csv_header + b'"two\r\nlines",,"and ""quotes"""\r\nc,,d\r\n',
                  good=(0, 1)),
        text_case("csv: an empty value", "rows.csv", alpaca_csv_header + b"a,,b\r\nc,,\r\ne,,f\r\n", quarantined={1: EMPTY}, good=(0, 2)),
        text_case("csv: a column missing", "rows.csv", b"instruction,input\r\na,\r\nb,\r\n", quarantined={0: MISSING, 1: MISSING}),
        text_case("csv: a TSV file", "rows.tsv", b"instruction\tinput\toutput\na\t\tb\nc\t\td\n", good=(0, 1)),
        # Parquet
        table_case("parquet: cut in half", alpaca_table(6), "parquet", cut=0.5,
                   error=READ + "parquet: Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."),
        text_case("parquet: not Parquet at all", "rows.parquet", b"PAR1 this is not parquet",
                  error=READ + "parquet: Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."),
        FileCase("parquet: a damaged data page", lambda folder: _damaged_parquet(folder), error=READ + "parquet: Couldn't deserialize thrift: don't know what type: Deserializing page header failed."),
        table_case("parquet: nulls", alpaca_table(4, output=["a", None, "c", None]), "parquet", {1: MISSING, 3: MISSING}),
        table_case("parquet: empty and blank strings", alpaca_table(4, instruction=["a", "", " \n", "d"]), "parquet", {1: EMPTY, 2: EMPTY}),
        table_case("parquet: a column of the wrong type", alpaca_table(2, output=[1, 2]), "parquet", {0: WRONG, 1: WRONG}),
        table_case("parquet: large and dictionary strings", pa.table({
            "instruction": pa.array(["a", "b", "c"], pa.large_string()),
            "output": pa.array(["x", "y", "z"]).dictionary_encode()}), "parquet"),
        table_case("parquet: no rows", alpaca_table(0), "parquet"),
        table_case("parquet: a NaN score (UltraFeedback)", pa.table({
            "prompt": ["Hi"] * 3, "prompt_id": ["p0", "p1", "p2"],
            "chosen": [UF["chosen"]] * 3, "rejected": [UF["rejected"]] * 3,
            "score_chosen": [8.0, float("nan"), 7.0], "score_rejected": [2.0, 1.0, float("inf")]}),
            "parquet", {1: WRONG, 2: WRONG}, template="UltraFeedback", kind="preference"),
        # Arrow IPC
        table_case("arrow: a file cut short", alpaca_table(6), "arrow", cut=0.6, error=READ + "arrow: Not an Arrow file"),
        table_case("arrow: a stream cut mid-batch", alpaca_table(6), "stream", cut=0.6,
                   error=READ + "arrow: Expected to read 280 metadata bytes, but only read 257"),
        text_case("arrow: garbage", "rows.arrow", b"hello world this is not arrow",
                  error=READ + "arrow: Expected to read 1819043176 metadata bytes, but only read 25"),
        text_case("arrow: an empty file", "rows.arrow", b"", error=READ + "arrow: Tried reading schema message, was null or length 0"),
        table_case("arrow: invalid UTF-8 in a string column", alpaca_table(3, instruction=invalid_utf8_strings([b"a", b"caf\xe9", b"c"])),
                   "arrow", UNDECODED),
        table_case("arrow: nulls in a stream", alpaca_table(5, output=["a", None, "c", "d", None]), "stream", {1: MISSING, 4: MISSING}),
        # save_to_disk folders
        hf_case("hf_disk: state.json is not JSON", state_json("{not json"),
                error="{source}/state.json: not a readable Hugging Face state.json file (Expecting property name enclosed in double "
                      "quotes: line 1 column 2 (char 1))"),
        hf_case("hf_disk: state.json is a list", state_json("[1]"),
                error="{source}/state.json: a Hugging Face state.json file holds a JSON object, got list"),
        hf_case("hf_disk: _data_files is not a list", state_json('{"_data_files": 5}'),
                error='{source}/state.json: \'_data_files\' must be a non-empty list of {{"filename": ...}} entries'),
        hf_case("hf_disk: _data_files is empty", state_json('{"_data_files": []}'),
                error='{source}/state.json: \'_data_files\' must be a non-empty list of {{"filename": ...}} entries'),
        hf_case("hf_disk: an entry without a filename", listing({}),
                error='{source}/state.json: _data_files[0] must be {{"filename": "<a file in the folder>"}}, got {{}}'),
        hf_case("hf_disk: a filename that is not a string", listing({"filename": 5}),
                error='{source}/state.json: _data_files[0] must be {{"filename": "<a file in the folder>"}}, got {{\'filename\': 5}}'),
        hf_case("hf_disk: a missing data file", listing({"filename": "nope.arrow"}),
                error="{source}/state.json: _data_files[0]: 'nope.arrow' does not exist"),
        hf_case("hf_disk: a data file above the folder", listing({"filename": "../elsewhere.arrow"}),
                error="{source}/state.json: _data_files[0]: '../elsewhere.arrow' is outside the dataset folder; only files inside {source} are read"),
        hf_case("hf_disk: an absolute data file", listing({"filename": "/etc/hostname"}),
                error="{source}/state.json: _data_files[0]: '/etc/hostname' is outside the dataset folder; only files inside {source} are read"),
        hf_case("hf_disk: a symlink out of the folder", symlink_out,
                error="{source}/state.json: _data_files[0]: 'link.arrow' is outside the dataset folder; only files inside {source} are read"),
        hf_case("hf_disk: a data file that is a folder", lambda path: (path / "sub").mkdir() or listing({"filename": "sub"})(path),
                error="{source}/state.json: _data_files[0]: 'sub' is not a regular file"),
        hf_case("hf_disk: a data file that is a named pipe", lambda path: fifo(path / "pipe.arrow") and listing({"filename": "pipe.arrow"})(path),
                error="{source}/state.json: _data_files[0]: 'pipe.arrow' is not a regular file"),
        hf_case("hf_disk: a data file cut short", lambda path: corrupt_length(path / "data-00000-of-00001.arrow", 0.6),
                error="cannot read {source}/data-00000-of-00001.arrow as arrow: Expected to be able to read 176 bytes for message body, got 163"),
        hf_case("hf_disk: a malformed dataset_dict.json", lambda path: (path / "dataset_dict.json").write_text("{splits"),
                error="{source}/dataset_dict.json: not a readable DatasetDict file (Expecting property name enclosed in double quotes: line 1 column 2 (char 1))"),
        hf_case("hf_disk: no state.json", lambda path: (path / "state.json").unlink(),
                error="{source} is a folder but not a Hugging Face save_to_disk dataset (no state.json)"),
        hf_case("hf_disk: two data files with bad rows", folder={"files": 2, "table": alpaca_table(6, output=["a", "", "c", None, "e", "f"])},
                quarantined={1: EMPTY, 3: MISSING}, good=(0, 2, 4, 5)),
        # The source and output checks around every reader
        FileCase("source: missing", lambda folder: folder / "absent.jsonl", error="source '{source}' does not exist"),
        FileCase("source: a character device", lambda folder: Path("/dev/null"),
                 error="/dev/null is a character device; a source must be a regular file or a save_to_disk folder"),
        FileCase("source: a folder read as JSON Lines", a_folder, source_format="jsonl", error="{source} is a folder; format 'jsonl' reads a file"),
        FileCase("source: an unknown format", good_jsonl, source_format="xml",
                 error="unknown source format 'xml'; expected one of: jsonl, json, csv, parquet, arrow, hf_disk"),
        FileCase("source: JSON Lines read as Parquet", good_jsonl, source_format="parquet",
                 error=READ + "parquet: Parquet magic bytes not found in footer. Either the file is corrupted or this is not a parquet file."),
        FileCase("source: a file read as hf_disk", good_jsonl, source_format="hf_disk",
                 error="{source}: format 'hf_disk' reads a save_to_disk folder holding state.json"),
        text_case("source: no known suffix or first bytes", "notes.txt", b"just some notes\n",
                  error="cannot tell the format of {source}; expected one of: jsonl, json, csv, parquet, arrow, hf_disk"),
        FileCase("out: a file", with_file("taken", good_jsonl), out="taken", error="output folder {out}: {out} is a file"),
        FileCase("out: below a file", with_file("taken", good_jsonl), out="taken/out", error="output folder {out}: {folder}/taken is a file"),
        FileCase("out: not writable", good_jsonl, out="/proc/1/alignflow-out", error="output folder {out}: /proc/1 is not writable"),
    ]


def corrupt_length(path: Path, keep: float) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _damaged_parquet(folder: Path) -> Path:
    path = folder / "rows.parquet"
    pq.write_table(alpaca_table(100), path)
    corrupt(path, 20, 60)
    return path


@dataclass
class FileOutcome:
    error: str | None = None
    quarantined: dict[int, str] = field(default_factory=dict)
    arrived: list[int] = field(default_factory=list)


class Hang(Exception):
    """A case that did not finish within its time limit."""


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Raise ``Hang`` in this (main) thread after ``seconds``: a blocking open() of a pipe is interrupted too."""

    def expire(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def resolve_out(case: FileCase, folder: Path) -> Path:
    return Path(case.out) if Path(case.out).is_absolute() else folder / case.out


def expected_error(case: FileCase, folder: Path, source: Path) -> str:
    return case.error.format(source=source, out=resolve_out(case, folder), folder=folder)


def run_file_case(case: FileCase, folder: Path, seconds: int = 60) -> tuple[Path, FileOutcome]:
    """Write the case's source into ``folder`` and materialise it in-process as the CLI would (its
    checks, then the library); the source's path and what happened: one error, or the rows."""
    folder.mkdir(parents=True, exist_ok=True)
    source = case.write(folder)
    with time_limit(seconds):
        try:
            out = resolve_out(case, folder)
            check_materialize(source, case.template, case.kind, out, source_format=case.source_format, validate_contract=False)
            dataset = ShardDataset(materialize_dataset(source, case.template, case.kind, out, source_format=case.source_format, workers=1))
        except UsageError as error:
            return source, FileOutcome(error=str(error))
    arrived = [index for batch in dataset.iter_batches() for index in batch.column("source_index").to_pylist()]
    quarantined = {row["source_index"]: row["reason"] for row in dataset.read_quarantine().to_pylist()}
    return source, FileOutcome(quarantined=quarantined, arrived=arrived)


def error_cases() -> list[FileCase]:
    return [case for case in file_cases() if case.error]


def test_the_file_corpus_covers_every_reader_with_50_cases():
    cases = file_cases()
    assert len(cases) >= 50
    assert len({case.id for case in cases}) == len(cases)
    readers = {case.id.split(":")[0] for case in cases}
    assert {"jsonl", "json", "csv", "parquet", "arrow", "hf_disk"} <= readers


@pytest.mark.parametrize("case", file_cases(), ids=lambda case: case.id)
def test_a_malformed_file_gives_its_reasons_or_its_one_line_error(case, tmp_path):
    source, outcome = run_file_case(case, tmp_path)
    if case.error:
        assert outcome.error == expected_error(case, tmp_path, source)
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing published
        return
    assert outcome.error is None
    assert outcome.quarantined == case.quarantined
    assert outcome.arrived == list(case.good)  # every good row, in source order


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``alignflow ARGS`` through its real entry point in this process: (exit code, stdout, stderr)."""
    from alignflow.cli import main

    monkeypatch.setattr(sys, "argv", ["alignflow", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("case", error_cases(), ids=lambda case: case.id)
def test_the_cli_says_a_file_level_error_in_one_line_and_exits_2(case, tmp_path, monkeypatch, capsys):
    source = case.write(tmp_path)
    args = ["materialize", str(source), "-t", case.template, "-k", case.kind, "--out", str(resolve_out(case, tmp_path)), "--no-validate"]
    code, out, err = run_cli(args + (["--format", case.source_format] if case.source_format else []), monkeypatch, capsys)
    assert (code, out) == (2, "")
    assert err == f"error: {expected_error(case, tmp_path, source)}\n"


@pytest.mark.usefixtures("prefect_harness")
def test_an_error_inside_the_flow_reaches_the_terminal_as_one_line_without_prefects_traceback(tmp_path):
    import prefect.settings

    case = next(case for case in file_cases() if case.id == "json: invalid JSON mid-array")
    source = case.write(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect.settings.PREFECT_API_URL.value()}
    env.pop("PREFECT_LOGGING_LEVEL", None)  # the default level
    completed = subprocess.run(
        [sys.executable, "-m", "alignflow", "materialize", str(source), "-t", "Alpaca", "-k", "supervised",
         "--out", str(tmp_path / "out"), "--no-validate"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert (completed.returncode, completed.stdout) == (2, "")
    assert completed.stderr == f"error: {expected_error(case, tmp_path, source)}\n"


# --- What the contract catches --------------------------------------------------------------------


def test_a_media_placeholder_in_a_text_only_dataset_fails_the_contract_naming_its_row(tmp_path):
    """An ``{type: image}`` part is a valid placeholder, so the template keeps the row; with no media in
    the dataset nothing can fill it (training would stop at it), so the contract fails, naming it."""
    from data_contracts.runner import validate_dataset

    rows = [{"messages": [user(f"What is {n} plus {n}?"), assistant(f"{2 * n}.")]} for n in range(6)]
    rows[3] = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image"}]},
                            assistant("A cat.")]}
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = ShardDataset(materialize_dataset(source, "Messages", "supervised", tmp_path / "out", workers=1))
    assert dataset.manifest.rows == 6  # kept: the template cannot know which media a dataset will carry
    placeholder_id = next(sample["id"] for sample in dataset.read_table().to_pylist() if sample["source_index"] == 3)

    result = validate_dataset(dataset.path)

    assert not result.passed
    failed = [check for check in result.results if not check.success]
    assert [(check.name, check.severity, check.unexpected_count, check.sample_ids) for check in failed] == [
        ("media_placeholders_backed", "error", 1, [placeholder_id])
    ]
