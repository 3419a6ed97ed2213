"""Padding-free packing: first-fit-decreasing bins on hand-computed lengths, a packed forward equal to the
padded one per row, and an SFT run whose losses do not change when its micro-batches are packed."""

from __future__ import annotations

import pytest
import torch
from train_data import read_jsonl, sft_data, tiny_model, write_config  # noqa: F401

from align_core.data.packing import document_mask, first_fit_decreasing, packed_batch
from align_core.data.truncation import IGNORE_INDEX


def test_first_fit_decreasing_places_the_longest_rows_first():
    # sorted 5, 4, 3, 2, 1 into bins of 6: [5], [4], [3]; then 2 fits beside 4, 1 beside 5
    assert first_fit_decreasing([5, 3, 4, 2, 1], 6) == [[0, 4], [2, 3], [1]]
    assert first_fit_decreasing([9, 1], 6) == [[0], [1]]  # too long for a bin: a bin of its own


def test_the_document_mask_is_causal_within_each_row_and_padding_sees_itself():
    mask = document_mask(torch.tensor([[0, 0, 1, -1]]))[0, 0]
    assert mask.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


def test_a_packed_forward_gives_each_row_its_padded_logits(tiny_model):
    from align_core.models.registry import load_causal_lm

    model = load_causal_lm(tiny_model).eval()
    generator = torch.Generator().manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 300, (n,), generator=generator).numpy(),
             "labels": torch.randint(0, 300, (n,), generator=generator).numpy()} for n in (9, 4, 6, 3)]
    packed = packed_batch(rows, pad_token_id=0, capacity=12)
    assert packed.input_ids.shape == (2, 12) and int(packed.non_pad_tokens()) == 22
    assert int((packed.labels != IGNORE_INDEX).sum()) == 22 - 4  # every row's first label is dropped
    with torch.no_grad():
        logits = model(**packed.model_kwargs()).logits
        for index, row in enumerate(rows):
            alone = model(input_ids=torch.as_tensor(row["input_ids"], dtype=torch.long)[None]).logits[0]
            ids = torch.as_tensor(row["input_ids"], dtype=torch.long)
            found = [(s, p) for s in range(2) for p in range(12 - len(ids) + 1)
                     if torch.equal(packed.input_ids[s, p:p + len(ids)], ids)]
            sequence, start = found[0]
            assert torch.allclose(logits[sequence, start:start + len(ids)], alone, atol=1e-5), index


@pytest.mark.slow
def test_an_sft_run_logs_the_same_losses_packed_and_padded(tmp_path, tiny_model, sft_data):
    from align_core.launch import run as run_in_process

    losses = {}
    for packing in (False, True):
        name = f"packed{packing}"
        run_in_process(write_config(tmp_path / f"{name}.yaml", tiny_model, [sft_data], tmp_path / name,
                                    {"train_cfgs": {"max_steps": 4, "per_device_train_batch_size": 8, "packing": packing},
                                     "data_cfgs": {"max_length": 128}}, eval_sets=[sft_data]))
        records = read_jsonl(tmp_path / name / "metrics.jsonl")
        losses[packing] = [(r["loss"], r["tokens"]) for r in records] + [(r["eval/loss"], 0) for r in records if "eval/loss" in r]
    assert [tokens for _, tokens in losses[True]] == [tokens for _, tokens in losses[False]]
    assert [loss for loss, _ in losses[True]] == pytest.approx([loss for loss, _ in losses[False]], rel=1e-5)
