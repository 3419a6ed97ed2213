"""Materialise a raw source into a content-addressed dataset folder of conversation shards.

    source --(chunks)--> template.format per row --> shards + quarantine --> manifest --> publish

The folder is ``OUT_ROOT/<digest>/`` where the digest covers the source bytes, the template's name
and code version, its options, the kind, the shard layout and the schema version: identical
inputs are a cache hit (nothing rewritten), one changed byte, template or option is a new folder.
Everything is built in a hidden staging folder and renamed into place after the manifest is
written, so a killed run never leaves a folder that looks complete.

A chunk (~4 MB of JSON Lines or 20k rows) is formatted by the template's batch method where it has
one (the rows it is sure of, column-wise) and its row method for the rest, with the same bytes either
way. Large sources are formatted in worker processes that read their own chunks; shards are written
in source order by the parent, in a thread beside the formatting, so the output is identical whatever
the worker count. On a cluster the chunks are grouped into parts (``plan_parts``, ``format_part``,
``merge_parts``), formatted anywhere and merged in order by the same writer: the same bytes again.
This module is plain Python; ``tasks/materialize.py`` wraps its steps as Prefect tasks.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import gc
import multiprocessing
import os
import shutil
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import align_core
from align_core.errors import TEMPLATE_EXCEPTION, UNDECODABLE, RowRejected, UsageError
from align_core.io import publish_dir, remove_stale_staging, sha256_json, staging_dir
from align_core.media import MEDIA_CODE_VERSION, MediaBlob, media_root_digest, resolve_sample_media
from align_core.shards.manifest import MANIFEST_NAME, Manifest, read_manifest
from align_core.shards.media_store import MediaStoreWriter
from align_core.shards.schema import SCHEMA_VERSION, Kind, parse_kind, shard_schema
from align_core.shards.writer import DEFAULT_ROWS_PER_SHARD, QuarantineWriter, SampleBatch, ShardWriter, sample_id
from align_core.sources import (
    Chunk,
    ChunkRef,
    SourceInfo,
    chunk_rows,
    fingerprint_source,
    plan_chunks,
    read_chunk,
    splits_by_reference,
)
from align_core.templates import get_template, load_template_module
from align_core.templates.base import FormattedBatch, Template

# Below this many source bytes, starting worker processes costs more than it saves.
PARALLEL_MIN_BYTES = 32 << 20


@dataclass(frozen=True)
class MaterializeSpec:
    """What to build; together with the source digest it determines the dataset digest."""

    template: str
    kind: Kind
    template_options: dict[str, Any] = field(default_factory=dict)
    template_module: str | None = None
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    media: tuple[str, ...] = ()
    media_root: str | None = None  # relative media paths resolve here; its files' digests enter the dataset digest

    @classmethod
    def checked(
        cls,
        template: str,
        kind: str | Kind,
        template_options: dict[str, Any] | None = None,
        template_module: str | None = None,
        rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
        media_root: str | os.PathLike | None = None,
    ) -> MaterializeSpec:
        """A spec whose template, options and kind are known to work: bad usage fails here,
        before any source is hashed or any server started."""
        if rows_per_shard < 1:
            raise UsageError("rows_per_shard must be at least 1")
        if media_root is not None and not Path(media_root).is_dir():
            raise UsageError(f"media root {media_root} is not a folder")
        root = str(Path(media_root).absolute()) if media_root is not None else None
        spec = cls(template, parse_kind(kind), dict(template_options or {}), template_module, rows_per_shard, media_root=root)
        return replace(spec, media=spec.load_template().media_types())

    def load_template(self) -> Template:
        if self.template_module:
            load_template_module(self.template_module)
        template = get_template(self.template, **self.template_options)
        if self.kind not in template.supported_kinds():
            supported = ", ".join(k.value for k in template.supported_kinds())
            raise UsageError(f"template {self.template!r} cannot produce {self.kind.value!r} samples; it supports: {supported}")
        return template


@dataclass
class MaterializeResult:
    path: Path
    manifest: Manifest
    cache_hit: bool


def dataset_digest(source: SourceInfo, spec: MaterializeSpec, template: Template) -> str:
    return sha256_json(
        {
            "source_sha256": source.sha256,
            "source_format": source.format,
            "template": spec.template,
            "template_code_version": template.code_version,
            "template_options": template.settings,
            "kind": spec.kind.value,
            "rows_per_shard": spec.rows_per_shard,
            "media": list(spec.media),
            "schema_version": SCHEMA_VERSION,
            # only for media datasets, so text datasets keep their digests
            **(_media_digest_fields(spec) if spec.media else {}),
        }
    )[:32]


def _media_digest_fields(spec: MaterializeSpec) -> dict[str, str]:
    """What decides a media dataset's bytes beyond the source: the media code and the media root's files."""
    fields = {"media_code_version": MEDIA_CODE_VERSION}
    if spec.media_root:
        fields["media_root_sha256"] = media_root_digest(spec.media_root)
    return fields


def find_existing(out_root: str | os.PathLike, digest: str) -> Manifest | None:
    """The manifest of an already published dataset with this digest, if any."""
    path = Path(out_root) / digest
    if not (path / MANIFEST_NAME).is_file():
        return None
    try:
        return read_manifest(path)
    except UsageError:
        return None


# Formatting (runs in worker processes; module-level so it pickles).

_worker_templates: dict[tuple, Template] = {}


def _template_for(spec: MaterializeSpec) -> Template:
    key = (spec.template, spec.template_module, tuple(sorted(spec.template_options.items())))
    if key not in _worker_templates:
        _worker_templates[key] = spec.load_template()
    return _worker_templates[key]


@dataclass
class FormattedChunk:
    batch: pa.RecordBatch | None
    quarantine: list[tuple[int, str, str, Any]]  # (source_index, reason, detail, raw)
    media: dict[str, MediaBlob] = field(default_factory=dict)  # sha256 -> blob, first use first


def format_chunk(
    chunk: Chunk, spec: MaterializeSpec, source_sha256: str, batch_formatting: bool = True
) -> FormattedChunk:
    """Format every row of a chunk: good rows into one record batch, bad rows into quarantine tuples.

    With ``batch_formatting`` the template's batch method (if it has one) formats the rows it is sure of
    column-wise and the row method the rest; the record batch is the same either way."""
    # A chunk allocates ~10 small dicts/lists per row and frees them by refcount; the cyclic GC would
    # rescan them over and over (measured: 4x slower formatting), so it pauses for the chunk.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _format_chunk(chunk, spec, source_sha256, batch_formatting)
    finally:
        if gc_was_enabled:
            gc.enable()


def format_chunk_at(
    ref: ChunkRef, spec: MaterializeSpec, source_sha256: str, batch_formatting: bool = True
) -> FormattedChunk:
    """Read the chunk ``ref`` points at and format it (``format_chunk``)."""
    return format_chunk(read_chunk(ref), spec, source_sha256, batch_formatting)


def _format_chunk(chunk: Chunk, spec: MaterializeSpec, source_sha256: str, batch_formatting: bool) -> FormattedChunk:
    template = _template_for(spec)
    schema = shard_schema(spec.kind, spec.media)
    samples = SampleBatch(spec.kind, spec.media)
    quarantine: list[tuple[int, str, str, Any]] = []
    media: dict[str, MediaBlob] = {}
    rows = chunk_rows(chunk)
    batch, batch_rows = _format_batch(template, spec, rows) if batch_formatting else (None, [])
    done = 0  # rows before this position are in ``samples`` or ``quarantine``, in source order
    for start, stop in _runs(batch_rows):  # batch rows ``start:stop`` sit at consecutive positions
        first = batch_rows[start]
        _format_rows(template, spec, rows[done:first], source_sha256, samples, quarantine, media)
        done = first + stop - start
        _add_batch_run(samples, batch, [index for index, _, _ in rows[first:done]], start, source_sha256)
    _format_rows(template, spec, rows[done:], source_sha256, samples, quarantine, media)
    if not len(samples):
        return FormattedChunk(None, quarantine)
    try:
        return FormattedChunk(samples.to_record_batch(schema), quarantine, media)
    except (pa.ArrowException, UnicodeError):
        return _format_rows_individually(chunk, spec, source_sha256, schema, quarantine)


def _format_rows(template: Template, spec: MaterializeSpec, rows: list, source_sha256: str, samples, quarantine, media):
    """The row method on each of ``rows``: good ones into ``samples``, bad ones into ``quarantine``."""
    for index, row, raw in rows:
        if isinstance(row, RowRejected):
            quarantine.append((index, row.reason, row.detail, raw))
            continue
        try:
            sample = _format_sample(template, spec, row, media)
        except RowRejected as rejected:
            quarantine.append((index, rejected.reason, rejected.detail, raw))
            continue
        except UsageError:
            raise
        except Exception as error:  # noqa: BLE001  (a bug in a user template must not lose the rest of the data)
            quarantine.append((index, TEMPLATE_EXCEPTION, f"{type(error).__name__}: {error}", raw))
            continue
        samples.add(sample_id(source_sha256, index), index, sample)


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """``(start, stop)`` of each run of consecutive values in ascending ``positions``."""
    if not positions:
        return []
    breaks = (np.flatnonzero(np.diff(positions) != 1) + 1).tolist()
    bounds = [0, *breaks, len(positions)]
    return list(pairwise(bounds))


def _format_batch(template: Template, spec: MaterializeSpec, rows: list) -> tuple[FormattedBatch | None, list[int]]:
    """The template's batch method over the chunk's decoded rows: what it formatted, and at which
    positions of ``rows``. Any error leaves every row to the row method."""
    positions = [position for position, (_, row, _) in enumerate(rows) if type(row) is dict]
    try:
        batch = template.format_batch(spec.kind, [rows[position][1] for position in positions])
    except Exception:  # noqa: BLE001  (the row method then formats, or quarantines with its reason)
        return None, []
    if batch is None:
        return None, []
    return batch, [positions[position] for position in batch.positions]


def _add_batch_run(samples: SampleBatch, batch: FormattedBatch, indices: list[int], start: int, source_sha256: str):
    """Add batch rows ``start`` .. ``start + len(indices)`` (source indices ``indices``) to ``samples``."""
    end = start + len(indices)
    samples.add_turns(
        [sample_id(source_sha256, index) for index in indices],
        indices,
        {column: turns.slice(start, end) for column, turns in batch.conversations.items()},
        batch.metas[start:end],
        batch.labels[start:end] if batch.labels is not None else None,
    )


def _format_sample(template: Template, spec: MaterializeSpec, row: dict, media: dict[str, MediaBlob]) -> dict[str, Any]:
    """One row as a sample; its media read, checked and referenced by sha256 (the bytes go to ``media``).
    A row's media enter ``media`` only once the whole row is good, so a rejected row stores nothing."""
    sample = template.format(spec.kind, row)
    if spec.media:
        row_media: dict[str, MediaBlob] = {}
        sample = resolve_sample_media(sample, spec.media, spec.media_root, row_media)
        for sha256, blob in row_media.items():
            media.setdefault(sha256, blob)
    return sample


