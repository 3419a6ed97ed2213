"""Packing for KTO: a packed batch of unpaired rows and, apart, their mismatched pairs give every completion and
every pair the padded batch's log-probs, so the reference point, the KTO loss and its gradients do not change; a
KTO run logs the same losses, KL and token counts packed and padded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from preference_data import unpaired_data  # noqa: F401
from test_packing import assert_packed_runs_log_the_padded_runs
from train_data import tiny_model  # noqa: F401

from align_core.data.collate import Collator
from align_core.data.truncation import IGNORE_INDEX
from align_core.shards.schema import Kind


def unpaired_token_rows(shapes: list[tuple[int, int]]) -> list[dict]:
    """Unpaired token rows of (prompt, completion) lengths, alternately desirable, each with its mismatched pair
    (its prompt, the next row's completion) and cached reference log-probs for both."""
    from align_core.reference.mismatched import mismatched_sequence

    generator = torch.Generator().manual_seed(0)
    rows = []
    for index, (prompt, completion) in enumerate(shapes):
        ids = torch.randint(1, 300, (prompt + completion,), generator=generator).numpy()
        labels = np.concatenate([np.full(prompt, IGNORE_INDEX), ids[prompt:]])
        rows.append({"input_ids": ids, "labels": labels, "desirable": index % 2 == 0,
                     "ref_logps": np.array([-5.0 * completion], dtype=np.float32)})
    for index, row in enumerate(rows):
        following = rows[(index + 1) % len(rows)]
        ids, labels = mismatched_sequence(row["input_ids"], row["labels"], following["input_ids"], following["labels"], 64)
        row["mismatched"] = {"input_ids": ids, "labels": labels, "desirable": row["desirable"]}
        row["ref_mismatched_logps"] = np.array([-8.0 * int((labels != IGNORE_INDEX).sum())], dtype=np.float32)
    return rows


def test_packed_rows_and_mismatched_pairs_give_the_padded_log_probs_loss_and_gradients(tiny_model):
    from align_core.losses import kto_loss, kto_reference_point
    from align_core.models.registry import load_causal_lm
    from align_core.reference import ScoredCollator
    from align_core.reference.scoring import ResponseScorer, score_sequences
    from align_core.trainers.throughput import packing_collate

    scorer = ResponseScorer(load_causal_lm(tiny_model))
    rows = unpaired_token_rows([(5, 7), (9, 2), (4, 4), (3, 10), (6, 1), (2, 5)])
    padded_collate = ScoredCollator(Collator(Kind.UNPAIRED_PREFERENCE, pad_token_id=0))
    padded, packed = padded_collate(rows), packing_collate(padded_collate, 24)(rows)
    assert packed.packing is not None and packed.companions["mismatched"].packing is not None
    assert len(packed.input_ids) < len(padded.input_ids)
    results = {}
    for name, batch in (("padded", padded), ("packed", packed)):
        scorer.zero_grad()
        policy = score_sequences(scorer, batch)
        mismatched = batch.companions["mismatched"]
        with torch.no_grad():
            mismatched_logps = score_sequences(scorer, mismatched).sum
        kl = kto_reference_point(mismatched_logps, mismatched.values["ref_logps"])
        losses = kto_loss(policy.sum, batch.values["ref_logps"], batch.values["desirable"], kl, 0.1)
        losses.sum().backward()
        gradients = torch.cat([parameter.grad.flatten() for parameter in scorer.parameters()])
        results[name] = policy.sum, policy.n_tokens, mismatched_logps, kl, losses, gradients
    padded_logps, padded_tokens, padded_mismatched, *padded_rest = results["padded"]
    packed_logps, packed_tokens, packed_mismatched, *packed_rest = results["packed"]
    assert torch.equal(packed_tokens, padded_tokens)
    assert torch.allclose(packed_logps, padded_logps, rtol=1e-5, atol=1e-5)
    assert torch.allclose(packed_mismatched, padded_mismatched, rtol=1e-5, atol=1e-5)
    for padded_value, packed_value in zip(padded_rest, packed_rest):  # kl, losses, gradients
        assert torch.allclose(packed_value, padded_value, atol=1e-5)
    assert padded_rest[0] > 0  # the reference point is not clamped away: the pairs' log-probs reach the loss


@pytest.mark.slow
def test_a_kto_run_logs_the_same_losses_packed_and_padded(tmp_path, tiny_model, unpaired_data):
    # length grouping would put the short (undesirable) completions together: steps of one label only
    assert_packed_runs_log_the_padded_runs(tmp_path, tiny_model, unpaired_data[0],
                                           {"algorithm": "kto", "max_steps": 3, "length_grouping": False},
                                           ("loss", "kl", "rewards/accuracy", "logps/chosen", "logps/rejected"))
