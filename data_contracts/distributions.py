"""Histograms of derived columns over a whole dataset, for the report: fixed bins, counts summed over chunks.

Lengths are binned by powers of two (0, 1, 2-3, 4-7, ...), the preference pairs' length difference by
signed powers of two, similarities by twentieths; so streaming needs no first pass to find the range.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from align_core.shards.schema import CONVERSATION_COLUMNS, Kind

LENGTH_BINS = 24  # 0, 1, 2-3, ..., 2^22 and longer
SIMILARITY_BINS = 20


def _length_bin(values: np.ndarray) -> np.ndarray:
    """0 for 0, k for [2^(k-1), 2^k), the last bin for everything longer."""
    magnitude = np.abs(values).astype(np.int64)
    bins = np.zeros(len(values), np.int64)
    positive = magnitude > 0
    bins[positive] = np.floor(np.log2(magnitude[positive])).astype(np.int64) + 1
    return np.minimum(bins, LENGTH_BINS - 1)


def _length_label(bin_index: int) -> str:
    if bin_index == 0:
        return "0"
    low, high = 1 << (bin_index - 1), (1 << bin_index) - 1
    if bin_index == LENGTH_BINS - 1:
        return f"{low}+"
    return str(low) if low == high else f"{low}-{high}"


class Histogram:
    def __init__(self, column: str, title: str, scale: str):
        self.column, self.title, self.scale = column, title, scale  # scale: "length", "signed", "unit"
        size = {"length": LENGTH_BINS, "signed": 2 * LENGTH_BINS - 1, "unit": SIMILARITY_BINS}[scale]
        self.counts = np.zeros(size, np.int64)

    def add(self, values: pd.Series) -> None:
        values = values.dropna().to_numpy(dtype=float)
        if self.scale == "unit":
            bins = np.minimum((values * SIMILARITY_BINS).astype(np.int64), SIMILARITY_BINS - 1)
        elif self.scale == "length":
            bins = _length_bin(values)
        else:  # negative bins mirror the positive ones around the bin of 0
            bins = LENGTH_BINS - 1 + np.sign(values).astype(np.int64) * _length_bin(values)
        self.counts += np.bincount(bins, minlength=len(self.counts))

    def labels(self) -> list[str]:
        if self.scale == "unit":
            return [f"{i / SIMILARITY_BINS:.2f}-{(i + 1) / SIMILARITY_BINS:.2f}" for i in range(SIMILARITY_BINS)]
        if self.scale == "length":
            return [_length_label(i) for i in range(LENGTH_BINS)]
        return [f"-({_length_label(i)})" for i in range(LENGTH_BINS - 1, 0, -1)] + [_length_label(i) for i in range(LENGTH_BINS)]

    def to_dict(self) -> dict[str, Any]:
        """Bins from the first to the last non-empty one (all of them for similarities)."""
        labels = self.labels()
        filled = np.flatnonzero(self.counts)
        first, last = (0, len(labels) - 1) if self.scale == "unit" or not len(filled) else (filled[0], filled[-1])
        return {
            "column": self.column,
            "title": self.title,
            "total": int(self.counts.sum()),
            "bins": [{"label": labels[i], "count": int(self.counts[i])} for i in range(first, last + 1)],
        }


class Distributions:
    """The report's histograms for a dataset of ``kind``: characters per text column and, for preference
    pairs, the length difference and the similarity of chosen and rejected."""

    def __init__(self, kind: Kind):
        self.histograms = [Histogram(f"{name}_chars", f"characters of {name}", "length") for name in CONVERSATION_COLUMNS[kind]]
        if kind is Kind.PREFERENCE:
            self.histograms += [
                Histogram("length_difference_chars", "chosen minus rejected, characters", "signed"),
                Histogram("pair_similarity", "similarity of chosen and rejected (character-trigram Jaccard)", "unit"),
            ]

    def add(self, frame: pd.DataFrame) -> None:
        for histogram in self.histograms:
            histogram.add(frame[histogram.column])

    def to_dict(self) -> dict[str, Any]:
        return {"histograms": [histogram.to_dict() for histogram in self.histograms]}


def token_length_histograms(cache_dir: str | Path) -> list[Histogram]:
    """Tokens per sequence column of a token cache (``chosen_input_ids``, ...; the model's view of the
    lengths the contract counts in characters), and trained tokens where the kind has labels."""
    import pyarrow.compute as pc

    from align_core.data.schema import SEQUENCE_PREFIXES, has_labels
    from align_core.data.token_cache import read_token_manifest
    from align_core.data.truncation import IGNORE_INDEX

    manifest = read_token_manifest(cache_dir)
    kind = Kind(manifest["kind"])
    names = [f"{prefix}input_ids" for prefix in SEQUENCE_PREFIXES[kind]]
    labels = [f"{prefix}labels" for prefix in SEQUENCE_PREFIXES[kind]] if has_labels(kind) else []
    histograms = {name: Histogram(name, f"tokens of {name}", "length") for name in names}
    histograms |= {name: Histogram(name, f"trained tokens of {name}", "length") for name in labels}
    for entry in manifest["shards"]:
        with pa.memory_map(str(Path(cache_dir) / entry["path"])) as source:
            table = pa.ipc.open_file(source).read_all()
            for name in names:
                histograms[name].add(pd.Series(pc.list_value_length(table.column(name)).to_numpy()))
            for name in labels:
                column = table.column(name).combine_chunks()
                trained = (column.values.to_numpy() != IGNORE_INDEX).astype(np.int64)
                row_of_value = np.repeat(np.arange(len(column)), np.diff(column.offsets.to_numpy()))
                histograms[name].add(pd.Series(np.bincount(row_of_value, weights=trained, minlength=len(column))))
    return list(histograms.values())


def histogram_table(histograms: list[Histogram]) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of one table of several length histograms: a row per bin, a column of counts each."""
    labels = histograms[0].labels()
    filled = [i for i in range(len(labels)) if any(h.counts[i] for h in histograms)]
    if not filled:
        return ["tokens", *(h.column for h in histograms)], []
    bins = range(filled[0], filled[-1] + 1)
    return ["tokens", *(h.column for h in histograms)], [[labels[i], *(int(h.counts[i]) for h in histograms)] for i in bins]
