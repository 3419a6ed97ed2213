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


def linear_token_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, fused: bool = False) -> torch.Tensor:
    """(N,) fp32 log p(target) of each position under ``head(hidden)``, without the ``ignore_index`` case.

    Args:
        hidden: (N, H) final hidden states of the positions that predict a label.
        head: the (H -> V) output projection (a ``Linear``).
        targets: (N,) token ids.
        fused: Liger's fused linear cross-entropy (CUDA, ``liger-kernel``): the head and the log-softmax
            run chunk by chunk, so the (N, V) logits are never held; per-token gradients need
            liger-kernel >= 0.8.5 (``align_core.trainers.throughput``).
    """
    if fused:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        return -liger_fused_linear_cross_entropy(hidden, head.weight, targets, bias=head.bias, reduction="none").float()
    # fp32 log-softmax: bf16 logits would lose the small differences preference losses compare
    return -F.cross_entropy(head(hidden).float(), targets, reduction="none")


def per_sequence_sums(
    token_logps: torch.Tensor, owners: torch.Tensor, num_sequences: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sequence_logps``'s (sum, mean, n_tokens), each (num_sequences,), from label tokens' log-probs
    (N,) and the sequence each belongs to, ``owners`` (N,) (a padded row, or a packed document)."""
    sum_logps = token_logps.new_zeros(num_sequences).index_add(0, owners, token_logps)
    n_tokens = torch.zeros(num_sequences, dtype=torch.long, device=owners.device).index_add(0, owners, torch.ones_like(owners))
    return sum_logps, sum_logps / n_tokens.clamp(min=1), n_tokens


def label_owners(mask: torch.Tensor, sequence_index: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) the sequence of each label token of ``mask`` (b, L-1): its row, or in a packed batch the
    sequence ``sequence_index`` (b, L) names at the token (position t of the mask predicts token t+1)."""
    return mask.nonzero()[:, 0] if sequence_index is None else sequence_index[:, 1:][mask]


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    sequence_index: torch.Tensor | None = None,
    num_sequences: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed and length-averaged log-probabilities of each sequence's label tokens.

    Args:
        logits: (b, L, V).
        labels: (b, L), ``ignore_index`` on prompt and padding tokens.
        sequence_index, num_sequences: a packed batch's map of positions to its n sequences
            (``align_core.data.batch.Packing``); None: each row is one sequence (n = b).

    Returns:
        sum_logps: (n,) sum over label tokens (DPO, KTO use this).
        mean_logps: (n,) sum / number of label tokens, not the padded length (SimPO, ORPO, IPO use this).
        n_tokens: (n,) number of label tokens; a sequence with none has sum 0 and mean 0.
    """
    logps, mask = token_logps(logits, labels, ignore_index)
    if sequence_index is None:
        sum_logps, n_tokens = logps.sum(-1), mask.sum(-1)
        return sum_logps, sum_logps / n_tokens.clamp(min=1), n_tokens
    return per_sequence_sums(logps[mask], label_owners(mask, sequence_index), num_sequences)
