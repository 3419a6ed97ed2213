"""Media measurements as per-row columns, and the failing images the HTML report shows.

``align_core.media.probe_media`` measures one item; ``MediaProber`` keeps one probe per distinct
(media type, sha256) of a dataset's media store, so an image that 1,000 rows show is decoded once,
and ``media_columns`` turns a batch's item references into per-row columns (null for a row without
items of the type; an item that does not decode counts in ``{m}_undecodable`` and nowhere else):

=================================================  ==============================================
column                                             meaning
=================================================  ==============================================
``{m}_undecodable``                                the row's items of type m that do not decode
``image_min_side``/``image_max_side``              smallest / largest width or height, px
``image_max_aspect``                               largest long side / short side
``audio_min_seconds``/``audio_max_seconds``        shortest / longest clip
``audio_min_sampling_rate``/``..._max_...``        lowest / highest sampling rate, Hz
``video_min_frames``/``video_max_frames``          fewest / most frames
``video_min_seconds``/``video_max_seconds``        shortest / longest video
=================================================  ==============================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from align_core.errors import IntegrityError
from align_core.media import MediaProbe, probe_media
from align_core.shards.dataset import ShardDataset
from align_core.shards.media_store import MediaStore
from data_contracts.results import ExpectationResult

# Failing images the report shows per expectation: enough to see what failed, small enough to mail.
REPORT_IMAGES = 5


@dataclass(frozen=True)
class RowMeasure:
    """One per-row column: an item's value, combined over the row's items by ``reduce``."""

    column: str
    value: Callable[[MediaProbe], float | None]  # called on decodable items only
    reduce: np.ufunc  # np.fmin or np.fmax: NaN (no value) never wins


MEASURES: dict[str, tuple[RowMeasure, ...]] = {
    "image": (
        RowMeasure("image_min_side", lambda probe: min(probe.width, probe.height), np.fmin),
        RowMeasure("image_max_side", lambda probe: max(probe.width, probe.height), np.fmax),
        RowMeasure("image_max_aspect", lambda probe: max(probe.width, probe.height) / max(min(probe.width, probe.height), 1), np.fmax),
    ),
    "audio": (
        RowMeasure("audio_min_seconds", lambda probe: probe.seconds, np.fmin),
        RowMeasure("audio_max_seconds", lambda probe: probe.seconds, np.fmax),
        RowMeasure("audio_min_sampling_rate", lambda probe: probe.sampling_rate, np.fmin),
        RowMeasure("audio_max_sampling_rate", lambda probe: probe.sampling_rate, np.fmax),
    ),
    "video": (
        RowMeasure("video_min_frames", lambda probe: probe.frames, np.fmin),
        RowMeasure("video_max_frames", lambda probe: probe.frames, np.fmax),
        RowMeasure("video_min_seconds", lambda probe: probe.seconds, np.fmin),
        RowMeasure("video_max_seconds", lambda probe: probe.seconds, np.fmax),
    ),
}


class MediaProber:
    """Probes of one dataset's stored media, each distinct item probed once even when batches are
    derived in several threads: the first thread to ask measures it, the others wait for its result."""

    def __init__(self, store: MediaStore):
        self.store = store
        self._probes: dict[tuple[str, str], MediaProbe | Future] = {}
        self._lock = threading.Lock()

    def probe(self, media_type: str, sha256: str) -> MediaProbe:
        key = (media_type, sha256)
        with self._lock:
            known = self._probes.get(key)
            if known is None:
                self._probes[key] = pending = Future()
        if isinstance(known, MediaProbe):
            return known
        if known is not None:
            return known.result()
        try:
            probe = self._measure(media_type, sha256)
        except BaseException as error:
            pending.set_exception(error)
            raise
        with self._lock:
            self._probes[key] = probe  # keep the small probe, not the Future, once it is known
        pending.set_result(probe)
        return probe

    def _measure(self, media_type: str, sha256: str) -> MediaProbe:
        try:
            data = self.store.get(sha256)
        except IntegrityError as error:  # referenced but not stored, or stored bytes that do not match
            return MediaProbe(error=str(error))
        return probe_media(media_type, data)


def media_columns(items: pa.Array, media_type: str, prober: MediaProber | None) -> dict[str, pa.Array | np.ndarray]:
    """Per-row columns of one media type from a batch's item references ``items`` (``list<MEDIA_ITEM>``,
    (rows,)). Without a prober (a dataset with no media store: nothing to measure) every column is null."""
    rows = len(items)
    names = [f"{media_type}_undecodable", *(measure.column for measure in MEASURES[media_type])]
    if prober is None:
        return {name: pa.nulls(rows, pa.float64()) for name in names}
    parents = pc.list_parent_indices(items).to_numpy(zero_copy_only=False)
    probes = [prober.probe(media_type, sha256) for sha256 in pc.list_flatten(items).field("sha256").to_pylist()]
    undecodable = np.fromiter((not probe.decodable for probe in probes), bool, len(probes))
    columns: dict[str, pa.Array | np.ndarray] = {names[0]: np.bincount(parents[undecodable], minlength=rows).astype(np.int64)}
    for measure in MEASURES[media_type]:
        values = np.array([measure.value(probe) if probe.decodable else None for probe in probes], dtype=float)
        per_row = np.full(rows, np.nan)
        measure.reduce.at(per_row, parents, values)
        columns[measure.column] = pa.array(per_row, from_pandas=True)  # NaN -> null: GX does not judge it
    return columns


def failing_images(dataset: ShardDataset, results: list[ExpectationResult]) -> dict[str, list[tuple[str, bytes]]]:
    """For each failed expectation on image columns, up to ``REPORT_IMAGES`` (sample id, image bytes)
    of the samples it names, in its order; the report turns them into thumbnails."""
    wanted = {
        result.name: result.sample_ids
        for result in results
        if not result.success and any(column.startswith("image_") for column in result.columns)
    }
    if not wanted or dataset.manifest.media_store is None or "image" not in dataset.manifest.media:
        return {}
    row_images = _row_images(dataset, {sample_id for ids in wanted.values() for sample_id in ids})
    store = dataset.media_store()
    images = {}
    for name, sample_ids in wanted.items():
        shown = [(sample_id, sha256) for sample_id in sample_ids for sha256 in row_images.get(sample_id, [])]
        images[name] = [(sample_id, store.get(sha256)) for sample_id, sha256 in shown[:REPORT_IMAGES]]
    return images


def _row_images(dataset: ShardDataset, sample_ids: set[str]) -> dict[str, list[str]]:
    """sample id -> the sha256s of its images (the first row with that id), reading two columns only."""
    found: dict[str, list[str]] = {}
    wanted = pa.array(sorted(sample_ids), pa.string())
    for batch in dataset.iter_batches(["id", "images"]):
        for row in batch.filter(pc.is_in(batch.column("id"), value_set=wanted)).to_pylist():
            found.setdefault(row["id"], [item["sha256"] for item in row["images"] or []])
        if len(found) == len(sample_ids):
            break
    return found
