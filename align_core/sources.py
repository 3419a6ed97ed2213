"""Raw dataset sources: detect the format, fingerprint the bytes, and stream rows in chunks.

Formats: JSON Lines, a JSON array, CSV, Parquet, Arrow IPC (file or stream) and a Hugging Face
``save_to_disk`` folder. Every reader streams (bounded memory per chunk), so a source larger than
memory works. A chunk carries the source index of its first row; ``chunk_rows`` turns it into
``(source_index, row)`` pairs where ``row`` is a dict or a ``RowRejected`` (undecodable bytes,
invalid JSON, a non-object row), so a bad line becomes a quarantine row, never a crash.

Source index: the 0-based line number for JSON Lines (blank lines are skipped, so a user can find
the row with ``sed -n``), the record position for every other format.

``check_source`` refuses what cannot be read before any row is: a named pipe or device (reading one
blocks or never ends), a format that does not fit, a CSV header naming a column twice, a Hugging Face
folder whose ``state.json`` is malformed or names data files outside the folder, a Parquet or Arrow
file whose footer or schema cannot be read. A value nested deeper than ``MAX_NESTING`` levels is an
undecodable row: Python's own recursion (``json``, the quarantine's ``json.dumps``) fails near 1000.
"""

from __future__ import annotations

import csv
import json
import operator
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from align_core.errors import UNDECODABLE, WRONG_TYPE, RowRejected, UsageError
from align_core.io import sha256_file, sha256_tree

FORMATS = ("jsonl", "json", "csv", "parquet", "arrow", "hf_disk")
JSONL_CHUNK_BYTES = 4 << 20
ARROW_CHUNK_ROWS = 20_000
# ... and at most about this many bytes: 20k rows of images (~100 KB each) would be 2 GB per chunk, times
# the chunks in flight. Text rows stay under it (6.5 KB a row), so their chunking is as before.
ARROW_CHUNK_BYTES = 128 << 20
ARROW_FILE_MAGIC = b"ARROW1"
UTF8_BOM = b"\xef\xbb\xbf"
MAX_NESTING = 100  # lists/objects inside each other; real rows nest < 10 deep
FILE_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


@dataclass(frozen=True)
class SourceInfo:
    path: str
    format: str
    sha256: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "sha256": self.sha256, "bytes": self.bytes}


@dataclass
class Chunk:
    """A slice of the source: raw JSON Lines bytes, an Arrow record batch, or parsed rows."""

    start_index: int
    jsonl: bytes | None = None
    batch: pa.RecordBatch | None = None
    rows: list[Any] | None = None
    text_as_binary: bool = False  # CSV: every value arrives as bytes and is decoded per value


def detect_format(path: str | os.PathLike) -> str:
    """The source format from the folder layout, the suffix, or the first bytes."""
    path = Path(path)
    _require_file_or_folder(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file():
            splits = _read_json_object(path / "dataset_dict.json", "DatasetDict").get("splits")
            names = ", ".join(map(str, splits)) if isinstance(splits, list) else "see its dataset_dict.json"
            raise UsageError(f"{path} is a DatasetDict; point at one split folder: {names}")
        if (path / "state.json").is_file():
            return "hf_disk"
        raise UsageError(f"{path} is a folder but not a Hugging Face save_to_disk dataset (no state.json)")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".arrow", ".feather", ".ipc"):
        return "arrow"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if head.startswith((ARROW_FILE_MAGIC, b"\xff\xff\xff\xff")):
        return "arrow"
    if head.startswith(b"PAR1"):
        return "parquet"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"["):
        return "json"
    if stripped.startswith(b"{"):
        _require_json_lines(path, stripped)
        return "jsonl"  # many ".json" files on the hub are JSON Lines
    raise UsageError(f"cannot tell the format of {path}; expected one of: {', '.join(FORMATS)}")


