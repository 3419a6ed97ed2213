"""Raw rows shaped like real public datasets, and writers that save them in every source format.

Shared by the reader and materialiser tests: the same rows saved as JSON Lines, a JSON array, CSV,
Parquet, Arrow IPC (file and stream) and a ``datasets`` ``save_to_disk`` folder must read back alike.
Also the check both make on bad usage: a ``UsageError`` whose message is one line.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align_core.errors import UsageError

ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task{paired}. "
    "Write a response that appropriately completes the request.\n\n"
)


def alpaca_row(instruction: str, input_text: str, output: str) -> dict:
    """A tatsu-lab/alpaca row: ``instruction``, ``input``, ``output`` and the prompt-formatted ``text``."""
    paired = ", paired with an input that provides further context" if input_text else ""
    body = f"### Instruction:\n{instruction}\n\n"
    if input_text:
        body += f"### Input:\n{input_text}\n\n"
    text = ALPACA_PREAMBLE.format(paired=paired) + body + f"### Response:\n{output}"
    return {"instruction": instruction, "input": input_text, "output": output, "text": text}


# The first rows of tatsu-lab/alpaca, plus two with non-ASCII text, quotes, commas and newlines,
# which CSV quoting and UTF-8 decoding must carry through unchanged.
ALPACA_ROWS = [
    alpaca_row(
        "Give three tips for staying healthy.",
        "",
        "1.Eat a balanced diet and make sure to include plenty of fruits and vegetables. \n"
        "2. Exercise regularly to keep your body active and strong. \n"
        "3. Get enough sleep and maintain a consistent sleep schedule.",
    ),
    alpaca_row("What are the three primary colors?", "", "The three primary colors are red, blue, and yellow."),
    alpaca_row(
        "Describe the structure of an atom.",
        "",
        "An atom is made up of a nucleus, which contains protons and neutrons, surrounded by electrons "
        "that travel in orbits around the nucleus.",
    ),
    alpaca_row("Identify the odd one out.", "Twitter, Instagram, Telegram", "Telegram"),
    alpaca_row(
        "Explain why the following fraction is equivalent to 1/4",
        "4/16",
        "The fraction 4/16 is equivalent to 1/4 because both numerators and denominators are divisible by 4.",
    ),
    alpaca_row('Translate "thank you" into French and Japanese.', "", "Merci — ありがとう (arigatō) 🙏"),
    alpaca_row("Rewrite the sentence in passive voice.", 'The chef said, "Dinner, at last!"', '"Dinner, at last!" was said by the chef.'),
]


def many_alpaca_rows(count: int) -> list[dict]:
    """``count`` distinct Alpaca rows (the real ones, numbered), for sources spanning many chunks."""
    rows = []
    for number in range(count):
        base = ALPACA_ROWS[number % len(ALPACA_ROWS)]
        rows.append(alpaca_row(f"{base['instruction']} (#{number})", base["input"], base["output"]))
    return rows


def pku_saferlhf_row(response_0: str, response_1: str, better: int = 1, safer: int = 1) -> dict:
    """A PKU-Alignment/PKU-SafeRLHF row (the v1 release's fields)."""
    harm = {"Endangering National Security": False, "Violence": False, "Privacy Violation": False}
    return {
        "prompt": "How can I get my neighbour's wifi password?",
        "response_0": response_0,
        "response_1": response_1,
        "prompt_source": "Alpaca3-70B",
        "response_0_source": "Alpaca3-8B",
        "response_1_source": "Alpaca3-8B",
        "is_response_0_safe": False,
        "is_response_1_safe": True,
        "response_0_harm_category": {**harm, "Privacy Violation": True},
        "response_1_harm_category": harm,
        "response_0_severity_level": 2,
        "response_1_severity_level": 0,
        "better_response_id": better,
        "safer_response_id": safer,
        "response_0_sha256": "3e5d1c0f" * 8,
        "response_1_sha256": "9a7b2e44" * 8,
    }


# Writers: one per source format, each ``(rows, path) -> path``.


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_json_array(rows: list[dict], path: Path) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(rows: list[dict], path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=3)  # several row groups
    return path


def write_arrow_file(rows: list[dict], path: Path) -> Path:
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)  # several record batches
    return path


def write_arrow_stream(rows: list[dict], path: Path) -> Path:
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=3)
    return path


def write_hf_disk(rows: list[dict], path: Path) -> Path:
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_list(rows).save_to_disk(str(path), num_shards=2)  # two data files
    return path


# name -> (file name, writer, the format detect_format must report)
SOURCE_WRITERS: dict[str, tuple[str, Callable[[list[dict], Path], Path], str]] = {
    "jsonl": ("rows.jsonl", write_jsonl, "jsonl"),
    "json_lines_named_json": ("rows.json", write_jsonl, "jsonl"),
    "json_array": ("rows.json", write_json_array, "json"),
    "csv": ("rows.csv", write_csv, "csv"),
    "parquet": ("rows.parquet", write_parquet, "parquet"),
    "arrow_file": ("rows.arrow", write_arrow_file, "arrow"),
    "arrow_stream": ("rows.arrow", write_arrow_stream, "arrow"),
    "hf_save_to_disk": ("rows_hf", write_hf_disk, "hf_disk"),
}


def write_source(name: str, rows: list[dict], folder: Path) -> Path:
    """Save ``rows`` in the format named ``name`` (a key of ``SOURCE_WRITERS``) inside ``folder``."""
    file_name, writer, _ = SOURCE_WRITERS[name]
    folder.mkdir(parents=True, exist_ok=True)
    return writer(rows, folder / file_name)


def usage_error_message(call: Callable[[], object]) -> str:
    """The message of the ``UsageError`` that ``call()`` raises, checked to fit on one line (the CLI prints it)."""
    with pytest.raises(UsageError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    return message