def _format_rows_individually(chunk, spec, source_sha256, schema, quarantine) -> FormattedChunk:
    """Slow path when some text cannot be stored as UTF-8 (e.g. lone surrogates in JSON escapes)."""
    template = _template_for(spec)
    rejected_indices = {item[0] for item in quarantine}
    good, media = [], {}
    for index, row, raw in chunk_rows(chunk):
        if index in rejected_indices:
            continue
        single, row_media = SampleBatch(spec.kind, spec.media), {}
        single.add(sample_id(source_sha256, index), index, _format_sample(template, spec, row, row_media))
        try:
            good.append(single.to_record_batch(schema))
            media.update((sha, blob) for sha, blob in row_media.items() if sha not in media)
        except (pa.ArrowException, UnicodeError) as error:
            quarantine.append((index, UNDECODABLE, f"row {index}: text is not valid UTF-8 ({error})", raw))
    quarantine.sort(key=lambda item: item[0])
    batch = pa.Table.from_batches(good, schema=schema).combine_chunks().to_batches()[0] if good else None
    return FormattedChunk(batch, quarantine, media)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _init_worker(template_module: str | None, parent_pid: int) -> None:
    _die_with_parent(parent_pid)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if template_module:
        load_template_module(template_module)


def _die_with_parent(parent_pid: int) -> None:
    """A worker must not outlive the materialise that started it (killed, it would leave the worker
    waiting forever, reparented to init). On Linux the kernel SIGKILLs the worker when its parent
    dies (``PR_SET_PDEATHSIG``; strictly, when the parent's thread that spawned it exits, and the
    pool is spawned and used from one thread); elsewhere a thread watches the parent's pid."""
    armed = False
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if not armed:
        threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True, name="parent-watchdog").start()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)


