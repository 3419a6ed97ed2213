"""Paired preference trainers: DPO, IPO, SimPO and ORPO, one trainer parameterised by its loss.

Each step scores chosen and rejected responses in one policy forward pass over the 2b stacked rows
(log-probs of response tokens only; with ``train_cfgs.packing`` the 2b sequences packed padding-free and
their log-probs unpacked to (2b,), see ``align_core.trainers.throughput``), takes the reference log-probs from the cached column or the live
model (DPO, IPO), and hands both to the pure loss in ``align_core.losses``. An algorithm is the
``pair_losses`` method of a small subclass, and its settings class.

Metrics (train, and ``eval/`` on eval datasets): loss, rewards/chosen, rewards/rejected,
rewards/accuracy (chosen reward above rejected), rewards/margin, logps/chosen, logps/rejected
(summed response log-probs under the policy), plus an algorithm's own (ORPO: nll, log_odds).
"""

from __future__ import annotations

import torch
from pydantic import Field

from align_core.data.batch import Batch
from align_core.losses import dpo_loss, ipo_loss, orpo_odds_ratio_loss, simpo_loss
from align_core.reference import SequenceLogps
from align_core.shards.schema import Kind
from align_core.trainers.base import Metrics, StepTotals
from align_core.trainers.response_logps import PerExample, ReferenceSettings, ResponseLogpsTrainer
from align_core.trainers.throughput import ThroughputSettings

STANDARD_VALUES = {"loss", "chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps"}


def pair_metrics(values: PerExample, count: float) -> Metrics:
    """Shares (sum / ``count``) of per-pair values: rewards, accuracy, margin, log-probs, and any extra value."""
    chosen, rejected = values["chosen_rewards"], values["rejected_rewards"]
    metrics = {
        "rewards/chosen": chosen.sum() / count,
        "rewards/rejected": rejected.sum() / count,
        "rewards/accuracy": (chosen > rejected).float().sum() / count,
        "rewards/margin": (chosen - rejected).sum() / count,
        "logps/chosen": values["chosen_logps"].sum() / count,
        "logps/rejected": values["rejected_logps"].sum() / count,
    }
    metrics.update({name: value.float().sum() / count for name, value in values.items() if name not in STANDARD_VALUES})
    return metrics


class PreferenceTrainer(ResponseLogpsTrainer):
    dataset_kinds = (Kind.PREFERENCE,)

    def pair_losses(
        self, chosen: SequenceLogps, rejected: SequenceLogps, ref_chosen: SequenceLogps | None, ref_rejected: SequenceLogps | None
    ) -> PerExample:
        """``loss``, ``chosen_rewards``, ``rejected_rewards`` (b,) and any extra per-pair metric."""
        raise NotImplementedError

    def per_example(self, batch: Batch) -> PerExample:
        policy = self.policy_logps(batch)
        chosen, rejected = policy.halves()
        ref_chosen = ref_rejected = None
        if self.uses_reference:
            # the cache keeps sums; the reference shares the policy's labels, so its token counts too
            ref_chosen, ref_rejected = SequenceLogps.from_sum(self.reference_logps(batch), policy.n_tokens).halves()
        values = self.pair_losses(chosen, rejected, ref_chosen, ref_rejected)
        return {**values, "chosen_logps": chosen.sum.detach(), "rejected_logps": rejected.sum.detach()}

    def batch_metrics(self, values: PerExample, count: float) -> Metrics:
        return pair_metrics(values, count)


class DPOSettings(ReferenceSettings, ThroughputSettings):
    beta: float = Field(0.1, gt=0, description="inverse temperature of the implicit reward")
    label_smoothing: float = Field(0.0, ge=0, le=0.5, description="> 0: conservative DPO (cDPO)")


