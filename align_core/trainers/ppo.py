"""PPO with a critic (Ouyang et al. 2022, as OpenRLHF runs it) and Safe RLHF's PPO-Lagrangian (Dai et
al. 2024), on ``prompt_only`` datasets, through the shared loop and GRPO's rollout.

One optimizer step takes the step's prompt micro-batches and, for each, samples and scores
completions exactly as GRPO does (``grpo.GRPOTrainer._sample``), then

1. **values**: the critic (a score model, trained) reads every token; the value of a response token
   is its score at the position before it, aligned with the token's log-prob;
2. **token rewards**: ``-beta * KL`` (k1, to the frozen reference) on every response token, plus the
   sequence reward on the last one (``shape_rewards``): the KL is in the reward, not in the loss;
3. **GAE** (``gamma``, ``lam``) gives advantages and the critic's returns per token.

The advantages are whitened over the step's response tokens on every rank; then ``ppo_epochs``
times, the policy takes PPO's clipped loss (``clip_ratio``, ``dual_clip``) and each critic the clipped
value loss (``value_clip``), each on its own engine. With ``ptx_coef`` the policy's loss adds the PTX
term on supervised data (``data_cfgs.ptx_datasets``, ``align_core.trainers.ptx``).

``ppo_lag`` adds a cost (``costs``: reward-registry sources, such as ``reward_model`` on a trained cost
model) with its own critic, token costs (the cost at the last token; the KL is split, half as a
penalty on the reward, half as a charge on the cost, as Safe RLHF does, so the combined advantage
keeps ``beta``) and GAE. Each step first moves ``log_lambda`` by ``lagrangian_update`` with the
step's mean episode cost over all ranks, then trains the policy on ``(A_r - lambda A_c) / (1 + lambda)``.
``log_lambda`` is checkpointed (``extra_state``), so a resumed run continues with the same multiplier.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import torch
from pydantic import Field, model_validator

from align_core.data.batch import forward
from align_core.losses.rl import (
    Aggregation,
    gae,
    kl_penalty,
    lagrangian_update,
    ppo_lag_advantages,
    ppo_policy_loss,
    ppo_value_loss,
    shape_rewards,
)
from align_core.rewards import RewardSpec, combine_rewards
from align_core.trainers.base import Metrics, ModelRole, TrainStep, add_metrics
from align_core.trainers.grpo import (
    GRPOTrainer,
    OnlineRLSettings,
    Rollout,
    generation_position_ids,
    rollout_metrics,
    rollout_record_batch,
)
from align_core.trainers.rundir import POLICY

CRITIC = "critic"
COST_CRITIC = "cost_critic"


class PPOSettings(OnlineRLSettings):
    beta: float = Field(0.01, ge=0, description="weight of the k1 KL to the reference in the token rewards; 0 loads no reference")
    loss_aggregation: Aggregation = "token_mean"
    gamma: float = Field(1.0, ge=0, le=1, description="GAE's discount")
    lam: float = Field(0.95, ge=0, le=1, description="GAE's lambda")
    value_clip: float | None = Field(0.2, gt=0, description="the value loss's clip around the rollout's values; null: none")
    dual_clip: float | None = Field(None, gt=1, description="dual-clip bound c on tokens with a negative advantage")
    reward_clip: tuple[float, float] | None = Field(None, description="(low, high) clamp of each sequence score")
    critic_model_name_or_path: str | None = Field(
        None, description="null: the reward model of a reward_model source, else the policy's model"
    )
    critic_learning_rate: float | None = Field(None, gt=0, description="the critics' peak rate; null: learning_rate")


class PPOLagSettings(PPOSettings):
    costs: list[RewardSpec] = Field(default_factory=list, description="cost sources and weights (the reward registry)")
    cost_threshold: float = Field(0.0, description="d: the mean episode cost the policy may spend")
    lambda_init: float = Field(1.0, gt=0)
    lambda_lr: float = Field(0.1, gt=0, description="step size of the log-lambda update")
    lambda_max: float | None = Field(None, gt=0)
    cost_critic_model_name_or_path: str | None = Field(
        None, description="null: the cost model of a reward_model cost source, else the policy's model"
    )

    @model_validator(mode="after")
    def _needs_a_cost(self) -> PPOLagSettings:
        if not self.costs:
            raise ValueError("costs: name at least one cost source, e.g. [{name: reward_model, kwargs: {path: ...}}]")
        return self


@dataclass
class ValueTrack:
    """One critic's view of a rollout, (n, L-1) over response positions: its values at rollout, the token
    rewards it learns, GAE advantages (whitened over the step once all rollouts are in) and returns."""

    values: torch.Tensor
    token_rewards: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


@dataclass
class CriticRollout:
    """A sampled rollout with a value track per critic (``critic``; ``cost_critic`` in ppo_lag)."""

    sample: Rollout
    tracks: dict[str, ValueTrack]
    policy_advantages: torch.Tensor | None = None  # (n, L-1), what the policy loss uses
    costs: torch.Tensor | None = None  # (n,)
    cost_per_source: dict[str, torch.Tensor] = field(default_factory=dict)


def whiten_over_step(
    tensors: list[torch.Tensor], masks: list[torch.Tensor], all_reduce: Callable = torch.distributed.all_reduce,
    eps: float = 1e-8,
) -> list[torch.Tensor]:
    """``masked_whiten`` over the marked entries of all ``tensors`` (each (b_i, T_i)) on every rank at once:
    the mean and unbiased variance are the step's, not a micro-batch's or a rank's, so the update does not
    depend on the split. Masked-out entries come back 0."""
    device = tensors[0].device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    for values, mask in zip(tensors, masks):
        totals += torch.stack([torch.where(mask.bool(), values, 0).sum().double(), mask.sum().double()])
    all_reduce(totals)
    mean, count = totals[0] / totals[1].clamp(min=1), totals[1]
    squares = torch.zeros(1, dtype=torch.float64, device=device)
    for values, mask in zip(tensors, masks):
        squares += torch.where(mask.bool(), values.double() - mean, 0).square().sum()
    all_reduce(squares)
    scale = torch.rsqrt(squares[0] / (count - 1).clamp(min=1) + eps)
    return [torch.where(mask.bool(), (values.double() - mean) * scale, 0).to(values.dtype) for values, mask in zip(tensors, masks)]


def critic_source(explicit: str | None, sources: list[RewardSpec], policy: str) -> str:
    """Where a critic starts: the named folder, else the first ``reward_model`` source's model, else the policy."""
    if explicit:
        return explicit
    return next((str(spec.kwargs["path"]) for spec in sources if spec.name == "reward_model" and "path" in spec.kwargs), policy)


