"""Each training row's shard ``meta``, joined to its batches by row id.

The token cache keeps a row's ``id`` but not its ``meta`` (GSM8K's ``final_answer``, PKU-SafeRLHF's
safety labels), so a trainer that needs them reads them once from the datasets and its collate
function adds each sequence's row as ``values["row_index"]``: a per-sequence value like any other,
so selecting rows and splitting micro-batches carry it along.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from align_core.data.batch import Batch
from align_core.rewards import read_metas

ROW_INDEX = "row_index"


class RowMetas:
    def __init__(self, dataset_dirs: Sequence[str]):
        self.metas: dict[str, dict | None] = {}
        for folder in dataset_dirs:
            self.metas.update(read_metas(folder))
        self.ids: list[str] = sorted(self.metas)
        self._index = {row_id: index for index, row_id in enumerate(self.ids)}

    def wrap(self, collate: Callable[[list[dict[str, Any]]], Batch]) -> Callable[[list[dict[str, Any]]], Batch]:
        """``collate`` that also records each sequence's row (sequence-major, like the batch)."""

        def collate_with_rows(items: list[dict[str, Any]]) -> Batch:
            batch = collate(items)
            rows = [self._index[str(item["id"])] for item in items]
            batch.values[ROW_INDEX] = torch.tensor(rows * batch.sequences_per_row)
            return batch

        return collate_with_rows

    def row_ids(self, batch: Batch) -> list[str]:
        """The row id of each sequence of ``batch``."""
        return [self.ids[index] for index in batch.values[ROW_INDEX].tolist()]

    def of(self, batch: Batch) -> list[dict | None]:
        """The meta of each sequence's row."""
        return [self.metas[row_id] for row_id in self.row_ids(batch)]