class DPOTrainer(PreferenceTrainer):
    """DPO on summed log-probs; ``label_smoothing`` > 0 is conservative DPO."""

    algorithm = "dpo"
    settings = DPOSettings
    uses_reference = True

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected) -> PerExample:
        cfgs = self.train_cfgs
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen.sum, rejected.sum, ref_chosen.sum, ref_rejected.sum, cfgs.beta, cfgs.label_smoothing
        )
        return {"loss": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}


class IPOSettings(ReferenceSettings, ThroughputSettings):
    beta: float = Field(0.1, gt=0, description="the paper's tau: the margin target is 1 / (2 beta)")


class IPOTrainer(PreferenceTrainer):
    """IPO on length-averaged log-probs, the paper's setting."""

    algorithm = "ipo"
    settings = IPOSettings
    uses_reference = True

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected) -> PerExample:
        losses, chosen_rewards, rejected_rewards = ipo_loss(
            chosen.mean, rejected.mean, ref_chosen.mean, ref_rejected.mean, self.train_cfgs.beta
        )
        return {"loss": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}


class SimPOSettings(ThroughputSettings):
    beta: float = Field(2.0, gt=0, description="reward scale")
    simpo_gamma: float = Field(0.5, ge=0, description="target reward margin")


class SimPOTrainer(PreferenceTrainer):
    """SimPO: reference-free, reward = beta * length-averaged log-prob, target margin ``simpo_gamma``."""

    algorithm = "simpo"
    settings = SimPOSettings

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected) -> PerExample:
        cfgs = self.train_cfgs
        losses, chosen_rewards, rejected_rewards = simpo_loss(chosen.mean, rejected.mean, cfgs.beta, cfgs.simpo_gamma)
        return {"loss": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}


class ORPOSettings(ThroughputSettings):
    orpo_lambda: float = Field(0.1, ge=0, description="weight of the odds-ratio term")


class ORPOTrainer(PreferenceTrainer):
    """ORPO: the SFT loss of the chosen responses plus ``orpo_lambda`` times the odds-ratio term; no reference.

    The SFT term is a mean over the chosen response tokens of the whole step (every token weighs the
    same, as in SFT and TRL); the odds-ratio term a mean over pairs. Rewards are
    ``lambda * length-averaged log-prob`` (TRL reports the same).
    """

    algorithm = "orpo"
    settings = ORPOSettings

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected) -> PerExample:
        lam = self.train_cfgs.orpo_lambda
        odds_ratio_losses, log_odds = orpo_odds_ratio_loss(chosen.mean, rejected.mean)
        return {
            "loss": lam * odds_ratio_losses,  # + the token-mean NLL, which is not a per-pair value
            "chosen_rewards": lam * chosen.mean.detach(),
            "rejected_rewards": lam * rejected.mean.detach(),
            "chosen_nll_sum": -chosen.sum,
            "chosen_tokens": chosen.n_tokens.float(),
            "log_odds": log_odds,
        }

    def compute_loss(self, batch: Batch, totals: StepTotals) -> tuple[torch.Tensor, Metrics]:
        values = self.per_example(batch)
        nll = values["chosen_nll_sum"].sum() / max(totals.trained_tokens[0], 1.0)
        odds_ratio_term = values["loss"].sum() / totals.rows
        metrics = self.batch_metrics({k: v.detach() for k, v in values.items()}, totals.rows)
        return nll + odds_ratio_term, {**metrics, "nll": nll.detach()}

    def summarize_eval(self, values: PerExample) -> dict[str, float]:
        metrics = super().summarize_eval(values)
        nll = (values["chosen_nll_sum"].sum() / values["chosen_tokens"].sum().clamp(min=1)).item()
        return {**metrics, "loss": metrics["loss"] + nll, "nll": nll}

    def batch_metrics(self, values: PerExample, count: float) -> Metrics:
        per_pair = {k: v for k, v in values.items() if k not in ("chosen_nll_sum", "chosen_tokens")}
        return pair_metrics(per_pair, count)
