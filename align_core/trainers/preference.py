"""Paired preference trainers: DPO, IPO, SimPO and ORPO, one trainer parameterised by its loss.

Each step scores chosen and rejected responses in one policy forward pass over the 2b stacked rows
(log-probs of response tokens only), takes the reference log-probs from the cached column or the live
model (DPO, IPO), and hands both to the pure loss in ``align_core.losses``. An algorithm is the
``pair_losses`` method of a four-line subclass.

Metrics (train, and ``eval/`` on eval datasets): loss, rewards/chosen, rewards/rejected,
rewards/accuracy (chosen reward above rejected), rewards/margin, logps/chosen, logps/rejected
(summed response log-probs under the policy), plus an algorithm's own (ORPO: nll, log_odds).
"""

from __future__ import annotations

import torch

from align_core.losses import dpo_loss, ipo_loss, orpo_loss, simpo_loss
from align_core.reference import SequenceLogps
from align_core.shards.schema import Kind
from align_core.trainers.response_logps import PerExample, ResponseLogpsTrainer


def pair_metrics(values: PerExample) -> dict[str, torch.Tensor]:
    """Batch means of per-pair values: rewards, accuracy, margin, log-probs, and any extra value."""
    chosen, rejected = values["chosen_rewards"], values["rejected_rewards"]
    metrics = {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/accuracy": (chosen > rejected).float().mean(),
        "rewards/margin": (chosen - rejected).mean(),
        "logps/chosen": values["chosen_logps"].mean(),
        "logps/rejected": values["rejected_logps"].mean(),
    }
    standard = {"loss", "chosen_rewards", "rejected_rewards", "chosen_logps", "rejected_logps"}
    metrics.update({name: value.float().mean() for name, value in values.items() if name not in standard})
    return metrics


class PreferenceTrainer(ResponseLogpsTrainer):
    dataset_kinds = (Kind.PREFERENCE,)

    def pair_losses(
        self, chosen: SequenceLogps, rejected: SequenceLogps, ref_chosen: SequenceLogps | None, ref_rejected: SequenceLogps | None
    ) -> PerExample:
        """``loss``, ``chosen_rewards``, ``rejected_rewards`` (b,) and any extra per-pair metric."""
        raise NotImplementedError

    def per_example(self, batch: dict[str, torch.Tensor]) -> PerExample:
        policy = self.policy_logps(batch)
        chosen, rejected = policy.halves()
        ref_chosen = ref_rejected = None
        if self.uses_reference:
            # the cache keeps sums; the reference shares the policy's labels, so its token counts too
            ref_chosen, ref_rejected = SequenceLogps.from_sum(self.reference_logps(batch), policy.n_tokens).halves()
        values = self.pair_losses(chosen, rejected, ref_chosen, ref_rejected)
        return {**values, "chosen_logps": chosen.sum.detach(), "rejected_logps": rejected.sum.detach()}

    def batch_metrics(self, values: PerExample) -> dict[str, torch.Tensor]:
        return pair_metrics(values)


class DPOTrainer(PreferenceTrainer):
    """DPO on summed log-probs; ``label_smoothing`` > 0 is conservative DPO."""

    algorithm = "dpo"

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected) -> PerExample:
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            chosen.sum, rejected.sum, ref_chosen.sum, ref_rejected.sum, self.beta, self.train_cfgs.label_smoothing
        )
        return {"loss": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}


class IPOTrainer(PreferenceTrainer):
    """IPO on length-averaged log-probs, the paper's setting."""

    algorithm = "ipo"

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected) -> PerExample:
        losses, chosen_rewards, rejected_rewards = ipo_loss(chosen.mean, rejected.mean, ref_chosen.mean, ref_rejected.mean, self.beta)
        return {"loss": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}


class SimPOTrainer(PreferenceTrainer):
    """SimPO: reference-free, reward = beta * length-averaged log-prob, target margin ``simpo_gamma``."""

    algorithm = "simpo"
    uses_reference = False
    default_beta = 2.0

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected) -> PerExample:
        losses, chosen_rewards, rejected_rewards = simpo_loss(chosen.mean, rejected.mean, self.beta, self.train_cfgs.simpo_gamma)
        return {"loss": losses, "chosen_rewards": chosen_rewards, "rejected_rewards": rejected_rewards}


class ORPOTrainer(PreferenceTrainer):
    """ORPO: the chosen response's SFT loss plus ``orpo_lambda`` times the odds-ratio term; no reference.

    Its rewards are ``lambda * length-averaged log-prob`` (TRL reports the same).
    """

    algorithm = "orpo"
    uses_reference = False

    def pair_losses(self, chosen, rejected, ref_chosen, ref_rejected) -> PerExample:
        lam = self.train_cfgs.orpo_lambda
        chosen_nll = -chosen.mean  # mean NLL per response token: the paper's L_SFT
        losses, log_odds = orpo_loss(chosen.mean, rejected.mean, chosen_nll, lam)
        return {
            "loss": losses,
            "chosen_rewards": lam * chosen.mean.detach(),
            "rejected_rewards": lam * rejected.mean.detach(),
            "nll": chosen_nll.detach(),
            "log_odds": log_odds,
        }
