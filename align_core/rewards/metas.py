"""Row metas for reward functions, read from the materialised dataset by id.

The token cache keeps each row's ``id`` but not its ``meta`` (a GSM8K row's ``final_answer``), so an RL
trainer reads them here once and joins them to the prompt rows of each batch by id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from align_core.errors import UsageError
from align_core.shards.dataset import ShardDataset


def read_metas(dataset_dir: str | Path) -> dict[str, dict | None]:
    """``{row id: meta dict, or None for a row without one}`` for every row of the dataset folder."""
    table = ShardDataset(dataset_dir).read_table(["id", "meta"])
    return {
        row_id: json.loads(meta) if meta else None
        for row_id, meta in zip(table.column("id").to_pylist(), table.column("meta").to_pylist())
    }


def metas_for(ids: Sequence[str], metas: dict[str, dict | None]) -> list[dict | None]:
    """The metas of rows ``ids`` in order; an id the dataset does not hold is an error naming it."""
    missing = [row_id for row_id in ids if row_id not in metas]
    if missing:
        raise UsageError(
            f"{len(missing)} row id(s) not in the dataset the metas were read from, e.g. {missing[0]!r}; "
            "was the token cache built from another dataset?"
        )
    return [metas[row_id] for row_id in ids]
