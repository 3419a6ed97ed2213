"""SFT end to end in-process on a tiny Llama: shards -> token cache -> DeepSpeed -> metrics -> HF export."""

from __future__ import annotations

import json

import pytest
from train_data import preference_data, read_jsonl, sft_data, tiny_model, write_config  # noqa: F401

from align_core.errors import UsageError
from align_core.launch import run
from align_core.trainers.rundir import RESULT_NAME


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model, sft_data):
    root = tmp_path_factory.mktemp("sft-run")
    config = write_config(
        root / "sft.yaml", tiny_model, [sft_data], root / "out",
        {"train_cfgs": {"max_steps": 24, "eval_interval": 8, "save_interval": 8, "length_grouping": True}},
        eval_sets=[sft_data],
    )
    return config, run(config), root / "out"


@pytest.mark.slow
def test_sft_lowers_training_and_eval_loss_on_a_tiny_overfit_set(sft_run):
    _, result, out = sft_run
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 25))
    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < 0.7 * first, (first, last)
    evals = [r["eval/loss"] for r in records if "eval/loss" in r]
    assert len(evals) == 3 and evals[-1] < evals[0]
    assert result["eval"]["eval/loss"] == pytest.approx(evals[-1], rel=1e-4)
    assert result["eval"]["eval/perplexity"] > 1.0


@pytest.mark.slow
def test_sft_writes_metrics_curve_board_checkpoints_and_a_loadable_model(sft_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, result, out = sft_run
    record = read_jsonl(out / "metrics.jsonl")[0]
    assert {"step", "loss", "lr", "tokens", "label_tokens", "epoch"} <= set(record)
    assert record["tokens"] > record["label_tokens"] > 0
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert list((out / "tensorboard").iterdir())
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")) == [
        "step-00000016", "step-00000024",
    ]
    model = AutoModelForCausalLM.from_pretrained(result["model_dir"])
    tokenizer = AutoTokenizer.from_pretrained(result["model_dir"])
    assert tokenizer.chat_template and model.config.vocab_size >= len(tokenizer) - 1
    assert json.loads((out / RESULT_NAME).read_text())["steps"] == 24


@pytest.mark.slow
def test_rerun_of_a_finished_run_returns_its_result_without_training(sft_run):
    config, result, out = sft_run
    before = (out / "model" / "model.safetensors").stat().st_mtime_ns
    assert run(config, ["logger_cfgs.progress_bar=true"]) == result  # a resume-safe setting changed
    assert (out / "model" / "model.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_same_output_dir_with_other_settings_is_refused(sft_run):
    config, _, _ = sft_run
    with pytest.raises(UsageError, match=r"train_cfgs.learning_rate: 0.003 -> 0.001.*new logger_cfgs.output_dir"):
        run(config, ["train_cfgs.learning_rate=1e-3"])


@pytest.mark.slow
def test_sft_refuses_a_preference_dataset(tmp_path, tiny_model, preference_data):
    config = write_config(tmp_path / "bad.yaml", tiny_model, [preference_data[0]], tmp_path / "out")
    with pytest.raises(UsageError, match=r"a preference dataset; sft trains on supervised datasets"):
        run(config)
