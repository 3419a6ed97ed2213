"""Padding-free packing: first-fit-decreasing bins on hand-computed lengths, a packed forward equal to the
padded one per row, preference pairs whose per-sequence log-probs, losses and gradients do not change when
packed, and SFT and DPO runs whose logged losses do not change when their micro-batches are packed."""

from __future__ import annotations

import pytest
import torch
from train_data import preference_data, read_jsonl, sft_data, tiny_model, write_config  # noqa: F401

from align_core.data.collate import Collator
from align_core.data.packing import document_mask, first_fit_decreasing, pack_sequences
from align_core.data.truncation import IGNORE_INDEX
from align_core.errors import UsageError
from align_core.shards.schema import Kind


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
    packed = pack_sequences([row["input_ids"] for row in rows], [row["labels"] for row in rows], pad_token_id=0, capacity=12)
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


def preference_token_rows(shapes: list[tuple[int, int, int]]) -> list[dict]:
    """Token rows of (prompt, chosen, rejected) lengths: random ids, labels on the answers only."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    for prompt, *answers in shapes:
        row = {}
        for name, answer in zip(("chosen", "rejected"), answers):
            ids = torch.randint(1, 300, (prompt + answer,), generator=generator)
            row[f"{name}_input_ids"], row[f"{name}_labels"] = ids.numpy(), torch.cat([torch.full((prompt,), IGNORE_INDEX), ids[prompt:]]).numpy()
        rows.append(row)
    return rows


def test_packed_preference_pairs_give_the_padded_log_probs_losses_and_gradients(tiny_model):
    from align_core.losses import dpo_loss, orpo_odds_ratio_loss, simpo_loss
    from align_core.models.registry import load_causal_lm
    from align_core.reference.scoring import ResponseScorer, score_sequences

    scorer = ResponseScorer(load_causal_lm(tiny_model))
    rows = preference_token_rows([(5, 7, 3), (9, 2, 6), (4, 4, 4), (3, 10, 1)])
    padded = Collator(Kind.PREFERENCE, pad_token_id=0)(rows)
    packed = Collator(Kind.PREFERENCE, pad_token_id=0, pack_capacity=32)(rows)
    assert packed.input_ids.shape == (3, 32) and (packed.num_rows, packed.num_sequences) == (4, 8)
    assert packed.trained_tokens().tolist() == padded.trained_tokens().tolist() == [23, 14]
    results = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        scorer.zero_grad()
        chosen, rejected = score_sequences(scorer, batch).halves()
        reference = torch.linspace(-40, -10, 8).chunk(2)
        losses = {
            "dpo": dpo_loss(chosen.sum, rejected.sum, *reference, 0.1, 0.0)[0],
            "simpo": simpo_loss(chosen.mean, rejected.mean, 2.0, 0.5)[0],
            "orpo": orpo_odds_ratio_loss(chosen.mean, rejected.mean)[0],
        }
        sum(loss.sum() for loss in losses.values()).backward()
        gradients = torch.cat([parameter.grad.flatten() for parameter in scorer.parameters()])
        results[name] = (chosen, rejected, losses, gradients)
    for padded_logps, packed_logps in zip(results["padded"][:2], results["packed"][:2]):
        assert torch.equal(packed_logps.n_tokens, padded_logps.n_tokens)
        assert torch.allclose(packed_logps.sum, padded_logps.sum, atol=1e-4)
        assert torch.allclose(packed_logps.mean, padded_logps.mean, atol=1e-5)
    for loss in ("dpo", "simpo", "orpo"):
        assert torch.allclose(results["packed"][2][loss], results["padded"][2][loss], atol=1e-5), loss
    assert torch.allclose(results["packed"][3], results["padded"][3], atol=1e-5)


def test_rows_with_media_inputs_refuse_packing_in_one_line():
    from align_core.reference.rows import ScoredCollator
    from align_core.trainers.throughput import packing_collate

    collate = ScoredCollator(Collator(Kind.PREFERENCE, pad_token_id=0, media=object()))
    with pytest.raises(UsageError) as raised:
        packing_collate(collate, 64)
    assert str(raised.value) == "train_cfgs.packing: rows with media inputs are not packed; set packing: false"


def test_a_packed_batch_is_not_split_by_rows():
    packed = Collator(Kind.PREFERENCE, pad_token_id=0, pack_capacity=24)(preference_token_rows([(2, 3, 3), (2, 2, 2)]))
    with pytest.raises(ValueError, match="select rows before packing"):
        packed.select_rows([0])


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


@pytest.mark.slow
def test_a_dpo_run_logs_the_same_losses_and_rewards_packed_and_padded(tmp_path, tiny_model, preference_data):
    from align_core.launch import run as run_in_process

    logged = {}
    for packing in (False, True):
        name = f"dpo-packed{packing}"
        run_in_process(write_config(tmp_path / f"{name}.yaml", tiny_model, [preference_data[0]], tmp_path / name,
                                    {"train_cfgs": {"algorithm": "dpo", "max_steps": 2, "packing": packing, "save_interval": 100}}))
        logged[packing] = [(r["loss"], r["rewards/margin"], r["logps/chosen"], r["tokens"]) for r in read_jsonl(tmp_path / name / "metrics.jsonl")]
    assert [row[3] for row in logged[True]] == [row[3] for row in logged[False]]
    for packed, padded in zip(logged[True], logged[False]):
        assert packed[:3] == pytest.approx(padded[:3], rel=1e-5, abs=1e-6)
