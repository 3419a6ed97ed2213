"""Scoring token batches: one forward pass -> per-sequence log-probabilities of the label tokens.

The policy (through its DeepSpeed engine), a live reference model and the reference precompute all
score through ``score_sequences``, so the three can only differ in the weights they hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from align_core.losses import sequence_logps


@dataclass
class SequenceLogps:
    """Log-probabilities of each sequence's label (response) tokens.

    Attributes:
        sum: (n,) summed log-probs (DPO, KTO).
        mean: (n,) sum / n_tokens (IPO, SimPO, ORPO); 0 for a row without label tokens.
        n_tokens: (n,) number of label tokens.
    """

    sum: torch.Tensor
    mean: torch.Tensor
    n_tokens: torch.Tensor

    @classmethod
    def from_sum(cls, sum_logps: torch.Tensor, n_tokens: torch.Tensor) -> "SequenceLogps":
        """Cached reference log-probs keep only the sum; the mean divides by the same token counts."""
        return cls(sum_logps, sum_logps / n_tokens.clamp(min=1), n_tokens)

    def halves(self) -> tuple["SequenceLogps", "SequenceLogps"]:
        """(chosen, rejected) of a (2b,) preference batch, which stacks chosen rows before rejected ones."""
        sums, means, counts = self.sum.chunk(2), self.mean.chunk(2), self.n_tokens.chunk(2)
        return SequenceLogps(sums[0], means[0], counts[0]), SequenceLogps(sums[1], means[1], counts[1])

    def detach(self) -> "SequenceLogps":
        return SequenceLogps(self.sum.detach(), self.mean.detach(), self.n_tokens)


def score_sequences(
    model: Callable[..., Any], input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> SequenceLogps:
    """Log-probs of the label tokens of every row of a padded batch, in one forward pass.

    Args:
        model: a causal LM (or its DeepSpeed engine) returning ``.logits`` (n, L, V).
        input_ids, attention_mask, labels: (n, L); labels are -100 off the response.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return SequenceLogps(*sequence_logps(logits, labels))


def load_frozen_causal_lm(path: str, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    """A causal LM for scoring only: eval mode (no dropout), no gradients, weights in ``dtype``."""
    from align_core.models.registry import load_causal_lm

    model = load_causal_lm(path, trust_remote_code=trust_remote_code, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
