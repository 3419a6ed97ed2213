"""Per-row derived columns: what GX validates instead of the nested conversation lists.

GX measures a list column by its string form, so each shard record batch is flattened here, with
vectorised pyarrow/numpy (no Python loop over rows), into one flat row per sample:

==================================  =========================================================
column                              meaning
==================================  =========================================================
``id``, ``source_index``            the sample's id and source row (they name failing samples)
``id_missing``                      the id is null or empty
``{c}_turns``                       number of messages in conversation column ``c``
``{c}_roles``                       role letters in order: S(ystem) U(ser) A(ssistant) ?(other)
``{c}_first_role``/``_last_role``   role of the first / last message ("" when there is none)
``{c}_empty_parts``                 text parts that are null, empty or whitespace only, and messages
                                    without any part
``{c}_max_turn_chars``              characters of the longest message (text parts summed)
``{m}_placeholders``/``{m}_count``  media placeholders of type m in all columns / items in the row
``unbacked_media_placeholders``     media placeholders of a type the dataset carries no media for
                                    (an ``image`` part in a text-only dataset): nothing can fill them
(media measurements)                ``image_min_side``, ``audio_max_seconds``, ...: see ``data_contracts.media_checks``
(registered media columns)          see ``register_media_columns``
``prompt_repeat``                   the prompt (supervised: all but the last message) was seen before
``sample_repeat``                   the whole sample (all conversations + label) was seen before
``id_repeat``                       the id was seen before
``damaged_text_parts``              text parts (all columns) holding mojibake or U+FFFD characters
``{c}_chars``                       characters of all text parts of column ``c`` (the report's histograms)
``text_script``                     the Unicode script holding most of the row's letters (all columns),
                                    e.g. "Latin", "Cyrillic", "Han"; null without letters
``prompt_near_duplicate``           judged over the whole dataset, not per row (no values in the frames):
                                    the prompt is a near-duplicate of an earlier one (``near_duplicates``)
``chosen_equals_rejected``          preference only: the two continuations are identical
``length_difference_chars``         preference only: characters of chosen's text minus rejected's
``longer_is_chosen``                preference only: chosen's text is the longer one (null on a tie)
``pair_similarity``                 preference only: character-trigram Jaccard similarity of chosen's
                                    and rejected's text (null when the two are identical)
``score_margin``                    preference only: meta ``score_chosen`` - ``score_rejected``
                                    (UltraFeedback; null where meta has no scores)
``safety_label_conflict``           preference only: chosen by safety (PKUSafeRLHF ``preference=safer``)
                                    yet labelled unsafe while rejected is labelled safe (else null)
``label``                           unpaired_preference only: desirable or not
==================================  =========================================================

The ``*_repeat`` columns span all batches of a dataset: ``RowDeriver`` remembers a 64-bit xxh3 hash
of each distinct value it has seen (8 bytes a row per column, far less than the rows themselves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from align_core.shards.schema import CONVERSATION_COLUMNS, MEDIA_COLUMNS, Kind, shard_schema
from data_contracts.media_checks import MediaProber, media_columns
from data_contracts.near_duplicates import NearDuplicateIndex, PromptSketches, sketch_prompts
from data_contracts.text_checks import (
    damaged_parts,
    dominant_script,
    preference_labels,
    script_letters,
    utf8_rows,
    utf8_trigram_similarity,
)

# Extra per-row columns for a media type beyond the built-in measurements (decodable, sizes, durations:
# ``data_contracts.media_checks``): register a function of the row's media items (``list<MEDIA_ITEM>``,
# (rows,)) returning ``{column: (rows,) values}``, and check them in a suite.
MediaColumns = Callable[[pa.Array], dict[str, np.ndarray]]
MEDIA_COLUMN_DERIVERS: dict[str, list[MediaColumns]] = {}

ROLE_LETTERS = {"system": "S", "user": "U", "assistant": "A"}
UNKNOWN_ROLE = "?"
# Judged over the whole dataset by the runner (``checks.DatasetTally``), never present in the streamed frames.
DATASET_COLUMNS = ("prompt_near_duplicate",)
# Separators that cannot occur in ordinary text keep "a|b" + "c" distinct from "a" + "b|c" when hashing.
PART_SEPARATOR, MESSAGE_SEPARATOR = "\x1f", "\x1e"


@dataclass
class FlatConversations:
    """One conversation column of a batch, flattened to messages and parts.

    Shapes: ``rows`` samples, ``M`` messages, ``P`` content parts.
    """

    turns: np.ndarray  # (rows,) messages per sample
    message_offsets: np.ndarray  # (rows + 1,) sample i owns messages [offsets[i], offsets[i+1])
    roles: pa.Array  # (M,) role strings
    part_offsets: np.ndarray  # (M + 1,) message j owns parts [offsets[j], offsets[j+1])
    part_types: pa.Array  # (P,)
    part_texts: pa.Array  # (P,) null for media placeholders

    @classmethod
    def from_column(cls, conversations: pa.Array) -> FlatConversations:
        turns = pc.fill_null(pc.list_value_length(conversations), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        messages = conversations.flatten()  # skips null lists and honours slicing offsets
        content = messages.field("content")
        part_counts = pc.fill_null(pc.list_value_length(content), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        parts = content.flatten()
        return cls(
            turns=turns,
            message_offsets=_offsets(turns),
            roles=messages.field("role"),
            part_offsets=_offsets(part_counts),
            part_types=parts.field("type"),
            part_texts=parts.field("text"),
        )

    @property
    def part_row(self) -> np.ndarray:
        """(P,) the sample each part belongs to."""
        message_row = np.repeat(np.arange(len(self.turns)), self.turns)
        return np.repeat(message_row, np.diff(self.part_offsets))

    def per_row(self, part_flags: np.ndarray) -> np.ndarray:
        """(rows,) count of flagged parts per sample, from a (P,) boolean mask."""
        return np.bincount(self.part_row[part_flags], minlength=len(self.turns)).astype(np.int64)

    def role_letters(self) -> pa.Array:
        """(rows,) e.g. "SUA" for system, user, assistant."""
        codes = pc.fill_null(pc.index_in(self.roles, value_set=pa.array(list(ROLE_LETTERS))), len(ROLE_LETTERS))
        letters = pa.array([*ROLE_LETTERS.values(), UNKNOWN_ROLE]).take(codes)
        return pc.binary_join(_lists(self.message_offsets, letters), "")

    def edge_role(self, last: bool) -> pa.Array:
        """(rows,) role of the first or last message; "" for a sample without messages."""
        positions = (self.message_offsets[1:] - 1) if last else self.message_offsets[:-1]
        indices = pa.array(positions, pa.int64(), mask=self.turns == 0)  # null index -> null role
        return pc.fill_null(pc.fill_null(self.roles, UNKNOWN_ROLE).take(indices), "")

    @cached_property
    def part_chars(self) -> np.ndarray:
        """(P,) characters of each part (0 for media placeholders)."""
        return pc.fill_null(pc.utf8_length(self.part_texts), 0).to_numpy(zero_copy_only=False).astype(np.int64)

    def empty_text_parts(self) -> np.ndarray:
        """(rows,) blank text parts, plus messages without any part (no content at all)."""
        is_text = _mask(pc.equal(self.part_types, "text"))
        blank = (self.part_chars == 0) | _mask(pc.utf8_is_space(self.part_texts))  # is_space: non-empty, all blank
        message_row = np.repeat(np.arange(len(self.turns)), self.turns)
        no_parts = np.bincount(message_row[np.diff(self.part_offsets) == 0], minlength=len(self.turns))
        return self.per_row(is_text & blank) + no_parts.astype(np.int64)

    def text_chars(self) -> np.ndarray:
        """(rows,) characters of all text parts."""
        return np.bincount(self.part_row, weights=self.part_chars, minlength=len(self.turns)).astype(np.int64)

    def text_bytes(self) -> tuple[np.ndarray, np.ndarray]:
        """Each conversation's text parts run together, as UTF-8 bytes and (rows + 1,) offsets (``utf8_rows``)."""
        return utf8_rows(self.part_texts, self.part_offsets[self.message_offsets])

    def user_text(self) -> pa.Array:
        """(rows,) the text parts of the user's messages, one line each: what a prompt asks."""
        part_counts = np.diff(self.part_offsets)
        is_user = np.repeat(_mask(pc.equal(self.roles, "user")), part_counts) & _mask(pc.equal(self.part_types, "text"))
        per_row = np.bincount(self.part_row[is_user], minlength=len(self.turns))
        return pc.binary_join(_lists(_offsets(per_row), self.part_texts.filter(pa.array(is_user))), "\n")

    def max_turn_chars(self) -> np.ndarray:
        part_chars = self.part_chars
        message_chars = np.add.reduceat(np.append(part_chars, 0), self.part_offsets[:-1]) if len(self.roles) else part_chars[:0]
        message_chars[np.diff(self.part_offsets) == 0] = 0  # reduceat yields the next value for empty groups
        result = np.zeros(len(self.turns), np.int64)
        has_turns = self.turns > 0
        if has_turns.any():
            result[has_turns] = np.maximum.reduceat(message_chars, self.message_offsets[:-1][has_turns])
        return result

    def media_parts(self, media_type: str) -> np.ndarray:
        return self.per_row(_mask(pc.equal(self.part_types, media_type)))

    def unbacked_media_parts(self, media: tuple[str, ...]) -> np.ndarray:
        """(rows,) parts that are neither text nor a placeholder of a media type in ``media``."""
        backed = pa.array(["text", *media], pa.string())
        return self.per_row(~_mask(pc.is_in(self.part_types, value_set=backed)))

    @cached_property
    def message_texts(self) -> pa.Array:
        """(M,) each message as one string: role, then its parts (media as "<image>")."""
        parts = self.part_texts
        if parts.null_count:  # media placeholders carry no text: stand in "<image>" etc.
            parts = pc.coalesce(parts, pc.binary_join_element_wise("<", pc.fill_null(self.part_types, ""), ">", ""))
        joined_parts = pc.binary_join(_lists(self.part_offsets, parts), PART_SEPARATOR)
        return pc.binary_join_element_wise(pc.fill_null(self.roles, ""), joined_parts, PART_SEPARATOR)

    def texts(self, drop_last_message: bool = False) -> pa.Array:
        """(rows,) each conversation as one string, for hashing and equality."""
        messages = self.message_texts
        turns = self.turns
        if drop_last_message:
            keep = np.ones(len(messages), bool)
            keep[self.message_offsets[1:][turns > 0] - 1] = False
            messages, turns = messages.filter(pa.array(keep)), np.maximum(turns - 1, 0)
        return pc.binary_join(_lists(_offsets(turns), messages), MESSAGE_SEPARATOR)


