"""Length bias in tokens (issue 14): on a real preference token cache built with a tiny model's tokenizer, the
share of pairs whose chosen answer has more trained tokens warns above 0.75, as the character-level check."""

from __future__ import annotations

import numpy as np
import pytest
from train_data import materialize_validated, preference_rows, tiny_model  # noqa: F401

from align_core.data.token_cache import TokenizeSpec
from align_core.data.token_checks import check_token_cache, describe
from align_core.data.token_dataset import TokenDataset
from align_core.data.truncation import IGNORE_INDEX


def cache_with_chosen_longer(tmp_path, tiny_model, chosen_longer: int):
    rows = preference_rows(20)  # the helpful chosen answer is the longer one in every pair
    for row in rows[chosen_longer:]:  # the rest: a curt chosen answer, a long rejected one
        row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
    dataset = materialize_validated(rows, "preference", tmp_path, f"longer-{chosen_longer}")
    return TokenizeSpec(dataset_dir=str(dataset), tokenizer_path=str(tiny_model), max_length=128,
                        cache_root=str(tmp_path / "token_cache")).build()


def trained_token_difference(cache) -> np.ndarray:
    """Chosen minus rejected trained tokens, row by row through the dataset's own reader."""
    rows = TokenDataset(cache)
    return np.array([int((row["chosen_labels"] != IGNORE_INDEX).sum()) - int((row["rejected_labels"] != IGNORE_INDEX).sum())
                     for row in (rows[i] for i in range(len(rows)))])


@pytest.mark.parametrize("chosen_longer, warns", [(15, False), (16, True)])
def test_token_length_bias_warns_above_three_quarters_of_pairs(tmp_path, tiny_model, chosen_longer, warns):
    cache = cache_with_chosen_longer(tmp_path, tiny_model, chosen_longer)

    findings = {f.name: f for f in check_token_cache(cache)}

    assert [name for name, f in findings.items() if f.failed] == (["token_length_bias"] if warns else [])
    bias = findings["token_length_bias"]
    difference = trained_token_difference(cache)
    assert int((difference > 0).sum()) == chosen_longer and int((difference == 0).sum()) == 0
    assert bias.observed == {"longer_is_chosen": chosen_longer / 20, "mean_token_difference": round(float(difference.mean()), 2)}
    assert (bias.severity, bias.checked, bias.count) == ("warning", 20, chosen_longer if warns else 0)
    assert bias.observed["mean_token_difference"] > 0
    if warns:
        assert describe(bias).startswith("token_length_bias: 16 of 20 (e.g. ")
        assert describe(bias).endswith("(observed longer_is_chosen 0.8, mean_token_difference "
                                       f"{bias.observed['mean_token_difference']})")