class PPOTrainer(GRPOTrainer):
    algorithm = "ppo"
    settings = PPOSettings
    critics: tuple[str, ...] = (CRITIC,)

    def models(self) -> list[ModelRole]:
        cfgs = self.train_cfgs
        start = critic_source(cfgs.critic_model_name_or_path, cfgs.rewards, self.config.model_cfgs.model_name_or_path)
        return [*super().models(), ModelRole(CRITIC, lambda: self.load_critic(start), learning_rate=cfgs.critic_learning_rate)]

    def load_critic(self, path: str) -> torch.nn.Module:
        """A score model: a saved one keeps its head; a causal LM gets a fresh one (seeded by the run's seed)."""
        from align_core.models.registry import load_score_model

        return load_score_model(path, **self.load_options())

    # ----- rollout ------------------------------------------------------------------------------------

    def _rollout(self, prompts) -> CriticRollout:
        sample = self._sample(prompts)
        token_rewards = self._token_rewards(sample, sample.rewards, self.train_cfgs.beta)
        return CriticRollout(sample, {CRITIC: self._track(CRITIC, sample, token_rewards)})

    def _token_rewards(self, sample: Rollout, scores: torch.Tensor, kl_coef: float) -> torch.Tensor:
        """(n, L-1) ``scores`` (n,) at each last response token (clamped to ``reward_clip``), ``-kl_coef * k1`` on every one."""
        ref_logps = sample.ref_logps if sample.ref_logps is not None else sample.old_logps  # beta 0: no reference
        return shape_rewards(scores, sample.old_logps, ref_logps, sample.mask, kl_coef=kl_coef, clip=self.train_cfgs.reward_clip)

    def _track(self, critic: str, sample: Rollout, token_rewards: torch.Tensor) -> ValueTrack:
        """The values of ``critic`` on the rollout, and GAE's advantages and returns for ``token_rewards``."""
        values = self._values(self.engines[critic], sample)
        advantages, returns = gae(values, token_rewards, sample.mask, self.train_cfgs.gamma, self.train_cfgs.lam)
        return ValueTrack(values, token_rewards, advantages, returns)

    def _values(self, critic, sample: Rollout) -> torch.Tensor:
        """(n, L-1) the critic's value of each response token: its score at the position that predicts it."""
        batch = sample.batch
        scores = forward(critic, batch, position_ids=generation_position_ids(batch), use_cache=False).scores
        return torch.where(sample.mask, scores[:, :-1].float(), 0)

    def policy_advantages(self, rollouts: list[CriticRollout]) -> list[torch.Tensor]:
        """The reward advantages, whitened over the step's response tokens on every rank."""
        return whiten_over_step([r.tracks[CRITIC].advantages for r in rollouts], [r.sample.mask for r in rollouts])

    # ----- update -------------------------------------------------------------------------------------

    def update(self, step: TrainStep) -> Metrics:
        cfgs = self.train_cfgs
        rollouts = [self.rollout(batch, position) for position, batch in enumerate(step.micro_batches)]
        samples = [rollout.sample for rollout in rollouts]
        count, sequences, tokens = self.step_counts(samples)
        for rollout, advantages in zip(rollouts, self.policy_advantages(rollouts)):
            rollout.policy_advantages = advantages
        sums: Metrics = {}
        last = len(rollouts) - 1
        for update in range(cfgs.ppo_epochs):
            final = update == cfgs.ppo_epochs - 1
            self.update_policy(rollouts, lambda rollout: self._policy_loss(rollout, count, tokens), sums if final else None)
            for critic in self.critics:
                for position, rollout in enumerate(rollouts):
                    loss, metrics = self._value_loss(critic, rollout, count, tokens)
                    self.engines[critic].backward(loss, last=position == last)
                    if final:
                        add_metrics(sums, metrics)
                self.engines[critic].step()
        for rollout in rollouts:
            add_metrics(sums, rollout_metrics(rollout.sample, sequences))
            add_metrics(sums, self._rollout_metrics(rollout, sequences, tokens))
        self._write_rollouts([self._record(rollout) for rollout in rollouts])
        return sums

    def _policy_loss(self, rollout: CriticRollout, count: float, tokens: float) -> tuple[torch.Tensor, Metrics]:
        cfgs, sample = self.train_cfgs, rollout.sample
        logps, mask, entropy = self._logps(self.engines[POLICY], sample.batch, entropy=True)
        loss, stats = ppo_policy_loss(logps, sample.old_logps, rollout.policy_advantages, mask, cfgs.clip_ratio,
                                      dual_clip=cfgs.dual_clip, aggregation=cfgs.loss_aggregation, step_count=count)
        share = mask.sum() / tokens  # token means as shares of the step's tokens
        stats["entropy"] = torch.where(mask, entropy, 0).sum() / mask.sum().clamp(min=1)
        return loss, {name: value * share for name, value in stats.items()}

    def _value_loss(self, critic: str, rollout: CriticRollout, count: float, tokens: float) -> tuple[torch.Tensor, Metrics]:
        track, mask = rollout.tracks[critic], rollout.sample.mask
        values = self._values(self.engines[critic], rollout.sample)
        loss, stats = ppo_value_loss(values, track.values, track.returns, mask, self.train_cfgs.value_clip,
                                     aggregation=self.train_cfgs.loss_aggregation, step_count=count)
        prefix = metric_prefix(critic)
        return loss, {f"{prefix}value_loss": loss, f"{prefix}value_clip_fraction": stats["clip_fraction"] * mask.sum() / tokens}

    def _rollout_metrics(self, rollout: CriticRollout, sequences: float, tokens: float) -> Metrics:
        """Shares of the step's tokens: the KL in the reward, and each critic's raw advantages, returns and values."""
        sample, mask = rollout.sample, rollout.sample.mask

        def token_sum(values: torch.Tensor) -> torch.Tensor:
            return torch.where(mask, values, 0).sum() / tokens

        metrics: Metrics = {}
        if sample.ref_logps is not None:
            metrics["kl"] = token_sum(token_kl(sample))  # the penalty in the reward
        for critic, track in rollout.tracks.items():
            prefix = metric_prefix(critic)
            metrics[f"{prefix}advantage_mean"] = token_sum(track.advantages)
            metrics[f"{prefix}advantage_sq"] = token_sum(track.advantages.square())
            metrics[f"{prefix}returns_mean"] = token_sum(track.returns)
            metrics[f"{prefix}values_mean"] = token_sum(track.values)
        return metrics

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = super().reduce_metrics(sums)
        for critic in self.critics:
            prefix = metric_prefix(critic)
            mean_square = metrics.pop(f"{prefix}advantage_sq")
            metrics[f"{prefix}advantage_std"] = max(mean_square - metrics[f"{prefix}advantage_mean"] ** 2, 0.0) ** 0.5
        return metrics

    def _record(self, rollout: CriticRollout) -> pa.RecordBatch:
        """GRPO's rollout columns plus, per response token, each critic's values, returns and advantages
        (``advantages``: what the policy trained on)."""
        columns = {"advantages": rollout.policy_advantages}
        for critic, track in rollout.tracks.items():
            prefix = metric_prefix(critic)
            columns.update({f"{prefix}values": track.values, f"{prefix}returns": track.returns})
            if critic != CRITIC:
                columns[f"{prefix}advantages"] = track.advantages
        return rollout_record_batch(rollout.sample, self.rl_step, **columns)