def _exit_when_orphaned(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)


def _formatted_chunks(source: SourceInfo, spec: MaterializeSpec, workers: int, batch_formatting: bool = True):
    """Formatted chunks in source order, from a bounded pipeline of worker processes."""
    refs = plan_chunks(source.path, source.format)
    if workers <= 1:
        for ref in refs:
            yield format_chunk_at(ref, spec, source.sha256, batch_formatting)
        return
    # spawn, not fork: the parent may run Prefect's threads, and forking a threaded process can deadlock.
    context = multiprocessing.get_context("spawn")
    init = (spec.template_module, os.getpid())
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=init) as pool:
        pending: deque[Future] = deque()
        for ref in refs:  # a reference, not the bytes: each worker reads its own chunk
            pending.append(pool.submit(format_chunk_at, ref, spec, source.sha256, batch_formatting))
            if len(pending) >= 2 * workers:  # bounded read-ahead keeps memory flat
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def default_workers(source: SourceInfo) -> int:
    """Formatting processes: one core is left to the parent, which writes (zstd) while they format; on two
    cores one process formatting beside the writing thread beats two (measured: 12.4 vs 17.1 s of CPU
    for 2M Alpaca rows, the difference being the workers' start and the record batches sent back)."""
    if source.bytes < PARALLEL_MIN_BYTES:
        return 1
    return max(1, min(len(os.sched_getaffinity(0)) - 1, 8))


