"""Safe RLHF's cost model (``cm``): its loss on hand-computed values, training on PKU-SafeRLHF pairs ordered
by safety, and a clear refusal of data without safety labels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from train_data import read_jsonl, tiny_model, write_config  # noqa: F401

from align_core.errors import UsageError
from align_core.launch import run as run_in_process
from align_core.losses import safety_cost_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_the_cost_loss_orders_the_pair_and_signs_each_cost_by_its_label():
    losses = safety_cost_loss(
        torch.tensor([-1.0, 0.5]), torch.tensor([2.0, 0.0]),
        chosen_unsafe=torch.tensor([False, False]), rejected_unsafe=torch.tensor([True, False]),
    )
    # pair 0: the harmful one costs 3 more; the safe cost is negative, the unsafe one positive: all three terms small
    #   -logsig(2 - -1) - logsig(-1 * -1) - logsig(+1 * 2) = softplus(-3) + softplus(-1) + softplus(-2)
    # pair 1: both safe: -logsig(0 - 0.5) - logsig(-1 * 0.5) - logsig(-1 * 0) = 2 softplus(0.5) + ln 2
    expected = [softplus(-3) + softplus(-1) + softplus(-2), 2 * softplus(0.5) + math.log(2)]
    assert losses.tolist() == pytest.approx(expected, abs=1e-6)


def pku_datasets(root: Path, preference: str) -> tuple[Path, Path]:
    from align_core.materialize import materialize_dataset
    from alignflow.samples import write_samples

    folders = []
    for split, rows, seed in (("train", 240, 0), ("eval", 80, 1)):
        written = write_samples(root / split, rows=rows, seed=seed)["pku_saferlhf"]
        folders.append(Path(materialize_dataset(written, "PKUSafeRLHF", "preference", root / "datasets",
                                                template_options={"preference": preference})))
    return folders[0], folders[1]


@pytest.mark.slow
def test_a_cost_model_learns_which_responses_are_unsafe(tmp_path, tiny_model):
    train, evaluation = pku_datasets(tmp_path, "safer")
    settings = {"train_cfgs": {"algorithm": "cm", "max_steps": 60, "learning_rate": 1e-3, "per_device_train_batch_size": 8},
                "data_cfgs": {"max_length": 160}}
    result = run_in_process(write_config(tmp_path / "cm.yaml", tiny_model, [train], tmp_path / "out", settings, eval_sets=[evaluation]))
    final = result["eval"]
    assert final["eval/accuracy"] > 0.8 and final["eval/sign_accuracy"] > 0.8, final
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert records[-1]["loss"] < records[0]["loss"]


def test_pairs_ordered_by_helpfulness_are_refused_naming_the_option(tmp_path, tiny_model):
    from align_core.config import load_config
    from align_core.trainers import get_trainer

    train, _ = pku_datasets(tmp_path, "better")
    config = load_config(write_config(tmp_path / "cm.yaml", tiny_model, [train], tmp_path / "out", {"train_cfgs": {"algorithm": "cm"}}))
    with pytest.raises(UsageError, match="not a safety-ordered pair .* --option preference=safer"):
        get_trainer("cm")(config)