def register_media_columns(media_type: str) -> Callable[[MediaColumns], MediaColumns]:
    """Decorator: derive more columns from the media items of ``media_type`` ("image", ...)."""
    if media_type not in MEDIA_COLUMNS:
        raise ValueError(f"unknown media type {media_type!r}; expected one of {list(MEDIA_COLUMNS)}")

    def register(function: MediaColumns) -> MediaColumns:
        MEDIA_COLUMN_DERIVERS.setdefault(media_type, []).append(function)
        return function

    return register


@dataclass
class DerivedBatch:
    """One record batch's derived columns, before the repeat columns that need earlier batches."""

    columns: dict[str, pa.Array | np.ndarray]
    hashes: dict[str, np.ndarray]  # "id", "prompt", "sample" -> (rows,) uint64
    prompt_sketches: PromptSketches | None = None  # MinHash LSH sketches of the prompts' user text
    prompt_texts: pa.Array | None = None  # (rows,) that text


def derive_batch(
    batch: pa.RecordBatch,
    kind: Kind,
    media: tuple[str, ...] = (),
    prober: MediaProber | None = None,
    near_duplicate_similarity: float | None = None,
) -> DerivedBatch:
    """Everything that depends on this batch alone: safe to run for many batches in parallel threads.
    ``prober`` measures the dataset's stored media (without one, the measurement columns are null);
    ``near_duplicate_similarity`` adds the prompts' MinHash LSH sketches for that threshold."""
    columns: dict[str, pa.Array | np.ndarray] = {"id": batch.column("id"), "source_index": batch.column("source_index")}
    flats = {name: FlatConversations.from_column(batch.column(name)) for name in CONVERSATION_COLUMNS[kind]}
    texts = {name: flat.texts() for name, flat in flats.items()}
    for name, flat in flats.items():
        columns[f"{name}_turns"] = flat.turns
        columns[f"{name}_roles"] = flat.role_letters()
        columns[f"{name}_first_role"] = flat.edge_role(last=False)
        columns[f"{name}_last_role"] = flat.edge_role(last=True)
        columns[f"{name}_empty_parts"] = flat.empty_text_parts()
        columns[f"{name}_max_turn_chars"] = flat.max_turn_chars()
        columns[f"{name}_chars"] = flat.text_chars()
    columns["text_script"] = dominant_script(
        script_letters([(flat.part_texts, flat.part_row) for flat in flats.values()], batch.num_rows)
    )
    columns["damaged_text_parts"] = sum(flat.per_row(damaged_parts(flat.part_texts)) for flat in flats.values())
    columns["unbacked_media_placeholders"] = sum(flat.unbacked_media_parts(media) for flat in flats.values())
    for media_type in media:
        columns[f"{media_type}_placeholders"] = sum(flat.media_parts(media_type) for flat in flats.values())
        items = batch.column(MEDIA_COLUMNS[media_type])
        columns[f"{media_type}_count"] = pc.fill_null(pc.list_value_length(items), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        columns.update(media_columns(items, media_type, prober))
        for derive_media_columns in MEDIA_COLUMN_DERIVERS.get(media_type, []):
            columns.update(derive_media_columns(items))
    text_hashes = {name: _hash(text) for name, text in texts.items()}
    sample_parts = list(text_hashes.values())
    if kind is Kind.PREFERENCE:
        columns["chosen_equals_rejected"] = _mask(pc.equal(texts["chosen"], texts["rejected"]))
        columns.update(_pair_columns(flats["chosen"], flats["rejected"], columns["chosen_equals_rejected"]))
        meta = batch.column("meta") if "meta" in batch.schema.names else pa.nulls(batch.num_rows, pa.string())
        columns.update(preference_labels(meta))
    if kind is Kind.UNPAIRED_PREFERENCE:
        columns["label"] = batch.column("label")
        sample_parts.append(_hash(pc.cast(batch.column("label"), pa.string())))
    columns["id_missing"] = _mask(pc.or_kleene(pc.is_null(batch.column("id")), pc.equal(batch.column("id"), "")))
    # The same question about another image is another prompt: media items are part of what repeats.
    media_hashes = [_hash(_item_digests(batch.column(MEDIA_COLUMNS[media_type]))) for media_type in media]
    prompt_hash = _hash(flats["messages"].texts(drop_last_message=True)) if kind is Kind.SUPERVISED else text_hashes["prompt"]
    hashes = {
        "id": _hash(batch.column("id")),
        "prompt": _combine([prompt_hash, *media_hashes]) if media_hashes else prompt_hash,
        "sample": _combine(sample_parts + media_hashes),
    }
    derived = DerivedBatch(columns, hashes)
    if near_duplicate_similarity:
        prompt = flats["messages" if kind is Kind.SUPERVISED else "prompt"]
        derived.prompt_texts = prompt.user_text()
        salts = _combine(media_hashes) if media_hashes else None  # the same question about other media is another prompt
        derived.prompt_sketches = sketch_prompts(derived.prompt_texts, near_duplicate_similarity, salts)
    return derived


def _pair_columns(chosen: FlatConversations, rejected: FlatConversations, identical: np.ndarray) -> dict[str, pa.Array]:
    """Length bias and similarity of each preference pair (null where the pair is identical: that is
    ``chosen_differs_from_rejected``'s defect, and a tie carries no length signal)."""
    length_difference = chosen.text_chars() - rejected.text_chars()
    similarity = utf8_trigram_similarity(chosen.text_bytes(), rejected.text_bytes())
    return {
        "length_difference_chars": pa.array(length_difference, pa.int64()),
        "longer_is_chosen": pa.array(length_difference > 0, pa.bool_(), mask=length_difference == 0),
        "pair_similarity": pa.array(similarity, pa.float64(), mask=identical),
    }


class RowDeriver:
    """Turns shard record batches of one dataset into DataFrames of derived columns, in order.

    Keep one deriver per dataset pass: its repeat columns remember every earlier batch.
    """

    def __init__(self, kind: Kind, media: tuple[str, ...] = (), near_duplicate_similarity: float | None = None):
        self.kind = kind
        self.media = tuple(media)
        self._seen = {key: SeenHashes() for key in ("id", "prompt", "sample")}
        # fed each distinct prompt in dataset order; the runner asks it for the clusters at the end
        self.near_duplicate_similarity = near_duplicate_similarity
        self.near_duplicates = NearDuplicateIndex(near_duplicate_similarity) if near_duplicate_similarity else None

    def frame(self, batch: pa.RecordBatch) -> pd.DataFrame:
        return self.with_repeats(derive_batch(batch, self.kind, self.media, near_duplicate_similarity=self.near_duplicate_similarity))

    def with_repeats(self, derived: DerivedBatch) -> pd.DataFrame:
        """The batch's frame with ``*_repeat`` columns; call in dataset order."""
        columns = dict(derived.columns)
        for key, hashes in derived.hashes.items():
            columns[f"{key}_repeat"] = self._repeats(key, hashes)
        if self.near_duplicates is not None and derived.prompt_sketches is not None:
            first = np.flatnonzero(~columns["prompt_repeat"])  # exact repeats are duplicate_prompts' finding
            self.near_duplicates.add(derived.prompt_sketches, first, derived.columns["id"], derived.prompt_texts)
        # one thread: the runner already derives a batch per core, and Arrow's pool on top oversubscribes them
        return pa.table({name: _as_arrow(values) for name, values in columns.items()}).to_pandas(use_threads=False)

    def _repeats(self, key: str, hashes: np.ndarray) -> np.ndarray:
        """(rows,) True where the hash occurred earlier in this batch or any earlier batch."""
        repeated = pd.Series(hashes).duplicated().to_numpy() | self._seen[key].contains(hashes)
        self._seen[key].add(hashes[~repeated])
        return repeated


def _item_digests(items: pa.Array) -> pa.Array:
    """(rows,) each row's media items as one string of their sha256s, in order."""
    return pa.array([",".join(item["sha256"] for item in row or []) for row in items.to_pylist()], pa.string())


def _hash(values: pa.Array) -> np.ndarray:
    """(rows,) 64-bit xxh3 of each string's UTF-8 bytes (null hashes like "").

    Hashes slices of Arrow's data buffer in place: ~40x faster than pandas' hash of Python str.
    """
    values = pc.fill_null(values, "")
    offset_type = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], offset_type)[values.offset : values.offset + len(values) + 1].tolist()
    data = memoryview(values.buffers()[2] or b"")
    slices = map(data.__getitem__, map(slice, offsets[:-1], offsets[1:]))
    return np.fromiter(map(xxhash.xxh3_64_intdigest, slices), np.uint64, len(values))


