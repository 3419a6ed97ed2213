"""Pipeline names are identifiers and every output stays inside ``output_dir``; ``pipeline check``
finds everything ``pipeline run`` would find later, and ``run`` (the CLI and the flow itself) checks
the same before doing any work."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_bad_input import run_cli  # one in-process CLI runner for the reliability tests

from align_core.errors import UsageError
from align_core.templates.registry import known_templates
from flows.pipeline_config import check_pipeline, load_pipeline

BASE: dict[str, Any] = {
    "output_dir": "out",
    "models": {"tiny": {"tiny": {"arch": "llama", "hidden_size": 64, "num_layers": 2, "num_heads": 4}}},
    "datasets": {
        "alpaca": {"source": "data/alpaca.jsonl", "template": "Alpaca", "kind": "supervised"},
        "hh": {"source": "data/hh.jsonl", "template": "HH-RLHF", "kind": "preference"},
    },
    "jobs": {
        "sft": {"algorithm": "sft", "model": "tiny", "train": ["alpaca"], "eval": ["alpaca"],
                "config": {"train_cfgs": {"max_steps": 2}}},
        "dpo": {"algorithm": "dpo", "model": "sft", "train": ["hh"], "config": {"train_cfgs": {"beta": 0.2}}},
    },
}


def write_pipeline(folder: Path, change: Callable[[dict[str, Any]], Any] | None = None) -> Path:
    """The base pipeline with its two small sources, ``change``d, as ``folder/pipeline.yaml``."""
    (folder / "data").mkdir(exist_ok=True)
    alpaca = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    hh = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    (folder / "data" / "alpaca.jsonl").write_text(json.dumps(alpaca) + "\n")
    (folder / "data" / "hh.jsonl").write_text(json.dumps(hh) + "\n")
    data = copy.deepcopy(BASE)
    if change:
        change(data)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def rename(section: str, old: str, new: str) -> Callable[[dict[str, Any]], None]:
    """Rename an entry and every reference to it."""

    def change(data: dict[str, Any]) -> None:
        data[section][new] = data[section].pop(old)
        for job in data["jobs"].values():
            if section == "datasets":
                job["train"] = [new if name == old else name for name in job["train"]]
                job["eval"] = [new if name == old else name for name in job.get("eval", [])]
            elif job["model"] == old:
                job["model"] = new
            job["after"] = [new if name == old else name for name in job.get("after", [])]

    return change


BAD_NAMES = ["../../x", "..", "a/b", "/abs", ".hidden", "-x", "a..b", "", "x y", "jobs\\evil"]


@pytest.mark.parametrize("section, old", [("models", "tiny"), ("datasets", "alpaca"), ("jobs", "sft")])
@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_name_that_is_not_an_identifier_is_refused_naming_it(tmp_path, section, old, name):
    config = write_pipeline(tmp_path, rename(section, old, name))
    with pytest.raises(UsageError) as refused:
        load_pipeline(config)
    assert str(refused.value) == (
        f"{config}: {section}: {name!r} is not a name: letters, digits, '_', '.' and '-', starting with a letter or "
        "digit, without '..' (names become folder names under output_dir)"
    )


def test_identifiers_with_dots_dashes_and_underscores_are_names(tmp_path):
    change = rename("jobs", "sft", "sft-v1.2_final")
    config = write_pipeline(tmp_path, change)
    assert "sft-v1.2_final" in load_pipeline(config).jobs


def test_an_output_folder_that_a_symlink_leads_out_of_output_dir_is_refused(tmp_path):
    config = write_pipeline(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "jobs").symlink_to(elsewhere)
    with pytest.raises(UsageError) as refused:
        check_pipeline(load_pipeline(config))
    assert str(refused.value) == f"jobs: {tmp_path}/out/jobs resolves to {elsewhere}, outside output_dir {tmp_path}/out"


def set_value(*path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target = data
        for key in path[:-1]:
            target = target.setdefault(key, {})
        target[path[-1]] = value

    return change


TRAINERS = "cm, dpo, grpo, ipo, kto, orpo, ppo, ppo_lag, rloo, rm, sft, simpo"
# What `pipeline check` finds: (what, change, the one-line error; {folder} is the pipeline's folder)
CHECKS = [
    ("an unknown algorithm", set_value("jobs", "dpo", "algorithm", value="dpoo"),
     f"jobs.dpo: train_cfgs.algorithm: unknown 'dpoo'; expected one of {TRAINERS}"),
    ("an unknown training key", set_value("jobs", "sft", "config", "train_cfgs", "max_step", value=3),
     "jobs.sft.config: unknown config key 'train_cfgs.max_step' (did you mean 'max_steps'?) (sft reads liger_kernel, packing, torch_compile and the common keys)"),
    ("another algorithm's key", set_value("jobs", "sft", "config", "train_cfgs", "beta", value=0.1),
     "jobs.sft.config: train_cfgs.beta: sft does not read this key (read by dpo, grpo, ipo, kto, ppo, ppo_lag, rloo, simpo) (sft reads liger_kernel, packing, torch_compile and the common keys)"),
    ("a value out of range", set_value("jobs", "sft", "config", "train_cfgs", "epochs", value=0),
     "jobs.sft.config: train_cfgs.epochs: Input should be greater than or equal to 1 (got 0)"),
    ("an unknown section", set_value("jobs", "sft", "config", "trian_cfgs", value={"epochs": 1}),
     "jobs.sft: unknown config section 'trian_cfgs' (did you mean 'train_cfgs'?); sections: train_cfgs, data_cfgs, model_cfgs, logger_cfgs"),
    ("a reference model for sft", set_value("jobs", "sft", "config", "model_cfgs", "reference_model_name_or_path", value="x"),
     "jobs.sft.config: model_cfgs.reference_model_name_or_path: sft has no reference model"),
    ("a key the pipeline sets", set_value("jobs", "sft", "config", "data_cfgs", "train_datasets", value=["x"]),
     "jobs.sft.config.data_cfgs.train_datasets: set by the pipeline (from train); remove it"),
    ("a dataset of the wrong kind to train on", set_value("jobs", "sft", "train", value=["hh"]),
     "jobs.sft: dataset 'hh' is preference; sft trains on supervised datasets"),
    ("a dataset of the wrong kind to evaluate on", set_value("jobs", "dpo", "eval", value=["alpaca"]),
     "jobs.dpo: dataset 'alpaca' is supervised; dpo trains on preference datasets"),
    ("a missing source", set_value("datasets", "alpaca", "source", value="data/nope.jsonl"),
     "datasets.alpaca: source '{folder}/data/nope.jsonl' does not exist"),
    ("an unknown template", set_value("datasets", "alpaca", "template", value="Alpacca"),
     "datasets.alpaca: unknown template 'Alpacca'; known templates: {known_templates}"),
    ("a kind the template cannot produce", set_value("datasets", "alpaca", "kind", value="preference"),
     "datasets.alpaca: template 'Alpaca' cannot produce 'preference' samples; it supports: supervised, prompt_only"),
    ("an unknown template option", set_value("datasets", "alpaca", "options", value={"colour": "blue"}),
     "datasets.alpaca: template 'Alpaca' has no option colour; its options: none"),
    ("an unknown source format", set_value("datasets", "alpaca", "format", value="xml"),
     "datasets.alpaca: unknown source format 'xml'; expected one of: jsonl, json, csv, parquet, arrow, hf_disk"),
    ("a source that is not in its format", set_value("datasets", "alpaca", "format", value="parquet"),
     ("datasets.alpaca: cannot read {folder}/data/alpaca.jsonl as parquet: Parquet magic bytes not found in footer. "
      "Either the file is corrupted or this is not a parquet file.")),
    ("an unknown suite", set_value("datasets", "alpaca", "suite", value="nope"),
     "datasets.alpaca: unknown suite 'nope'; built-in suites: preference, prompt_only, supervised, unpaired_preference (or give a .yaml path)"),
    ("a model path without a model", set_value("models", "tiny", value={"path": "models/none"}),
     "models.tiny.path: {folder}/models/none has no config.json (alignflow loads local Hugging Face folders only)"),
    ("an unknown tiny arch", set_value("models", "tiny", "tiny", "arch", value="llamma"),
     "models.tiny.tiny.arch: unknown 'llamma'; expected one of: llama, qwen2, mistral, gpt2, llava, qwen2_audio"),
    ("an output_dir that is a file", set_value("output_dir", value="data/alpaca.jsonl"),
     "output_dir {folder}/data/alpaca.jsonl: {folder}/data/alpaca.jsonl is a file"),
]


@pytest.mark.parametrize("what, change, error", CHECKS, ids=[case[0] for case in CHECKS])
def test_pipeline_check_finds_what_run_would_find_later(tmp_path, monkeypatch, capsys, what, change, error):
    config = write_pipeline(tmp_path, change)
    code, out, err = run_cli(["pipeline", "check", str(config)], monkeypatch, capsys)
    assert (code, out) == (2, "")
    # other tests register templates in this process: the list is read when the check runs
    assert err == f"error: {error.format(folder=tmp_path, known_templates=', '.join(known_templates()))}\n"


def test_pipeline_check_passes_a_sound_pipeline_and_prints_its_plan(tmp_path, monkeypatch, capsys):
    config = write_pipeline(tmp_path)
    code, out, err = run_cli(["pipeline", "check", str(config)], monkeypatch, capsys)
    assert (code, err) == (0, "")
    assert out.splitlines()[-2:] == ["wave 1     sft (sft from tiny)", "wave 2     dpo (dpo from sft)"]


def test_pipeline_run_checks_before_any_work(tmp_path, monkeypatch, capsys):
    config = write_pipeline(tmp_path, CHECKS[0][1])  # an unknown algorithm in the second job
    code, out, err = run_cli(["pipeline", "run", str(config)], monkeypatch, capsys)
    assert (code, out, err) == (2, "", f"error: {CHECKS[0][2]}\n")
    assert not (tmp_path / "out").exists()  # nothing materialised, no model built


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_pipeline_flow_itself_checks_before_any_work(tmp_path):
    """A deployment runs the flow with no CLI before it: the flow refuses the same pipeline itself."""
    from flows.pipeline import pipeline

    config = write_pipeline(tmp_path, CHECKS[0][1])
    state = pipeline(config=str(config), return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, UsageError) and str(error) == CHECKS[0][2]
    assert not (tmp_path / "out" / "shards").exists() and not (tmp_path / "out" / "models").exists()
