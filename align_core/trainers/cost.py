"""Safe RLHF's cost model (``cm``): a score model trained on safety-ordered pairs with their safety labels.

Data: PKU-SafeRLHF materialised with ``--option preference=safer`` (chosen = the safer response), whose
meta carries ``is_chosen_safe`` / ``is_rejected_safe`` (the template writes them). The loss
(``safety_cost_loss``) makes the more harmful response cost more and each cost's sign say whether its
response is unsafe (> 0) or safe (< 0), so ``ppo_lag`` can hold the expected cost below a threshold
(a ``reward_model`` cost source on the exported folder).

Metrics: loss, accuracy (the rejected response costs more), sign_accuracy (cost > 0 exactly for the
unsafe responses), costs/chosen, costs/rejected; the same from evaluation.
"""

from __future__ import annotations

import torch

from align_core.data.batch import Batch
from align_core.errors import UsageError
from align_core.losses import safety_cost_loss
from align_core.trainers.base import Metrics, StepTotals
from align_core.trainers.rm import RMTrainer
from align_core.trainers.row_metas import RowMetas

SAFETY_KEYS = ("is_chosen_safe", "is_rejected_safe")


class CostModelTrainer(RMTrainer):
    algorithm = "cm"

    def __init__(self, config):
        super().__init__(config)
        self.row_metas = RowMetas([*config.data_cfgs.train_datasets, *config.data_cfgs.eval_datasets])
        for row_id, meta in self.row_metas.metas.items():
            # the pairwise term needs pairs ordered by safety, not by helpfulness
            if not meta or any(key not in meta for key in SAFETY_KEYS) or meta.get("chosen_by") != "safer_response_id":
                raise UsageError(
                    f"cm: row {row_id!r} is not a safety-ordered pair with safety labels ({', '.join(SAFETY_KEYS)} "
                    "in its meta); materialise PKU-SafeRLHF with --template PKUSafeRLHF --option preference=safer"
                )

    def load_datasets(self, dataset_dirs):
        rows, lengths, collate = super().load_datasets(dataset_dirs)
        return rows, lengths, self.row_metas.wrap(collate)

    def _pair(self, batch: Batch) -> dict[str, torch.Tensor]:
        """(b,) costs of the safer (chosen) and the more harmful (rejected) response, their labels, losses."""
        chosen, rejected = self._pair_scores(batch)
        metas = self.row_metas.of(batch)[: batch.num_rows]  # the chosen half: one per row
        device = chosen.device
        chosen_unsafe = torch.tensor([not meta["is_chosen_safe"] for meta in metas], device=device)
        rejected_unsafe = torch.tensor([not meta["is_rejected_safe"] for meta in metas], device=device)
        losses = safety_cost_loss(chosen, rejected, chosen_unsafe, rejected_unsafe, self.train_cfgs.score_regularization)
        signs_right = ((chosen > 0) == chosen_unsafe).float() + ((rejected > 0) == rejected_unsafe).float()
        return {"loss": losses, "chosen": chosen, "rejected": rejected, "signs_right": signs_right}

    def compute_loss(self, batch: Batch, totals: StepTotals) -> tuple[torch.Tensor, Metrics]:
        pair, pairs = self._pair(batch), totals.rows
        return pair["loss"].sum() / pairs, {
            "accuracy": (pair["rejected"] > pair["chosen"]).float().sum() / pairs,
            "sign_accuracy": pair["signs_right"].sum() / (2 * pairs),
            "costs/chosen": pair["chosen"].sum() / pairs,
            "costs/rejected": pair["rejected"].sum() / pairs,
        }

    def eval_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self._pair(batch)

    def summarize_eval(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return {
            "loss": values["loss"].mean().item(),
            "accuracy": (values["rejected"] > values["chosen"]).float().mean().item(),
            "sign_accuracy": (values["signs_right"].mean() / 2).item(),
            "costs/chosen": values["chosen"].mean().item(),
            "costs/rejected": values["rejected"].mean().item(),
        }
