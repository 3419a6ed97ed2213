"""Supervised fine-tuning: next-token cross-entropy on the assistant tokens of supervised shards."""

from __future__ import annotations

import math

import torch

from align_core.data.batch import Batch, forward
from align_core.losses import sequence_logps, sft_loss
from align_core.reference.scoring import ResponseScorer, score_sequences
from align_core.shards.schema import Kind
from align_core.trainers.base import Metrics, StepTotals, Trainer
from align_core.trainers.throughput import ThroughputSettings


class SFTSettings(ThroughputSettings):
    """SFT reads the common keys and the throughput switches (``align_core.trainers.throughput``)."""


class SFTTrainer(Trainer):
    """Every trained token of the step weighs the same: the loss is the step's token mean."""

    algorithm = "sft"
    dataset_kinds = (Kind.SUPERVISED,)
    settings = SFTSettings

    def load_model(self, path: str) -> torch.nn.Module:
        from align_core.models.registry import load_causal_lm

        model = load_causal_lm(path, **self.load_options())
        # fused: the label tokens' log-probs straight from hidden states (the scorer), no logits tensor
        return ResponseScorer(model, fused_head=True) if self.fused_head else model

    def _logits(self, batch: Batch) -> torch.Tensor:
        """(b, L, V) logits; the loss is ours (not the model's), so every algorithm shifts labels alike."""
        return forward(self.engine, batch, use_cache=False).logits

    def compute_loss(self, batch: Batch, totals: StepTotals) -> tuple[torch.Tensor, Metrics]:
        if self.fused_head:
            scores = score_sequences(self.engine, batch)
            nll_sum, n_label_tokens = -scores.sum.sum(), scores.n_tokens.sum()
        else:
            nll_sum, n_label_tokens = sft_loss(self._logits(batch), batch.labels)
        return nll_sum / max(totals.all_trained_tokens, 1.0), {"label_tokens": n_label_tokens.float()}

    def eval_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        if self.fused_head:
            scores = score_sequences(self.engine, batch)
            return {"nll": -scores.sum, "label_tokens": scores.n_tokens}
        sum_logps, _, n_tokens = sequence_logps(self._logits(batch), batch.labels)
        return {"nll": -sum_logps, "label_tokens": n_tokens}

    def summarize_eval(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        # per token over the whole eval set, as the training loss is per token
        loss = (values["nll"].sum() / values["label_tokens"].sum().clamp(min=1)).item()
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
