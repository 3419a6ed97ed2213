"""Token rows with what a reference-based loss reads beside them, and the collator that batches both.

A row of ``ScoredRows`` is the token row plus, when given:

- ``ref_logps`` (k,): cached reference log-probs of the row's k sequences (chosen, rejected / one);
- ``mismatched``: KTO's mismatched pair of the row (a row of the same kind, see ``mismatched.py``);
- ``ref_mismatched_logps`` (k,): cached reference log-probs of those pairs.

``ScoredCollator`` pads the token rows as the plain collator does and adds ``ref_logps`` (n,),
``mismatched_input_ids``/``_attention_mask``/``_labels`` (n, L') and ``ref_mismatched_logps`` (n,),
with n = k * b in the collator's prefix-major order (all chosen rows, then all rejected rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

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

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.base(rows)
        for name in ("ref_logps", "ref_mismatched_logps"):
            if name in rows[0]:
                per_row = np.stack([row[name] for row in rows])  # (b, k)
                batch[name] = torch.from_numpy(np.ascontiguousarray(per_row.T).reshape(-1))  # prefix-major (k*b,)
        if "mismatched" in rows[0]:
            pairs = self.base([row["mismatched"] for row in rows])
            for name in ("input_ids", "attention_mask", "labels"):
                batch[f"mismatched_{name}"] = pairs[name]
        return batch
