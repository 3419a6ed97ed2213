"""The training core's seams, end to end on a tiny Llama: token-weighted losses whatever the batch split,
steps that cross an epoch boundary, and an algorithm with its own step and several models.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_data import launch, materialize_validated, read_jsonl, tiny_model, trainer_registry_restored, write_config  # noqa: F401

from align_core.config import load_config
from align_core.launch import run as run_in_process

REPO = Path(__file__).resolve().parents[1]
TWO_UPDATE_TRAINER = REPO / "tests" / "two_update_trainer.py"


@pytest.fixture(scope="module", autouse=True)
def _test_trainers_unregistered_afterwards():
    with trainer_registry_restored():
        yield


def four_rows_of_unequal_length() -> list[dict]:
    """Answers of 1 to ~40 words: a per-micro-batch mean would weigh their tokens very differently."""
    answers = ["Yes.", "Two apples and a pear.", " ".join(["red blue green"] * 6), " ".join(["one two three four"] * 5)]
    return [
        {"messages": [{"role": "user", "content": f"Question {index}?"}, {"role": "assistant", "content": answer}]}
        for index, answer in enumerate(answers)
    ]


@pytest.fixture(scope="module")
def four_rows(tmp_path_factory) -> Path:
    return materialize_validated(four_rows_of_unequal_length(), "supervised", tmp_path_factory.mktemp("four"), "four")


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def one_step(tmp_path: Path, model: Path, data: Path, name: str, batch: int, accumulation: int, nproc: int = 1):
    """One optimizer step over the four rows; returns (weight update, logged step-1 loss)."""
    settings = {
        "train_cfgs": {
            "max_steps": 1, "per_device_train_batch_size": batch, "gradient_accumulation_steps": accumulation,
            "learning_rate": 1e-2, "lr_scheduler_type": "constant", "lr_warmup_ratio": 0.0, "max_grad_norm": 0.0,
            # a large epsilon makes Adam's first update ~ lr * g (not ~ lr * sign(g)): weighting shows in it
            "adam_epsilon": 1.0, "precision": "fp32", "length_grouping": False,
        }
    }
    config = write_config(tmp_path / f"{name}.yaml", model, [data], tmp_path / name, settings)
    if nproc == 1:
        result = run_in_process(config)
    else:
        finished = launch(config, nproc=nproc)
        assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
        result = json.loads((tmp_path / name / "train_result.json").read_text())
    before, after = weights(model), weights(result["model_dir"])
    update = torch.cat([(after[key] - before[key]).flatten() for key in sorted(before)])
    return update, read_jsonl(tmp_path / name / "metrics.jsonl")[0]["loss"]


def token_mean_nll(model: Path, data: Path, cache: Path) -> float:
    """The reference value: NLL summed over every trained token of the four rows, over their count."""
    from align_core.data import TokenDataset, tokenize_dataset
    from align_core.losses import sequence_logps
    from align_core.models.registry import load_causal_lm

    rows = TokenDataset(tokenize_dataset(data, model, 96, cache_root=cache))
    batch = rows.collator()([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        logits = load_causal_lm(str(model)).eval()(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    sum_logps, _, n_tokens = sequence_logps(logits, batch.labels)
    assert len(set(n_tokens.tolist())) == 4  # the rows really differ in trained tokens
    return (-sum_logps.sum() / n_tokens.sum()).item()


@pytest.mark.slow
def test_the_same_rows_give_the_same_update_whatever_the_batch_split(tmp_path, tiny_model, four_rows):
    reference_update, reference_loss = one_step(tmp_path, tiny_model, four_rows, "b4-ga1", batch=4, accumulation=1)
    assert reference_loss == pytest.approx(token_mean_nll(tiny_model, four_rows, tmp_path / "cache"), rel=1e-5)
    for name, batch, accumulation, nproc in [("b2-ga2", 2, 2, 1), ("b1-ga4", 1, 4, 1), ("b2-2ranks", 2, 1, 2)]:
        update, loss = one_step(tmp_path, tiny_model, four_rows, name, batch, accumulation, nproc)
        relative = ((update - reference_update).norm() / reference_update.norm()).item()
        assert relative < 1e-4, (name, relative)
        assert loss == pytest.approx(reference_loss, rel=1e-5), name


@pytest.mark.slow
def test_a_step_whose_accumulation_crosses_an_epoch_boundary_logs_its_own_mean(tmp_path, tiny_model):
    from train_data import preference_rows

    data = materialize_validated(preference_rows(6), "preference", tmp_path, "six")
    # 3 micro-batches of 2 pairs per epoch, 2 per step: step 2 takes the last of epoch 0 and the first of epoch 1
    settings = {"train_cfgs": {"algorithm": "dpo", "max_steps": 3, "per_device_train_batch_size": 2,
                               "gradient_accumulation_steps": 2, "learning_rate": 1e-9, "precision": "fp32"}}
    run_in_process(write_config(tmp_path / "dpo.yaml", tiny_model, [data], tmp_path / "out", settings))
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    # the policy is still its reference: every pair's loss is ln 2, whichever epoch it came from
    assert [record["loss"] for record in records] == pytest.approx([math.log(2)] * 3, abs=1e-5)  # today: 0.347 for step 2
    assert [record["epoch"] for record in records] == pytest.approx([2 / 3, 4 / 3, 2.0])


def two_update_config(tmp_path: Path, model: Path, data: Path, name: str) -> Path:
    settings = {"train_cfgs": {"algorithm": "test-two-updates", "trainer_module": str(TWO_UPDATE_TRAINER),
                               "max_steps": 5, "save_interval": 2, "gradient_accumulation_steps": 2,
                               "learning_rate": 3e-3, "lr_warmup_ratio": 0.0, "precision": "fp32"}}
    return write_config(tmp_path / f"{name}.yaml", model, [data], tmp_path / name, settings)


@pytest.fixture(scope="module")
def sft_rows(tmp_path_factory) -> Path:
    from train_data import supervised_rows

    return materialize_validated(supervised_rows(24), "supervised", tmp_path_factory.mktemp("sft24"), "sft24")


@pytest.mark.slow
def test_an_algorithm_with_its_own_step_and_several_models_trains_and_resumes_exactly(tmp_path, tiny_model, sft_rows):
    from align_core.trainers import get_trainer

    config = load_config(two_update_config(tmp_path, tiny_model, sft_rows, "whole"))
    trainer = get_trainer("test-two-updates")(config)
    result = trainer.train()
    # the loop ran 5 steps; the policy was updated twice per step, the critic once, the frozen model never
    assert result["steps"] == 5
    assert trainer.engines["policy"].global_step == 10 and trainer.engines["critic"].global_step == 5
    assert set(trainer.frozen) == {"start"} and not any(p.requires_grad for p in trainer.frozen["start"].parameters())
    records = read_jsonl(tmp_path / "whole" / "metrics.jsonl")
    assert all(record["loss/update1"] < record["loss/update0"] for record in records)  # the second pass learned
    assert records[-1]["critic_loss"] < records[0]["critic_loss"]
    assert set(result["model_dirs"]) == {"policy", "critic"}
    assert Path(result["model_dirs"]["critic"]).name == "model-critic"

    interrupted = two_update_config(tmp_path, tiny_model, sft_rows, "resumed")
    crashed = launch(interrupted, "train_cfgs.debug_stop_after_steps=3")
    assert crashed.returncode == 17, crashed.stdout[-3000:] + crashed.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints" / "step-00000002").iterdir()) == [
        "checkpoint_digests.json", "critic", "policy", "rng_state_rank0.pt"
    ]
    run_in_process(interrupted)  # only the crash needs a process of its own
    names = ("loss/update0", "loss/update1", "critic_loss", "start_nll", "lr", "tokens")
    expected = [[record[name] for name in names] for record in records]
    assert [[record[name] for name in names] for record in read_jsonl(tmp_path / "resumed" / "metrics.jsonl")] == expected
    for model in ("model", "model-critic"):
        whole, again = weights(tmp_path / "whole" / model), weights(tmp_path / "resumed" / model)
        assert all(torch.equal(whole[key], again[key]) for key in whole), model
