"""DPO throughput: cached vs live reference log-probs, and ours vs TRL's DPOTrainer, ratios from one run.

    python bench/dpo.py [--steps 30] [--warmup 5] [--rounds 3] [--rows 400] [--workdir bench_out/dpo]

Same tiny Llama (build_tiny_model defaults, ~3.7M parameters), same preference rows (a prompt of
12-40 words and two answers of 30-90 words cut from the tokenizer's corpus: ~60-170 tokens per
sequence), batch 8 pairs, beta 0.1, AdamW + cosine schedule + clipping at 1.0, fp32 on CPU, plain
shuffled batches for every variant (``ours-grouped``: the shipped length-grouped default). Each
variant trains in its own fresh one-thread process (bench/harness.py); rounds interleave the variants
and medians over rounds give the numbers. Unit: non-pad tokens of the policy forward (chosen +
rejected) per second over the timed steps, everything between two optimizer steps counted; per wall
second and per CPU second of the worker (the steadier of the two on a shared machine). Reference log-probs are computed before training by every variant that caches them (ours
in the pipeline's reference task, TRL in its precompute pass): that one-off cost is printed apart.

  ours-cached   align_core DPOTrainer, reference: cached (the default; no reference model in training)
  ours-live     the same with reference: live (a frozen reference model scores every batch)
  ours-grouped  ours-cached with length-grouped batches, as align_core/configs/dpo.yaml ships
  trl           trl.DPOTrainer, precompute_ref_log_probs=True, conversational rows through its own
                chat-template tokenisation (the same tokenizer and template: the same token ids)
  trl-live      trl.DPOTrainer with its live reference model

Targets: ours-cached step time <= 0.7x ours-live; ours tokens/s >= 1.3x trl (like for like: ours-cached;
shipped defaults: ours-grouped).
Conventions that differ (none matters here: sigmoid loss, label_smoothing 0): TRL's "sigmoid" loss
ignores label_smoothing (its cDPO is loss_type "robust"), its "ipo" length-normalises inside the loss
(ours feeds IPO length-averaged log-probs), and its ORPO logs the odds-ratio term with the opposite sign.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    StepClock,
    emit,
    parse_arguments,
    run_rounds,
    run_worker,
    save_results,
    setup_or_work,
    summarize,
    tiny_model_and_cache,
)

BATCH = 8
BETA = 0.1
LEARNING_RATE = 5e-4
MAX_LENGTH = 256
VARIANTS = ("ours-cached", "ours-live", "ours-grouped", "trl", "trl-live")


# ----- setup (parent process) ------------------------------------------------------------------------


def write_pairs(path: Path, count: int, seed: int = 0) -> None:
    """Preference rows in TRL's conversational form, cut from the tokenizer's own corpus."""
    from align_core.models.tiny import corpus_texts

    words = " ".join(corpus_texts()).split()
    rng = random.Random(seed)

    def message(role: str, low: int, high: int) -> list[dict]:
        length = rng.randint(low, high)
        start = rng.randrange(len(words) - length)
        return [{"role": role, "content": " ".join(words[start : start + length])}]

    with path.open("w") as handle:
        for _ in range(count):
            row = {"prompt": message("user", 12, 40), "chosen": message("assistant", 30, 90), "rejected": message("assistant", 30, 90)}
            handle.write(json.dumps(row) + "\n")


def prepare(workdir: Path, rows: int) -> dict:
    """Model, dataset, token cache and (timed) the cached reference column every ours-cached run reads."""
    import torch

    from align_core.data import TokenDataset
    from align_core.reference import compute_reference_logps

    source = workdir / "pairs.jsonl"
    write_pairs(source, rows)
    inputs = tiny_model_and_cache(workdir, source, "preference", MAX_LENGTH)
    started = time.perf_counter()
    compute_reference_logps(inputs["cache"], inputs["model"], dtype=torch.float32, batch_size=2 * BATCH)
    return {
        **inputs, "source": str(source), "lengths": TokenDataset(inputs["cache"]).lengths.tolist(),
        "reference_seconds": time.perf_counter() - started,
    }


# ----- workers (one fresh process each) ------------------------------------------------------------


def worker_ours(setup: dict, steps: int, warmup: int, reference: str, group: bool = False) -> dict:
    import yaml

    from align_core.launch import run
    from align_core.trainers.metrics import MetricsLogger, read_metrics

    out = Path(setup["workdir"]) / f"run-ours-{reference}-{group}-{os.getpid()}"
    config = {
        "train_cfgs": {
            "algorithm": "dpo", "reference": reference, "beta": BETA, "max_steps": steps + warmup + 1,
            "per_device_train_batch_size": BATCH, "per_device_eval_batch_size": 2 * BATCH, "learning_rate": LEARNING_RATE,
            "lr_scheduler_type": "cosine", "save_interval": 10_000, "zero_stage": 0, "length_grouping": group,
            "max_grad_norm": 1.0, "precision": "fp32",
        },
        "data_cfgs": {"train_datasets": [setup["dataset"]], "max_length": MAX_LENGTH, "truncation": "truncate_prompt_left",
                      "token_cache_dir": str(Path(setup["cache"]).parent)},
        "model_cfgs": {"model_name_or_path": setup["model"]},
        "logger_cfgs": {"output_dir": str(out), "log_type": "none", "progress_bar": False},
    }
    config_file = out.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(config))
    # instrumentation: the loop logs each step's metrics right after its optimizer step
    clock, log_step = StepClock(), MetricsLogger.log
    MetricsLogger.log = lambda logger, step, metrics: (clock.tick(), log_step(logger, step, metrics))[1]
    run(config_file)
    return summarize([r["tokens"] for r in read_metrics(out)], clock, warmup)


def worker_trl(setup: dict, steps: int, warmup: int, precompute: bool) -> dict:
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from align_core.models.registry import load_causal_lm, load_tokenizer

    pairs = datasets.Dataset.from_json(setup["source"])
    tokens: list[float] = []
    clock = StepClock()

    class ClockCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            clock.tick()

    started = time.perf_counter()
    trainer = DPOTrainer(
        model=load_causal_lm(setup["model"]),
        processing_class=load_tokenizer(setup["model"]),
        train_dataset=pairs,
        args=DPOConfig(
            output_dir=str(Path(setup["workdir"]) / "run-trl"), max_steps=steps + warmup + 1,
            per_device_train_batch_size=BATCH, precompute_ref_batch_size=2 * BATCH, learning_rate=LEARNING_RATE,
            lr_scheduler_type="cosine", max_grad_norm=1.0, beta=BETA, loss_type=["sigmoid"], use_cpu=True, bf16=False,
            report_to="none", save_strategy="no", logging_steps=10_000, max_length=MAX_LENGTH, truncation_mode="keep_end",
            precompute_ref_log_probs=precompute, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        ),
        callbacks=[ClockCallback()],
    )
    collate = trainer.data_collator

    def counting_collator(examples):
        batch = collate(examples)
        tokens.append(float(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting_collator
    setup_seconds = time.perf_counter() - started  # tokenisation (+ the reference precompute)
    trainer.train()
    return {**summarize(tokens, clock, warmup), "setup_seconds": setup_seconds}


def worker(variant: str, setup_file: Path, steps: int, warmup: int) -> None:
    setup = json.loads(setup_file.read_text())
    measure = {
        "ours-cached": lambda: worker_ours(setup, steps, warmup, "cached"),
        "ours-live": lambda: worker_ours(setup, steps, warmup, "live"),
        "ours-grouped": lambda: worker_ours(setup, steps, warmup, "cached", group=True),
        "trl": lambda: worker_trl(setup, steps, warmup, precompute=True),
        "trl-live": lambda: worker_trl(setup, steps, warmup, precompute=False),
    }[variant]
    emit({"variant": variant, **measure()})


# ----- main ----------------------------------------------------------------------------------------


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], VARIANTS, rows=400, workdir="bench_out/dpo")
    setup = setup_or_work(args, prepare, worker)
    if setup is None:
        return
    lengths = setup["lengths"]
    print(f"{len(lengths)} pairs, longest sequence per pair median {statistics.median(lengths):.0f} tokens "
          f"(min {min(lengths)}, max {max(lengths)}); batch {BATCH} pairs; {args.steps} timed steps", flush=True)
    print(f"reference column (ours, once per dataset and reference model): {setup['reference_seconds']:.1f} s", flush=True)

    medians = run_rounds(lambda variant: run_worker(__file__, variant, Path(setup['file']), args.steps, args.warmup),
                         args.variants.split(","), args.rounds)
    print("\nvariant        tokens/s  per CPU s   step ms  CPU ms   vs trl (wall, CPU)")
    for variant, value in medians.items():
        versus = "-"
        if "trl" in medians:
            versus = ", ".join(f"{value[key] / medians['trl'][key]:.2f}x" for key in ("tokens_per_second", "tokens_per_cpu_second"))
        print(f"{variant:12s} {value['tokens_per_second']:10.0f} {value['tokens_per_cpu_second']:10.0f} "
              f"{value['step_seconds'] * 1000:9.1f} {value['step_cpu_seconds'] * 1000:7.1f}   {versus}")
    print()
    if {"ours-cached", "ours-live"} <= set(medians):
        wall, cpu = (medians["ours-cached"][key] / medians["ours-live"][key] for key in ("step_seconds", "step_cpu_seconds"))
        print(f"target: ours-cached / ours-live step time {wall:.2f}x wall, {cpu:.2f}x CPU (<= 0.7)")
    for ours in ("ours-cached", "ours-grouped"):
        if {ours, "trl"} <= set(medians):
            wall, cpu = (medians[ours][key] / medians["trl"][key] for key in ("tokens_per_second", "tokens_per_cpu_second"))
            print(f"target: {ours} / trl (precomputed reference) tokens/s {wall:.2f}x wall, {cpu:.2f}x CPU (>= 1.3)")
    save_results("dpo", {"variants": medians, "reference_seconds": setup["reference_seconds"]})


if __name__ == "__main__":
    main()
