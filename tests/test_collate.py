"""Collators (shapes, padding side and values, chosen-first stacking) and the length-grouped sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from align_core.data import IGNORE_INDEX, Collator, LengthGroupedSampler, pad_fraction
from align_core.shards.schema import Kind

PAD = 0


def tokens(*values):
    """Token lists as TokenDataset hands them out: int32 numpy views."""
    return np.asarray(values, dtype=np.int32)


def supervised_row(ids, labels):
    return {"id": "x", "length": len(ids), "input_ids": tokens(*ids), "labels": tokens(*labels)}


def test_supervised_batch_is_right_padded_with_masked_labels():
    rows = [supervised_row([5, 6, 7], [-100, 6, 7]), supervised_row([8, 9], [-100, 9])]
    batch = Collator(Kind.SUPERVISED, PAD)(rows)
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 9, PAD]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 6, 7], [IGNORE_INDEX, 9, IGNORE_INDEX]]
    assert all(tensor.dtype == torch.long for tensor in (batch.input_ids, batch.attention_mask, batch.labels))


def test_pad_to_multiple_of_rounds_the_length_up():
    rows = [supervised_row([5, 6, 7], [5, 6, 7]), supervised_row([8], [8])]
    batch = Collator(Kind.SUPERVISED, PAD, pad_to_multiple_of=4)(rows)
    assert batch.input_ids.shape == (2, 4)
    assert batch.labels[0].tolist() == [5, 6, 7, IGNORE_INDEX]
    assert Collator(Kind.SUPERVISED, PAD, pad_to_multiple_of=3)(rows).input_ids.shape == (2, 3)


def test_preference_batch_stacks_chosen_rows_before_rejected_rows():
    rows = [
        {"chosen_input_ids": tokens(1, 2), "chosen_labels": tokens(-100, 2),
         "rejected_input_ids": tokens(1, 3, 4), "rejected_labels": tokens(-100, 3, 4)},
        {"chosen_input_ids": tokens(5, 6, 7, 8), "chosen_labels": tokens(-100, -100, 7, 8),
         "rejected_input_ids": tokens(5, 9), "rejected_labels": tokens(-100, 9)},
    ]
    batch = Collator(Kind.PREFERENCE, PAD)(rows)
    assert batch.input_ids.tolist() == [[1, 2, 0, 0], [5, 6, 7, 8], [1, 3, 4, 0], [5, 9, 0, 0]]
    assert batch.attention_mask.sum(dim=1).tolist() == [2, 4, 3, 2]
    assert batch.labels[3].tolist() == [IGNORE_INDEX, 9, IGNORE_INDEX, IGNORE_INDEX]


def test_prompt_only_batch_is_left_padded_for_generation():
    rows = [{"input_ids": tokens(1, 2, 3)}, {"input_ids": tokens(4)}]
    batch = Collator(Kind.PROMPT_ONLY, 99)(rows)
    assert batch.input_ids.tolist() == [[1, 2, 3], [99, 99, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.labels is None


def test_unpaired_batch_carries_desirable():
    rows = [{**supervised_row([1, 2], [-100, 2]), "desirable": True}, {**supervised_row([3], [3]), "desirable": False}]
    batch = Collator(Kind.UNPAIRED_PREFERENCE, PAD)(rows)
    assert batch.values["desirable"].tolist() == [True, False] and batch.input_ids.shape == (2, 2)


# ----- sampler ------------------------------------------------------------------------------------------


def skewed_lengths(rows=2000, seed=0):
    """Mostly short rows with a long tail, like chat data: 85% of 10-40 tokens, 15% of 200-500."""
    generator = np.random.default_rng(seed)
    short = generator.integers(10, 40, rows)
    long = generator.integers(200, 500, rows)
    return np.where(generator.random(rows) < 0.15, long, short)


def test_pad_fraction_of_hand_made_batches():
    assert pad_fraction([1, 2, 3, 4], [[0, 1], [2, 3]]) == pytest.approx(1 - 10 / 12)
    assert pad_fraction([4, 4], [[0, 1]]) == 0.0
    assert pad_fraction([1, 2, 3, 4], [[0, 1], [2, 3]], pad_to_multiple_of=4) == pytest.approx(1 - 10 / 16)


def test_length_grouping_cuts_pad_fraction_on_a_skewed_set():
    lengths = skewed_lengths()
    grouped = LengthGroupedSampler(lengths, batch_size=8, seed=1)
    shuffled = LengthGroupedSampler(lengths, batch_size=8, seed=1, group_by_length=False)
    grouped_pad, shuffled_pad = pad_fraction(lengths, grouped.batches()), pad_fraction(lengths, shuffled.batches())
    assert shuffled_pad > 0.5 and grouped_pad < 0.1
    assert sorted(grouped) == list(range(len(lengths)))  # every row once per epoch


def test_order_is_deterministic_per_seed_and_epoch():
    lengths = skewed_lengths(300)
    first = LengthGroupedSampler(lengths, batch_size=4, seed=3)
    again = LengthGroupedSampler(lengths, batch_size=4, seed=3)
    assert list(first) == list(again)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    assert list(LengthGroupedSampler(lengths, batch_size=4, seed=4)) != epoch0


def test_ranks_split_every_global_batch_evenly_and_cover_every_row():
    lengths = skewed_lengths(101)  # not a multiple of the world size: rows repeat to fill
    world = [LengthGroupedSampler(lengths, batch_size=4, seed=0, rank=rank, world_size=3) for rank in range(3)]
    per_rank = [sampler.batches() for sampler in world]
    assert len({len(list(sampler)) for sampler in world}) == 1 and len(world[0]) == 34
    assert set().union(*(set(sampler) for sampler in world)) == set(range(101))
    global_order = world[0].global_order()
    for step in range(len(per_rank[0])):
        step_rows = sorted(row for batches in per_rank for row in batches[step])
        assert step_rows == sorted(global_order[step * 12 : (step + 1) * 12].tolist())


def test_short_last_global_batch_stays_last_so_batches_keep_their_size():
    lengths = skewed_lengths(50)
    batches = LengthGroupedSampler(lengths, batch_size=8, seed=5, rank=1, world_size=2).batches()
    assert [len(batch) for batch in batches] == [8, 8, 8, 1]


def test_bad_sampler_arguments_are_errors():
    with pytest.raises(ValueError, match="rank < world_size"):
        LengthGroupedSampler([1, 2], batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no rows"):
        LengthGroupedSampler([], batch_size=2)
