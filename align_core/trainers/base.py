"""The training loop every algorithm shares; an algorithm is a small subclass that supplies the math.

The loop (``train``) owns distributed setup, the data order and position, grouping micro-batches
into optimizer steps (across epoch boundaries), evaluation, checkpoints and resume, metrics and
export. An algorithm sets ``algorithm``, ``dataset_kinds`` and ``settings`` and overrides

- ``models()``: the models it holds, trained (each its own DeepSpeed engine) or frozen;
- ``compute_loss(batch, totals)``: a micro-batch's share of the step loss, and metric shares; or,
  for a step that is not "one pass over the step's batches" (PPO: generate, score, several
  updates), ``train_step(step)`` itself;
- ``eval_step(batch)`` and ``summarize_eval(values)``.

Losses and metrics are *shares*: each micro-batch's sum divided by the step's total count over all
micro-batches and ranks (``StepTotals``), so every trained token (or pair) weighs the same whatever
the batch size, accumulation or world size, and the logged value is the sum of the shares.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from align_core.config import TrainCfgs, TrainConfig
from align_core.data.batch import Batch
from align_core.data.sampler import LengthGroupedSampler
from align_core.data.token_checks import require_token_checks
from align_core.errors import UsageError
from align_core.io import atomic_write_json
from align_core.models.freeze import freeze_parts
from align_core.models.lora import apply_lora, merge_adapter_dir, quantized_loading
from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import Kind
from align_core.trainers.checkpoint import CheckpointManager
from align_core.trainers.engine import Engine, deepspeed_config, resolve_dtype, setup_distributed, zero3_model_loading
from align_core.trainers.metrics import MetricsLogger, read_metrics
from align_core.trainers.rundir import (
    CHECKPOINTS_DIR_NAME,
    POLICY,
    RESULT_NAME,
    check_previous_run,
    finished_result,
    model_dir,
    run_digest,
    run_dir_lock,
)
from align_core.trainers.throughput import check_kernels, compile_decoder, packing_collate

Metrics = dict[str, torch.Tensor]  # name -> () share of the step's value, summed over micro-batches and ranks


@dataclass(frozen=True)
class ModelRole:
    """A model an algorithm holds: ``load()`` builds it; trained ones get an engine (at ``learning_rate``,
    default ``train_cfgs.learning_rate``), frozen ones never do."""

    name: str
    load: Callable[[], torch.nn.Module]
    trained: bool = True
    learning_rate: float | None = None


@dataclass(frozen=True)
class StepTotals:
    """Counts over every micro-batch of one optimizer step on every rank: what shares divide by.

    ``trained_tokens``: label tokens that predict a next token, per sequence of a row (k,): the
    chosen and the rejected responses of preference rows, one entry otherwise.
    """

    rows: float
    sequences: float
    trained_tokens: tuple[float, ...]

    @property
    def all_trained_tokens(self) -> float:
        return sum(self.trained_tokens)


@dataclass
class TrainStep:
    """One optimizer step's micro-batches (``gradient_accumulation_steps`` of them) and their totals."""

    micro_batches: list[Batch]
    totals: StepTotals


@dataclass
class _RunState:
    """What the loop carries: the data order, the step counters, and where results go."""

    train_rows: Dataset
    sampler: LengthGroupedSampler
    batches_per_epoch: int
    total_steps: int
    checkpoints: CheckpointManager
    metrics: MetricsLogger
    eval_set: tuple[Dataset, list[list[int]]] | None
    step: int
    micro_step: int  # micro-batches consumed: the data position


