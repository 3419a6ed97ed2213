"""Packing for the reward model: a packed preference batch gives each chosen and rejected sequence the score the
padded batch gives it at its last token, so the pairwise loss and its gradients do not change; an RM run logs
the same losses and token counts packed and padded."""

from __future__ import annotations

import pytest
import torch
from test_packing import assert_packed_runs_log_the_padded_runs, preference_token_rows
from train_data import preference_data, tiny_model  # noqa: F401

from align_core.data.batch import forward
from align_core.data.collate import Collator
from align_core.shards.schema import Kind


def test_packed_pairs_give_the_padded_end_scores_loss_and_gradients(tiny_model):
    from align_core.losses import pairwise_reward_loss
    from align_core.models.registry import load_score_model
    from align_core.trainers.rm import end_scores

    torch.manual_seed(0)  # the score head is initialised fresh
    model = load_score_model(tiny_model)
    rows = preference_token_rows([(5, 7, 3), (9, 2, 6), (4, 4, 4), (3, 10, 1)])
    padded = Collator(Kind.PREFERENCE, pad_token_id=0)(rows)
    packed = Collator(Kind.PREFERENCE, pad_token_id=0, pack_capacity=32)(rows)
    assert packed.input_ids.shape == (3, 32)  # 6 of the 8 sequences share a row with another
    results = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        model.zero_grad()
        scores = end_scores(forward(model, batch), batch)
        losses = pairwise_reward_loss(*scores.chunk(2), 0.01)
        losses.sum().backward()
        results[name] = scores, losses, torch.cat([parameter.grad.flatten() for parameter in model.parameters()])
    for padded_value, packed_value in zip(results["padded"], results["packed"]):
        assert torch.allclose(packed_value, padded_value, atol=1e-5)
    assert results["packed"][0].std() > 0.1  # the scores differ from sequence to sequence: read where they end


@pytest.mark.slow
def test_an_rm_run_logs_the_same_losses_packed_and_padded(tmp_path, tiny_model, preference_data):
    assert_packed_runs_log_the_padded_runs(tmp_path, tiny_model, preference_data[0],
                                           {"algorithm": "rm", "max_steps": 3, "score_regularization": 0.01},
                                           ("loss", "accuracy", "rewards/margin"))