def _require_json_lines(path: Path, head: bytes) -> None:
    """A file opening with '{' may also be one JSON object (e.g. ``{"data": [...]}`` pretty-printed);
    read as lines, every line would be quarantined, so a first line that is not JSON is an error."""
    first_line, newline, _ = head.partition(b"\n")
    if not newline:  # the first line is longer than the sniffed head: nothing to tell it by
        return
    try:
        orjson.loads(first_line)
    except orjson.JSONDecodeError:
        raise UsageError(
            f"{path}: neither a JSON array nor JSON Lines (its first line is not a JSON value); "
            "if it is one object holding the rows, save the rows as an array or as JSON Lines "
            "(or pass the format 'jsonl' to read it line by line anyway)"
        ) from None


def _require_file_or_folder(path: Path) -> None:
    """A source is read twice (hashed, then formatted): a pipe or device would block or never end."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"source {str(path)!r} does not exist") from None
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        kind = FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise UsageError(f"{path} is {kind}; a source must be a regular file or a save_to_disk folder")


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:  # ValueError: invalid JSON or UTF-8
        raise UsageError(f"{path}: not a readable {what} file ({error})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: a {what} file holds a JSON object, got {type(value).__name__}")
    return value


def _hf_data_files(path: Path) -> list[Path]:
    """The data files ``state.json`` lists, each a regular file inside the folder: one outside it would
    be read from elsewhere and escape the folder's fingerprint."""
    state_path = path / "state.json"
    entries = _read_json_object(state_path, "Hugging Face state.json").get("_data_files")
    if not isinstance(entries, list) or not entries:
        raise UsageError(f"{state_path}: '_data_files' must be a non-empty list of {{\"filename\": ...}} entries")
    root = path.resolve()
    files = []
    for number, entry in enumerate(entries):
        name = entry.get("filename") if isinstance(entry, dict) else None
        where = f"{state_path}: _data_files[{number}]"
        if not isinstance(name, str) or not name:
            raise UsageError(f"{where} must be {{\"filename\": \"<a file in the folder>\"}}, got {repr(entry)[:80]}")
        data_file = path / name
        if Path(name).is_absolute() or not data_file.resolve().is_relative_to(root):
            raise UsageError(f"{where}: {name!r} is outside the dataset folder; only files inside {path} are read")
        if not data_file.exists():
            raise UsageError(f"{where}: {name!r} does not exist")
        if not data_file.resolve().is_file():
            raise UsageError(f"{where}: {name!r} is not a regular file")
        files.append(data_file)
    return files


def check_source(path: str | os.PathLike, source_format: str | None = None) -> str:
    """The format of ``path`` once everything that can be checked without reading rows holds.

    Raises ``UsageError`` (one line) for a missing path, a pipe or device, an unknown format or one that
    does not fit (a folder read as a file, or the reverse), a malformed Hugging Face folder, a CSV
    header that names a column twice, a JSON source that is not an array, or a Parquet or Arrow file
    whose footer or schema cannot be read (a truncated file).
    """
    path = Path(path)
    _require_file_or_folder(path)
    source_format = source_format or detect_format(path)
    if source_format not in FORMATS:
        raise UsageError(f"unknown source format {source_format!r}; expected one of: {', '.join(FORMATS)}")
    if source_format == "hf_disk":
        if not (path / "state.json").is_file():
            raise UsageError(f"{path}: format 'hf_disk' reads a save_to_disk folder holding state.json")
        for data_file in _hf_data_files(path):
            _open_readable(data_file, "arrow", lambda file=data_file: _check_arrow(file))
        return source_format
    if path.is_dir():
        raise UsageError(f"{path} is a folder; format {source_format!r} reads a file")
    if source_format == "parquet":
        _open_readable(path, source_format, lambda: pq.ParquetFile(path).schema_arrow)
    elif source_format == "arrow":
        _open_readable(path, source_format, lambda: _check_arrow(path))
    elif source_format == "csv":
        _csv_header(path)
    elif source_format == "json":
        with open(path, "rb") as handle:
            if not handle.read(4096).lstrip(UTF8_BOM + b" \t\r\n").startswith(b"["):
                raise UsageError(f"{path}: a JSON source must be an array of objects (or JSON Lines: format 'jsonl')")
    return source_format


