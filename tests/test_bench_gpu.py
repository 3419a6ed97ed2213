"""bench/gpu.py: the peak table and MFU arithmetic by hand, variant names, and its smoke path in-process
(a tiny Llama built offline, the plain loop and our packed engine on the same rows, equal first losses)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import gpu


def test_the_peak_of_a_known_card_comes_from_the_table_and_an_override_wins():
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3") == (989e12, "H100 bf16 dense")
    assert gpu.peak_flops("NVIDIA H100 PCIe")[0] == 756e12 and gpu.peak_flops("NVIDIA L40S")[0] == 362e12
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3", override_tflops=500) == (500e12, "--peak-tflops")
    assert gpu.peak_flops("Some Future GPU") == (None, "unknown device: pass --peak-tflops")


def test_mfu_is_six_n_flops_per_token_over_the_peak():
    # 158M parameters at 36,555 tokens/s: 6 * 158e6 * 36555 = 3.4655e13 FLOP/s, 3.5% of 989 TFLOP/s
    assert gpu.mfu(36_555, 158_000_000, 989e12) == pytest.approx(0.035040, rel=1e-4)
    assert gpu.mfu(36_555, 158_000_000, None) is None


def test_variant_names_parse_into_loop_algorithm_and_switches():
    assert gpu.parse_variant("ours-dpo-packed-liger") == {
        "loop": "ours", "algorithm": "dpo", "packed": True, "liger": True, "compile": False}
    with pytest.raises(ValueError, match="the plain loop has no switches"):
        gpu.parse_variant("plain-sft-packed")
    with pytest.raises(ValueError, match="unknown variant 'ours-kto'"):
        gpu.parse_variant("ours-kto")


def test_the_attention_is_sdpa_without_cuda_and_flash_off_cuda_stops_the_script_in_one_line():
    assert gpu.attention(None) == "sdpa" and gpu.attention("eager") == "eager"
    with pytest.raises(SystemExit) as stopped:
        gpu.attention("flash_attention_2")
    assert str(stopped.value) == ("error: model_cfgs.attn_implementation: flash_attention_2 needs a CUDA device; this run "
                                  "trains on cpu (use sdpa, eager or flex_attention)")


@pytest.mark.slow
def test_the_smoke_path_measures_the_plain_loop_and_our_packed_engine_on_the_same_rows(tmp_path, monkeypatch, capsys):
    from align_core.models import registry
    from align_core.paths import configure_environment

    configure_environment()
    setup = gpu.prepare(tmp_path, "tiny", smoke=True, attn="eager")
    assert setup["parameters"] > 0 and len(setup["lengths"]["sft"]) == gpu.shape(True)["rows"]
    loaded, load_causal_lm = [], registry.load_causal_lm

    def recording(*args, **kwargs):
        loaded.append(load_causal_lm(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(registry, "load_causal_lm", recording)
    plain = gpu.measure("plain-sft", setup, steps=2, warmup=0)
    packed = gpu.measure("ours-sft-packed", setup, steps=2, warmup=0)
    assert [model.config._attn_implementation for model in loaded] == ["eager", "eager"]  # --attn reaches both loops
    for measured in (plain, packed):
        assert measured["tokens_per_second"] > 0 and measured["step_seconds"] > 0
    assert packed["first_loss"] == pytest.approx(plain["first_loss"], rel=1e-5)  # same model, same first rows
    rows = gpu.report(setup, {"plain-sft": plain, "ours-sft-packed": packed}, "cpu", 1e12, "test")
    assert "cpu; attention eager; peak 1.0 TFLOP/s (test)" in capsys.readouterr().out
    assert rows["plain-sft"]["vs_plain"] == 1.0
    assert rows["ours-sft-packed"]["mfu"] == pytest.approx(6 * setup["parameters"] * packed["tokens_per_second"] / 1e12)
