"""Supervised fine-tuning: next-token cross-entropy on the assistant tokens of supervised shards."""

from __future__ import annotations

import functools
import math

import torch
from pydantic import Field

from align_core.config import TrainCfgs
from align_core.data.batch import Batch, forward
from align_core.data.packing import packed_batch
from align_core.errors import UsageError
from align_core.losses import sequence_logps, sft_loss
from align_core.shards.schema import Kind
from align_core.trainers.base import Metrics, StepTotals, Trainer


class SFTSettings(TrainCfgs):
    packing: bool = Field(False, description="pack each micro-batch's rows end to end into sequences of at most "
                          "data_cfgs.max_length tokens, padding-free (align_core.data.packing)")


class SFTTrainer(Trainer):
    """Every trained token of the step weighs the same: the loss is the step's token mean."""

    algorithm = "sft"
    dataset_kinds = (Kind.SUPERVISED,)
    settings = SFTSettings

    def train_collate(self, collate):
        if not getattr(self.train_cfgs, "packing", False):  # a subclass may bring settings of its own
            return collate
        if collate.media is not None:
            raise UsageError("train_cfgs.packing: rows with media inputs are not packed; set packing: false")
        # the same rows per micro-batch, so the same losses; only the padding goes
        return functools.partial(packed_batch, pad_token_id=collate.pad_token_id, capacity=self.config.data_cfgs.max_length)

    def load_model(self, path: str) -> torch.nn.Module:
        from align_core.models.registry import load_causal_lm

        return load_causal_lm(path, **self.load_options())

    def _logits(self, batch: Batch) -> torch.Tensor:
        """(b, L, V) logits; the loss is ours (not the model's), so every algorithm shifts labels alike."""
        return forward(self.engine, batch, use_cache=False).logits

    def compute_loss(self, batch: Batch, totals: StepTotals) -> tuple[torch.Tensor, Metrics]:
        nll_sum, n_label_tokens = sft_loss(self._logits(batch), batch.labels)
        return nll_sum / max(totals.all_trained_tokens, 1.0), {"label_tokens": n_label_tokens.float()}

    def eval_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        sum_logps, _, n_tokens = sequence_logps(self._logits(batch), batch.labels)
        return {"nll": -sum_logps, "label_tokens": n_tokens}

    def summarize_eval(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        # per token over the whole eval set, as the training loss is per token
        loss = (values["nll"].sum() / values["label_tokens"].sum().clamp(min=1)).item()
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
