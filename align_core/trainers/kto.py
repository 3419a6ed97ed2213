"""KTO (Ethayarajh et al. 2024) on unpaired shards, or on preference shards split into two rows each.

A preference pair becomes one desirable row (prompt + chosen) and one undesirable row (prompt +
rejected): the collator already stacks them so, and the batch's first half is the desirable one.
The reference point z0 is the mean policy-minus-reference log-ratio over the rows' mismatched pairs
(``align_core/reference/mismatched.py``) on every rank, clamped at 0 and detached; the policy scores
those pairs without gradients, and their reference log-probs are cached like the rows' own.

Metrics: loss, kl (z0), rewards/chosen and logps/chosen over the desirable rows, rewards/rejected and
logps/rejected over the undesirable ones, rewards/margin, and rewards/accuracy: the share of rows
whose implicit reward ``beta * (log-ratio - z0)`` has the sign their label asks for. A micro-batch
without a row of one label reports NaN (logged as null) for that label's means.
"""

from __future__ import annotations

import torch

from align_core.losses import kto_loss
from align_core.shards.schema import Kind
from align_core.trainers.response_logps import PerExample, ResponseLogpsTrainer


def kto_metrics(values: PerExample) -> dict[str, torch.Tensor]:
    desirable = values["desirable"]
    rewards, logps = values["rewards"], values["logps"]
    chosen, rejected = rewards[desirable].mean(), rewards[~desirable].mean()
    reward_above_reference_point = rewards > values["beta_kl"]
    return {
        "kl": values["kl"].mean(),
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margin": chosen - rejected,
        "rewards/accuracy": (reward_above_reference_point == desirable).float().mean(),
        "logps/chosen": logps[desirable].mean(),
        "logps/rejected": logps[~desirable].mean(),
    }


class KTOTrainer(ResponseLogpsTrainer):
    algorithm = "kto"
    dataset_kinds = (Kind.UNPAIRED_PREFERENCE, Kind.PREFERENCE)
    reference_pairings = ("matched", "mismatched")

    def per_example(self, batch: dict[str, torch.Tensor]) -> PerExample:
        """Per-row ``loss``, ``rewards`` = beta * log-ratio, ``logps``, ``desirable``, and the batch's ``kl``."""
        policy, reference = self.policy_logps(batch), self.reference_logps(batch)
        log_ratio = policy.sum - reference
        with torch.no_grad():  # z0 is detached: its forward needs no graph
            mismatched_log_ratio = self.policy_logps(batch, "mismatched_").sum - self.reference_logps(batch, "mismatched_")
        kl = self.reference_point(mismatched_log_ratio)
        desirable = self.desirable(batch)
        losses = kto_loss(
            policy.sum, reference, desirable, kl, self.beta,
            self.train_cfgs.kto_desirable_weight, self.train_cfgs.kto_undesirable_weight,
        )
        n = len(losses)
        return {
            "loss": losses,
            "rewards": self.beta * log_ratio.detach(),
            "logps": policy.sum.detach(),
            "desirable": desirable,
            "kl": kl.expand(n),
            "beta_kl": (self.beta * kl).expand(n),
        }

    def reference_point(self, mismatched_log_ratio: torch.Tensor) -> torch.Tensor:
        """``kto_reference_point`` over the pairs of every rank: the log-ratios' mean is all-reduced, then
        clamped at 0 (a KL is never negative) and detached. (m,) -> ()."""
        count = torch.tensor(float(len(mismatched_log_ratio)), device=mismatched_log_ratio.device)
        totals = torch.stack([mismatched_log_ratio.sum(), count])
        torch.distributed.all_reduce(totals)
        return (totals[0] / totals[1]).clamp(min=0).detach()

    @staticmethod
    def desirable(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(n,) bool: the unpaired rows' labels, or a preference batch's chosen half."""
        if "desirable" in batch:
            return batch["desirable"].bool()
        n = batch["input_ids"].shape[0]
        return torch.arange(n, device=batch["input_ids"].device) < n // 2

    def batch_metrics(self, values: PerExample) -> dict[str, torch.Tensor]:
        return kto_metrics({**values, "desirable": values["desirable"].bool()})  # evaluation gathers values as float
