"""model_cfgs.attn_implementation: every model a run loads uses it (packed runs give the same losses under eager
as under sdpa), an unknown value and a FlashAttention this machine or model cannot run are one-line errors
before any data is read."""

from __future__ import annotations

import pytest
from train_data import preference_data, read_jsonl, sft_data, tiny_model, write_config  # noqa: F401

from align_core.config import ModelCfgs, build_config
from align_core.errors import UsageError
from align_core.trainers import throughput
from align_core.trainers.sft import SFTSettings
from align_core.trainers.throughput import check_kernels


def on_cuda(monkeypatch) -> None:
    """DeepSpeed's accelerator reports a CUDA device (torch itself still has none)."""
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "device_name", lambda self, device_index=None: "cuda")


def test_an_unknown_attention_implementation_is_a_one_line_error_naming_the_allowed_ones():
    sections = {"data_cfgs": {"train_datasets": ["data"]}, "model_cfgs": {"model_name_or_path": "model"},
                "logger_cfgs": {"output_dir": "run"}}
    assert build_config(sections).model_cfgs.attn_implementation == "sdpa"
    with pytest.raises(UsageError) as raised:
        build_config(sections, ["model_cfgs.attn_implementation=flash_attention"], source="run.yaml")
    assert str(raised.value) == (
        "run.yaml: model_cfgs.attn_implementation: Input should be 'sdpa', 'eager', 'flex_attention', 'flash_attention_2' "
        "or 'flash_attention_3' (got 'flash_attention')")


@pytest.mark.parametrize("implementation", ["flash_attention_2", "flash_attention_3"])
def test_flash_attention_off_cuda_is_a_one_line_error(implementation, tiny_model):
    with pytest.raises(UsageError) as raised:
        check_kernels(SFTSettings(), ModelCfgs(model_name_or_path=str(tiny_model), attn_implementation=implementation))
    assert str(raised.value) == (f"model_cfgs.attn_implementation: {implementation} needs a CUDA device; this run trains "
                                 "on cpu (use sdpa, eager or flex_attention)")


def test_flash_attention_without_its_package_names_how_to_install_it(tiny_model, monkeypatch):
    on_cuda(monkeypatch)
    model_cfgs = ModelCfgs(model_name_or_path=str(tiny_model), attn_implementation="flash_attention_2")
    with pytest.raises(UsageError) as raised:  # no CUDA torch here, so transformers finds no usable flash-attn
        check_kernels(SFTSettings(), model_cfgs)
    assert str(raised.value) == ("model_cfgs.attn_implementation: flash_attention_2 needs the flash-attn package "
                                 "(>= 2.3.3), which is not installed (pip install flash-attn --no-build-isolation)")
    with pytest.raises(UsageError, match=r"^model_cfgs.attn_implementation: flash_attention_3 needs FlashAttention-3 "
                                         r"\(the flash-attn-3 package\), which is not installed \(build it from the hopper/"):
        check_kernels(SFTSettings(), model_cfgs.model_copy(update={"attn_implementation": "flash_attention_3"}))


def test_flash_attention_in_fp32_is_refused(tiny_model, monkeypatch):
    on_cuda(monkeypatch)
    package, _, install = throughput.FLASH_ATTENTION["flash_attention_2"]
    monkeypatch.setitem(throughput.FLASH_ATTENTION, "flash_attention_2", (package, lambda: True, install))
    model_cfgs = ModelCfgs(model_name_or_path=str(tiny_model), attn_implementation="flash_attention_2")
    with pytest.raises(UsageError) as raised:
        check_kernels(SFTSettings(precision="fp32"), model_cfgs)
    assert str(raised.value) == ("model_cfgs.attn_implementation: flash_attention_2 runs in bf16 or fp16; this run trains "
                                 "in fp32 (set train_cfgs.precision: bf16)")
    check_kernels(SFTSettings(precision="bf16"), model_cfgs)  # everything it needs is there


