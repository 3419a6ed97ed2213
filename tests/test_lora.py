"""LoRA on the shared loop: only the adapters train (and a score model's head), checkpoints hold only
them and resume exactly, the adapter folder and the merged export give the same logits, the reference
is the base model with the adapters off, and every ZeRO stage learns the same."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_grpo import prompts, rl_config  # noqa: F401
from train_data import launch, preference_data, read_jsonl, sft_data, tiny_model, write_config  # noqa: F401

from align_core.config import LoraCfgs, build_config
from align_core.errors import UsageError
from align_core.launch import run as run_in_process
from align_core.models.lora import apply_lora, trainable_parameters
from align_core.models.registry import load_causal_lm, load_score_model

LORA = {"r": 4, "alpha": 8.0}


def lora_config(tmp_path: Path, model: Path, data: Path, out: str, merge: bool = False, **train_cfgs) -> Path:
    settings = {"model_cfgs": {"lora": LORA}, "logger_cfgs": {"merge_lora": merge},
                "train_cfgs": {"learning_rate": 3e-2, **train_cfgs}}
    return write_config(tmp_path / f"{out}.yaml", model, [data], tmp_path / out, settings)


def test_only_the_adapters_train_and_a_score_models_head_in_full(tiny_model):
    causal = apply_lora(load_causal_lm(tiny_model), LoraCfgs(**LORA))
    names = [name for name, parameter in causal.named_parameters() if parameter.requires_grad]
    assert names and all("lora_A" in name or "lora_B" in name for name in names)
    # all-linear on 2 Llama layers: q, k, v, o (64 -> 64) and gate, up (64 -> 128) and down (128 -> 64);
    # each adapted layer adds r * (in + out) weights
    config = causal.get_base_model().config
    hidden, inner, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_layer = 4 * 4 * (hidden + hidden) + 3 * 4 * (hidden + inner)
    assert trainable_parameters(causal) == layers * per_layer
    score = apply_lora(load_score_model(tiny_model), LoraCfgs(**LORA))
    head = [name for name, parameter in score.named_parameters() if parameter.requires_grad and "score_head" in name]
    assert head and all("modules_to_save" in name for name in head)  # trained in full, not adapted
    assert trainable_parameters(score) == layers * per_layer + hidden + 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only refusal")
def test_qlora_needs_lora_and_on_a_machine_without_cuda_is_a_one_line_refusal(tmp_path, tiny_model, sft_data):
    with pytest.raises(UsageError, match="quantization=4bit freezes the base in quantized form: it trains only with model_cfgs.lora"):
        build_config({"data_cfgs": {"train_datasets": ["d"]}, "logger_cfgs": {"output_dir": "o"},
                      "model_cfgs": {"model_name_or_path": "m", "quantization": "4bit"}})
    config = lora_config(tmp_path, tiny_model, sft_data, "qlora", max_steps=1)
    config.write_text(config.read_text().replace("model_cfgs:\n", "model_cfgs:\n  quantization: 4bit\n"))
    with pytest.raises(UsageError, match="QLoRA loads the base with bitsandbytes, which needs a CUDA device; this machine has none"):
        run_in_process(config)
    assert not (tmp_path / "qlora" / "checkpoints").exists()


def test_merge_lora_without_lora_is_a_config_error():
    with pytest.raises(UsageError, match="logger_cfgs.merge_lora needs model_cfgs.lora"):
        build_config({"data_cfgs": {"train_datasets": ["d"]}, "model_cfgs": {"model_name_or_path": "m"},
                      "logger_cfgs": {"output_dir": "o", "merge_lora": True}})


@pytest.mark.slow
def test_a_lora_sft_run_learns_resumes_exactly_and_its_merged_export_matches_the_adapters(tmp_path, tiny_model, sft_data):
    settings = {"max_steps": 6, "save_interval": 2}
    run_in_process(lora_config(tmp_path, tiny_model, sft_data, "whole", merge=True, **settings))  # in this process: only the crash needs a process of its own
    config = lora_config(tmp_path, tiny_model, sft_data, "resumed", merge=True, **settings)
    assert launch(config, "train_cfgs.debug_stop_after_steps=3").returncode == 17
    run_in_process(config)
    expected, got = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [(r["step"], r["loss"], r["lr"]) for r in got] == [(r["step"], r["loss"], r["lr"]) for r in expected]
    # a random tiny base learns slowly through adapters alone (its embeddings and head stay): 5.96 -> 5.74
    assert expected[-1]["loss"] < expected[0]["loss"] - 0.15, expected
    adapters = load_file(str(tmp_path / "whole" / "model" / "adapter_model.safetensors"))
    assert adapters.keys() == load_file(str(tmp_path / "resumed" / "model" / "adapter_model.safetensors")).keys()
    assert all(torch.equal(tensor, load_file(str(tmp_path / "resumed" / "model" / "adapter_model.safetensors"))[key])
               for key, tensor in adapters.items())
    assert all("lora_" in key for key in adapters)  # the export holds the adapters only
    checkpoint = next((tmp_path / "whole" / "checkpoints").glob("step-*/policy/*model_states.pt"))
    assert checkpoint.stat().st_size < (tiny_model / "model.safetensors").stat().st_size / 2  # no frozen base inside

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    inputs = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        peft_logits = PeftModel.from_pretrained(load_causal_lm(tiny_model), str(tmp_path / "whole" / "model"))(inputs).logits
        merged_logits = AutoModelForCausalLM.from_pretrained(tmp_path / "whole" / "model-merged")(inputs).logits
        loaded_logits = load_causal_lm(tmp_path / "whole" / "model")(inputs).logits  # a later job's view
        base_logits = load_causal_lm(tiny_model)(inputs).logits
    assert torch.allclose(merged_logits, peft_logits, atol=1e-5) and torch.allclose(loaded_logits, peft_logits, atol=1e-5)
    assert not torch.allclose(base_logits, peft_logits, atol=1e-3)


@pytest.mark.slow
def test_lora_dpo_uses_the_base_model_with_adapters_off_as_its_reference(tmp_path, tiny_model, preference_data):
    """A live reference without a second model equals the cached reference column of the base model."""
    train, _ = preference_data
    runs = {}
    for reference in ("cached", "live"):
        config = lora_config(tmp_path, tiny_model, train, reference, algorithm="dpo", max_steps=4, reference=reference,
                             beta=0.1, learning_rate=5e-3)
        run_in_process(config)
        runs[reference] = read_jsonl(tmp_path / reference / "metrics.jsonl")
    first = runs["live"][0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # B = 0 at the start: policy == reference
    assert [r["loss"] for r in runs["live"]] == pytest.approx([r["loss"] for r in runs["cached"]], abs=1e-5)
    assert runs["live"][-1]["loss"] < first["loss"] - 0.05


@pytest.mark.slow
def test_lora_learns_the_same_at_every_zero_stage(tmp_path, tiny_model, sft_data):
    losses = {}
    for stage in (0, 2, 3):
        run_in_process(lora_config(tmp_path, tiny_model, sft_data, f"zero{stage}", max_steps=3, zero_stage=stage))
        losses[stage] = [record["loss"] for record in read_jsonl(tmp_path / f"zero{stage}" / "metrics.jsonl")]
    assert losses[2] == pytest.approx(losses[0], rel=1e-5) and losses[3] == pytest.approx(losses[0], rel=1e-5)
    # a later full fine-tune from the adapter folder (the base merged in on load), at ZeRO-0 and ZeRO-3
    for stage in (0, 3):
        config = write_config(tmp_path / f"next{stage}.yaml", tmp_path / "zero0" / "model", [sft_data], tmp_path / f"next{stage}",
                              {"train_cfgs": {"max_steps": 2, "zero_stage": stage}})
        run_in_process(config)
        losses[f"next{stage}"] = [record["loss"] for record in read_jsonl(tmp_path / f"next{stage}" / "metrics.jsonl")]
    assert losses["next3"] == pytest.approx(losses["next0"], rel=1e-5)
    assert losses["next0"][0] == pytest.approx(losses[0][-1], abs=0.3)  # it starts where the adapters left off


@pytest.mark.slow
def test_lora_reward_model_and_grpo_from_it(tmp_path, tiny_model, preference_data, prompts):
    """An RM trains adapters plus its head; its adapter folder scores GRPO's rollouts, whose reference is the
    policy with its adapters off (no reference model is loaded)."""
    train, _ = preference_data
    rm = run_in_process(lora_config(tmp_path, tiny_model, train, "rm", algorithm="rm", max_steps=3, merge=True))
    head = load_file(str(Path(rm["model_dir"]) / "adapter_model.safetensors"))
    assert any("score_head" in key for key in head)
    inputs = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = load_score_model(rm["merged_model_dirs"]["policy"])(inputs).end_scores
        adapters = load_score_model(rm["model_dir"])(inputs).end_scores
    assert torch.allclose(merged, adapters, atol=1e-5)
    config = rl_config(tmp_path, tiny_model, prompts, "grpo", "grpo", max_steps=2,
                       rewards=[{"name": "reward_model", "kwargs": {"path": rm["model_dir"]}}])
    text = config.read_text().replace("model_cfgs:\n", "model_cfgs:\n  lora: {r: 4}\n")
    config.write_text(text)
    result = run_in_process(config)
    records = read_jsonl(tmp_path / "grpo" / "metrics.jsonl")
    assert records[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at B = 0: policy == reference
    assert all(math.isfinite(r["reward/reward_model"]) for r in records)
    assert (Path(result["model_dir"]) / "adapter_config.json").is_file()


@pytest.mark.slow
def test_lora_ppo_adapts_the_policy_and_the_critic(tmp_path, tiny_model, prompts):
    from test_ppo import ppo_config

    config = ppo_config(tmp_path, tiny_model, prompts, "ppo", max_steps=2, per_device_train_batch_size=4)
    config.write_text(config.read_text().replace("model_cfgs:\n", "model_cfgs:\n  lora: {r: 4}\n"))
    result = run_in_process(config)
    critic = load_file(str(Path(result["model_dirs"]["critic"]) / "adapter_model.safetensors"))
    assert any("score_head" in key for key in critic) and any("lora_A" in key for key in critic)
    assert read_jsonl(tmp_path / "ppo" / "metrics.jsonl")[0]["kl"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.slow
def test_a_killed_lora_dpo_run_resumes_to_the_same_losses_and_adapters(tmp_path, tiny_model, preference_data):
    train, _ = preference_data
    settings = {"algorithm": "dpo", "max_steps": 4, "save_interval": 2, "reference": "live", "beta": 0.1}
    run_in_process(lora_config(tmp_path, tiny_model, train, "whole", **settings))  # in this process: only the crash needs a process of its own
    config = lora_config(tmp_path, tiny_model, train, "resumed", **settings)
    assert launch(config, "train_cfgs.debug_stop_after_steps=3").returncode == 17
    run_in_process(config)
    expected, got = read_jsonl(tmp_path / "whole" / "metrics.jsonl"), read_jsonl(tmp_path / "resumed" / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in got] == [(r["step"], r["loss"]) for r in expected]
    before = load_file(str(tmp_path / "whole" / "model" / "adapter_model.safetensors"))
    after = load_file(str(tmp_path / "resumed" / "model" / "adapter_model.safetensors"))
    assert all(torch.equal(tensor, after[key]) for key, tensor in before.items())
