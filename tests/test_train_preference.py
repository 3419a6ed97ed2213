"""Preference family end to end on a tiny Llama: each trainer lowers its loss, cached and live reference
log-probs give the same losses, cached training holds no reference model, and a killed run of every
trainer resumes to the uninterrupted loss sequence."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from preference_data import unpaired_data  # noqa: F401
from train_data import launch, preference_data, read_jsonl, tiny_model, write_config  # noqa: F401

from align_core.config import load_config
from align_core.data.batch import Batch
from align_core.errors import UsageError
from align_core.trainers import KTOTrainer, get_trainer

# case -> (algorithm, dataset kind it trains on, settings of its own)
CASES = {
    "dpo": ("dpo", "preference", {}),
    "ipo": ("ipo", "preference", {}),
    "simpo": ("simpo", "preference", {}),
    "orpo": ("orpo", "preference", {}),
    # length grouping would put the short (undesirable) completions together: steps of one label only
    "kto-unpaired": ("kto", "unpaired", {"length_grouping": False}),
    "kto-preference": ("kto", "preference", {}),
}
SETTINGS = {
    "max_steps": 8,
    "save_interval": 3,
    "gradient_accumulation_steps": 2,  # a resume lands mid-epoch, between micro-batches
    "length_grouping": True,
    "zero_stage": 1,
    "learning_rate": 1e-3,
    "precision": "fp32",
}
METRICS = {"loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "logps/chosen", "logps/rejected"}


@dataclass
class Run:
    config: Path
    output_dir: Path
    token_cache: Path
    result: dict[str, Any]
    records: list[dict[str, Any]]
    trainer: Any


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model, preference_data, unpaired_data):
    """``trained(case, reference="cached")``: one uninterrupted in-process run per case, made once."""
    runs: dict[tuple[str, str], Run] = {}

    def get(case: str, reference: str = "cached") -> Run:
        if (case, reference) not in runs:
            algorithm, data, own_settings = CASES[case]
            train, evaluation = preference_data if data == "preference" else unpaired_data
            root = tmp_path_factory.mktemp(f"{case}-{reference}")
            settings = {**SETTINGS, **own_settings, "algorithm": algorithm}
            if get_trainer(algorithm).uses_reference:
                settings["reference"] = reference
            config = write_config(root / "train.yaml", tiny_model, [train], root / "out", {"train_cfgs": settings}, eval_sets=[evaluation])
            trainer = get_trainer(algorithm)(load_config(config))
            result = trainer.train()
            runs[case, reference] = Run(config, root / "out", root / "token_cache", result, read_jsonl(root / "out" / "metrics.jsonl"), trainer)
        return runs[case, reference]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_each_trainer_lowers_its_loss_and_reports_rewards(trained, case):
    run = trained(case)
    losses = [record["loss"] for record in run.records]
    assert [record["step"] for record in run.records] == list(range(1, 9))
    assert losses[-1] < 0.95 * losses[0], losses
    assert METRICS <= set(run.records[-1])
    evaluation = run.result["eval"]
    assert {f"eval/{name}" for name in METRICS} <= set(evaluation)
    assert all(math.isfinite(value) for value in evaluation.values()), evaluation
    assert evaluation["eval/rewards/accuracy"] >= 0.75  # held-out rows; chance is 0.5
    assert evaluation["eval/rewards/margin"] > 0


@pytest.mark.slow
def test_exported_dpo_policy_is_a_plain_causal_lm_that_reproduces_the_eval_rewards(trained, tiny_model, preference_data):
    from transformers import AutoModelForCausalLM

    from align_core.data import TokenDataset, tokenize_dataset
    from align_core.reference import ResponseScorer, compute_reference_logps, read_reference_logps

    run = trained("dpo")
    policy, loading = AutoModelForCausalLM.from_pretrained(run.result["model_dir"], output_loading_info=True)
    assert not any(loading.values()), loading  # saved as the language model, not as its scoring wrapper
    rows = TokenDataset(tokenize_dataset(preference_data[1], tiny_model, 96, cache_root=run.token_cache))
    reference = read_reference_logps(compute_reference_logps(rows.path, tiny_model), rows)
    batch = rows.collator()([rows[i] for i in range(len(rows))])
    with torch.no_grad():
        scores = ResponseScorer(policy.eval())(batch.input_ids, batch.attention_mask, batch.labels)
    chosen_rewards = 0.1 * (scores.sum[: len(rows)] - torch.from_numpy(reference[:, 0]))
    assert chosen_rewards.mean().item() == pytest.approx(run.result["eval"]["eval/rewards/chosen"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dpo", "ipo", "kto-unpaired"])
def test_cached_and_live_reference_give_the_same_losses(trained, case):
    cached, live = trained(case, "cached"), trained(case, "live")
    for name in ("loss", "rewards/chosen", "rewards/rejected"):
        # float32 round-off only: the two score the reference in differently padded batches
        live_values, cached_values = [r[name] for r in live.records], [r[name] for r in cached.records]
        assert [v is None for v in live_values] == [v is None for v in cached_values], name  # a step without a label
        present = [(a, b) for a, b in zip(live_values, cached_values) if a is not None]
        assert [a for a, _ in present] == pytest.approx([b for _, b in present], rel=1e-6, abs=1e-6), name
    assert live.result["eval"] == pytest.approx(cached.result["eval"], rel=1e-6, abs=1e-6)
    # the live run scored with a model and wrote no column; the cached one held no model
    assert "reference" in live.trainer.frozen and not cached.trainer.frozen
    assert not list(live.token_cache.glob("*/reference/*")) and list(cached.token_cache.glob("*/reference/*/manifest.json"))


@pytest.mark.slow
def test_cached_training_reads_a_precomputed_column_without_rewriting_it(trained, tmp_path):
    run = trained("kto-unpaired")
    columns = sorted(run.token_cache.glob("*/reference/*/logps.arrow"))
    assert len(columns) == 4  # matched + mismatched, for the train and the eval cache
    written = [path.stat().st_mtime_ns for path in columns]
    again = get_trainer("kto")(load_config(run.config, [f"logger_cfgs.output_dir={tmp_path / 'again'}"]))
    assert again.train()["final_train_metrics"]["loss"] == pytest.approx(run.result["final_train_metrics"]["loss"], abs=1e-7)
    assert [path.stat().st_mtime_ns for path in columns] == written and not again.frozen


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dpo", "ipo", "simpo", "orpo", "kto-unpaired"])
def test_killed_run_resumes_to_the_same_loss_sequence(trained, case, tmp_path):
    from align_core.launch import run as run_in_process

    uninterrupted = trained(case)
    interrupted = load_config(uninterrupted.config, [f"logger_cfgs.output_dir={tmp_path / 'out'}"])
    config = tmp_path / "train.yaml"
    config.write_text(uninterrupted.config.read_text().replace(str(uninterrupted.output_dir), interrupted.logger_cfgs.output_dir))
    crashed = launch(config, "train_cfgs.debug_stop_after_steps=5")
    assert crashed.returncode == 17, crashed.stdout[-3000:] + crashed.stderr[-3000:]
    assert [r["step"] for r in read_jsonl(tmp_path / "out" / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    run_in_process(config)  # resumes from the step-3 checkpoint
    expected = [(r["step"], r["loss"], r["lr"], r["tokens"]) for r in uninterrupted.records]
    actual = [(r["step"], r["loss"], r["lr"], r["tokens"]) for r in read_jsonl(tmp_path / "out" / "metrics.jsonl")]
    assert actual == expected


@pytest.mark.slow
def test_kto_reference_point_is_the_clamped_mean_of_the_mismatched_log_ratios(trained):
    from align_core.losses import kto_reference_point

    trainer = trained("kto-unpaired").trainer  # its process group is up
    log_ratios = torch.tensor([0.5, -0.1, 1.2, 0.0])
    assert trainer.reference_point(log_ratios).item() == pytest.approx(0.4, abs=1e-7)
    assert trainer.reference_point(log_ratios).item() == pytest.approx(kto_reference_point(log_ratios, torch.zeros(4)).item())
    assert trainer.reference_point(torch.tensor([-2.0, 0.5])).item() == 0.0


def test_kto_on_a_preference_batch_makes_the_chosen_half_desirable():
    tokens = torch.zeros(6, 3, dtype=torch.long)
    assert KTOTrainer.desirable(Batch(tokens, tokens, sequences_per_row=2)).tolist() == [True] * 3 + [False] * 3
    unpaired = Batch(tokens, tokens, values={"desirable": torch.tensor([False, True, False, True, True, False])})
    assert KTOTrainer.desirable(unpaired).tolist() == [False, True, False, True, True, False]


@pytest.mark.slow
def test_dpo_refuses_an_unpaired_dataset(tmp_path, tiny_model, unpaired_data):
    from align_core.launch import run as run_in_process

    config = write_config(tmp_path / "bad.yaml", tiny_model, [unpaired_data[0]], tmp_path / "out", {"train_cfgs": {"algorithm": "dpo"}})
    with pytest.raises(UsageError, match=r"a unpaired_preference dataset; dpo trains on preference datasets"):
        run_in_process(config)


@pytest.mark.slow
def test_two_ranks_train_kto_on_one_precomputed_reference(tmp_path, tiny_model, preference_data):
    config = write_config(
        tmp_path / "kto.yaml", tiny_model, [preference_data[0]], tmp_path / "out",
        {"train_cfgs": {"algorithm": "kto", "max_steps": 4, "learning_rate": 1e-3, "zero_stage": 2, "precision": "fp32"}},
    )
    finished = launch(config, nproc=2)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    records = read_jsonl(tmp_path / "out" / "metrics.jsonl")
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["kl"] >= 0
    assert len(list((tmp_path / "token_cache").glob("*/reference/*/manifest.json"))) == 2  # matched + mismatched, once