def _open_readable(path: Path, source_format: str, open_it) -> None:
    try:
        open_it()
    except (pa.ArrowException, OSError) as error:
        raise UsageError(f"cannot read {path} as {source_format}: {_one_line(error)}") from None


def _one_line(error: BaseException) -> str:
    """A library's error message on one printable line (pyarrow's may span several, or quote a damaged byte)."""
    return " ".join("".join(char if char.isprintable() else " " for char in str(error)).split())


def _check_arrow(path: Path) -> None:
    """Open an Arrow IPC file (its footer) or walk a stream's messages: memory-mapped, so a truncated
    stream is found without reading the data."""
    with pa.memory_map(str(path)) as source:
        is_file = source.read(6) == ARROW_FILE_MAGIC
        source.seek(0)
        if is_file:
            pa.ipc.open_file(source)
        else:
            for _ in pa.ipc.open_stream(source):
                pass


def fingerprint_source(path: str | os.PathLike, source_format: str | None = None) -> SourceInfo:
    """sha256 of the source's bytes (a folder: every file, by relative path), once ``check_source`` passed."""
    path = Path(path)
    source_format = check_source(path, source_format)
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        return SourceInfo(str(path.absolute()), source_format, sha256_tree(path, files), sum(p.stat().st_size for p in files))
    return SourceInfo(str(path.absolute()), source_format, sha256_file(path), path.stat().st_size)


def stat_key(path: str | os.PathLike) -> str:
    """A cheap change detector (sizes and mtimes) for caching the fingerprint between runs."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    parts = []
    for file in files:
        stat = file.stat()
        parts.append(f"{file}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}")
    return "|".join(parts)


@dataclass(frozen=True)
class ChunkRef:
    """Where a chunk lies, so that whoever formats it reads it (a worker process, a Dask worker): a byte
    range of a JSON Lines file, or rows of one record batch of an Arrow file. Sources that cannot be
    entered mid-way (a JSON array, CSV, Parquet, an Arrow stream) carry the chunk itself in ``chunk``."""

    path: str
    format: str
    start_index: int
    offset: int = 0  # jsonl: first byte; arrow: first row within the record batch
    length: int = 0  # jsonl: bytes; arrow: rows
    batch: int = 0  # arrow: the record batch's number in the file
    chunk: Chunk | None = None


def iter_chunks(path: str | os.PathLike, source_format: str) -> Iterator[Chunk]:
    """Stream the source as chunks of bounded size, in source order."""
    for ref in plan_chunks(path, source_format):
        yield read_chunk(ref)


def plan_chunks(path: str | os.PathLike, source_format: str) -> Iterator[ChunkRef]:
    """The source's chunks in source order, as references where the format allows (JSON Lines, Arrow
    files): the same chunks ``iter_chunks`` reads, so a worker reading its reference formats the same rows."""
    path = Path(path)
    _require_file_or_folder(path)
    with _read_errors(path, source_format):
        if source_format == "jsonl":
            for start_index, offset, length in _jsonl_ranges(path):
                yield ChunkRef(str(path), source_format, start_index, offset, length)
        elif splits_by_reference(path, source_format):
            yield from _arrow_file_refs(path)
        else:
            readers = {"json": _json_array_chunks, "csv": _csv_chunks, "parquet": _parquet_chunks}
            readers |= {"arrow": _arrow_chunks, "hf_disk": _hf_disk_chunks}
            for chunk in readers[source_format](path):
                yield ChunkRef(str(path), source_format, chunk.start_index, chunk=chunk)


def splits_by_reference(path: str | os.PathLike, source_format: str) -> bool:
    """Whether ``plan_chunks`` gives references (JSON Lines, an Arrow file) rather than the chunks themselves."""
    return source_format == "jsonl" or (source_format == "arrow" and _is_arrow_file(Path(path)))


def read_chunk(ref: ChunkRef) -> Chunk:
    """The chunk a reference points at."""
    if ref.chunk is not None:
        return ref.chunk
    with _read_errors(Path(ref.path), ref.format):
        if ref.format == "jsonl":
            with open(ref.path, "rb") as handle:
                handle.seek(ref.offset)
                return Chunk(start_index=ref.start_index, jsonl=handle.read(ref.length))
        reader = pa.ipc.open_file(pa.memory_map(ref.path))  # not closed: the batch's buffers keep the mapping
        return Chunk(start_index=ref.start_index, batch=reader.get_batch(ref.batch).slice(ref.offset, ref.length))


class _read_errors:
    """A reader's error (invalid JSON, UTF-8, a damaged page) as a one-line ``UsageError``."""

    def __init__(self, path: Path, source_format: str):
        self.path, self.format = path, source_format

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> None:
        if isinstance(error, (pa.ArrowException, OSError, ValueError, csv.Error)):  # ValueError: invalid JSON or UTF-8
            raise UsageError(f"cannot read {self.path} as {self.format}: {_one_line(error)}") from None


