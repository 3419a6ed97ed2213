"""The one DeepSpeed engine every trainer shares: distributed setup, optimiser, schedule, step, export.

Nothing here knows the algorithm. World size and device come from the launcher and DeepSpeed's
accelerator (gloo on CPU, NCCL on GPU); a single process started without a launcher gets the
environment of a one-rank world, so the same code runs in-process, under ``deepspeed`` or ``torchrun``,
on one node or many.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pickle
import shutil
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from align_core.config import TrainCfgs
from align_core.errors import UsageError
from align_core.io import publish_dir, staging_dir
from align_core.models.lora import is_lora_model


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def setup_distributed() -> DistInfo:
    """Join the process group the launcher described, or form a one-rank world when started alone."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if "RANK" not in os.environ:  # not started by a launcher
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    backend = get_accelerator().communication_backend_name()
    load_comm_op()
    if not torch.distributed.is_initialized() and int(os.environ["WORLD_SIZE"]) == 1:
        # one rank needs no rendezvous: an in-process store, not a TCPStore (whose start-up asks DNS
        # for the name of 127.0.0.1), so a single-rank run sends nothing off the machine
        torch.distributed.init_process_group(backend, store=torch.distributed.HashStore(), rank=0, world_size=1)
    deepspeed.init_distributed(dist_backend=backend)  # adopts an existing group
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    get_accelerator().set_device(local_rank)
    return DistInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(), local_rank)