def test_an_implementation_the_model_does_not_run_is_refused_naming_those_it_does(tmp_path):
    from align_core.models import build_tiny_model

    gpt2 = build_tiny_model(tmp_path / "gpt2", arch="gpt2", hidden_size=32, num_layers=1, num_heads=2)
    with pytest.raises(UsageError) as raised:
        check_kernels(SFTSettings(), ModelCfgs(model_name_or_path=str(gpt2), attn_implementation="flex_attention"))
    assert str(raised.value) == ("model_cfgs.attn_implementation: a gpt2 model (GPT2LMHeadModel) does not run "
                                 "flex_attention; it runs eager, sdpa, flash_attention_2, flash_attention_3")


def test_a_run_with_flash_attention_on_cpu_stops_before_reading_any_data(tmp_path, tiny_model, sft_data):
    from align_core.launch import run as run_in_process

    config = write_config(tmp_path / "flash.yaml", tiny_model, [sft_data], tmp_path / "run",
                          {"model_cfgs": {"attn_implementation": "flash_attention_2"}})
    with pytest.raises(UsageError, match="^model_cfgs.attn_implementation: flash_attention_2 needs a CUDA device"):
        run_in_process(config)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "token_cache").exists()


def loaded_attention(monkeypatch) -> dict[str, set[str]]:
    """Filled as a run builds its models: each model's name -> the attention implementations of every transformers
    model inside it (a causal LM and its decoder, a score model and its base)."""
    from transformers import PreTrainedModel

    from align_core.trainers.base import Trainer

    seen: dict[str, set[str]] = {}
    build_models = Trainer._build_models

    def recording(trainer, total_steps: int) -> None:
        build_models(trainer, total_steps)
        models = {**{name: engine.module for name, engine in trainer.engines.items()}, **trainer.frozen}
        for name, model in models.items():
            seen[name] = {part.config._attn_implementation for part in model.modules() if isinstance(part, PreTrainedModel)}

    monkeypatch.setattr(Trainer, "_build_models", recording)
    return seen


def packed_runs(tmp_path, monkeypatch, model, train, train_cfgs: dict, names: tuple[str, ...]) -> dict[str, list]:
    """The same packed run under sdpa and eager: each one's logged token counts and ``names`` per step, after
    checking that every model it loaded runs the configured implementation."""
    from align_core.launch import run as run_in_process

    logged, seen = {}, loaded_attention(monkeypatch)
    for implementation in ("sdpa", "eager"):
        seen.clear()
        out = tmp_path / f"{train_cfgs['algorithm']}-{implementation}"
        run_in_process(write_config(out.with_suffix(".yaml"), model, [train], out, {
            "train_cfgs": {**train_cfgs, "packing": True, "save_interval": 100}, "data_cfgs": {"max_length": 256},
            "model_cfgs": {"attn_implementation": implementation}}))
        assert seen and all(found == {implementation} for found in seen.values()), seen
        logged[implementation] = [[record[name] for name in ("tokens", *names)] for record in read_jsonl(out / "metrics.jsonl")]
    assert len(logged["eager"]) == train_cfgs["max_steps"]
    return logged


@pytest.mark.slow
@pytest.mark.parametrize(("train_cfgs", "names"), [
    ({"algorithm": "sft", "max_steps": 3, "per_device_train_batch_size": 8}, ("loss",)),
    ({"algorithm": "dpo", "max_steps": 2}, ("loss", "rewards/margin", "logps/chosen")),  # the cached reference column
    ({"algorithm": "dpo", "max_steps": 2, "reference": "live"}, ("loss", "rewards/margin")),  # and a reference model
    ({"algorithm": "rm", "max_steps": 2}, ("loss", "accuracy", "rewards/margin")),  # a score model
], ids=["sft", "dpo", "dpo-live", "rm"])
def test_a_packed_run_loads_its_model_with_eager_and_logs_the_sdpa_runs_losses(train_cfgs, names, tmp_path, monkeypatch,
                                                                                tiny_model, request):
    train = request.getfixturevalue("sft_data") if train_cfgs["algorithm"] == "sft" else request.getfixturevalue("preference_data")[0]
    logged = packed_runs(tmp_path, monkeypatch, tiny_model, train, train_cfgs, names)
    assert [step[0] for step in logged["eager"]] == [step[0] for step in logged["sdpa"]]
    for eager, sdpa in zip(logged["eager"], logged["sdpa"]):
        assert eager[1:] == pytest.approx(sdpa[1:], rel=1e-5, abs=1e-6)
