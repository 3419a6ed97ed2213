"""The training loop every algorithm shares; an algorithm is a small subclass that supplies the math.

A subclass sets ``algorithm`` and ``dataset_kinds`` and implements

- ``load_model(path)``: the trainable model (loaded under ZeRO-3 partitioning when that stage is on),
- ``compute_loss(batch) -> (loss, metrics)``: one micro-batch's scalar loss and scalar metrics,
- ``eval_step(batch) -> {name: (b,) tensor}``: per-example values an evaluation aggregates,
- ``summarize_eval(values) -> {name: float}``.

Everything else (distributed setup, data order and position, accumulation, checkpoints and resume,
metrics, evaluation across ranks, export) lives here once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from align_core.config import TrainConfig
from align_core.errors import UsageError
from align_core.io import atomic_write_json
from align_core.data.sampler import LengthGroupedSampler
from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import Kind
from align_core.trainers.checkpoint import CheckpointManager
from align_core.trainers.engine import Engine, deepspeed_config, resolve_dtype, setup_distributed, zero3_model_loading
from align_core.trainers.metrics import MetricsLogger, read_metrics
from align_core.trainers.rundir import (
    CHECKPOINTS_DIR_NAME,
    MODEL_DIR_NAME,
    RESULT_NAME,
    check_previous_run,
    finished_result,
    run_digest,
)

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
    micro_step: int


class Trainer:
    algorithm: ClassVar[str] = ""
    dataset_kinds: ClassVar[tuple[Kind, ...]] = ()

    def __init__(self, config: TrainConfig):
        self.config = config
        self.train_cfgs = config.train_cfgs
        self.output_dir = Path(config.logger_cfgs.output_dir)
        self.engine: Engine | None = None

    # ----- algorithm hooks -------------------------------------------------------------------------

    def load_model(self, path: str) -> torch.nn.Module:
        raise NotImplementedError

    def load_datasets(self, dataset_dirs: list[str]) -> tuple[Dataset, list[int], Any]:
        """(rows, token length of each row, collate function) for materialised dataset folders.

        Each folder is tokenised into the token cache (a hit when already there): one rank per node
        first, the others after it, so they read the cache rather than race to build it.
        """
        from align_core.data.token_cache import tokenize_dataset
        from align_core.data.token_dataset import TokenDataset

        data_cfgs, model_cfgs = self.config.data_cfgs, self.config.model_cfgs
        kinds = {folder: ShardDataset(folder).kind for folder in dataset_dirs}
        for folder, kind in kinds.items():
            if kind not in self.dataset_kinds:
                expected = " or ".join(k.value for k in self.dataset_kinds)
                raise UsageError(f"{folder}: a {kind.value} dataset; {self.algorithm} trains on {expected} datasets")
        caches = []
        for first in (True, False):
            if (self.dist.local_rank == 0) == first:
                caches = [
                    tokenize_dataset(
                        folder, model_cfgs.model_name_or_path, data_cfgs.max_length, data_cfgs.truncation,
                        data_cfgs.token_cache_dir, assistant_turns=data_cfgs.assistant_turns,
                        trust_remote_code=model_cfgs.trust_remote_code,
                    )
                    for folder in dataset_dirs
                ]
            torch.distributed.barrier()
        parts = [TokenDataset(cache) for cache in caches]
        for folder, part in zip(dataset_dirs, parts):
            if len(part) == 0:
                raise UsageError(
                    f"{folder}: no row left after tokenising with max_length={data_cfgs.max_length} and "
                    f"truncation={data_cfgs.truncation} (see {part.path / 'manifest.json'} for the counts)"
                )
        rows = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        return rows, [int(n) for part in parts for n in part.lengths], parts[0].collator()

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def eval_step(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def summarize_eval(self, values: dict[str, torch.Tensor]) -> dict[str, float]:
        return {name: column.float().mean().item() for name, column in values.items()}

    def tokenizer_for_export(self) -> Any:
        """Saved beside the exported model, so the folder loads as a whole with from_pretrained."""
        from align_core.models.registry import load_tokenizer

        return load_tokenizer(self.config.model_cfgs.model_name_or_path, self.config.model_cfgs.trust_remote_code)

    # ----- the loop --------------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Train to the configured number of steps, resuming from the last checkpoint; returns the result."""
        from transformers import set_seed

        self.dist = setup_distributed()
        done = finished_result(self.config)
        if done is not None:
            return done
        resume_step = self.resumed_from_step = self._resume_step()
        set_seed(self.train_cfgs.seed)
        run = self._prepare(resume_step)
        last_metrics = self._run_steps(run)
        return self._finish(run, last_metrics)

    def _prepare(self, resume_step: int | None) -> _RunState:
        """Data, engine, checkpoints (restored when resuming) and metrics, in the order ranks must agree on."""
        dist = self.dist
        train_rows, train_lengths, self.collate = self.load_datasets(self.config.data_cfgs.train_datasets)
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
        self._build_engine(total_steps)
        checkpoints = CheckpointManager(self.output_dir / CHECKPOINTS_DIR_NAME, self.train_cfgs.keep_checkpoints, dist)
        checkpoints.remove_incomplete()
        step = micro_step = 0
        if resume_step is not None:
            client_state = checkpoints.load(self.engine, resume_step)
            step, micro_step = client_state["step"], client_state["micro_step"]
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
        self.engine.train()
        while run.step < run.total_steps:
            epoch, offset = divmod(run.micro_step, run.batches_per_epoch)
            run.sampler.set_epoch(epoch)
            loader = DataLoader(
                run.train_rows,
                batch_sampler=run.sampler.batches()[offset:],
                collate_fn=self.collate,
                num_workers=self.config.data_cfgs.num_workers,
            )
            accumulated: dict[str, Any] = {}
            step_started = time.perf_counter()
            for batch in loader:
                batch = _to_device(batch, self.engine.device)
                if not accumulated:
                    step_lr = self.engine.lr  # the rate this step's update uses
                loss, batch_metrics = self.compute_loss(batch)
                _accumulate(accumulated, {"loss": loss.detach(), **batch_metrics}, batch)
                stepped = self.engine.backward_step(loss)
                run.micro_step += 1
                if not stepped:
                    continue
                run.step += 1
                last_metrics = self._reduce(accumulated, micro_steps=cfgs.gradient_accumulation_steps)
                last_metrics["lr"] = step_lr
                last_metrics["epoch"] = run.micro_step / run.batches_per_epoch
                last_metrics["tokens_per_second"] = last_metrics["tokens"] / (time.perf_counter() - step_started)
                if run.eval_set is not None and cfgs.eval_interval and run.step % cfgs.eval_interval == 0:
                    last_metrics.update(self.evaluate(*run.eval_set))
                run.metrics.log(run.step, last_metrics)
                if run.step % cfgs.save_interval == 0 or run.step == run.total_steps:
                    state = {"step": run.step, "micro_step": run.micro_step, "epoch": epoch}
                    run.checkpoints.save(self.engine, run.step, state)
                    run.metrics.plot()
                if cfgs.debug_stop_after_steps == run.step:
                    os._exit(17)  # simulate a crash: no cleanup, no flush beyond what is on disk
                accumulated, step_started = {}, time.perf_counter()
                if run.step >= run.total_steps:
                    break
        return last_metrics

    def _finish(self, run: _RunState, last_metrics: dict[str, float]) -> dict[str, Any]:
        """Final evaluation, HF export, the loss curve, and ``train_result.json`` (written last: it marks done)."""
        if not last_metrics and self.dist.is_main:  # resumed from the final checkpoint: nothing ran now
            last_metrics = {k: v for k, v in (read_metrics(self.output_dir) or [{}])[-1].items() if k != "step"}
        final_eval = {k: v for k, v in last_metrics.items() if k.startswith("eval/")}
        if run.eval_set is not None and not final_eval:
            final_eval = self.evaluate(*run.eval_set)
        self.engine.export_pretrained(self.output_dir / MODEL_DIR_NAME, self.tokenizer_for_export(), self.dist.is_main)
        run.metrics.close()
        result = {
            "algorithm": self.algorithm,
            "steps": run.step,
            "model_dir": str(self.output_dir / MODEL_DIR_NAME),
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

    def _build_engine(self, total_steps: int) -> None:
        dtype = resolve_dtype(self.train_cfgs.precision)
        ds_config = deepspeed_config(self.train_cfgs, dtype)
        with zero3_model_loading(ds_config):
            model = self.load_model(self.config.model_cfgs.model_name_or_path)
        if self.train_cfgs.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.engine = Engine(model, self.train_cfgs, ds_config, total_steps)

    def _reduce(self, accumulated: dict[str, torch.Tensor], micro_steps: int) -> dict[str, float]:
        """Average metrics over micro-batches and ranks; counts (names ending in ``tokens``) are totals."""
        names = sorted(accumulated)
        values = torch.stack([accumulated[name].float().reshape(()) for name in names]).to(self.engine.device)
        torch.distributed.all_reduce(values)
        world = self.dist.world_size
        return {
            name: value / (1 if name.endswith("tokens") else world * micro_steps)
            for name, value in zip(names, values.tolist())
        }

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
        self.engine.train(False)
        indices, columns = [], {}
        loader = DataLoader(rows, batch_sampler=batches, collate_fn=self.eval_collate, num_workers=self.config.data_cfgs.num_workers)
        for batch_indices, batch in zip(batches, loader):
            batch = _to_device(batch, self.engine.device)
            for name, values in self.eval_step(batch).items():
                columns.setdefault(name, []).append(values.float().cpu())
            indices += batch_indices
        self.engine.train(True)
        local = (indices, {name: torch.cat(parts) for name, parts in columns.items()})
        gathered: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(gathered, local)
        seen, merged = set(), {name: [] for name in local[1]}
        for rank_indices, rank_columns in gathered:
            for position, row in enumerate(rank_indices):
                if row not in seen:
                    seen.add(row)
                    for name in merged:
                        merged[name].append(rank_columns[name][position])
        summary = self.summarize_eval({name: torch.stack(values) for name, values in merged.items()})
        return {f"eval/{name}": value for name, value in summary.items()}


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()}


def _accumulate(accumulated: dict[str, Any], metrics: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> None:
    """Add one micro-batch's metrics, and its count of non-pad tokens, to the step's running sums."""
    for name, value in metrics.items():
        accumulated[name] = accumulated.get(name, 0) + value.detach().float()
    mask = batch.get("attention_mask")
    tokens = mask.sum() if mask is not None else torch.tensor(batch["input_ids"].numel())
    accumulated["tokens"] = accumulated.get("tokens", 0) + tokens.float()