def load_comm_op() -> None:
    """Load the op DeepSpeed's comm backend JIT-builds at every process-group start (the CPU
    accelerator's shared-memory all-reduce), so that a run killed while loading it cannot hang the
    next ones.

    torch builds, or re-checks, a JIT extension while holding a "baton": a plain ``lock`` file in the
    build folder that only the holder deletes. A process killed holding it (SIGKILL, the OOM killer)
    leaves it behind, and every later load waits for it forever. Here the load runs under a kernel
    lock (``flock``, dropped when its holder dies, however it dies), so a baton found while holding
    it is a dead process's and is removed. DeepSpeed's own call then finds the op already loaded.
    """
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import _get_build_directory

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return  # DeepSpeed's backend skips it too (an accelerator without it, or no compiler)
    build_dir = Path(_get_build_directory(builder.name, verbose=False))
    with open(build_dir.parent / f".{builder.name}.load-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # waits for a live loader (another rank), never for a dead one
        (build_dir / "lock").unlink(missing_ok=True)
        builder.load()


def resolve_dtype(precision: str) -> torch.dtype:
    """Training dtype: ``auto`` is bf16 on an accelerator that supports it, fp32 on CPU."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    if precision == "auto":
        on_cpu = accelerator.device_name() == "cpu"
        return torch.bfloat16 if not on_cpu and accelerator.is_bf16_supported() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def deepspeed_config(train_cfgs: TrainCfgs, dtype: torch.dtype) -> dict[str, Any]:
    """The DeepSpeed JSON config for these settings; the global batch follows from the world size."""
    zero: dict[str, Any] = {"stage": train_cfgs.zero_stage}
    if train_cfgs.zero_stage == 3:
        # export needs whole weights; gathering at save time is what makes save_pretrained correct
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": train_cfgs.per_device_train_batch_size,
        "gradient_accumulation_steps": train_cfgs.gradient_accumulation_steps,
        "gradient_clipping": train_cfgs.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": dtype == torch.bfloat16},
        "fp16": {"enabled": dtype == torch.float16},
        "zero_allow_untested_optimizer": True,  # torch AdamW: DeepSpeed's own Adam JIT-compiles for ~45 s on CPU
        "steps_per_print": 1 << 30,  # we log our own metrics
        "wall_clock_breakdown": False,
    }


@contextlib.contextmanager
def zero3_model_loading(ds_config: dict[str, Any]) -> Iterator[None]:
    """At ZeRO-3, let ``from_pretrained`` partition weights as it loads (no full copy per rank)."""
    if ds_config["zero_optimization"]["stage"] != 3:
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    # transformers holds this object by weak reference: it must stay alive while models load.
    keep_alive = HfDeepSpeedConfig(ds_config)
    yield
    del keep_alive


def deepspeed_state_globals() -> list[type]:
    """The classes besides tensors and containers that DeepSpeed's model and optimizer state files hold
    (measured on 0.19.8, ZeRO 0-3, fp32/bf16/fp16). Plain data: unpickling one sets attributes, runs no code."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaleProfile, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, LossScaleProfile, ZeroStageEnum, fragment_address]


def safe_checkpoint_engine(ds_config: Any) -> Any:
    """DeepSpeed's torch checkpoint engine, but loading every state file with ``weights_only=True``.

    DeepSpeed itself loads with ``weights_only=False`` (a pickle may run any code), and has no setting
    for it: a crafted ``*_model_states.pt`` or ``*_optim_states.pt`` is refused here instead.
    """
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            try:
                with torch.serialization.safe_globals(deepspeed_state_globals()):
                    return torch.load(path, map_location=map_location, weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError) as error:  # refused global, or not a torch file
                raise UsageError(f"{path}: not a plain DeepSpeed state file, refused ({refusal_reason(error)})") from None

    return SafeCheckpointEngine(ds_config)


def refusal_reason(error: Exception) -> str:
    """The line of a failed ``torch.load`` that says why: the refused global, else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    return next((line for line in lines if "GLOBAL" in line), lines[0])


def _parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only: biases and norm scales (1-D) are not regularised."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


class Engine:
    """A trained model wrapped by DeepSpeed with torch AdamW and a transformers LR schedule.

    An optimizer step is any number of ``backward(loss, last=...)`` calls (the micro-batches of the
    step), the last one marked, then ``step()``. Losses are shares of the step's loss (each already
    divided by the step's total count over all micro-batches and ranks), so their gradients are
    summed, not averaged: ``backward`` undoes DeepSpeed's division by the accumulation steps and by
    the data-parallel world size.
    """

    def __init__(
        self, model: torch.nn.Module, train_cfgs: TrainCfgs, ds_config: dict[str, Any], total_updates: int,
        learning_rate: float | None = None,
    ):
        import deepspeed
        from transformers import get_scheduler

        self.train_cfgs = train_cfgs
        optimizer = torch.optim.AdamW(
            _parameter_groups(model, train_cfgs.weight_decay),
            lr=train_cfgs.learning_rate if learning_rate is None else learning_rate,  # a critic may have its own
            betas=train_cfgs.adam_betas,
            eps=train_cfgs.adam_epsilon,
        )

        def scheduler_for(wrapped_optimizer: torch.optim.Optimizer) -> Any:
            # Built on DeepSpeed's wrapper, not our AdamW: ZeRO regroups parameters (at stage 3 a rank
            # may hold none of a group), and a schedule must step exactly the groups that exist.
            return get_scheduler(
                train_cfgs.lr_scheduler_type,
                wrapped_optimizer,
                num_warmup_steps=round(train_cfgs.lr_warmup_ratio * total_updates),
                num_training_steps=total_updates,
            )

        self.ds_engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler_for, config=ds_config
        )
        self.ds_engine.checkpoint_engine = safe_checkpoint_engine(self.ds_engine._config)
        self.zero_stage = train_cfgs.zero_stage
        # LoRA: checkpoints hold the adapters (and their optimizer state) only; the frozen base is
        # the model folder the run starts from, loaded again on resume
        self.adapters_only = is_lora_model(model)

    @property
    def module(self) -> torch.nn.Module:
        """The unwrapped model (partitioned at ZeRO-3: gather before reading weights)."""
        return self.ds_engine.module

    @property
    def device(self) -> torch.device:
        return self.ds_engine.device

    @property
    def global_step(self) -> int:
        """Optimizer updates so far."""
        return self.ds_engine.global_steps

    @property
    def lr(self) -> float:
        return self.ds_engine.get_lr()[0]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ds_engine(*args, **kwargs)

    def train(self, mode: bool = True) -> None:
        self.ds_engine.train(mode)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Add one micro-batch's share of the step loss to the gradients; ``last``: the step's final one,
        where ZeRO reduces the gradients across ranks."""
        self.ds_engine.set_gradient_accumulation_boundary(last)
        # gradients are averaged over the data-parallel ranks: scale up so the ranks' shares add up
        self.ds_engine.backward(loss * self.ds_engine.dp_world_size, scale_wrt_gas=False)

    def step(self) -> None:
        """Apply the accumulated gradients (clipped), advance the LR schedule, zero the gradients."""
        self.ds_engine.set_gradient_accumulation_boundary(True)
        self.ds_engine.step()

    def save_checkpoint(self, save_dir: Path, tag: str, client_state: dict[str, Any]) -> None:
        """Every rank writes its shard of model, optimiser and scheduler state into ``save_dir/tag``."""
        self.ds_engine.save_checkpoint(str(save_dir), tag=tag, client_state=client_state, save_latest=False,
                                       exclude_frozen_parameters=self.adapters_only)

    def load_checkpoint(self, save_dir: Path, tag: str) -> dict[str, Any]:
        load_path, client_state = self.ds_engine.load_checkpoint(str(save_dir), tag=tag,
                                                                 load_module_strict=not self.adapters_only)
        if load_path is None:
            raise RuntimeError(f"{save_dir / tag}: DeepSpeed could not load this checkpoint")
        return client_state

    def export_pretrained(self, out_dir: Path, tokenizer: Any, is_main: bool) -> None:
        """Save model and tokenizer in Hugging Face format, atomically (staged, then renamed).

        All ranks must call this: at ZeRO-3 the weights are gathered collectively first, since
        ``save_pretrained`` of a partitioned module writes empty tensors.
        """
        import deepspeed

        gather = (
            deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None)
            if self.zero_stage == 3
            else contextlib.nullcontext()
        )
        with gather:
            if is_main:
                out_dir = Path(out_dir)
                staging = staging_dir(out_dir)
                self.module.save_pretrained(staging, safe_serialization=True)
                if tokenizer is not None:
                    tokenizer.save_pretrained(staging)
                previous = out_dir.with_name(f".replaced-{out_dir.name}-{os.getpid()}")
                if out_dir.exists():  # a re-export replaces the old folder whole, never file by file
                    out_dir.rename(previous)
                publish_dir(staging, out_dir)
                shutil.rmtree(previous, ignore_errors=True)
        torch.distributed.barrier()
