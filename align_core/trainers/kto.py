"""KTO (Ethayarajh et al. 2024) on unpaired shards, or on preference shards split into two rows each.

A preference pair becomes one desirable row (prompt + chosen) and one undesirable row (prompt +
rejected): the collator already stacks them so, and the batch's first half is the desirable one.
The reference point z0 is the mean policy-minus-reference log-ratio over the rows' mismatched pairs
(``align_core/reference/mismatched.py``) on every rank, clamped at 0 and detached; the policy scores
those pairs without gradients, and their reference log-probs are cached like the rows' own. With
``train_cfgs.packing`` the rows' sequences and, apart, their mismatched pairs are packed padding-free and
scored per sequence, as the padded ones are.

Metrics: loss, kl (z0), rewards/chosen and logps/chosen over the desirable rows, rewards/rejected and
logps/rejected over the undesirable ones, rewards/margin, and rewards/accuracy: the share of rows
whose implicit reward ``beta * (log-ratio - z0)`` has the sign their label asks for. A label's means
are over all its rows of the step (or eval set); a step without a row of one label logs null.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from align_core.data.batch import Batch
from align_core.losses import kto_loss
from align_core.shards.schema import Kind
from align_core.trainers.base import Metrics
from align_core.trainers.response_logps import PerExample, ReferenceSettings, ResponseLogpsTrainer
from align_core.trainers.throughput import PackingSettings

# Means over the rows of one label: a micro-batch may hold none (length grouping even sorts the
# short undesirable answers together), so training sums them per label and divides once per step.
LABEL_MEANS = ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")


def label_sums(values: PerExample, count: float) -> Metrics:
    """Per-label sums and counts of rewards and log-probs; shares (sum / ``count``) of kl and accuracy."""
    desirable = values["desirable"].bool()
    rewards, logps = values["rewards"], values["logps"]
    return {
        "kl": values["kl"].sum() / count,
        # the implicit reward beta * (log-ratio - z0) has the sign the row's label asks for
        "rewards/accuracy": ((rewards > values["beta_kl"]) == desirable).float().sum() / count,
        "sum:rewards/chosen": rewards[desirable].sum(),
        "sum:rewards/rejected": rewards[~desirable].sum(),
        "sum:logps/chosen": logps[desirable].sum(),
        "sum:logps/rejected": logps[~desirable].sum(),
        "count:chosen": desirable.sum().float(),
        "count:rejected": (~desirable).sum().float(),
    }


def label_means(sums: dict[str, float]) -> dict[str, float]:
    """Replace the sums and counts by per-label means (NaN, logged as null, for a label with no row)."""
    means = {name: value for name, value in sums.items() if not name.startswith(("sum:", "count:"))}
    for name in LABEL_MEANS:
        count = sums[f"count:{name.split('/')[1]}"]
        means[name] = sums[f"sum:{name}"] / count if count else math.nan
    means["rewards/margin"] = means["rewards/chosen"] - means["rewards/rejected"]
    return means


class KTOSettings(ReferenceSettings, PackingSettings):
    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward")
    kto_desirable_weight: float = Field(1.0, gt=0, description="lambda_D")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="lambda_U")


class KTOTrainer(ResponseLogpsTrainer):
    algorithm = "kto"
    dataset_kinds = (Kind.UNPAIRED_PREFERENCE, Kind.PREFERENCE)
    settings = KTOSettings
    uses_reference = True
    reference_pairings = ("matched", "mismatched")
    loss_unit = "sequences"  # a preference row is two KTO rows: chosen (desirable) and rejected

    def per_example(self, batch: Batch) -> PerExample:
        """Per-row ``loss``, ``rewards`` = beta * log-ratio, ``logps``, ``desirable``, and the batch's ``kl``."""
        cfgs = self.train_cfgs
        policy, reference = self.policy_logps(batch), self.reference_logps(batch)
        log_ratio = policy.sum - reference
        mismatched = batch.companions["mismatched"]
        with torch.no_grad():  # z0 is detached: its forward needs no graph
            mismatched_log_ratio = self.policy_logps(mismatched).sum - self.reference_logps(mismatched)
        kl = self.reference_point(mismatched_log_ratio)
        desirable = self.desirable(batch)
        losses = kto_loss(
            policy.sum, reference, desirable, kl, cfgs.beta, cfgs.kto_desirable_weight, cfgs.kto_undesirable_weight
        )
        n = len(losses)
        return {
            "loss": losses,
            "rewards": cfgs.beta * log_ratio.detach(),
            "logps": policy.sum.detach(),
            "desirable": desirable,
            "kl": kl.expand(n),
            "beta_kl": (cfgs.beta * kl).expand(n),
        }

    def reference_point(self, mismatched_log_ratio: torch.Tensor) -> torch.Tensor:
        """``kto_reference_point`` over the pairs of every rank: the log-ratios' mean is all-reduced, then
        clamped at 0 (a KL is never negative) and detached. (m,) -> ()."""
        count = torch.tensor(float(len(mismatched_log_ratio)), device=mismatched_log_ratio.device)
        totals = torch.stack([mismatched_log_ratio.sum(), count])
        torch.distributed.all_reduce(totals)
        return (totals[0] / totals[1]).clamp(min=0).detach()

    @staticmethod
    def desirable(batch: Batch) -> torch.Tensor:
        """(n,) bool: the unpaired rows' labels, or a preference batch's chosen half."""
        if "desirable" in batch.values:
            return batch.values["desirable"].bool()
        n = batch.num_sequences
        return torch.arange(n, device=batch.input_ids.device) < n // 2

    def batch_metrics(self, values: PerExample, count: float) -> Metrics:
        return label_sums(values, count)

    def summarize_eval(self, values: PerExample) -> dict[str, float]:
        return label_means(super().summarize_eval(values))

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return label_means(sums)