def _jsonl_ranges(path: Path) -> Iterator[tuple[int, int, int]]:
    """``(first line number, byte offset, byte length)`` of each chunk: whole lines, about
    ``JSONL_CHUNK_BYTES`` each (a longer line is one chunk), the byte-order mark left out."""
    line_number = 0
    block = bytearray(JSONL_CHUNK_BYTES)  # read into, not allocated per block: the planner reads the whole file
    with open(path, "rb") as handle:
        head = handle.read(len(UTF8_BOM))
        start = len(UTF8_BOM) if head == UTF8_BOM else 0  # a byte-order mark is not part of the first row
        position = len(head)
        while size := handle.readinto(block):
            last = block.rfind(b"\n", 0, size)
            position += size
            if last < 0:  # one line longer than a chunk: keep reading
                continue
            end = position - size + last + 1
            yield line_number, start, end - start
            line_number += block.count(b"\n", 0, size)  # the lines before ``end``: none after the last newline
            start = end
        handle.seek(start)
        if handle.read().strip():
            yield line_number, start, position - start


def _json_array_chunks(path: Path, rows_per_chunk: int = 5_000) -> Iterator[Chunk]:
    """Stream the objects of a top-level JSON array without loading the whole file."""
    decoder = json.JSONDecoder()
    index = 0
    rows: list[Any] = []
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        buffer = handle.read(JSONL_CHUNK_BYTES).lstrip("\ufeff \t\r\n")
        if not buffer.startswith("["):
            raise UsageError(f"{path}: a JSON source must be an array of objects or JSON Lines")
        position = 1
        at_eof = False
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n,":
                position += 1
            if position < len(buffer) and buffer[position] == "]":
                break
            try:
                value, end = decoder.raw_decode(buffer, position)
                # A number or literal ending exactly at the buffer's end may go on in the next read.
                complete = end < len(buffer) or at_eof
                if complete and _may_nest_too_deep(buffer, position, end) and _nesting_depth(value) > MAX_NESTING:
                    value = _too_deep(index, buffer[position:end])
            except RecursionError:  # nested too deep for Python's decoder: find the item's end by hand
                end = _value_end(buffer, position)
                complete = end is not None
                value = _too_deep(index, buffer[position:end]) if complete else None
            except json.JSONDecodeError as error:
                if at_eof:
                    raise UsageError(f"{path}: invalid JSON array near item {index}: {error.msg}") from None
                complete = False
            if not complete:
                if at_eof:
                    raise UsageError(f"{path}: invalid JSON array near item {index}: it ends inside the item")
                more = handle.read(JSONL_CHUNK_BYTES)
                at_eof = not more
                buffer = buffer[position:] + more
                position = 0
                continue
            rows.append(value)
            index += 1
            position = end
            if len(rows) >= rows_per_chunk:
                yield Chunk(start_index=index - len(rows), rows=rows)
                rows = []
            if position > JSONL_CHUNK_BYTES:  # drop consumed text so memory stays bounded
                buffer, position = buffer[position:], 0
        _require_end_of_array(path, buffer[position + 1 :], handle, index)
    if rows:
        yield Chunk(start_index=index - len(rows), rows=rows)


