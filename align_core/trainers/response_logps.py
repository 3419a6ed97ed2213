"""Base of the preference family: response log-probs under the policy and under a frozen reference.

The policy scores every sequence of a batch in one forward pass (chosen and rejected stacked). The
reference log-probs come, with ``train_cfgs.reference: cached`` (the default), from columns computed
once per (token cache, reference weights) by ``align_core.reference`` (the pipeline's Prefect task, or
here on first use), so training holds no reference model at all; with ``live``, from a frozen
reference model run beside the policy on every batch (for comparison: same numbers, slower).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch.utils.data import ConcatDataset, Dataset

from align_core.config import TrainCfgs
from align_core.data.batch import Batch
from align_core.data.token_dataset import TokenDataset
from align_core.models.lora import adapters_disabled
from align_core.reference import (
    MismatchedRows,
    ResponseScorer,
    ScoredCollator,
    ScoredRows,
    SequenceLogps,
    load_frozen_scorer,
    read_reference_logps,
    score_sequences,
)
from align_core.trainers.base import POLICY, Metrics, ModelRole, StepTotals, Trainer
from align_core.trainers.cached_steps import reference_specs
from align_core.trainers.engine import resolve_dtype

PerExample = dict[str, torch.Tensor]  # name -> (n,) one value per pair or row
REFERENCE = "reference"


class ReferenceSettings(TrainCfgs):
    """Settings of an algorithm that compares the policy with a frozen reference model."""

    reference: Literal["cached", "live"] = Field(
        "cached", description="reference log-probs from a precomputed column, or a live reference model"
    )


class ResponseLogpsTrainer(Trainer):
    # "matched": each row's own sequences; "mismatched": KTO's pairs (see align_core/reference/mismatched.py)
    reference_pairings: ClassVar[tuple[str, ...]] = ("matched",)
    # what the loss averages over: preference pairs ("rows") or single sequences (KTO's rows)
    loss_unit: ClassVar[Literal["rows", "sequences"]] = "rows"

    @property
    def cached_reference(self) -> bool:
        return self.uses_reference and self.train_cfgs.reference == "cached"

    def reference_model_path(self) -> str:
        model_cfgs = self.config.model_cfgs
        return model_cfgs.reference_model_name_or_path or model_cfgs.model_name_or_path

    def load_model(self, path: str) -> torch.nn.Module:
        """The policy inside a ``ResponseScorer``: the engine's forward returns response log-probs."""
        from align_core.models.registry import load_causal_lm

        return ResponseScorer(load_causal_lm(path, **self.load_options()), fused_head=self.fused_head)

    def models(self) -> list[ModelRole]:
        roles = super().models()
        if self.uses_reference and not self.cached_reference and not self.reference_is_base:
            dtype, model_cfgs = resolve_dtype(self.train_cfgs.precision), self.config.model_cfgs
            roles.append(ModelRole(REFERENCE, lambda: load_frozen_scorer(
                self.reference_model_path(), dtype, model_cfgs.trust_remote_code, model_cfgs.attn_implementation), trained=False))
        return roles

    def load_datasets(self, dataset_dirs: list[str]) -> tuple[Dataset, list[int], Any]:
        rows, lengths, collate = super().load_datasets(dataset_dirs)
        parts = rows.datasets if isinstance(rows, ConcatDataset) else [rows]
        scored = [self._scored_rows(part) for part in parts]
        return (scored[0] if len(scored) == 1 else ConcatDataset(scored)), lengths, ScoredCollator(collate)

    def _scored_rows(self, rows: TokenDataset) -> ScoredRows:
        from deepspeed.accelerator import get_accelerator

        device = get_accelerator().current_device_name()
        columns = {}
        for spec in reference_specs(self.config, rows.path):  # none with reference: live
            # a hit when the pipeline's reference task already made the column
            folder = self.local_main_first(lambda spec=spec: spec.build(device))
            columns[spec.pairing] = read_reference_logps(folder, rows)
        mismatched = MismatchedRows(rows) if "mismatched" in self.reference_pairings else None
        return ScoredRows(rows, columns.get("matched"), mismatched, columns.get("mismatched"))

    # ----- the algorithm: per-example values and their metrics ---------------------------------------

    def per_example(self, batch: Batch) -> PerExample:
        """``loss`` (n,) and whatever ``batch_metrics`` summarises, one value per pair (or row)."""
        raise NotImplementedError

    def batch_metrics(self, values: PerExample, count: float) -> Metrics:
        """Shares of scalar metrics: sums over these per-example values divided by ``count``, the number
        of examples in the whole step (or eval set)."""
        raise NotImplementedError

    def loss_count(self, totals: StepTotals) -> float:
        return totals.rows if self.loss_unit == "rows" else totals.sequences

    def compute_loss(self, batch: Batch, totals: StepTotals) -> tuple[torch.Tensor, Metrics]:
        values = self.per_example(batch)
        count = self.loss_count(totals)
        return values["loss"].sum() / count, self.batch_metrics({k: v.detach() for k, v in values.items()}, count)

    def eval_step(self, batch: Batch) -> PerExample:
        return self.per_example(batch)

    def summarize_eval(self, values: PerExample) -> dict[str, float]:
        count = float(len(values["loss"]))
        metrics = self.batch_metrics(values, count)
        return {"loss": values["loss"].mean().item(), **{name: value.item() for name, value in metrics.items()}}

    # ----- scoring ---------------------------------------------------------------------------------

    def policy_logps(self, batch: Batch) -> SequenceLogps:
        """(n,) log-probs of the batch's sequences under the policy, in one forward pass."""
        return score_sequences(self.engines[POLICY], batch)

    def reference_logps(self, batch: Batch) -> torch.Tensor:
        """(n,) summed reference log-probs of the batch's sequences: the cached column, or the live model."""
        if self.cached_reference:
            return batch.values["ref_logps"]
        with torch.no_grad():
            if self.reference_is_base:
                with adapters_disabled(self.engines[POLICY]):
                    return score_sequences(self.engines[POLICY], batch).sum
            return score_sequences(self.frozen[REFERENCE], batch).sum
