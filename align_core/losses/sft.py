"""Supervised fine-tuning loss: next-token cross-entropy on the label (assistant) tokens only."""

from __future__ import annotations

import torch

from align_core.losses.logps import IGNORE_INDEX, token_logps


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean negative log-likelihood over all label tokens of the batch.

    Averaging over tokens (not rows) weights every trained token equally, as a causal LM loss does.

    Args:
        logits: (b, L, V).
        labels: (b, L), ``ignore_index`` on tokens that are not trained on.

    Returns:
        loss: () mean NLL per label token (0 when the batch has none, so a step never divides by 0).
        n_tokens: () number of label tokens.
    """
    logps, mask = token_logps(logits, labels, ignore_index)
    n_tokens = mask.sum()
    return -logps.sum() / n_tokens.clamp(min=1), n_tokens
