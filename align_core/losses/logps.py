"""Per-sequence log-probabilities of label tokens: the quantity every preference loss compares."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logps(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each label token under ``logits``, shifted so position t predicts token t+1.

    Args:
        logits: (b, L, V) raw model outputs.
        labels: (b, L) token ids, ``ignore_index`` where no loss is taken (prompt, padding).

    Returns:
        logps: (b, L-1) log p(labels[:, t+1] | prefix), 0 where masked.
        mask: (b, L-1) bool, True on the label tokens.
    """
    batch, length, vocab = logits.shape
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != ignore_index
    # cross_entropy fuses log_softmax and gather; on flat (N, V) rows it runs ~4x faster on CPU than on
    # (b, V, L); fp32 so bf16 logits do not lose the small differences preference losses depend on.
    logps = -F.cross_entropy(
        logits[:, :-1, :].reshape(-1, vocab).float(),
        shifted_labels.reshape(-1),
        ignore_index=ignore_index,
        reduction="none",
    ).view(batch, length - 1)
    return logps, mask


def sequence_logps(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed and length-averaged log-probabilities of each row's label tokens.

    Args:
        logits: (b, L, V).
        labels: (b, L), ``ignore_index`` on prompt and padding tokens.

    Returns:
        sum_logps: (b,) sum over label tokens (DPO, KTO use this).
        mean_logps: (b,) sum / number of label tokens, not the padded length (SimPO, ORPO, IPO use this).
        n_tokens: (b,) number of label tokens; a row with none has sum 0 and mean 0.
    """
    logps, mask = token_logps(logits, labels, ignore_index)
    sum_logps = logps.sum(-1)
    n_tokens = mask.sum(-1)
    mean_logps = sum_logps / n_tokens.clamp(min=1)
    return sum_logps, mean_logps, n_tokens
