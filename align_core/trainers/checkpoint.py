"""Atomic, resumable checkpoints under ``step-NNNNNNNN``: every trained model's DeepSpeed state (weights,
optimizer, scheduler) in ``<model name>/``, the data position, and each rank's RNG streams.

A checkpoint is written by all ranks into a hidden staging folder and renamed to its final name only
after every rank has finished, so a folder named ``step-*`` is always complete; a run killed while
saving leaves only a staging folder, which the next run removes. A staging folder is named after the
run that writes it (rank 0's pid and host, and a random part), and start-up removes only those
whose writer is dead. The last ``keep`` checkpoints stay. ``checkpoint_digests.json`` records the
sha256 of every file (the ranks hash a share each); a resume verifies them all before loading any,
so a damaged or swapped file stops the run with the file named.

Every file a resume reads loads with ``torch.load(weights_only=True)``: RNG files hold only tensors
and numbers, and DeepSpeed's model and optimizer states only tensors, containers and the few plain
DeepSpeed classes of ``engine.deepspeed_state_globals`` (``engine.safe_checkpoint_engine`` loads them),
so a crafted checkpoint cannot run code.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from align_core.errors import IntegrityError, UsageError
from align_core.io import atomic_write_json, owner_dead, owner_tag, require_sha256, sha256_file
from align_core.trainers.engine import DistInfo, Engine, refusal_reason

_FINAL = re.compile(r"^step-(\d{8})$")
_STAGING_PREFIX = ".staging-"
DIGESTS_NAME = "checkpoint_digests.json"  # sha256 of every file, verified before a resume reads any
_UNOWNED_STAGING = re.compile(r"^\.staging-(replaced-)?step-\d{8}$")  # written before staging names had an owner


def checkpoint_tag(step: int) -> str:
    return f"step-{step:08d}"


def complete_checkpoint_steps(root: Path) -> list[int]:
    """Steps of the complete checkpoints under ``root``, oldest first (staging folders never count)."""
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir() if (m := _FINAL.match(p.name)) and p.is_dir())


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and accelerator generator states of this rank, as tensors and numbers only,
    so the file loads with ``torch.load(weights_only=True)``: nothing in a checkpoint can run code."""
    python_version, python_keys, python_gauss = random.getstate()
    numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    state = {
        "python": (python_version, torch.tensor(python_keys, dtype=torch.int64), python_gauss),
        "numpy": (numpy_name, torch.from_numpy(numpy_keys.astype(np.int64)), numpy_pos, numpy_has_gauss, numpy_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python_version, python_keys, python_gauss = state["python"]
    random.setstate((python_version, tuple(python_keys.tolist()), python_gauss))
    numpy_name, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = state["numpy"]
    np.random.set_state((numpy_name, numpy_keys.numpy().astype(np.uint32), numpy_pos, numpy_has_gauss, numpy_gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_rng_file(path: Path) -> dict[str, Any]:
    """An RNG file, refused (not executed) when it holds anything but tensors and plain values."""
    try:
        return torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:  # refused global, or not a torch file
        raise UsageError(f"{path}: not a plain RNG state file, refused ({refusal_reason(error)})") from None


class CheckpointManager:
    """Saves and finds checkpoints in ``root`` (``<output_dir>/checkpoints``)."""

    def __init__(self, root: Path, keep: int, dist: DistInfo):
        """Collective: every rank constructs it, and all take rank 0's owner tag for staging names."""
        self.root = Path(root)
        self.keep = keep
        self.dist = dist
        owner = [owner_tag()]
        torch.distributed.broadcast_object_list(owner, src=0)
        self.owner = owner[0]

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints, oldest first."""
        return complete_checkpoint_steps(self.root)

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def remove_incomplete(self) -> None:
        """Drop staging folders of saves that never finished: those whose writer is dead (and unowned
        ones of older versions). A live writer's are kept: it may be another run saving right now."""
        if self.dist.local_rank == 0 and self.root.is_dir():
            for path in self.root.glob(f"{_STAGING_PREFIX}*"):
                if _UNOWNED_STAGING.match(path.name) or owner_dead(path.name):
                    shutil.rmtree(path, ignore_errors=True)
        torch.distributed.barrier()

    def save(self, engines: dict[str, Engine], step: int, client_state: dict[str, Any]) -> Path:
        """Save on every rank; returns the final folder once it is complete on all of them."""
        staging_tag = f"{_STAGING_PREFIX}{checkpoint_tag(step)}-{self.owner}"
        replaced = self.root / f"{_STAGING_PREFIX}replaced-{checkpoint_tag(step)}-{self.owner}"
        for name, engine in engines.items():
            engine.save_checkpoint(self.root / staging_tag, name, client_state)
        # RNG streams differ per rank (dropout, sampling), so each rank keeps its own.
        torch.save(rng_state(), self.root / staging_tag / f"rng_state_rank{self.dist.rank}.pt")
        torch.distributed.barrier()
        self._record_digests(self.root / staging_tag)
        final = self.root / checkpoint_tag(step)
        # One rank per node renames: on a shared filesystem the first wins and the others find nothing.
        if self.dist.local_rank == 0 and (self.root / staging_tag).exists():
            try:
                if final.exists():  # the same step saved again: move the old one aside, never leave a gap
                    final.rename(replaced)
                (self.root / staging_tag).rename(final)
                shutil.rmtree(replaced, ignore_errors=True)
            except FileNotFoundError:
                pass
            for old in self.steps()[: -self.keep]:
                shutil.rmtree(self.root / checkpoint_tag(old), ignore_errors=True)
        torch.distributed.barrier()
        return final

    def _record_digests(self, folder: Path) -> None:
        """Write ``DIGESTS_NAME``: the sha256 of every file of the checkpoint. The ranks hash a share
        each (a checkpoint can be large), and each node's first rank writes the merged table."""
        files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
        mine = {name: sha256_file(folder / name) for name in files[self.dist.rank :: self.dist.world_size]}
        shares: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(shares, mine)
        if self.dist.local_rank == 0:
            atomic_write_json(folder / DIGESTS_NAME, {"files": {k: v for share in shares for k, v in sorted(share.items())}})
        torch.distributed.barrier()

    def _verify_digests(self, folder: Path) -> None:
        """Every rank checks a share of the files before any is loaded; a mismatch stops all ranks, naming the file."""
        problem = None
        try:
            recorded = json.loads((folder / DIGESTS_NAME).read_text())["files"]
        except (OSError, ValueError, KeyError):
            recorded, problem = {}, f"{folder / DIGESTS_NAME}: missing or unreadable; the checkpoint cannot be verified"
        names = sorted(recorded)
        for name in names[self.dist.rank :: self.dist.world_size]:
            if problem is not None:
                break
            try:
                require_sha256(folder / name, recorded[name], "the checkpoint is damaged; delete it to resume from an earlier one")
            except IntegrityError as error:
                problem = str(error)
        problems: list[Any] = [None] * self.dist.world_size
        torch.distributed.all_gather_object(problems, problem)
        found = next((problem for problem in problems if problem), None)
        if found:
            raise IntegrityError(found)

    def load(self, engines: dict[str, Engine], step: int) -> dict[str, Any]:
        """Verify every file's digest, then restore every model, optimiser and scheduler and this rank's RNG;
        returns the saved client state."""
        folder = self.root / checkpoint_tag(step)
        self._verify_digests(folder)
        missing = [name for name in engines if not (folder / name).is_dir()]
        if missing:
            raise UsageError(f"{folder}: no state for model {', '.join(missing)}; saved by another algorithm or version")
        client_state = {}
        for name, engine in engines.items():
            client_state = engine.load_checkpoint(folder, name)
        rng_file = folder / f"rng_state_rank{self.dist.rank}.pt"
        if not rng_file.is_file():
            raise RuntimeError(f"{rng_file}: missing; checkpoint {folder.name} was saved by a different number of ranks")
        set_rng_state(load_rng_file(rng_file))
        return client_state
