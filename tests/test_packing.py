"""Padding-free packing: first-fit-decreasing bins on hand-computed lengths, the boundaries a packed batch gives
the model, a packed forward equal to the padded one per row, preference pairs whose per-sequence log-probs,
losses and gradients do not change when packed, and SFT and DPO runs whose logged losses do not change when
their micro-batches are packed. Each attention implementation: ``test_packing_attention.py``."""

from __future__ import annotations

import pytest
import torch
from train_data import preference_data, read_jsonl, sft_data, tiny_model, write_config  # noqa: F401

from align_core.data.batch import forward
from align_core.data.collate import Collator
from align_core.data.packing import first_fit_decreasing, pack_sequences
from align_core.data.truncation import IGNORE_INDEX
from align_core.errors import UsageError
from align_core.shards.schema import Kind


def test_first_fit_decreasing_places_the_longest_rows_first():
    # sorted 5, 4, 3, 2, 1 into bins of 6: [5], [4], [3]; then 2 fits beside 4, 1 beside 5
    assert first_fit_decreasing([5, 3, 4, 2, 1], 6) == [[0, 4], [2, 3], [1]]
    assert first_fit_decreasing([9, 1], 6) == [[0], [1]]  # too long for a bin: a bin of its own


def test_a_packed_row_restarts_positions_per_sequence_and_its_padding_is_a_sequence_of_its_own():
    from transformers.masking_utils import find_packed_sequence_indices

    # lengths 9, 4, 6, 3 into bins of 12: [9, 3] and [6, 4] + 2 padding
    packed = pack_sequences([[1] * n for n in (9, 4, 6, 3)], [[1] * n for n in (9, 4, 6, 3)], pad_token_id=0, capacity=12)
    assert packed.packing.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 2], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 0, 1]]
    assert packed.packing.cu_seq_lens.tolist() == [0, 9, 12, 18, 22, 24] and packed.packing.max_length == 9
    # transformers finds the same five segments in the positions as the varlen boundaries give
    assert find_packed_sequence_indices(packed.packing.position_ids).tolist() == [[0] * 9 + [1] * 3, [0] * 6 + [1] * 4 + [2] * 2]
    assert packed.packing.last_positions().tolist() == [8, 21, 17, 11]  # flattened: sequence 1 ends at row 1, column 9
    kwargs = packed.model_kwargs()
    assert kwargs["attention_mask"] is None and int(packed.non_pad_tokens()) == 22


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
        logits = forward(model, packed).logits
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


def assert_packed_runs_log_the_padded_runs(tmp_path, model, train, train_cfgs: dict, names: tuple[str, ...]) -> None:
    """A run with ``train_cfgs`` and the same run with ``packing`` log the same token counts every step, and the
    same ``names`` to 1e-5. Rows of 256 tokens hold three of the test rows' 66-81 token sequences."""
    from align_core.launch import run as run_in_process

    logged = {}
    for packing in (False, True):
        out = tmp_path / f"{train_cfgs['algorithm']}-packed{packing}"
        run_in_process(write_config(out.with_suffix(".yaml"), model, [train], out,
                                    {"train_cfgs": {**train_cfgs, "packing": packing, "save_interval": 100},
                                     "data_cfgs": {"max_length": 256}}))
        logged[packing] = [[record[name] for name in ("tokens", *names)] for record in read_jsonl(out / "metrics.jsonl")]
    assert len(logged[True]) == train_cfgs["max_steps"]
    assert [step[0] for step in logged[True]] == [step[0] for step in logged[False]]
    for packed, padded in zip(logged[True], logged[False]):
        assert packed[1:] == pytest.approx(padded[1:], rel=1e-5, abs=1e-6)


@pytest.mark.slow
def test_a_dpo_run_logs_the_same_losses_and_rewards_packed_and_padded(tmp_path, tiny_model, preference_data):
    assert_packed_runs_log_the_padded_runs(tmp_path, tiny_model, preference_data[0], {"algorithm": "dpo", "max_steps": 2},
                                           ("loss", "rewards/margin", "logps/chosen"))
