"""GRPO (Shao et al. 2024), Dr. GRPO (Liu et al. 2025) and RLOO (Ahmadian et al. 2024): online RL
without a critic, on ``prompt_only`` datasets, through the shared loop.

One optimizer step takes the step's prompt micro-batches and, for each,

1. **rolls out**: the policy, in eval mode with a KV cache, samples ``num_generations`` completions
   per prompt (``temperature``, ``top_p``, ``top_k``, ``max_new_tokens``, stopping at EOS); at ZeRO-3
   its weights are gathered for the generation, as DeepSpeed-Chat and OpenRLHF do;
2. **scores**: the completions' rewards from the registered sources (``rewards``: rule functions,
   user functions from ``reward_module``, a trained reward model), each row's shard ``meta`` passed
   along (GSM8K's ``final_answer``); the old log-probs under the policy and, with ``beta > 0``, the
   reference log-probs under a frozen reference model;
3. **advantages**: group-relative over each prompt's completions (``advantage``: ``grpo`` scales by
   the group's std, ``dr_grpo`` does not, ``rloo`` subtracts the mean of the others);

then makes ``ppo_epochs`` updates over all the step's rollouts with PPO's clipped loss plus
``beta`` times the k3 KL to the reference, aggregated as ``loss_aggregation`` over the step's
response tokens or rows on every rank, plus, with ``ptx_coef``, the PTX term on supervised data
(``align_core.trainers.ptx``).

Each step's rollouts (prompt and completion text and ids, rewards per source, advantage, old/ref
log-probs) are written per rank as an Arrow file listed with its sha256 (``align_core.rollouts``): a run
can be audited and replayed from them, and the rollout contract (``data_contracts.rollouts``) judges
them. Sampling draws from a generator seeded by (seed, rank, step, micro-batch), so a resumed run
samples the same completions.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import pyarrow as pa
import torch
from pydantic import Field, model_validator

from align_core.config import TrainCfgs
from align_core.data.batch import Batch, forward
from align_core.data.truncation import IGNORE_INDEX
from align_core.errors import UsageError
from align_core.losses import token_logps
from align_core.losses.rl import (
    Aggregation,
    aggregate,
    aggregate_count,
    group_advantages,
    kl_penalty,
    ppo_policy_loss,
    rloo_advantages,
)
from align_core.models.lora import adapters_disabled
from align_core.rewards import RewardSpec, combine_rewards, load_reward_module
from align_core.rollouts import write_rollouts
from align_core.shards.schema import Kind
from align_core.trainers.base import Metrics, ModelRole, Trainer, TrainStep, add_metrics
from align_core.trainers.ptx import PTXStream, ptx_loss_share
from align_core.trainers.row_metas import RowMetas

REFERENCE = "reference"
# per step: wall seconds of the rollouts and of the updates, tokens generated and tokens through the updates
THROUGHPUT = ("rollout_seconds", "update_seconds", "generated_tokens", "update_tokens")


class OnlineRLSettings(TrainCfgs):
    """What every online RL trainer reads: sampling, reward sources, the reference's weight, PPO's clip."""

    num_generations: int = Field(1, ge=1, description="completions sampled per prompt")
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0: no top-k filtering")
    beta: float = Field(0.04, ge=0, description="weight of the k3 KL to the reference; 0 loads no reference")
    clip_ratio: float = Field(0.2, gt=0)
    ppo_epochs: int = Field(1, ge=1, description="updates over each step's rollouts")
    loss_aggregation: Aggregation = "seq_mean_token_mean"
    rewards: list[RewardSpec] = Field(default_factory=list, description="reward sources and weights")
    reward_module: str | None = Field(None, description="a .py file or module registering @register_reward functions")
    ptx_coef: float = Field(0.0, ge=0, description="weight of the PTX term on data_cfgs.ptx_datasets; 0: none")

    @model_validator(mode="after")
    def _needs_a_reward(self) -> OnlineRLSettings:
        if not self.rewards:
            raise ValueError("rewards: name at least one reward source, e.g. [{name: gsm8k_exact_match}]")
        return self


class GRPOSettings(OnlineRLSettings):
    num_generations: int = Field(4, ge=2, description="completions sampled per prompt (the group)")
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"


class RLOOSettings(GRPOSettings):
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "rloo"
    loss_aggregation: Aggregation = "token_mean"


@dataclass
class Rollout:
    """One prompt micro-batch's completions (n = prompts x generations, generation-major: the prompts'
    first completions, then their second, ...), as a batch to score with a mask of response tokens."""

    batch: Batch  # prompt + completion, labels on the completion tokens (through EOS)
    prompt_length: int
    completions: list[str]
    prompts: list[str]
    ids: list[str]
    rewards: torch.Tensor  # (n,)
    per_source: dict[str, torch.Tensor]
    advantages: torch.Tensor | None  # (n,) group advantages; None for a critic's per-token ones
    old_logps: torch.Tensor  # (n, L-1)
    ref_logps: torch.Tensor | None
    mask: torch.Tensor  # (n, L-1) response tokens


class GRPOTrainer(Trainer):
    algorithm = "grpo"
    dataset_kinds = (Kind.PROMPT_ONLY,)
    settings = GRPOSettings
    writes_rollouts = True

    def __init__(self, config):
        super().__init__(config)
        if self.train_cfgs.reward_module:
            load_reward_module(self.train_cfgs.reward_module)
        for spec in self.train_cfgs.rewards:
            spec.resolve()  # an unknown reward or a kwarg it does not take fails before any model loads
        self.row_metas = RowMetas(config.data_cfgs.train_datasets)  # metas reach the reward functions
        self.metas = self.row_metas.metas
        if config.data_cfgs.eval_datasets:
            raise UsageError(f"{self.algorithm}: evaluation on data_cfgs.eval_datasets is not built yet; leave it empty")

    @property
    def updates_per_step(self) -> int:
        return self.train_cfgs.ppo_epochs

    def load_model(self, path: str) -> torch.nn.Module:
        from align_core.models.registry import load_causal_lm

        return load_causal_lm(path, **self.load_options())

    def models(self) -> list[ModelRole]:
        model_cfgs = self.config.model_cfgs
        roles = super().models()
        if self.train_cfgs.beta > 0 and not self.reference_is_base:
            reference = model_cfgs.reference_model_name_or_path or model_cfgs.model_name_or_path
            roles.append(ModelRole(REFERENCE, lambda: self.load_model(reference), trained=False))
        return roles

    def load_datasets(self, dataset_dirs, kinds=None, reader=None):
        rows, lengths, collate = super().load_datasets(dataset_dirs, kinds, reader)
        return rows, lengths, (self.row_metas.wrap(collate) if kinds is None else collate)

    def _prepare(self, resume_step):
        self.ptx = PTXStream(self) if self.config.data_cfgs.ptx_datasets else None  # tokenised before any model loads
        return super()._prepare(resume_step)

    # ----- rollout ------------------------------------------------------------------------------------

    @torch.no_grad()
    def rollout(self, prompts: Batch, position: int) -> Rollout:
        """Sample, score and compute advantages for one prompt micro-batch (the step's ``position``-th).

        Sampling draws from a generator seeded by (seed, rank, step, position) and leaves the global RNG
        as it was, so a resumed run samples exactly what the uninterrupted one did, whatever else drew
        random numbers in between (a data loader started anew on resume draws one)."""
        seed = hash((self.train_cfgs.seed, self.dist.rank, self.rl_step, position)) % (1 << 63)
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            torch.manual_seed(seed)
            rollout = self._rollout(prompts)
        self._throughput["rollout_seconds"] += time.perf_counter() - started
        return rollout

    @property
    def rl_step(self) -> int:
        """Optimizer steps of the loop done so far (each makes ``updates_per_step`` policy updates)."""
        return self.engine.global_step // self.updates_per_step

    def _rollout(self, prompts: Batch) -> Rollout:
        """The sampled, scored completions with their group-relative advantages."""
        rollout = self._sample(prompts)
        generations = self.train_cfgs.num_generations
        # groups are a prompt's completions: column j of the (generations, prompts) grid
        grouped = rollout.rewards.view(generations, -1).T.reshape(-1)
        advantage = {"grpo": lambda r: group_advantages(r, generations, "std"),
                     "dr_grpo": lambda r: group_advantages(r, generations, "none"),
                     "rloo": lambda r: rloo_advantages(r, generations)}[self.train_cfgs.advantage](grouped)
        rollout.advantages = advantage.view(-1, generations).T.reshape(-1)
        return rollout

    def _sample(self, prompts: Batch) -> Rollout:
        """Completions of the prompts, their rewards and old/reference log-probs (no advantages yet)."""
        cfgs, tokenizer = self.train_cfgs, self._tokenizer()
        policy = self.engine.module
        generations = cfgs.num_generations
        prompt_ids = prompts.input_ids.repeat(generations, 1)  # generation-major, like ModelInput.repeat
        prompt_mask = prompts.attention_mask.repeat(generations, 1)
        model_inputs = {name: value.repeat(generations).value for name, value in prompts.model_inputs.items()}
        gather = contextlib.nullcontext()
        if cfgs.zero_stage == 3:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(policy.parameters()))
        self.engine.train(False)
        with gather:
            output = policy.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, **model_inputs, do_sample=True,
                temperature=cfgs.temperature, top_p=cfgs.top_p, top_k=cfgs.top_k or None,
                max_new_tokens=cfgs.max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, use_cache=True,
            )
        self.engine.train(True)
        prompt_length = prompt_ids.shape[1]
        completion = output[:, prompt_length:]
        completion_mask = completion_tokens_mask(completion, tokenizer.eos_token_id)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        labels = torch.where(attention_mask.bool(), output, IGNORE_INDEX)
        labels[:, :prompt_length] = IGNORE_INDEX
        batch = Batch(
            input_ids=output, attention_mask=attention_mask, labels=labels, sequences_per_row=1,
            model_inputs={name: value.repeat(generations) for name, value in prompts.model_inputs.items()},
        )
        completions = tokenizer.batch_decode(torch.where(completion_mask.bool(), completion, tokenizer.pad_token_id),
                                             skip_special_tokens=True)
        prompt_texts = tokenizer.batch_decode(prompts.input_ids, skip_special_tokens=True) * generations
        ids = self.row_metas.row_ids(prompts) * generations
        rewards, per_source = combine_rewards(cfgs.rewards, prompt_texts, completions, [self.metas[row_id] for row_id in ids])
        old_logps, mask = self._logps(self.engine, batch)
        ref_logps = None
        if REFERENCE in self.frozen:
            ref_logps = self._logps(self.frozen[REFERENCE], batch)[0]
        elif cfgs.beta > 0:  # LoRA: the base model is the policy with its adapters off
            with adapters_disabled(self.engine):
                ref_logps = self._logps(self.engine, batch)[0]
        self._throughput["generated_tokens"] += float(mask.sum())
        self._throughput["update_tokens"] += float(attention_mask.sum()) * cfgs.ppo_epochs  # forward + backward
        device = self.engine.device
        return Rollout(batch, prompt_length, completions, prompt_texts, ids, rewards.to(device),
                       {key: value.to(device) for key, value in per_source.items()}, None, old_logps, ref_logps, mask)

    def _logps(self, model, batch: Batch, entropy: bool = False) -> tuple[torch.Tensor, ...]:
        """(n, L-1) log-probs of the completion tokens and their mask (and, with ``entropy``, the policy's
        entropy at each position, without gradient); positions follow the left padding, as in generation."""
        logits = forward(model, batch, position_ids=generation_position_ids(batch), use_cache=False).logits
        logps, mask = token_logps(logits, batch.labels)
        if not entropy:
            return logps, mask
        with torch.no_grad():  # on the response positions only: the softmax over the vocabulary is the cost
            log_probs = torch.log_softmax(logits[:, :-1][mask].float(), dim=-1)
            entropy = torch.zeros(mask.shape, dtype=log_probs.dtype, device=log_probs.device)
            entropy[mask] = -(log_probs.exp() * log_probs).sum(-1)
            return logps, mask, entropy

    def _tokenizer(self):
        if not hasattr(self, "_loaded_tokenizer"):
            from align_core.models.registry import load_tokenizer

            model_cfgs = self.config.model_cfgs
            self._loaded_tokenizer = load_tokenizer(model_cfgs.model_name_or_path, model_cfgs.trust_remote_code)
        return self._loaded_tokenizer

    # ----- update -------------------------------------------------------------------------------------

    def train_step(self, step: TrainStep) -> Metrics:
        """The algorithm's ``update`` of the step, plus its throughput: generated tokens over the rollouts'
        time (sampling, scoring, old/reference log-probs), and sequence tokens through the updates over
        the rest. Seconds are shares of the mean over ranks; tokens add up."""
        self._throughput = dict.fromkeys(THROUGHPUT, 0.0)
        started = time.perf_counter()
        sums = self.update(step)
        rollout_seconds = self._throughput["rollout_seconds"]
        self._throughput["update_seconds"] = time.perf_counter() - started - rollout_seconds
        world = self.dist.world_size
        sums.update({name: value / world if name.endswith("_seconds") else value for name, value in self._throughput.items()})
        return sums

    def update(self, step: TrainStep) -> Metrics:
        """Roll out every prompt micro-batch, then ``ppo_epochs`` updates of the policy; metric shares."""
        cfgs = self.train_cfgs
        rollouts = [self.rollout(batch, position) for position, batch in enumerate(step.micro_batches)]
        count, sequences, tokens = self.step_counts(rollouts)
        sums: Metrics = {}
        for update in range(cfgs.ppo_epochs):
            self.update_policy(rollouts, lambda rollout: self._loss(rollout, count, tokens),
                               sums if update == cfgs.ppo_epochs - 1 else None)
        for rollout in rollouts:
            add_metrics(sums, rollout_metrics(rollout, sequences))
        self._write_rollouts([rollout_record_batch(rollout, self.rl_step) for rollout in rollouts])
        return sums

    def update_policy(self, rollouts: list, loss_of: Callable, sums: Metrics | None) -> None:
        """One optimizer update of the policy over the step's rollouts: each one's loss share
        (``loss_of(rollout)``) plus ``ptx_coef`` times a supervised micro-batch's PTX share; metric shares
        are added to ``sums`` unless it is None."""
        ptx_batches, ptx_tokens = [], 1.0
        if self.ptx is not None:  # the policy's update count picks the batches: a resumed run reads the same
            ptx_batches, ptx_tokens = self.ptx.update_batches(self.engine.global_step, len(rollouts))
        for position, rollout in enumerate(rollouts):
            loss, metrics = loss_of(rollout)
            if ptx_batches:
                metrics["ptx_loss"] = ptx_loss_share(self.engine, ptx_batches[position], ptx_tokens)
                loss = loss + self.train_cfgs.ptx_coef * metrics["ptx_loss"]
            self.engine.backward(loss, last=position == len(rollouts) - 1)
            if sums is not None:
                add_metrics(sums, {"loss": loss, **metrics})
        self.engine.step()

    def step_counts(self, rollouts: list[Rollout]) -> tuple[float, float, float]:
        """What shares divide by, over the whole step on every rank: the loss's count, completions, response tokens."""
        totals = torch.zeros(3, dtype=torch.float64, device=self.engine.device)
        for rollout in rollouts:
            totals[0] += aggregate_count(rollout.mask, self.train_cfgs.loss_aggregation)
            totals[1] += len(rollout.completions)
            totals[2] += rollout.mask.sum()
        torch.distributed.all_reduce(totals)
        count, sequences, tokens = (max(total, 1.0) for total in totals.tolist())
        return count, sequences, tokens

    def _loss(self, rollout: Rollout, count: float, tokens: float) -> tuple[torch.Tensor, Metrics]:
        """This rollout's share of the step loss (PPO clip + beta * k3 KL), and token-mean metric shares."""
        cfgs = self.train_cfgs
        logps, mask, entropy = self._logps(self.engine, rollout.batch, entropy=True)
        advantages = rollout.advantages[:, None].expand_as(logps)
        loss, stats = ppo_policy_loss(logps, rollout.old_logps, advantages, mask, cfgs.clip_ratio,
                                      aggregation=cfgs.loss_aggregation, step_count=count)
        metrics = {"clip_fraction": stats["clip_fraction"] * mask.sum() / tokens,
                   "entropy": torch.where(mask, entropy, 0).sum() / tokens}
        if rollout.ref_logps is not None:
            kl = kl_penalty(logps, rollout.ref_logps, "k3")
            kl_sum, _ = aggregate(kl, mask, cfgs.loss_aggregation, reduce=False)
            loss = loss + cfgs.beta * kl_sum / count
            metrics["kl"] = torch.where(mask, kl, 0).sum() / tokens
        return loss, metrics

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        metrics = dict(sums)
        mean_square = metrics.pop("reward_sq")
        metrics["reward_std"] = max(mean_square - metrics["reward"] ** 2, 0.0) ** 0.5
        for phase, tokens in (("rollout", "generated_tokens"), ("update", "update_tokens")):
            seconds = metrics.pop(f"{phase}_seconds")
            metrics[f"{phase}_tokens_per_second"] = metrics[tokens] / seconds if seconds else 0.0
        return metrics

    # ----- rollouts as data ---------------------------------------------------------------------------

    def _write_rollouts(self, records: list[pa.RecordBatch]) -> None:
        """This rank's rollouts of the step (written after its updates)."""
        write_rollouts(self.output_dir, self.rl_step, self.dist.rank, pa.Table.from_batches(records))


class RLOOTrainer(GRPOTrainer):
    algorithm = "rloo"
    settings = RLOOSettings


def generation_position_ids(batch: Batch) -> torch.Tensor:
    """(n, L) positions that skip the left padding, as generation numbered them."""
    return (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)


def completion_tokens_mask(completion: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(n, C) 1 on each completion's tokens up to and including its first EOS, 0 after (padding)."""
    is_eos = completion == eos_token_id
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long()


def rollout_metrics(rollout: Rollout, sequences: float) -> Metrics:
    """Shares (sums / the step's completions on every rank) of the rollout's rewards and lengths."""
    lengths = rollout.mask.sum(-1).float()
    metrics = {
        "reward": rollout.rewards.sum() / sequences,
        "reward_sq": rollout.rewards.square().sum() / sequences,  # for the std, in reduce_metrics
        "response_length": lengths.sum() / sequences,
        "empty_completions": (lengths <= 1).float().sum() / sequences,  # EOS alone, or nothing
    }
    if rollout.advantages is not None:
        metrics["advantage_abs"] = rollout.advantages.abs().sum() / sequences
    for key, values in rollout.per_source.items():
        metrics[f"reward/{key}"] = values.sum() / sequences
    return metrics


def rollout_record_batch(rollout: Rollout, step: int, **token_columns: torch.Tensor) -> pa.RecordBatch:
    """The rollout as Arrow rows; each of ``token_columns`` (n, L-1) becomes a list of its response-token values."""
    n = len(rollout.completions)
    ids = rollout.batch.input_ids.cpu()
    mask = rollout.mask.cpu().bool()
    columns = {
        "step": pa.array([step] * n, pa.int32()),
        "prompt_id": pa.array(rollout.ids),
        "prompt": pa.array(rollout.prompts),
        "completion": pa.array(rollout.completions),
        "completion_ids": pa.array([row[rollout.prompt_length:][m[rollout.prompt_length - 1:]].tolist()
                                    for row, m in zip(ids, mask)], pa.list_(pa.int32())),
        "reward": pa.array(rollout.rewards.cpu().tolist(), pa.float32()),
        **{f"reward/{key}": pa.array(values.cpu().tolist(), pa.float32()) for key, values in rollout.per_source.items()},
    }
    if rollout.advantages is not None:
        columns["advantage"] = pa.array(rollout.advantages.cpu().tolist(), pa.float32())
    per_token = {"old_logps": rollout.old_logps, "ref_logps": rollout.ref_logps, **token_columns}
    for key, values in per_token.items():
        if values is not None:
            columns[key] = pa.array([row[m].tolist() for row, m in zip(values.float().cpu(), mask)], pa.list_(pa.float32()))
    return pa.RecordBatch.from_pydict(columns)