class PPOLagTrainer(PPOTrainer):
    algorithm = "ppo_lag"
    settings = PPOLagSettings
    critics = (CRITIC, COST_CRITIC)

    def __init__(self, config):
        super().__init__(config)
        for spec in self.train_cfgs.costs:
            spec.resolve()
        self.log_lambda = math.log(self.train_cfgs.lambda_init)

    def models(self) -> list[ModelRole]:
        cfgs = self.train_cfgs
        start = critic_source(cfgs.cost_critic_model_name_or_path, cfgs.costs, self.config.model_cfgs.model_name_or_path)
        return [*super().models(),
                ModelRole(COST_CRITIC, lambda: self.load_critic(start), learning_rate=cfgs.critic_learning_rate)]

    def extra_state(self) -> dict[str, float]:
        return {"log_lambda": self.log_lambda}

    def load_extra_state(self, state: dict[str, float]) -> None:
        self.log_lambda = float(state["log_lambda"])

    def _rollout(self, prompts) -> CriticRollout:
        cfgs = self.train_cfgs
        sample = self._sample(prompts)
        metas = [self.metas[row_id] for row_id in sample.ids]
        costs, cost_per_source = combine_rewards(cfgs.costs, sample.prompts, sample.completions, metas)
        costs = costs.to(sample.rewards.device)
        # Safe RLHF splits the KL: half a penalty on the reward, half a charge on the cost, so that
        # (A_r - lam A_c) / (1 + lam) keeps the penalty at beta whatever lam is
        reward_tokens = self._token_rewards(sample, sample.rewards, cfgs.beta / 2)
        cost_tokens = self._token_rewards(sample, costs, 0.0) + cfgs.beta / 2 * token_kl(sample)
        tracks = {CRITIC: self._track(CRITIC, sample, reward_tokens), COST_CRITIC: self._track(COST_CRITIC, sample, cost_tokens)}
        return CriticRollout(sample, tracks, costs=costs,
                             cost_per_source={key: value.to(costs.device) for key, value in cost_per_source.items()})

    def policy_advantages(self, rollouts: list[CriticRollout]) -> list[torch.Tensor]:
        """First the dual step on lambda with the step's mean episode cost (all ranks), then the combined advantage."""
        cfgs = self.train_cfgs
        totals = torch.zeros(2, dtype=torch.float64, device=self.engine.device)
        for rollout in rollouts:
            totals += torch.stack([rollout.costs.double().sum(), torch.tensor(float(len(rollout.costs)), device=totals.device)])
        torch.distributed.all_reduce(totals)
        mean_cost = (totals[0] / totals[1]).cpu()
        self.log_lambda = lagrangian_update(self.log_lambda, mean_cost, cfgs.cost_threshold, cfgs.lambda_lr,
                                            cfgs.lambda_max).item()
        masks = [rollout.sample.mask for rollout in rollouts]
        reward_advantages = super().policy_advantages(rollouts)
        cost_advantages = whiten_over_step([rollout.tracks[COST_CRITIC].advantages for rollout in rollouts], masks)
        lam = math.exp(self.log_lambda)
        return [ppo_lag_advantages(a_r, a_c, lam) for a_r, a_c in zip(reward_advantages, cost_advantages)]

    def _rollout_metrics(self, rollout: CriticRollout, sequences: float, tokens: float) -> Metrics:
        metrics = super()._rollout_metrics(rollout, sequences, tokens)
        metrics["cost"] = rollout.costs.sum() / sequences
        for key, values in rollout.cost_per_source.items():
            metrics[f"cost/{key}"] = values.sum() / sequences
        return metrics

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = super().reduce_metrics(sums)
        metrics["lambda"] = math.exp(self.log_lambda)  # after this step's dual update, as its advantages used
        metrics["cost_violation"] = metrics["cost"] - self.train_cfgs.cost_threshold
        return metrics

    def _record(self, rollout: CriticRollout) -> pa.RecordBatch:
        record = super()._record(rollout)
        record = record.append_column("cost", pa.array(rollout.costs.cpu().tolist(), pa.float32()))
        for key, values in rollout.cost_per_source.items():
            record = record.append_column(f"cost/{key}", pa.array(values.cpu().tolist(), pa.float32()))
        return record


def token_kl(sample: Rollout) -> torch.Tensor:
    """(n, L-1) k1 estimate of KL(policy || reference) per response token at rollout; 0 without a reference."""
    if sample.ref_logps is None:
        return torch.zeros_like(sample.old_logps)
    return torch.where(sample.mask, kl_penalty(sample.old_logps, sample.ref_logps, "k1"), 0)


def metric_prefix(critic: str) -> str:
    """'' for the reward critic's metrics, 'cost_' for the cost critic's."""
    return "" if critic == CRITIC else "cost_"