class Trainer:
    algorithm: ClassVar[str] = ""
    dataset_kinds: ClassVar[tuple[Kind, ...]] = ()
    settings: ClassVar[type[TrainCfgs]] = TrainCfgs
    uses_reference: ClassVar[bool] = False
    updates_per_step: ClassVar[int] = 1  # optimizer updates a train_step makes (the LR schedule's length)
    writes_rollouts: ClassVar[bool] = False  # online RL: rollouts/ that the rollout contract must pass

    def __init__(self, config: TrainConfig):
        self.config = config
        self.train_cfgs = config.train_cfgs
        self.output_dir = Path(config.logger_cfgs.output_dir)
        self.engines: dict[str, Engine] = {}
        self.frozen: dict[str, Any] = {}

    @property
    def engine(self) -> Engine:
        """The policy's engine."""
        return self.engines[POLICY]

    @property
    def reference_is_base(self) -> bool:
        """LoRA with no other reference model named: the reference is the policy with its adapters off
        (``align_core.models.lora.adapters_disabled``), the base model without a second copy."""
        model_cfgs = self.config.model_cfgs
        return model_cfgs.lora is not None and not model_cfgs.reference_model_name_or_path

    def load_options(self) -> dict[str, Any]:
        """Keyword arguments of the registry's loaders for the run's trained models: remote code, the attention
        implementation, and QLoRA's quantized loading (which fails here, in one line, where it cannot run)."""
        model_cfgs = self.config.model_cfgs
        quantized = quantized_loading(model_cfgs.quantization, resolve_dtype(self.train_cfgs.precision), self.train_cfgs.zero_stage)
        return {"trust_remote_code": model_cfgs.trust_remote_code, "attn_implementation": model_cfgs.attn_implementation,
                **quantized}

    # ----- algorithm hooks -------------------------------------------------------------------------

    def load_model(self, path: str) -> torch.nn.Module:
        """The policy (loaded under ZeRO-3 partitioning when that stage is on)."""
        raise NotImplementedError

    def models(self) -> list[ModelRole]:
        """Every model of the run; the default is the policy alone."""
        return [ModelRole(POLICY, lambda: self.load_model(self.config.model_cfgs.model_name_or_path))]

    def load_datasets(
        self, dataset_dirs: list[str], kinds: tuple[Kind, ...] | None = None, reader: str | None = None
    ) -> tuple[Dataset, list[int], Any]:
        """(rows, token length of each row, collate function) for materialised dataset folders of
        ``kinds``, which ``reader`` (for errors) reads; default: the kinds the algorithm trains on.

        Each folder is tokenised into the token cache (a hit when already there): one rank per node
        first, the others after it, so they read the cache rather than race to build it.
        """
        from align_core.data.token_dataset import TokenDataset, media_processor_for
        from align_core.trainers.cached_steps import tokenize_specs

        data_cfgs = self.config.data_cfgs
        kinds, reader = kinds or self.dataset_kinds, reader or f"{self.algorithm} trains on"
        for folder in dataset_dirs:
            kind = ShardDataset(folder).kind
            if kind not in kinds:
                expected = " or ".join(k.value for k in kinds)
                raise UsageError(f"{folder}: a {kind.value} dataset; {reader} {expected} datasets")
        specs = tokenize_specs(self.config, dataset_dirs)
        caches = self.local_main_first(lambda: [spec.build() for spec in specs])
        is_main = getattr(self, "dist", None) is None or self.dist.is_main  # datasets load before a run, too
        for cache in caches:  # tokens that would train silently wrong stop the run here, naming rows
            require_token_checks(cache, warn=print if is_main else lambda line: None)
        parts = [TokenDataset(cache) for cache in caches]
        for folder, part in zip(dataset_dirs, parts):
            if len(part) == 0:
                raise UsageError(
                    f"{folder}: no row left after tokenising with max_length={data_cfgs.max_length} and "
                    f"truncation={data_cfgs.truncation} (see {part.path / 'manifest.json'} for the counts)"
                )
        rows = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        media = media_processor_for(parts, self.config.model_cfgs.trust_remote_code)
        return rows, [int(n) for part in parts for n in part.lengths], parts[0].collator(media=media)

    def train_collate(self, collate: Any) -> Any:
        """The collate function of training micro-batches, from the datasets' (evaluation keeps that one):
        with ``train_cfgs.packing`` (where the algorithm's settings have it), the same rows packed."""
        if not getattr(self.train_cfgs, "packing", False):
            return collate
        # the same rows per micro-batch, so the same losses; only the padding goes
        return packing_collate(collate, self.config.data_cfgs.max_length)

    @property
    def fused_head(self) -> bool:
        """``train_cfgs.liger_kernel`` (where the algorithm's settings have it): score through Liger's fused head."""
        return getattr(self.train_cfgs, "liger_kernel", False)

    def compute_loss(self, batch: Batch, totals: StepTotals) -> tuple[torch.Tensor, Metrics]:
        """The micro-batch's share of the step loss (its sum over the step's count), and metric shares."""
        raise NotImplementedError

    def train_step(self, step: TrainStep) -> Metrics:
        """One optimizer step of the policy: backward every micro-batch's loss share, then update.

        Returns the step's metric shares (summed over its micro-batches; the loop sums over ranks).
        """
        sums: Metrics = {}
        for position, batch in enumerate(step.micro_batches):
            loss, metrics = self.compute_loss(batch, step.totals)
            self.engine.backward(loss, last=position == len(step.micro_batches) - 1)
            add_metrics(sums, {"loss": loss, **metrics})
        self.engine.step()
        return sums

    def reduce_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The step's metrics from their sums over micro-batches and ranks (an algorithm may derive more)."""
        return sums

    def extra_state(self) -> dict[str, Any]:
        """State of the algorithm outside its models (numbers, tensors), saved with each checkpoint and
        handed back to ``load_extra_state`` on resume: PPO-Lagrangian's multiplier."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what ``extra_state`` returned when the checkpoint being resumed was saved."""

    def eval_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per-example values (n,) that ``summarize_eval`` aggregates over the whole eval set."""
        raise NotImplementedError

    def summarize_eval(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return {name: column.float().mean().item() for name, column in values.items()}

    def tokenizer_for_export(self) -> Any:
        """Saved beside each exported model, so the folder loads as a whole with from_pretrained: a media
        model's processor (which saves its tokenizer too), else the tokenizer."""
        from align_core.models.registry import load_processor, load_tokenizer

        model_cfgs = self.config.model_cfgs
        processor = load_processor(model_cfgs.model_name_or_path, model_cfgs.trust_remote_code)
        return processor or load_tokenizer(model_cfgs.model_name_or_path, model_cfgs.trust_remote_code)

    # ----- the loop --------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Train to the configured number of steps, resuming from the last checkpoint; returns the result."""
        from transformers import set_seed

        self.dist = setup_distributed()
        with run_dir_lock(self.output_dir, self.dist):  # a second run on this folder fails here, naming this one
            done = finished_result(self.config)
            if done is not None:
                return done
            resume_step = self.resumed_from_step = self._resume_step()
            set_seed(self.train_cfgs.seed)
            run = self._prepare(resume_step)
            last_metrics = self._run_steps(run)
            return self._finish(run, last_metrics)

    def _prepare(self, resume_step: int | None) -> _RunState:
        """Data, models, checkpoints (restored when resuming) and metrics, in the order ranks must agree on."""
        dist = self.dist
        self.load_options()  # a model setting this machine cannot run fails before any data is read
        check_kernels(self.train_cfgs, self.config.model_cfgs)
        train_rows, train_lengths, collate = self.load_datasets(self.config.data_cfgs.train_datasets)
        self.collate = self.train_collate(collate)
        # The order is a pure function of (seed, epoch, rank): a resume skips batches without reading them.
        sampler = LengthGroupedSampler(
            train_lengths,
            self.train_cfgs.per_device_train_batch_size,
            seed=self.train_cfgs.seed,
            rank=dist.rank,
            world_size=dist.world_size,
            group_by_length=self.train_cfgs.length_grouping,
        )
        batches_per_epoch = -(-len(sampler) // self.train_cfgs.per_device_train_batch_size)
        total_steps = self._total_steps(batches_per_epoch, len(train_rows))
        self._build_models(total_steps)
        checkpoints = CheckpointManager(self.output_dir / CHECKPOINTS_DIR_NAME, self.train_cfgs.keep_checkpoints, dist)
        checkpoints.remove_incomplete()
        step = micro_step = 0
        if resume_step is not None:
            client_state = checkpoints.load(self.engines, resume_step)
            step, micro_step = client_state["step"], client_state["micro_step"]
            self.load_extra_state(client_state.get("trainer", {}))
        metrics = MetricsLogger(
            self.output_dir,
            enabled=dist.is_main,
            start_step=step,
            total_steps=total_steps,
            tensorboard=self.config.logger_cfgs.log_type == "tensorboard",
            progress_bar=self.config.logger_cfgs.progress_bar,
            title=f"{self.algorithm} {Path(self.config.model_cfgs.model_name_or_path).name}",
        )
        return _RunState(
            train_rows, sampler, batches_per_epoch, total_steps, checkpoints, metrics, self._eval_set(), step, micro_step
        )

    def _run_steps(self, run: _RunState) -> dict[str, float]:
        """Optimizer steps until ``total_steps``; returns the last step's metrics."""
        cfgs = self.train_cfgs
        last_metrics: dict[str, float] = {}
        for engine in self.engines.values():
            engine.train()
        micro_batches = self._micro_batches(run)
        while run.step < run.total_steps:
            started = time.perf_counter()
            lr = self.engine.lr  # the rate this step's update uses
            batches = [next(micro_batches) for _ in range(cfgs.gradient_accumulation_steps)]
            step = TrainStep(batches, self._step_totals(batches))
            sums = self.train_step(step)
            sums["tokens"] = sum(batch.non_pad_tokens() for batch in batches)
            run.step += 1
            last_metrics = self.reduce_metrics(self._sum_over_ranks(sums))
            last_metrics["lr"] = lr
            last_metrics["epoch"] = run.micro_step / run.batches_per_epoch
            last_metrics["tokens_per_second"] = last_metrics["tokens"] / (time.perf_counter() - started)
            if run.eval_set is not None and cfgs.eval_interval and run.step % cfgs.eval_interval == 0:
                last_metrics.update(self.evaluate(*run.eval_set))
            run.metrics.log(run.step, last_metrics)
            if run.step % cfgs.save_interval == 0 or run.step == run.total_steps:
                state = {"step": run.step, "micro_step": run.micro_step, "trainer": self.extra_state()}
                run.checkpoints.save(self.engines, run.step, state)
                run.metrics.plot()
            if cfgs.debug_stop_after_steps == run.step:
                os._exit(17)  # simulate a crash: no cleanup, no flush beyond what is on disk
        return last_metrics

    def _micro_batches(self, run: _RunState) -> Iterator[Batch]:
        """Micro-batches on this rank's device from the data position on, epoch after epoch."""
        while True:
            epoch, offset = divmod(run.micro_step, run.batches_per_epoch)
            run.sampler.set_epoch(epoch)
            loader = DataLoader(
                run.train_rows,
                batch_sampler=run.sampler.batches()[offset:],
                collate_fn=self.collate,
                num_workers=self.config.data_cfgs.num_workers,
            )
            for batch in loader:
                run.micro_step += 1
                yield batch.to(self.engine.device)

    def _step_totals(self, batches: list[Batch]) -> StepTotals:
        """Rows, sequences and trained tokens of the step, all-reduced before any backward pass."""
        k = batches[0].sequences_per_row
        counts = torch.zeros(2 + k, dtype=torch.float64, device=self.engine.device)
        for batch in batches:
            counts[0] += batch.num_rows
            counts[1] += batch.num_sequences
            counts[2:] += batch.trained_tokens().to(counts)
        torch.distributed.all_reduce(counts)
        rows, sequences, *tokens = counts.tolist()
        return StepTotals(rows, sequences, tuple(tokens))

    def _sum_over_ranks(self, sums: Metrics) -> dict[str, float]:
        names = sorted(sums)
        values = torch.stack([torch.as_tensor(sums[name]).detach().double().reshape(()) for name in names])
        values = values.to(self.engine.device)
        torch.distributed.all_reduce(values)
        return dict(zip(names, values.tolist()))

    def _finish(self, run: _RunState, last_metrics: dict[str, float]) -> dict[str, Any]:
        """Final evaluation, HF export of every trained model, the loss curve, and ``train_result.json``
        (written last: it marks the run done)."""
        if not last_metrics and self.dist.is_main:  # resumed from the final checkpoint: nothing ran now
            last_metrics = {k: v for k, v in (read_metrics(self.output_dir) or [{}])[-1].items() if k != "step"}
        final_eval = {k: v for k, v in last_metrics.items() if k.startswith("eval/")}
        if run.eval_set is not None and not final_eval:
            final_eval = self.evaluate(*run.eval_set)
        model_dirs = {name: model_dir(self.output_dir, name) for name in self.engines}
        for name, engine in self.engines.items():
            engine.export_pretrained(model_dirs[name], self.tokenizer_for_export(), self.dist.is_main)
        merged_dirs = {}
        if self.config.model_cfgs.lora is not None and self.config.logger_cfgs.merge_lora:
            merged_dirs = {name: folder.with_name(f"{folder.name}-merged") for name, folder in model_dirs.items()}
            if self.dist.is_main:
                for name, folder in merged_dirs.items():
                    merge_adapter_dir(model_dirs[name], folder, self.tokenizer_for_export())
            torch.distributed.barrier()
        run.metrics.close()
        result = {
            "algorithm": self.algorithm,
            "steps": run.step,
            "model_dir": str(model_dirs[POLICY]),
            "model_dirs": {name: str(folder) for name, folder in model_dirs.items()},
            "merged_model_dirs": {name: str(folder) for name, folder in merged_dirs.items()},  # merge_lora
            "final_train_metrics": {k: v for k, v in last_metrics.items() if not k.startswith("eval/")},
            "eval": final_eval,
            "config_digest": run_digest(self.config),
            "world_size": self.dist.world_size,
            "resumed_from_step": self.resumed_from_step,  # None: trained from scratch in one go
        }
        if self.dist.is_main:
            atomic_write_json(self.output_dir / RESULT_NAME, result)
        torch.distributed.barrier()
        return result

    # ----- pieces of the loop ----------------------------------------------------------------------

    def local_main_first(self, make: Callable[[], Any]) -> Any:
        """Run ``make`` on each node's first rank, then on the others, which then find its result on disk."""
        result = None
        for first in (True, False):
            if (self.dist.local_rank == 0) == first:
                result = make()
            torch.distributed.barrier()
        return result

    def _resume_step(self) -> int | None:
        """Rank 0 decides whether output_dir holds a compatible run to resume; all ranks follow."""
        decision: list[Any] = [None]
        if self.dist.is_main:
            decision[0] = check_previous_run(self.config)
        torch.distributed.broadcast_object_list(decision, src=0)
        if isinstance(decision[0], str):
            raise UsageError(decision[0])
        return decision[0]

    def _total_steps(self, batches_per_epoch: int, num_rows: int) -> int:
        if self.train_cfgs.max_steps is not None:
            return self.train_cfgs.max_steps
        total = self.train_cfgs.epochs * batches_per_epoch // self.train_cfgs.gradient_accumulation_steps
        if total == 0:
            raise UsageError(
                f"{num_rows} training rows give {batches_per_epoch} micro-batches per rank per epoch, fewer than "
                f"train_cfgs.gradient_accumulation_steps={self.train_cfgs.gradient_accumulation_steps}: no optimizer step"
            )
        return total

    def _build_models(self, total_steps: int) -> None:
        """An engine (optimizer, schedule) per trained model; frozen ones on the device, never optimised."""
        dtype = resolve_dtype(self.train_cfgs.precision)
        ds_config = deepspeed_config(self.train_cfgs, dtype)
        for role in self.models():
            with zero3_model_loading(ds_config):
                model = role.load()
            if role.trained:
                freeze_parts(model, self.config.model_cfgs.freeze_switches())
                if self.config.model_cfgs.lora is not None:
                    model = apply_lora(model, self.config.model_cfgs.lora)
                if self.train_cfgs.gradient_checkpointing:
                    model.gradient_checkpointing_enable()
                if getattr(self.train_cfgs, "torch_compile", False):
                    compile_decoder(model)
                self.engines[role.name] = Engine(
                    model, self.train_cfgs, ds_config, total_steps * self.updates_per_step, role.learning_rate
                )
            else:
                self.frozen[role.name] = self._place_frozen(model, ds_config)

    def _place_frozen(self, model: torch.nn.Module, ds_config: dict[str, Any]) -> Any:
        """Eval mode, no gradients, in the training dtype; partitioned by DeepSpeed at ZeRO-3."""
        from deepspeed.accelerator import get_accelerator

        model.eval()
        model.requires_grad_(False)
        if self.train_cfgs.zero_stage == 3:
            import deepspeed

            frozen = deepspeed.initialize(model=model, config=ds_config)[0]
            frozen.eval()
            return frozen
        return model.to(get_accelerator().current_device_name(), dtype=resolve_dtype(self.train_cfgs.precision))

    def _eval_set(self) -> tuple[Dataset, list[list[int]]] | None:
        """Eval rows and this rank's batches of them (grouped by length: fewer pad tokens to score)."""
        if not self.config.data_cfgs.eval_datasets:
            return None
        rows, lengths, self.eval_collate = self.load_datasets(self.config.data_cfgs.eval_datasets)
        sampler = LengthGroupedSampler(
            lengths, self.train_cfgs.per_device_eval_batch_size, seed=0, rank=self.dist.rank, world_size=self.dist.world_size
        )
        return rows, sampler.batches()

    @torch.no_grad()
    def evaluate(self, rows: Dataset, batches: list[list[int]]) -> dict[str, float]:
        """Per-example values from every rank, de-duplicated (the sampler pads ranks with repeats), summarised."""
        for engine in self.engines.values():
            engine.train(False)
        indices, columns = [], {}
        loader = DataLoader(
            rows, batch_sampler=batches, collate_fn=self.eval_collate, num_workers=self.config.data_cfgs.num_workers
        )
        for batch_indices, batch in zip(batches, loader):
            for name, values in self.eval_step(batch.to(self.engine.device)).items():
                columns.setdefault(name, []).append(values.float().cpu())
            indices += batch_indices
        for engine in self.engines.values():
            engine.train(True)
        local = (indices, {name: torch.cat(parts) for name, parts in columns.items()})
        gathered: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, local)
        seen, merged = set(), {name: [] for name in local[1]}
        for rank_indices, rank_columns in gathered:
            for position, row in enumerate(rank_indices):
                if row not in seen:
                    seen.add(row)
                    for name, values in merged.items():
                        values.append(rank_columns[name][position])
        summary = self.summarize_eval({name: torch.stack(values) for name, values in merged.items()})
        return {f"eval/{name}": value for name, value in summary.items()}


def add_metrics(sums: Metrics, metrics: Metrics) -> None:
    """Add one micro-batch's metric shares (detached) to the step's running sums."""
    for name, value in metrics.items():
        sums[name] = sums.get(name, 0) + value.detach().double()
