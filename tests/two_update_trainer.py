"""A test algorithm whose step is not "one pass over a batch", loaded through ``train_cfgs.trainer_module``.

Each step makes two policy updates on the same micro-batches (as PPO's epochs over a rollout do),
trains a critic beside the policy (a score model regressed onto the policy's per-row NLL, as a
value head is regressed onto returns), and scores the rows under a frozen copy of the start model.
It overrides ``models()`` and ``train_step()`` only: the loop, checkpoints, resume and export are the
shared ones.
"""

from __future__ import annotations

import torch

from align_core.data.batch import forward
from align_core.losses import sequence_logps
from align_core.trainers import SFTTrainer, register_trainer
from align_core.trainers.base import POLICY, Metrics, ModelRole, TrainStep, add_metrics


@register_trainer
class TwoUpdateTrainer(SFTTrainer):
    algorithm = "test-two-updates"
    updates_per_step = 2

    def models(self) -> list[ModelRole]:
        from align_core.models.registry import load_causal_lm, load_score_model

        path = self.config.model_cfgs.model_name_or_path
        return [
            *super().models(),
            ModelRole("critic", lambda: load_score_model(path)),
            ModelRole("start", lambda: load_causal_lm(path), trained=False),
        ]

    def train_step(self, step: TrainStep) -> Metrics:
        sums: Metrics = {}
        last = len(step.micro_batches) - 1
        for update in range(self.updates_per_step):
            for position, batch in enumerate(step.micro_batches):
                loss, _ = self.compute_loss(batch, step.totals)
                self.engines[POLICY].backward(loss, last=position == last)
                add_metrics(sums, {f"loss/update{update}": loss})
            self.engines[POLICY].step()
        critic = self.engines["critic"]
        for position, batch in enumerate(step.micro_batches):
            with torch.no_grad():
                _, policy_mean_logps, _ = sequence_logps(forward(self.engine, batch, use_cache=False).logits, batch.labels)
                start_logps, _, _ = sequence_logps(forward(self.frozen["start"], batch, use_cache=False).logits, batch.labels)
            values = forward(critic, batch).end_scores.float()
            critic_loss = (values + policy_mean_logps).square().sum() / step.totals.rows  # target: the mean NLL
            critic.backward(critic_loss, last=position == last)
            add_metrics(sums, {"critic_loss": critic_loss, "start_nll": -start_logps.sum() / step.totals.rows})
        critic.step()
        sums["loss"] = sums["loss/update1"]
        return sums