def _write_shards(
    spec: MaterializeSpec, source: SourceInfo, staging: Path, formatted_chunks: Iterable[FormattedChunk], on_progress
):
    shards = ShardWriter(staging, spec.kind, source.sha256, spec.media, spec.rows_per_shard)
    quarantine = QuarantineWriter(staging)
    media_store = MediaStoreWriter(staging) if spec.media else None

    def write(formatted: FormattedChunk) -> None:
        if formatted.batch is not None:
            shards.write_batch(formatted.batch)
        if media_store is not None:
            media_store.add(formatted.media.values())
        for item in formatted.quarantine:
            quarantine.add(*item)
        if on_progress:
            on_progress(shards.rows, quarantine.count)

    # Writing (zstd, sha256: C code that releases the GIL) runs in its own thread, in chunk order, while
    # the next chunks are formatted: on one core's worth of formatting it is otherwise a third of the time.
    with ThreadPoolExecutor(1, thread_name_prefix="shard-writer") as writer:
        pending: deque[Future] = deque()
        for formatted in formatted_chunks:
            pending.append(writer.submit(write, formatted))
            while pending and (pending[0].done() or len(pending) > 2):  # bounded: memory stays flat
                pending.popleft().result()  # a writing error surfaces here
        while pending:
            pending.popleft().result()
    media_entry = media_store.close() if media_store is not None else None
    return shards.close(), quarantine.close(), dict(quarantine.reasons.most_common()), media_entry


def build_dataset(
    source: SourceInfo,
    spec: MaterializeSpec,
    out_root: str | os.PathLike,
    workers: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    batch_formatting: bool = True,
) -> MaterializeResult:
    """Build (or find) the dataset folder for ``source`` formatted by ``spec``.

    ``batch_formatting=False`` formats every row with the template's row method: slower, the same bytes."""
    template = spec.load_template()
    digest = dataset_digest(source, spec, template)
    existing = find_existing(out_root, digest)
    if existing is not None:
        return MaterializeResult(Path(out_root) / digest, existing, cache_hit=True)
    staging = _new_staging(out_root, digest)
    chunks = _formatted_chunks(source, spec, workers or default_workers(source), batch_formatting)
    return _publish(source, spec, template, digest, staging, chunks, on_progress)


def _new_staging(out_root: str | os.PathLike, digest: str) -> Path:
    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_root)
    return staging_dir(out_root / digest)


def _publish(source, spec, template, digest: str, staging: Path, formatted_chunks, on_progress=None):
    """Write the formatted chunks as shards + quarantine into ``staging``, then the manifest, then rename
    ``staging`` into place; a ``MaterializeResult``."""
    final = staging.parent / digest
    try:
        written = _write_shards(spec, source, staging, formatted_chunks, on_progress)
        shard_entries, quarantine_entry, reasons, media_entry = written
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # nothing half-written stays behind
        raise
    manifest = Manifest(
        dataset_digest=digest,
        kind=spec.kind.value,
        template=spec.template,
        template_code_version=template.code_version,
        template_options=template.settings,
        source=source.to_dict(),
        source_sha256=source.sha256,
        rows=sum(entry.rows for entry in shard_entries),
        quarantined=quarantine_entry.rows,
        shards=shard_entries,
        quarantine=quarantine_entry,
        quarantine_reasons=reasons,
        media=list(spec.media),
        media_store=media_entry,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        alignflow_version=align_core.__version__,
    )
    manifest.write(staging)  # last: a folder with a manifest is complete
    if not publish_dir(staging, final):
        return MaterializeResult(final, read_manifest(final), cache_hit=True)
    return MaterializeResult(final, manifest, cache_hit=False)


# Building in parts, for a cluster (Dask): the chunks are grouped into parts, each part formatted by its
# own task (anywhere that sees the source and the output root) into an uncompressed Arrow file of the
# chunks' record batches, and the parts are then merged in order by the same writer one build uses, so the
# shards are byte for byte those of ``build_dataset`` whatever the number of parts, workers or machines.