def _combine(hashes: list[np.ndarray]) -> np.ndarray:
    """(rows,) one hash of several per-row hashes, order-sensitive (a polynomial mod 2^64)."""
    combined = np.zeros_like(hashes[0])
    for part in hashes:
        combined = combined * np.uint64(0x9E3779B97F4A7C15) + part  # odd multiplier; uint64 wraps
    return combined


class SeenHashes:
    """A set of 64-bit hashes in sorted numpy runs, merged like a binary counter.

    8 bytes per distinct row (a Python set needs ~70), O(log n) sorted runs to search.
    """

    def __init__(self) -> None:
        self.runs: list[np.ndarray] = []

    def contains(self, hashes: np.ndarray) -> np.ndarray:
        order = np.argsort(hashes)  # sorted needles walk each run in order: ~2x faster searches
        needles = hashes[order]
        found_sorted = np.zeros(len(hashes), bool)
        for run in self.runs:
            positions = np.minimum(np.searchsorted(run, needles), len(run) - 1)
            found_sorted |= run[positions] == needles
        found = np.empty_like(found_sorted)
        found[order] = found_sorted
        return found

    def add(self, new_hashes: np.ndarray) -> None:
        """Add hashes that are not in the set yet."""
        run = np.sort(new_hashes)
        while self.runs and len(self.runs[-1]) <= len(run):
            run = np.sort(np.concatenate([self.runs.pop(), run]), kind="stable")  # merging two sorted runs
        if len(run):
            self.runs.append(run)


def derived_columns(kind: Kind, media: tuple[str, ...] = ()) -> list[str]:
    """Names of the derived columns for a dataset of ``kind`` with ``media``."""
    empty = pa.RecordBatch.from_pylist([], schema=shard_schema(kind, media))
    return [*RowDeriver(kind, media).frame(empty).columns, *DATASET_COLUMNS]


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)


def _lists(offsets: np.ndarray, values: pa.Array) -> pa.ListArray:
    return pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), values)


def _mask(values: pa.Array) -> np.ndarray:
    return pc.fill_null(values, False).to_numpy(zero_copy_only=False).astype(bool)


def _as_arrow(values: pa.Array | np.ndarray) -> pa.Array:
    return values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(values)
