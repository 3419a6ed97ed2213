"""No checkpoint file can run code on resume: DeepSpeed's model and optimizer state files load with
``weights_only=True`` like the RNG files, so a planted pickle is refused with an error naming the file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_engine import make_engine, token_batches, train_micro_batches  # tests/ is on the path, as for train_data

from align_core.errors import UsageError
from align_core.io import sha256_file
from align_core.trainers.checkpoint import DIGESTS_NAME, CheckpointManager, checkpoint_tag
from align_core.trainers.engine import setup_distributed


class Payload:
    """What an attacker plants: unpickling it calls ``os.mkdir(marker)`` (any function would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def saved_checkpoint(root: Path, stage: int) -> tuple[CheckpointManager, int]:
    manager = CheckpointManager(root, keep=2, dist=setup_distributed())
    engine = make_engine(stage)
    train_micro_batches(engine, token_batches(2))
    manager.save({"policy": engine}, engine.global_step, {"step": engine.global_step})
    return manager, engine.global_step


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, state_file",
    [(0, "mp_rank_00_model_states.pt"), (1, "zero_pp_rank_0_mp_rank_00_optim_states.pt")],
)
def test_a_pickle_planted_in_a_deepspeed_state_file_is_refused_on_resume(tmp_path, stage, state_file):
    manager, step = saved_checkpoint(tmp_path / "checkpoints", stage)
    path = tmp_path / "checkpoints" / checkpoint_tag(step) / "policy" / state_file
    state = torch.load(path, weights_only=False)  # our own file, just written: trusted
    state["planted"] = Payload(tmp_path / "pwned")
    torch.save(state, path)
    # the attacker also rewrites the digests, so the load itself is what must refuse the file
    digests = path.parents[1] / DIGESTS_NAME
    recorded = json.loads(digests.read_text())
    recorded["files"][f"policy/{state_file}"] = sha256_file(path)
    digests.write_text(json.dumps(recorded))

    with pytest.raises(UsageError) as refused:
        manager.load({"policy": make_engine(stage)}, step)
    assert str(refused.value).startswith(f"{path}: not a plain DeepSpeed state file, refused (")
    assert "posix.mkdir" in str(refused.value)  # the global it refused
    assert not (tmp_path / "pwned").exists()  # and the code never ran


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_every_file_a_resume_reads_is_loaded_with_weights_only(tmp_path, stage, monkeypatch):
    manager, step = saved_checkpoint(tmp_path / "checkpoints", stage)
    resumed = make_engine(stage)
    loads: list[tuple[str, object]] = []
    real_load = torch.load

    def recording_load(file, *args, **kwargs):
        loads.append((Path(file).name, kwargs.get("weights_only")))
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    assert manager.load({"policy": resumed}, step)["step"] == step
    names = {name for name, _ in loads}
    assert "rng_state_rank0.pt" in names and any(name.endswith("model_states.pt") for name in names)
    assert stage == 0 or any(name.endswith("optim_states.pt") for name in names)
    assert [name for name, weights_only in loads if weights_only is not True] == []


@pytest.mark.slow
def test_a_damaged_checkpoint_file_is_found_by_its_digest_before_anything_loads(tmp_path):
    from align_core.errors import IntegrityError

    manager, step = saved_checkpoint(tmp_path / "checkpoints", 1)
    path = tmp_path / "checkpoints" / checkpoint_tag(step) / "policy" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    resumed = make_engine(1)
    with pytest.raises(IntegrityError, match=r"optim_states.pt: sha256 mismatch .* the checkpoint is damaged"):
        manager.load({"policy": resumed}, step)
    assert resumed.global_step == 0  # nothing was loaded