def _require_end_of_array(path: Path, rest: str, handle, items: int) -> None:
    """Anything but whitespace after the closing ``]`` would be rows silently left unread."""
    while True:
        if rest.strip():
            raise UsageError(f"{path}: text after the JSON array's closing ']' (after item {items - 1}); expected one array")
        rest = handle.read(JSONL_CHUNK_BYTES)
        if not rest:
            return


@dataclass(frozen=True)
class RejectedValue:
    """A JSON array item rejected while reading; ``raw`` is its text."""

    rejection: RowRejected
    raw: str


def _too_deep(index: int, text: str) -> RejectedValue:
    return RejectedValue(RowRejected(UNDECODABLE, f"row {index}: nested deeper than {MAX_NESTING} levels"), text)


def _may_nest_too_deep(text: str | bytes, start: int = 0, end: int | None = None) -> bool:
    """A cheap bound: a value cannot nest deeper than its count of opening brackets."""
    opening = (b"[", b"{") if isinstance(text, bytes) else ("[", "{")
    return text.count(opening[0], start, end) + text.count(opening[1], start, end) > MAX_NESTING


def _nesting_depth(value: Any) -> int:
    """Levels of lists/objects inside each other (0 for a scalar), walked without recursion; stops
    counting once past ``MAX_NESTING``."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= MAX_NESTING:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is not None:
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _value_end(text: str, start: int) -> int | None:
    """The end of the JSON value opening at ``text[start]`` (a bracket), by matching brackets outside
    strings; None when the text ends first."""
    depth, position, in_string = 0, start, False
    while position < len(text):
        char = text[position]
        if in_string:
            if char == "\\":
                position += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
            if depth == 0:
                return position + 1
        position += 1
    return None


def _csv_delimiter(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def _csv_header(path: Path) -> list[str]:
    """The header's column names; a name given twice is an error (one column's values would be lost)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="replace") as handle:  # -sig: Excel writes a BOM
            header = next(csv.reader(handle, delimiter=_csv_delimiter(path)), None)
    except csv.Error as error:
        raise UsageError(f"cannot read {path} as csv: {_one_line(error)}") from None
    if not header:
        raise UsageError(f"{path}: CSV has no header row")
    repeated = [name for position, name in enumerate(header) if name in header[:position]]
    if repeated:
        names = ", ".join(repr(name) for name in dict.fromkeys(repeated))
        raise UsageError(f"{path}: the CSV header names column {names} more than once; every column needs its own name")
    return header


def _csv_chunks(path: Path) -> Iterator[Chunk]:
    # Every column as binary: CSV values are text, and decoding per value lets one row with
    # invalid UTF-8 be quarantined instead of failing the whole block.
    header = _csv_header(path)
    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(block_size=JSONL_CHUNK_BYTES),
        parse_options=pa_csv.ParseOptions(delimiter=_csv_delimiter(path), newlines_in_values=True),
        convert_options=pa_csv.ConvertOptions(
            column_types={name: pa.binary() for name in header},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    index = 0
    for batch in reader:
        yield Chunk(start_index=index, batch=batch, text_as_binary=True)
        index += batch.num_rows


def _rows_per_chunk(rows: int, nbytes: int) -> int:
    """Rows per chunk: ``ARROW_CHUNK_ROWS``, fewer when rows are large (media) so a chunk stays near ``ARROW_CHUNK_BYTES``."""
    if rows <= 0 or nbytes <= ARROW_CHUNK_BYTES * rows / ARROW_CHUNK_ROWS:
        return ARROW_CHUNK_ROWS
    return max(1, int(ARROW_CHUNK_BYTES * rows / nbytes))


def _parquet_chunks(path: Path) -> Iterator[Chunk]:
    index = 0
    parquet = pq.ParquetFile(path)
    metadata = parquet.metadata
    uncompressed = sum(metadata.row_group(number).total_byte_size for number in range(metadata.num_row_groups))
    for batch in parquet.iter_batches(batch_size=_rows_per_chunk(metadata.num_rows, uncompressed)):
        yield Chunk(start_index=index, batch=batch)
        index += batch.num_rows


def _is_arrow_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(ARROW_FILE_MAGIC)) == ARROW_FILE_MAGIC


