"""Scoring token batches: one forward pass -> per-sequence log-probabilities of the response tokens.

``ResponseScorer`` wraps a causal LM so that its forward returns those log-probs directly. Where the
architecture's logits are a plain projection of the last hidden state (llama, mistral, qwen2, qwen3,
gpt2), it projects only the response positions: the (n, L, V) logits tensor is never built (at a
150k vocabulary and L = 1024 that is 600 MB per sequence in fp32) and the LM head costs about half.
Other architectures (logit soft-capping or scaling, custom code) go through their own full forward.

The policy (wrapped before DeepSpeed sees it, so the engine's forward runs the scorer), a live
reference model and the reference precompute all score through it, so the three can only differ in
the weights they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from align_core.data.batch import Batch, forward
from align_core.losses import IGNORE_INDEX, sequence_logps
from align_core.losses.logps import label_owners, linear_token_logps, per_sequence_sums

# Causal LMs whose forward is exactly ``lm_head(base_model(...).last_hidden_state)``.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gpt2"})


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
    def from_sum(cls, sum_logps: torch.Tensor, n_tokens: torch.Tensor) -> SequenceLogps:
        """Cached reference log-probs keep only the sum; the mean divides by the same token counts."""
        return cls(sum_logps, sum_logps / n_tokens.clamp(min=1), n_tokens)

    def halves(self) -> tuple[SequenceLogps, SequenceLogps]:
        """(chosen, rejected) of a (2b,) preference batch, which stacks chosen rows before rejected ones."""
        sums, means, counts = self.sum.chunk(2), self.mean.chunk(2), self.n_tokens.chunk(2)
        return SequenceLogps(sums[0], means[0], counts[0]), SequenceLogps(sums[1], means[1], counts[1])


def response_logps(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    labels: torch.Tensor,
    sequence_index: torch.Tensor | None = None,
    num_sequences: int | None = None,
    fused: bool = False,
) -> SequenceLogps:
    """``sequence_logps`` from last hidden states, projecting only the positions that predict a label.

    Args:
        hidden: (b, L, H) final hidden states; position t predicts token t+1.
        lm_head: (H -> V) output projection.
        labels: (b, L), -100 off the response.
        sequence_index, num_sequences: a packed batch's map of positions to its n sequences; None: n = b.
        fused: Liger's fused linear cross-entropy (``linear_token_logps``).
    """
    shifted = labels[:, 1:]
    mask = shifted != IGNORE_INDEX
    token_logps = linear_token_logps(hidden[:, :-1][mask], lm_head, shifted[mask], fused)
    count = len(labels) if num_sequences is None else num_sequences
    return SequenceLogps(*per_sequence_sums(token_logps, label_owners(mask, sequence_index), count))


class ResponseScorer(torch.nn.Module):
    """A causal LM whose forward gives ``SequenceLogps`` of the label tokens; saves and loads as the LM."""

    def __init__(self, causal_lm: torch.nn.Module, fused_head: bool = False):
        """``fused_head``: score through Liger's fused linear cross-entropy (a plain-head model on CUDA)."""
        super().__init__()
        self.causal_lm = causal_lm
        self.plain_head = getattr(causal_lm.config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES
        self.fused_head = fused_head

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        sequence_index: torch.Tensor | None = None,
        num_sequences: int | None = None,
        **model_inputs: Any,
    ) -> SequenceLogps:
        """input_ids, attention_mask, labels: (b, L), + any extra input the model takes -> SequenceLogps of
        (n,): one per row, or, for a packed batch, per sequence ``sequence_index`` maps positions to."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False, **model_inputs}
        if self.plain_head:
            # under LoRA the model with its adapters injected sits inside peft's wrapper
            causal_lm = self.causal_lm.get_base_model() if hasattr(self.causal_lm, "get_base_model") else self.causal_lm
            hidden = causal_lm.base_model(**inputs).last_hidden_state
            head = causal_lm.get_output_embeddings()
            return response_logps(hidden, head, labels, sequence_index, num_sequences, self.fused_head)
        logits = self.causal_lm(**inputs).logits
        return SequenceLogps(*sequence_logps(logits, labels, IGNORE_INDEX, sequence_index, num_sequences))

    def adapt(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> ResponseScorer:
        """Replace the language model by ``wrap(it)`` (LoRA adapters): the scorer stays the trained module."""
        self.causal_lm = wrap(self.causal_lm)
        return self

    # The run's export and options act on the language model itself.
    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        self.causal_lm.save_pretrained(*args, **kwargs)

    def gradient_checkpointing_enable(self, *args: Any, **kwargs: Any) -> None:
        self.causal_lm.gradient_checkpointing_enable(*args, **kwargs)


def score_sequences(scorer: Callable[..., SequenceLogps], batch: Batch) -> SequenceLogps:
    """Log-probs of the label tokens of every sequence of a batch, in one forward pass.

    Args:
        scorer: a ``ResponseScorer``, or the DeepSpeed engine wrapping one.
        batch: n sequences with labels (-100 off the response) and any extra model inputs, padded or packed.
    """
    if batch.packing is None:
        return forward(scorer, batch, labels=batch.labels)
    packing = batch.packing
    return forward(scorer, batch, labels=batch.labels, sequence_index=packing.sequence_index, num_sequences=packing.num_sequences)


def load_frozen_scorer(path: str, dtype: torch.dtype, trust_remote_code: bool = False,
                       attn_implementation: str = "sdpa") -> ResponseScorer:
    """A causal LM for scoring only: eval mode (no dropout), no gradients, weights in ``dtype``."""
    from align_core.models.registry import load_causal_lm

    scorer = ResponseScorer(load_causal_lm(path, trust_remote_code=trust_remote_code, dtype=dtype,
                                           attn_implementation=attn_implementation))
    scorer.eval()
    scorer.requires_grad_(False)
    return scorer
