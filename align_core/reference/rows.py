"""Token rows with what a reference-based loss reads beside them, and the collator that batches both.

A row of ``ScoredRows`` is the token row plus, when given:

- ``ref_logps`` (k,): cached reference log-probs of the row's k sequences (chosen, rejected / one);
- ``mismatched``: KTO's mismatched pair of the row (a row of the same kind, see ``mismatched.py``);
- ``ref_mismatched_logps`` (k,): cached reference log-probs of those pairs.

``ScoredCollator`` pads the token rows as the plain collator does into a ``Batch`` and adds
``values["ref_logps"]`` (n,), the ``companions["mismatched"]`` batch of the rows' pairs, with its own
``values["ref_logps"]`` (n,), with n = k * b in the batch's sequence-major order (all chosen
sequences, then all rejected ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from align_core.data.batch import Batch
from align_core.data.collate import Collator
from align_core.data.token_dataset import TokenDataset
from align_core.reference.mismatched import MismatchedRows


class ScoredRows(Dataset):
    def __init__(
        self,
        rows: TokenDataset,
        ref_logps: np.ndarray | None = None,
        mismatched: MismatchedRows | None = None,
        ref_mismatched_logps: np.ndarray | None = None,
    ):
        """``ref_logps``, ``ref_mismatched_logps``: (len(rows), k) float32, aligned with ``rows``."""
        self.rows = rows
        self.extras = {"ref_logps": ref_logps, "ref_mismatched_logps": ref_mismatched_logps}
        self.mismatched = mismatched

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        for name, column in self.extras.items():
            if column is not None:
                row[name] = column[index]
        if self.mismatched is not None:
            row["mismatched"] = self.mismatched[index]
        return row


@dataclass
class ScoredCollator:
    base: Collator

    def __call__(self, rows: Sequence[dict[str, Any]]) -> Batch:
        batch = self.base(rows)
        if "ref_logps" in rows[0]:
            batch.values["ref_logps"] = sequence_major(rows, "ref_logps")
        if "mismatched" in rows[0]:
            pairs = self.base([row["mismatched"] for row in rows])
            if "ref_mismatched_logps" in rows[0]:
                pairs.values["ref_logps"] = sequence_major(rows, "ref_mismatched_logps")
            batch.companions["mismatched"] = pairs
        return batch


def sequence_major(rows: Sequence[dict[str, Any]], name: str) -> torch.Tensor:
    """(k * b,) a per-row (k,) column in the batch's order: every row's first value, then every second."""
    per_row = np.stack([row[name] for row in rows])  # (b, k)
    return torch.from_numpy(np.ascontiguousarray(per_row.T).reshape(-1))
