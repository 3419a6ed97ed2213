"""Base of the preference family: response log-probs under the policy and under a frozen reference.

The policy scores every sequence of a batch in one forward pass (chosen and rejected stacked). The
reference log-probs come, with ``train_cfgs.reference: cached`` (the default), from columns computed
once per (token cache, reference weights) by ``align_core.reference`` (the pipeline's Prefect task, or
here on first use), so training holds no reference model at all; with ``live``, from a frozen
reference model run beside the policy on every batch (for comparison: same numbers, slower).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch.utils.data import ConcatDataset, Dataset

from align_core.config import TrainConfig
from align_core.data.token_dataset import TokenDataset
from align_core.reference import (
    MismatchedRows,
    ResponseScorer,
    ScoredCollator,
    ScoredRows,
    SequenceLogps,
    compute_reference_logps,
    load_frozen_scorer,
    read_reference_logps,
    score_sequences,
)
from align_core.trainers.base import Trainer
from align_core.trainers.engine import deepspeed_config, resolve_dtype, zero3_model_loading

Result = TypeVar("Result")
PerExample = dict[str, torch.Tensor]  # name -> (n,) one value per pair or row


class ResponseLogpsTrainer(Trainer):
    uses_reference: ClassVar[bool] = True
    # "matched": each row's own sequences; "mismatched": KTO's pairs (see align_core/reference/mismatched.py)
    reference_pairings: ClassVar[tuple[str, ...]] = ("matched",)
    default_beta: ClassVar[float] = 0.1

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        self.beta = self.train_cfgs.beta if self.train_cfgs.beta is not None else self.default_beta
        self.reference_model: Any = None  # live mode only, loaded on first use

    @property
    def cached_reference(self) -> bool:
        return self.uses_reference and self.train_cfgs.reference == "cached"

    def reference_model_path(self) -> str:
        model_cfgs = self.config.model_cfgs
        return model_cfgs.reference_model_name_or_path or model_cfgs.model_name_or_path

    def load_model(self, path: str) -> torch.nn.Module:
        """The policy inside a ``ResponseScorer``: the engine's forward returns response log-probs."""
        from align_core.models.registry import load_causal_lm

        return ResponseScorer(load_causal_lm(path, trust_remote_code=self.config.model_cfgs.trust_remote_code))

    def load_datasets(self, dataset_dirs: list[str]) -> tuple[Dataset, list[int], Any]:
        rows, lengths, collate = super().load_datasets(dataset_dirs)
        parts = rows.datasets if isinstance(rows, ConcatDataset) else [rows]
        scored = [self._scored_rows(part) for part in parts]
        return (scored[0] if len(scored) == 1 else ConcatDataset(scored)), lengths, ScoredCollator(collate)

    def _scored_rows(self, rows: TokenDataset) -> ScoredRows:
        columns = {}
        if self.cached_reference:
            for pairing in self.reference_pairings:
                folder = self._local_main_first(lambda: self._compute_reference(rows, pairing))
                columns[pairing] = read_reference_logps(folder, rows)
        mismatched = MismatchedRows(rows) if "mismatched" in self.reference_pairings else None
        return ScoredRows(rows, columns.get("matched"), mismatched, columns.get("mismatched"))

    def _compute_reference(self, rows: TokenDataset, pairing: str):
        """The cached column (a hit when the pipeline's reference task already made it)."""
        from deepspeed.accelerator import get_accelerator

        return compute_reference_logps(
            rows.path,
            self.reference_model_path(),
            pairing,
            dtype=resolve_dtype(self.train_cfgs.precision),
            batch_size=self.train_cfgs.per_device_eval_batch_size,
            device=get_accelerator().current_device_name(),
            trust_remote_code=self.config.model_cfgs.trust_remote_code,
        )

    def _local_main_first(self, make: Callable[[], Result]) -> Result:
        """Run ``make`` on each node's first rank, then on the others, which then find its result on disk."""
        result = None
        for first in (True, False):
            if (self.dist.local_rank == 0) == first:
                result = make()
            torch.distributed.barrier()
        return result

    # ----- the algorithm: per-example values and their metrics ---------------------------------------

    def per_example(self, batch: dict[str, torch.Tensor]) -> PerExample:
        """``loss`` (n,) and whatever ``batch_metrics`` summarises, one value per pair (or row)."""
        raise NotImplementedError

    def batch_metrics(self, values: PerExample) -> dict[str, torch.Tensor]:
        """Scalar metrics of a set of per-example values (a training micro-batch, or a whole eval set)."""
        raise NotImplementedError

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        values = self.per_example(batch)
        return values["loss"].mean(), self.batch_metrics({name: value.detach() for name, value in values.items()})

    def eval_step(self, batch: dict[str, torch.Tensor]) -> PerExample:
        return self.per_example(batch)

    def summarize_eval(self, values: PerExample) -> dict[str, float]:
        metrics = self.batch_metrics(values)
        return {"loss": values["loss"].mean().item(), **{name: value.item() for name, value in metrics.items()}}

    # ----- scoring ---------------------------------------------------------------------------------

    def policy_logps(self, batch: dict[str, torch.Tensor], prefix: str = "") -> SequenceLogps:
        """(n,) log-probs of the batch's sequences under the policy, in one forward pass."""
        return score_sequences(
            self.engine, batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}labels"]
        )

    def reference_logps(self, batch: dict[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
        """(n,) summed reference log-probs of the sequences ``prefix`` names ("" rows, "mismatched_" KTO's pairs)."""
        if self.cached_reference:
            return batch[f"ref_{prefix}logps"]
        with torch.no_grad():
            return score_sequences(
                self._live_reference(), batch[f"{prefix}input_ids"], batch[f"{prefix}attention_mask"], batch[f"{prefix}labels"]
            ).sum

    def _live_reference(self) -> Any:
        """The frozen reference model, in the training dtype, partitioned by DeepSpeed at ZeRO-3."""
        if self.reference_model is None:
            dtype = resolve_dtype(self.train_cfgs.precision)
            path, trust = self.reference_model_path(), self.config.model_cfgs.trust_remote_code
            if self.train_cfgs.zero_stage == 3:
                import deepspeed

                ds_config = deepspeed_config(self.train_cfgs, dtype)
                with zero3_model_loading(ds_config):
                    scorer = load_frozen_scorer(path, dtype, trust)
                self.reference_model = deepspeed.initialize(model=scorer, config=ds_config)[0]
                self.reference_model.eval()
            else:
                self.reference_model = load_frozen_scorer(path, dtype, trust).to(self.engine.device)
        return self.reference_model
