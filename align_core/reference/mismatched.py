"""KTO's mismatched pairs: each row's prompt with another row's completion, for the KL reference point.

KTO (Ethayarajh et al. 2024, section 4.1) estimates ``z0 = KL(policy || reference)`` from completions
scored after prompts they were not written for. The pairing is fixed per dataset, not drawn per
batch: row ``i`` is paired with the completion of row ``(i + 1) % n`` of the same token cache, so the
reference log-probs of the pairs can be computed once and cached like any other column, and a
batch's estimate is the mean over the pairs of the rows it holds (TRL precomputes its KL pairs the
same way). Every sequence of a row gets its pair: ``chosen`` with ``chosen``, ``rejected`` with
``rejected`` for preference rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from align_core.data.schema import SEQUENCE_PREFIXES
from align_core.data.token_dataset import TokenDataset
from align_core.data.truncation import IGNORE_INDEX
from align_core.errors import UsageError


def response_start(labels: np.ndarray) -> int:
    """Index of the first label token: everything before it is the prompt (and the assistant header)."""
    labelled = np.flatnonzero(np.asarray(labels) != IGNORE_INDEX)
    return int(labelled[0]) if len(labelled) else len(labels)


def mismatched_sequence(
    prompt_ids: np.ndarray, prompt_labels: np.ndarray, completion_ids: np.ndarray, completion_labels: np.ndarray, max_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """The prompt of one sequence followed by the response of another, cut to ``max_length`` tokens.

    Args:
        prompt_ids, prompt_labels: (L1,) the sequence whose prompt is kept.
        completion_ids, completion_labels: (L2,) the sequence whose response is kept.

    Returns:
        input_ids, labels: (<= max_length,) int32; labels -100 on the prompt, as in the token cache.
        The response is cut at the end, since only its log-probability estimate is needed.
    """
    prompt_end, response_begin = response_start(prompt_labels), response_start(completion_labels)
    input_ids = np.concatenate([prompt_ids[:prompt_end], completion_ids[response_begin:]])[:max_length]
    labels = np.concatenate(
        [np.full(prompt_end, IGNORE_INDEX, dtype=np.int32), completion_labels[response_begin:]]
    )[:max_length]
    return input_ids.astype(np.int32), labels.astype(np.int32)


class MismatchedRows(Dataset):
    """``rows[i]``'s mismatched pair as a row of the same kind: same keys, so the same collator pads it."""

    def __init__(self, rows: TokenDataset):
        if len(rows) < 2:
            raise UsageError(f"{rows.path}: {len(rows)} row; KTO's reference point pairs rows with each other and needs at least 2")
        self.rows = rows
        self.prefixes = SEQUENCE_PREFIXES[rows.kind]
        self.max_length = int(rows.manifest["key_inputs"]["max_length"])

    def __len__(self) -> int:
        return len(self.rows)

    def partner(self, index: int) -> int:
        return (index + 1) % len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row, other = self.rows[index], self.rows[self.partner(index)]
        pair: dict[str, Any] = {"id": row["id"]}
        for prefix in self.prefixes:
            input_ids, labels = mismatched_sequence(
                row[f"{prefix}input_ids"], row[f"{prefix}labels"], other[f"{prefix}input_ids"], other[f"{prefix}labels"],
                self.max_length,
            )
            pair[f"{prefix}input_ids"], pair[f"{prefix}labels"] = input_ids, labels
        pair["length"] = max(len(pair[f"{prefix}input_ids"]) for prefix in self.prefixes)
        if "desirable" in row:
            pair["desirable"] = row["desirable"]
        return pair
