"""Supervised fine-tuning loss: next-token cross-entropy on the label (assistant) tokens only, summed."""

from __future__ import annotations

import torch

from align_core.losses.logps import IGNORE_INDEX, token_logps


def sft_loss(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of the label tokens, and their count.

    A sum, not a mean: the trainer divides by the trained tokens of the whole optimizer step (all
    micro-batches, all ranks), so every token weighs the same whatever the batch split.

    Args:
        logits: (b, L, V).
        labels: (b, L), ``ignore_index`` on tokens that are not trained on.

    Returns:
        nll_sum: () summed NLL of the label tokens (0 when there are none).
        n_tokens: () number of label tokens.
    """
    logps, mask = token_logps(logits, labels, ignore_index)
    return -logps.sum(), mask.sum()
