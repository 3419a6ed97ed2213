"""The fused-kernel switches (train_cfgs.liger_kernel, train_cfgs.torch_compile): each fails before training,
in one line, where it cannot run (off CUDA, without the package); torch.compile compiles the decoder in place."""

from __future__ import annotations

import pytest
from train_data import sft_data, tiny_model, write_config  # noqa: F401

from align_core.config import ModelCfgs
from align_core.errors import UsageError
from align_core.trainers.sft import SFTSettings
from align_core.trainers.throughput import check_kernels, compile_decoder, version_tuple


@pytest.mark.parametrize("switch", ["liger_kernel", "torch_compile"])
def test_a_kernel_switch_off_cuda_is_a_one_line_config_error(switch, tiny_model):
    with pytest.raises(UsageError) as raised:
        check_kernels(SFTSettings(**{switch: True}), ModelCfgs(model_name_or_path=str(tiny_model)))
    assert str(raised.value) == f"train_cfgs.{switch}: needs a CUDA device; this run trains on cpu (set {switch}: false)"


def test_liger_without_its_package_names_the_extra_to_install(tiny_model, monkeypatch):
    from deepspeed.accelerator import get_accelerator

    monkeypatch.setattr(type(get_accelerator()), "device_name", lambda self, device_index=None: "cuda")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(UsageError, match=r"^train_cfgs.liger_kernel: the liger-kernel package is not installed \(pip install 'alignflow\[gpu\]'\)$"):
        check_kernels(SFTSettings(liger_kernel=True), ModelCfgs(model_name_or_path=str(tiny_model)))
    with pytest.raises(UsageError, match="not supported at zero_stage 3"):
        check_kernels(SFTSettings(torch_compile=True, zero_stage=3), ModelCfgs(model_name_or_path=str(tiny_model)))


def test_a_run_with_liger_on_cpu_stops_before_reading_any_data(tmp_path, tiny_model, sft_data):
    from align_core.launch import run as run_in_process

    config = write_config(tmp_path / "liger.yaml", tiny_model, [sft_data], tmp_path / "run", {"train_cfgs": {"liger_kernel": True}})
    with pytest.raises(UsageError, match="train_cfgs.liger_kernel: needs a CUDA device"):
        run_in_process(config)
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "token_cache").exists()


def test_an_algorithm_without_the_switches_rejects_them_naming_those_with_them():
    from align_core.config import algorithm_settings

    with pytest.raises(UsageError, match=r"train_cfgs.liger_kernel: rm does not read this key \(read by dpo, ipo, orpo, sft, simpo\)"):
        algorithm_settings({"algorithm": "rm", "liger_kernel": True})


def test_versions_compare_by_their_numeric_parts():
    assert version_tuple("0.8.5") == (0, 8, 5) and version_tuple("0.8.5.dev20261027") == (0, 8, 5)
    assert version_tuple("0.6.2") < (0, 8, 5) <= version_tuple("0.10.0")


def test_torch_compile_compiles_the_decoder_in_place_keeping_parameter_names(tiny_model):
    from align_core.models.registry import load_causal_lm
    from align_core.reference.scoring import ResponseScorer

    scorer = ResponseScorer(load_causal_lm(tiny_model))
    names = [name for name, _ in scorer.named_parameters()]
    compile_decoder(scorer)  # lazy: nothing is traced until the first forward
    assert scorer.causal_lm.model._compiled_call_impl is not None
    assert [name for name, _ in scorer.named_parameters()] == names
