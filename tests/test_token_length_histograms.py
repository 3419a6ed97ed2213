"""Token-length histograms of a token cache (the tokenize step's artifact table): per sequence column, tokens
and trained tokens, in power-of-two bins, checked against the cache's own rows."""

from __future__ import annotations

from collections import Counter

import numpy as np
from test_tokenize import assistant, tokenizer_dir, user, write_dataset  # noqa: F401

from align_core.data.token_cache import tokenize_dataset
from align_core.data.token_dataset import TokenDataset
from align_core.data.truncation import IGNORE_INDEX
from align_core.shards.schema import Kind
from data_contracts.distributions import histogram_table, token_length_histograms


def test_each_sequence_column_counts_its_rows_tokens_and_trained_tokens_by_power_of_two(tokenizer_dir, tmp_path):
    samples = [{"prompt": [user("Why " * (index + 1))], "chosen": [assistant("Yes. " * (3 * index + 1))],
                "rejected": [assistant("No.")]} for index in range(12)]
    cache = tokenize_dataset(write_dataset(tmp_path, Kind.PREFERENCE, samples), tokenizer_dir, 512, cache_root=tmp_path)
    rows = [TokenDataset(cache)[index] for index in range(12)]
    histograms = {histogram.column: histogram for histogram in token_length_histograms(cache)}
    assert sorted(histograms) == ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"]
    for side in ("chosen", "rejected"):
        tokens = Counter(len(row[f"{side}_input_ids"]).bit_length() for row in rows)  # bin k holds [2^(k-1), 2^k)
        trained = Counter(int((np.asarray(row[f"{side}_labels"]) != IGNORE_INDEX).sum()).bit_length() for row in rows)
        assert {k: int(c) for k, c in enumerate(histograms[f"{side}_input_ids"].counts) if c} == dict(tokens)
        assert {k: int(c) for k, c in enumerate(histograms[f"{side}_labels"].counts) if c} == dict(trained)
    header, table = histogram_table(list(histograms.values()))
    assert header == ["tokens", "chosen_input_ids", "rejected_input_ids", "chosen_labels", "rejected_labels"]
    assert [sum(row[column] for row in table) for column in range(1, 5)] == [12, 12, 12, 12]