CHUNKS_PER_PART = 16  # ~64 MB of JSON Lines: enough work per task to pay for its scheduling
PARTS_SUBDIR = "parts"


@dataclass(frozen=True)
class Part:
    number: int
    path: str  # the part's formatted batches: an Arrow file inside the staging folder
    chunks: tuple[ChunkRef, ...] | None  # None: the whole source, read in order (it cannot be entered mid-way)


@dataclass(frozen=True)
class PartPlan:
    final: str  # the dataset folder
    staging: str | None  # None: the dataset is already published, nothing to build
    parts: tuple[Part, ...] = ()


@dataclass
class FormattedPart:
    part: Part
    batches: int
    quarantine: list[tuple[int, str, str, Any]]
    media: dict[str, MediaBlob]


def plan_parts(
    source: SourceInfo, spec: MaterializeSpec, out_root: str | os.PathLike, chunks_per_part: int | None = None
) -> PartPlan:
    """The parts to format for ``source``, in source order, and the staging folder they are written into."""
    digest = dataset_digest(source, spec, spec.load_template())
    final = str(Path(out_root).absolute() / digest)
    if find_existing(out_root, digest) is not None:
        return PartPlan(final, None)
    staging = _new_staging(out_root, digest)
    (staging / PARTS_SUBDIR).mkdir()
    if splits_by_reference(source.path, source.format):
        refs, size = list(plan_chunks(source.path, source.format)), chunks_per_part or CHUNKS_PER_PART
        groups: list[tuple[ChunkRef, ...] | None] = [tuple(refs[at : at + size]) for at in range(0, len(refs), size)]
        groups = groups or [()]  # an empty source: one empty part
    else:  # a JSON array, CSV, Parquet or Arrow stream is read from its start: one part reads it all
        groups = [None]
    parts = tuple(Part(n, str(staging / PARTS_SUBDIR / f"part-{n:05d}.arrow"), group) for n, group in enumerate(groups))
    return PartPlan(final, str(staging), parts)


def format_part(source: SourceInfo, spec: MaterializeSpec, part: Part) -> FormattedPart:
    """Format a part's chunks: their record batches into the part's file, their quarantine rows and media returned."""
    formatted = FormattedPart(part, 0, [], {})
    refs = part.chunks if part.chunks is not None else plan_chunks(source.path, source.format)
    with pa.OSFile(part.path, "wb") as sink, pa.ipc.new_file(sink, shard_schema(spec.kind, spec.media)) as writer:
        for ref in refs:
            chunk = format_chunk_at(ref, spec, source.sha256)
            if chunk.batch is not None:
                writer.write_batch(chunk.batch)
                formatted.batches += 1
            formatted.quarantine += chunk.quarantine
            for sha256, blob in chunk.media.items():
                formatted.media.setdefault(sha256, blob)
    return formatted


def merge_parts(
    source: SourceInfo, spec: MaterializeSpec, plan: PartPlan, parts: list[FormattedPart]
) -> MaterializeResult:
    """Write the formatted parts, in order, as the dataset's shards and quarantine, and publish it."""
    if plan.staging is None:
        return MaterializeResult(Path(plan.final), read_manifest(plan.final), cache_hit=True)
    staging, in_order = Path(plan.staging), sorted(parts, key=lambda formatted: formatted.part.number)
    return _publish(source, spec, spec.load_template(), Path(plan.final).name, staging, _part_chunks(staging, in_order))


def _part_chunks(staging: Path, parts: list[FormattedPart]) -> Iterator[FormattedChunk]:
    """The parts' record batches (memory-mapped, each part's file removed once read) then their quarantine and media."""
    for formatted in parts:
        reader = pa.ipc.open_file(pa.memory_map(formatted.part.path))
        for number in range(reader.num_record_batches):
            yield FormattedChunk(reader.get_batch(number), [])
        os.unlink(formatted.part.path)  # the mapping stays readable while its batches are in use
        yield FormattedChunk(None, formatted.quarantine, formatted.media)
    (staging / PARTS_SUBDIR).rmdir()


def materialize_dataset(
    source: str | os.PathLike,
    template: str,
    kind: str | Kind,
    out_root: str | os.PathLike,
    template_options: dict[str, Any] | None = None,
    template_module: str | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    source_format: str | None = None,
    workers: int | None = None,
    media_root: str | os.PathLike | None = None,
) -> Path:
    """One call, no Prefect: fingerprint, format and publish; returns the dataset folder."""
    spec = MaterializeSpec.checked(template, kind, template_options, template_module, rows_per_shard, media_root)
    source_info = fingerprint_source(source, source_format)
    return build_dataset(source_info, spec, out_root, workers).path