def _arrow_file_refs(path: Path) -> Iterator[ChunkRef]:
    """The chunks of an Arrow IPC file as row ranges of its record batches (the footer says where each is)."""
    index = 0
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for number in range(reader.num_record_batches):
            batch = reader.get_batch(number)
            rows_per_chunk = _rows_per_chunk(batch.num_rows, batch.nbytes)
            for offset in range(0, batch.num_rows, rows_per_chunk):
                rows = min(rows_per_chunk, batch.num_rows - offset)
                yield ChunkRef(str(path), "arrow", index, offset, rows, number)
                index += rows


def _arrow_batches(path: Path) -> Iterator[pa.RecordBatch]:
    with pa.memory_map(str(path)) as source:
        if source.read(6) == ARROW_FILE_MAGIC:
            source.seek(0)
            reader = pa.ipc.open_file(source)
            for number in range(reader.num_record_batches):
                yield reader.get_batch(number)
        else:
            source.seek(0)
            yield from pa.ipc.open_stream(source)


def _arrow_chunks(path: Path, start: int = 0) -> Iterator[Chunk]:
    index = start
    for batch in _arrow_batches(path):
        rows_per_chunk = _rows_per_chunk(batch.num_rows, batch.nbytes)  # memory-mapped: slices copy nothing
        for offset in range(0, batch.num_rows, rows_per_chunk):
            piece = batch.slice(offset, rows_per_chunk)
            yield Chunk(start_index=index, batch=piece)
            index += piece.num_rows


def _hf_disk_chunks(path: Path) -> Iterator[Chunk]:
    index = 0
    for data_file in _hf_data_files(path):
        for chunk in _arrow_chunks(data_file, start=index):
            yield chunk
            index = chunk.start_index + chunk.batch.num_rows


# Turning chunks into rows (runs in materialisation workers).


def chunk_rows(chunk: Chunk) -> list[tuple[int, dict | RowRejected, Any]]:
    """``(source_index, row or RowRejected, raw for the quarantine)`` for every row of a chunk."""
    if chunk.jsonl is not None:
        return _jsonl_rows(chunk)
    if chunk.rows is not None:
        return [_array_item(chunk.start_index + i, value) for i, value in enumerate(chunk.rows)]
    return _batch_rows(chunk)


def _array_item(index: int, value: Any) -> tuple[int, dict | RowRejected, Any]:
    if isinstance(value, RejectedValue):
        return index, value.rejection, value.raw
    return index, _require_object(value), value


def _require_object(value: Any) -> dict | RowRejected:
    if isinstance(value, dict):
        return value
    return RowRejected(WRONG_TYPE, f"row must be a JSON object, got {type(value).__name__}")


def _jsonl_rows(chunk: Chunk) -> list[tuple[int, dict | RowRejected, Any]]:
    lines = chunk.jsonl.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()  # the newline ending the last line
    clean = _clean_jsonl_rows(chunk.jsonl, lines, chunk.start_index)
    return clean if clean is not None else _jsonl_rows_one_by_one(lines, chunk.start_index)


