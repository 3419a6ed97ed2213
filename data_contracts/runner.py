"""Validate a dataset folder against its suite, streaming its shards in record batches.

    shards --(record batches, in threads)--> derived columns --(chunks of CHUNK_ROWS)--> GX --> verdicts
           --> report.html + validation.json beside the manifest (atomic, validation.json last)

Only the small derived frame of one chunk is in memory at a time, whatever the dataset's size.
Library-level: no Prefect here (``tasks/validate.py`` wraps it).
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

import align_core
from align_core.io import atomic_write_json, atomic_write_text
from align_core.parts import MapParts
from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import CONVERSATION_COLUMNS, MEDIA_COLUMNS, Kind
from data_contracts.checks import GXChecks, check_scripts, near_duplicate_similarity
from data_contracts.derive import DerivedBatch, RowDeriver, derive_batch, derived_columns
from data_contracts.distributions import Distributions
from data_contracts.gate import check_validation
from data_contracts.media_checks import MediaProber, failing_images
from data_contracts.report import render_html
from data_contracts.results import ValidationResult, read_validation
from data_contracts.suite import Suite, load_suite

# Derived rows handed to GX at once: each GX call costs ~0.1 s on top of the rows, and 100k derived
# rows are ~20-40 MB of flat columns.
CHUNK_ROWS = 250_000
PART_WINDOW = 64  # record batches derived at once by map_parts: bounds the derived frames held in memory


def validate_dataset(
    dataset_dir: str | Path,
    suite: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    chunk_rows: int = CHUNK_ROWS,
    workers: int | None = None,
    map_parts: MapParts | None = None,
) -> ValidationResult:
    """Validate every shard of ``dataset_dir`` with ``suite`` (default: the suite of its kind).

    Writes ``report.html`` and ``validation.json`` beside the manifest; ``.passed`` is False when an
    error-severity expectation failed. Bad suites or folders raise ``UsageError``. ``chunk_rows``
    bounds the derived rows held at once (memory), ``workers`` the threads that read and flatten
    batches (default: one per CPU, at most 4); the verdict depends on neither. ``map_parts`` (e.g.
    ``tasks.parallel.map_parts`` onto a Dask cluster) derives the record batches instead of the threads,
    a window at a time; the verdict is the same.
    """
    started = time.perf_counter()
    dataset = ShardDataset(dataset_dir)
    dataset.require_intact()  # the batches are read below straight from the files
    media = tuple(dataset.manifest.media)
    resolved = load_suite(suite, dataset.kind, media, overrides)
    checks = GXChecks(resolved, derived_columns(dataset.kind, media))
    check_scripts(resolved)
    deriver = RowDeriver(dataset.kind, media, near_duplicate_similarity(resolved))
    distributions = Distributions(dataset.kind)
    rows = 0
    if map_parts is None:
        derived = _derived_frames(dataset, deriver, workers or default_workers())
    else:
        derived = _derived_frames_in_parts(dataset, deriver, map_parts)
    with ThreadPoolExecutor(1) as background:
        clustered: list[Future] = []
        if deriver.near_duplicates:  # numpy sorts that release the GIL: clustered while GX checks the last chunk
            derived = _then(derived, lambda: clustered.append(background.submit(deriver.near_duplicates.finish)))
        for frame in _chunks(derived, chunk_rows):
            checks.validate(frame)
            distributions.add(frame)
            rows += len(frame)
        near_duplicates = clustered[0].result() if clustered else None
    results = checks.results(rows, near_duplicates)
    result = ValidationResult(
        dataset_dir=str(dataset.path.absolute()),
        dataset_digest=dataset.digest,
        kind=dataset.kind.value,
        suite=_suite_reference(suite, resolved),
        suite_version=resolved.version,
        overrides=resolved.overrides,
        shard_digests=dataset.shard_digests,
        rows=rows,
        passed=all(r.success for r in results if r.severity == "error"),
        results=results,
        validated_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        seconds=round(time.perf_counter() - started, 3),
        alignflow_version=align_core.__version__,
        near_duplicate_clusters=[cluster.to_dict() for cluster in near_duplicates.clusters] if near_duplicates else [],
        distributions=distributions.to_dict(),
    )
    atomic_write_text(result.report_path, render_html(result, failing_images(dataset, results)))
    atomic_write_json(result.validation_path, result.to_dict())  # last: the record the gate reads
    return result


def current_result(
    dataset_dir: str | Path,
    suite: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> ValidationResult | None:
    """The recorded result if it is still current for ``suite``/``overrides`` (same shards, same
    suite version), so it need not be recomputed; None otherwise. A damaged shard raises
    ``IntegrityError``: a record of the intact bytes says nothing about these."""
    ShardDataset(dataset_dir).require_intact()
    status, _ = check_validation(dataset_dir)
    if status not in ("passed", "failed"):
        return None
    recorded = read_validation(dataset_dir)
    dataset = ShardDataset(dataset_dir)
    wanted = load_suite(suite, dataset.kind, tuple(dataset.manifest.media), overrides)
    return recorded if recorded.suite_version == wanted.version else None


def default_workers() -> int:
    return max(1, min(4, len(os.sched_getaffinity(0))))


def _derived_frames(dataset: ShardDataset, deriver: RowDeriver, workers: int) -> Iterator[pd.DataFrame]:
    """Derived frames in dataset order. Threads read and flatten batches (Arrow's decompression and
    kernels release the GIL); the repeat columns are then marked (and the prompts' near-duplicate
    signatures indexed) in order, on this thread."""
    job = _derive_job(dataset, deriver)
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()
        for part in _batch_parts(dataset):
            pending.append(pool.submit(job, part))
            if len(pending) >= 2 * workers:  # bounded read-ahead keeps memory flat
                yield deriver.with_repeats(pending.popleft().result())
        while pending:
            yield deriver.with_repeats(pending.popleft().result())


def _derived_frames_in_parts(dataset: ShardDataset, deriver: RowDeriver, map_parts: MapParts) -> Iterator[pd.DataFrame]:
    """Derived frames in dataset order, the batches derived by ``map_parts`` a window at a time."""
    job = _derive_job(dataset, deriver)
    parts = _batch_parts(dataset)
    for start in range(0, len(parts), PART_WINDOW):
        for derived in map_parts(job, parts[start : start + PART_WINDOW]):
            yield deriver.with_repeats(derived)


def _batch_parts(dataset: ShardDataset) -> list[tuple[str, int]]:
    """(shard path, record batch index) of every record batch, in dataset order."""
    parts = []
    for path in dataset.shard_paths:
        with pa.memory_map(str(path)) as source:
            parts += [(str(path.absolute()), index) for index in range(pa.ipc.open_file(source).num_record_batches)]
    return parts


def _derive_job(dataset: ShardDataset, deriver: RowDeriver) -> DeriveBatchPart:
    job = DeriveBatchPart(str(dataset.path.absolute()), dataset.digest, dataset.kind, tuple(dataset.manifest.media),
                          deriver.near_duplicate_similarity)
    _prober(job.dataset_dir, job.dataset_digest)  # made here, before threads race to make it
    return job


@dataclass(frozen=True)
class DeriveBatchPart:
    """Derives one record batch (``(shard path, batch index)``): a picklable job, so the batches of a large
    dataset can be derived on a Dask cluster's workers (which must see the dataset's folder)."""

    dataset_dir: str
    dataset_digest: str
    kind: Kind
    media: tuple[str, ...]
    near_duplicate_similarity: float | None

    def __call__(self, part: tuple[str, int]) -> DerivedBatch:
        path, index = part
        with pa.memory_map(path) as source:  # an uncompressed batch points into the map: derive inside
            # decompressed on this thread: the runner already derives a batch per core (Arrow's pool would oversubscribe)
            reader = pa.ipc.open_file(source, options=pa.ipc.IpcReadOptions(use_threads=False))
            batch = reader.get_batch(index).select(_input_columns(self.kind, self.media))
            return derive_batch(batch, self.kind, self.media, _prober(self.dataset_dir, self.dataset_digest),
                                near_duplicate_similarity=self.near_duplicate_similarity)


@functools.lru_cache(maxsize=1)
def _prober(dataset_dir: str, dataset_digest: str) -> MediaProber | None:
    """One prober per process and dataset, shared by its threads, so each stored item is probed once here."""
    dataset = ShardDataset(dataset_dir)
    return MediaProber(dataset.media_store()) if dataset.manifest.media_store else None


def _input_columns(kind: Kind, media: tuple[str, ...]) -> list[str]:
    """Shard columns the derivation reads (``meta`` only for preference pairs' scores and safety labels)."""
    columns = ["id", "source_index", *CONVERSATION_COLUMNS[kind]]
    if kind is Kind.UNPAIRED_PREFERENCE:
        columns.append("label")
    if kind is Kind.PREFERENCE:
        columns.append("meta")
    return columns + [MEDIA_COLUMNS[m] for m in media]


def _then(items: Iterable[Any], callback: Callable[[], object]) -> Iterator[Any]:
    """``items``, then ``callback()`` as soon as they are exhausted (before the consumer resumes)."""
    yield from items
    callback()


def _chunks(frames: Iterable[pd.DataFrame], rows: int) -> Iterator[pd.DataFrame]:
    """Concatenate small frames into chunks of at least ``rows`` rows (the last may be smaller)."""
    pending: list[pd.DataFrame] = []
    size = 0
    for frame in frames:
        pending.append(frame)
        size += len(frame)
        if size >= rows:
            yield pd.concat(pending, ignore_index=True)
            pending, size = [], 0
    if pending:
        yield pd.concat(pending, ignore_index=True)


def _suite_reference(requested: str | None, resolved: Suite) -> str:
    """How the gate finds the suite again: a built-in name, or the absolute path of a suite file."""
    if requested and (requested.endswith((".yaml", ".yml")) or "/" in requested):
        return str(Path(requested).absolute())
    return resolved.name
