"""The shared DeepSpeed engine on a tiny Llama: every ZeRO stage trains, exports, checkpoints, resumes.

These run DeepSpeed for real in the test process (a one-rank gloo world); data is synthetic token
batches, since the engine knows nothing of datasets.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align_core.config import TrainCfgs
from align_core.losses import sft_loss
from align_core.trainers.checkpoint import CheckpointManager, checkpoint_tag
from align_core.trainers.engine import Engine, deepspeed_config, resolve_dtype, setup_distributed, zero3_model_loading
from align_core.trainers.metrics import LOSS_CURVE_NAME, METRICS_NAME, MetricsLogger, read_metrics

VOCAB = 64


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def token_batches(count: int, batch_size: int = 2, length: int = 12) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (batch_size, length), generator=generator) for _ in range(count)]


def make_engine(stage: int, total_steps: int = 20, accumulation: int = 1) -> Engine:
    setup_distributed()
    train_cfgs = TrainCfgs(
        zero_stage=stage, learning_rate=3e-3, lr_scheduler_type="constant",
        per_device_train_batch_size=2, gradient_accumulation_steps=accumulation,
    )
    ds_config = deepspeed_config(train_cfgs, resolve_dtype(train_cfgs.precision))
    with zero3_model_loading(ds_config):
        model = tiny_llama()
    return Engine(model, train_cfgs, ds_config, total_steps)


def mean_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    nll_sum, n_tokens = sft_loss(logits, labels)
    return nll_sum / n_tokens


def train_micro_batches(engine: Engine, batches: list[torch.Tensor], accumulation: int = 1) -> list[float]:
    """Token-mean SFT losses of each micro-batch; the optimizer steps after every ``accumulation`` of them."""
    losses = []
    for position, input_ids in enumerate(batches, 1):
        nll_sum, n_tokens = sft_loss(engine(input_ids=input_ids.to(engine.device)).logits, input_ids.to(engine.device))
        last = position % accumulation == 0
        engine.backward(nll_sum / n_tokens / accumulation, last=last)
        if last:
            engine.step()
        losses.append((nll_sum / n_tokens).item())
    return losses


def test_deepspeed_config_follows_train_settings_and_cpu_uses_fp32():
    train_cfgs = TrainCfgs(zero_stage=3, per_device_train_batch_size=3, gradient_accumulation_steps=4, max_grad_norm=0.5)
    config = deepspeed_config(train_cfgs, resolve_dtype("auto"))
    assert config["train_micro_batch_size_per_gpu"] == 3
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"] == {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}
    assert "train_batch_size" not in config  # DeepSpeed derives it from the launcher's world size
    assert resolve_dtype("auto") == torch.float32  # these tests run on CPU
    assert config["bf16"] == {"enabled": False}


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_each_zero_stage_overfits_a_batch_and_exports_loadable_weights(stage, tmp_path):
    from transformers import AutoModelForCausalLM

    engine = make_engine(stage)
    batch = token_batches(1)[0]
    losses = train_micro_batches(engine, [batch] * 12)
    assert engine.global_step == 12
    assert losses[-1] < losses[0] - 0.5, losses

    engine.export_pretrained(tmp_path / "model", tokenizer=None, is_main=True)
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    # the exported weights are the trained ones (at ZeRO-3 a plain save_pretrained would write empty tensors)
    exported_loss = mean_nll(exported(input_ids=batch).logits, batch)
    engine.train(False)
    with torch.no_grad():
        engine_loss = mean_nll(engine(input_ids=batch).logits, batch)
    assert exported_loss.item() == pytest.approx(engine_loss.item(), abs=1e-5)
    assert exported_loss.item() < losses[0] - 0.5


@pytest.mark.slow
def test_gradient_accumulation_steps_the_optimizer_every_n_micro_batches():
    engine = make_engine(stage=0, accumulation=3)
    train_micro_batches(engine, token_batches(7), accumulation=3)
    assert engine.global_step == 2


@pytest.mark.slow
@pytest.mark.parametrize("stage", [0, 3])
def test_checkpoint_restores_model_optimizer_schedule_and_rng(stage, tmp_path):
    batches = token_batches(8)
    dist = setup_distributed()
    manager = CheckpointManager(tmp_path / "checkpoints", keep=2, dist=dist)

    engine = make_engine(stage)
    train_micro_batches(engine, batches[:4])
    manager.save({"policy": engine}, engine.global_step, {"step": engine.global_step, "note": "kept"})
    torch.manual_seed(1234)  # the RNG state that must come back
    expected_draw = torch.rand(3)
    torch.manual_seed(1234)
    manager.save({"policy": engine}, engine.global_step, {"step": engine.global_step, "note": "kept"})  # same step again
    uninterrupted = train_micro_batches(engine, batches[4:])

    resumed = make_engine(stage)
    torch.manual_seed(999)
    client_state = manager.load({"policy": resumed}, 4)
    assert client_state["note"] == "kept"
    assert torch.equal(torch.rand(3), expected_draw)
    assert resumed.global_step == 4
    assert train_micro_batches(resumed, batches[4:]) == uninterrupted


@pytest.mark.slow
def test_checkpoints_are_published_whole_and_only_the_last_n_kept(tmp_path):
    dist = setup_distributed()
    manager = CheckpointManager(tmp_path, keep=2, dist=dist)
    engine = make_engine(stage=1)
    for _ in range(3):
        train_micro_batches(engine, token_batches(1))
        manager.save({"policy": engine}, engine.global_step, {"step": engine.global_step})
    assert manager.steps() == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [checkpoint_tag(2), checkpoint_tag(3)]
    # a save killed midway leaves a staging folder: it is never taken for a checkpoint, and is removed
    (tmp_path / ".staging-step-00000004").mkdir()
    assert manager.latest_step() == 3
    manager.remove_incomplete()
    assert not (tmp_path / ".staging-step-00000004").exists()


def test_metrics_logger_truncates_steps_past_the_resumed_checkpoint(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=True, start_step=0, total_steps=5, tensorboard=True, progress_bar=False)
    for step in range(1, 6):
        logger.log(step, {"loss": 1.0 / step, "lr": 0.1, "tokens": 10.0})
    logger._file.write('{"step": 6, "lo')  # a killed run's torn last line
    logger._file.flush()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]

    resumed = MetricsLogger(tmp_path, enabled=True, start_step=3, total_steps=5, tensorboard=False, progress_bar=False)
    resumed.log(4, {"loss": 0.2, "lr": 0.1, "tokens": 10.0, "nan_metric": float("nan")})
    resumed.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["loss"] == 0.2 and records[-1]["nan_metric"] is None
    assert json.loads((tmp_path / METRICS_NAME).read_text().splitlines()[-1])["step"] == 4
    assert (tmp_path / LOSS_CURVE_NAME).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(Path(tmp_path, "tensorboard").iterdir())


def test_rng_files_restore_every_stream_and_load_without_unpickling_code(tmp_path):
    import random

    import numpy as np

    from align_core.trainers.checkpoint import load_rng_file, rng_state, set_rng_state

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(load_rng_file(tmp_path / "rng.pt"))  # weights_only: tensors and plain values only
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_a_crafted_rng_file_is_refused_and_its_code_never_runs(tmp_path):
    import os

    from align_core.errors import UsageError
    from align_core.trainers.checkpoint import load_rng_file

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    torch.save({"python": Exploit()}, tmp_path / "rng_state_rank0.pt")
    with pytest.raises(UsageError, match="not a plain RNG state file, refused"):
        load_rng_file(tmp_path / "rng_state_rank0.pt")
    assert not (tmp_path / "ran").exists()