def _clean_jsonl_rows(data: bytes, lines: list[bytes], start_index: int) -> list[tuple[int, dict, dict]] | None:
    """The rows of a chunk whose every line is a JSON object nested at most ``MAX_NESTING`` deep (the usual
    case), decoded without a Python loop per line; None when any line is otherwise (blank, invalid, deep)."""
    try:
        values = list(map(orjson.loads, lines))  # a blank line is invalid JSON too
    except orjson.JSONDecodeError:
        return None
    if not values or set(map(type, values)) != {dict}:
        return None
    # Each line holds at least its own '{', so a line with more than MAX_NESTING brackets needs the chunk
    # to hold MAX_NESTING more brackets than lines; only then are the lines counted one by one.
    as_bytes = np.frombuffer(data, np.uint8)
    extra_brackets = np.count_nonzero(as_bytes == ord("{")) + np.count_nonzero(as_bytes == ord("[")) - len(lines)
    per_line = map(operator.add, map(bytes.count, lines, repeat(b"[")), map(bytes.count, lines, repeat(b"{")))
    if extra_brackets >= MAX_NESTING and max(per_line) > MAX_NESTING:
        return None
    return list(zip(range(start_index, start_index + len(values)), values, values))


def _jsonl_rows_one_by_one(lines: list[bytes], start_index: int) -> list[tuple[int, dict | RowRejected, Any]]:
    rows = []
    append, loads = rows.append, orjson.loads  # locals: this loop runs once per line of every source
    index = start_index - 1
    for line in lines:
        index += 1
        if not line or line.isspace():
            continue
        try:
            value = loads(line)
        except orjson.JSONDecodeError as error:
            raw = line.decode("utf-8", errors="replace")
            append((index, RowRejected(UNDECODABLE, f"line {index}: not valid JSON or UTF-8 ({error})"), raw))
            continue
        if _may_nest_too_deep(line) and _nesting_depth(value) > MAX_NESTING:
            rejection = RowRejected(UNDECODABLE, f"line {index}: nested deeper than {MAX_NESTING} levels")
            append((index, rejection, line.decode("utf-8", errors="replace")))
            continue
        append((index, value if type(value) is dict else _require_object(value), value))
    return rows


def _batch_rows(chunk: Chunk) -> list[tuple[int, dict | RowRejected, Any]]:
    batch = chunk.batch
    try:
        values = batch.to_pylist()
    except (UnicodeDecodeError, pa.ArrowException):
        values = None
    rows = []
    for offset in range(batch.num_rows):
        index = chunk.start_index + offset
        if values is not None:
            value = values[offset]
        else:  # an invalid string somewhere in the batch: find the row(s) one by one
            try:
                value = batch.slice(offset, 1).to_pylist()[0]
            except (UnicodeDecodeError, pa.ArrowException) as error:
                rows.append((index, RowRejected(UNDECODABLE, f"row {index}: undecodable text ({error})"), {}))
                continue
        if chunk.text_as_binary:
            value, problem = _decode_text_values(value)
            if problem:
                raw = {k: v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for k, v in value.items()}
                rows.append((index, RowRejected(UNDECODABLE, f"row {index}: field {problem!r} is not valid UTF-8"), raw))
                continue
        rows.append((index, value, value))
    return rows


def _decode_text_values(row: dict) -> tuple[dict, str | None]:
    decoded = {}
    for key, value in row.items():
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                return row, key
        decoded[key] = value
    return decoded, None


def read_source_rows(path: str | os.PathLike, source_format: str | None = None) -> Iterator[tuple[int, dict | RowRejected, Any]]:
    """Every row of a source in order (convenience for tools and tests; the materialiser uses chunks)."""
    source_format = source_format or detect_format(path)
    for chunk in iter_chunks(path, source_format):
        yield from chunk_rows(chunk)


__all__ = [
    "FORMATS",
    "MAX_NESTING",
    "Chunk",
    "ChunkRef",
    "SourceInfo",
    "check_source",
    "chunk_rows",
    "detect_format",
    "fingerprint_source",
    "iter_chunks",
    "plan_chunks",
    "read_chunk",
    "read_source_rows",
    "splits_by_reference",
    "stat_key",
]
