"""Unpaired preference data for the KTO tests, shaped like TRL's unpaired rows.

``unpaired_data`` (session fixture): (train, eval) dataset folders, each prompt once with its helpful
completion (desirable) and once with its curt one (undesirable), the same learnable signal as
``train_data.preference_rows``; materialised with the Messages template and validated.
"""

from __future__ import annotations

from typing import Any

import pytest
from train_data import materialize_validated, preference_rows


def unpaired_rows(count: int, offset: int = 0) -> list[dict[str, Any]]:
    rows = []
    for pair in preference_rows(count // 2, offset):
        rows.append({"prompt": pair["prompt"], "completion": pair["chosen"], "label": True})
        rows.append({"prompt": pair["prompt"], "completion": pair["rejected"], "label": False})
    return rows


@pytest.fixture(scope="session")
def unpaired_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unpaired")
    train = materialize_validated(unpaired_rows(48), "unpaired_preference", root, "train")
    evaluation = materialize_validated(unpaired_rows(16, offset=1000), "unpaired_preference", root, "eval")
    return train, evaluation
