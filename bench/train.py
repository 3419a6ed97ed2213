"""SFT throughput: our DeepSpeed loop vs a plain PyTorch loop vs TRL's SFTTrainer, ratios from one run.

    python bench/train.py [--steps 40] [--warmup 5] [--rounds 2] [--rows 800] [--workdir bench_out/train]

Same tiny Llama (build_tiny_model defaults, ~3.7M parameters), same token cache (rows of ~100-250
tokens, assistant-only labels), batch 8, AdamW + cosine schedule + clipping at 1.0, fp32 on CPU.
Each variant trains in its own fresh process (so DeepSpeed, accelerate and the allocator start
equal), rounds interleave the variants, and medians over rounds give the throughput. The unit is
non-pad tokens per second over the timed steps (everything between two optimizer steps counts:
collation, forward, backward, update, metrics). Variants:

  ours          align_core SFTTrainer, ZeRO-0, length-grouped batches (the shipped default)
  ours-random   the same loop with plain shuffled batches: engine overhead alone, like for like
  ours-packed   ours-random with train_cfgs.packing: the same rows per batch packed padding-free
  plain         a hand-written torch loop over plain shuffled batches of the same rows
  trl           trl.SFTTrainer on the same token ids and labels (its default random sampler)

Last, one process alternates an engine step and a plain step on the same batches and prints the
median time ratio: a like-for-like check of the engine that the machine's load swings cannot skew.

Targets: ours >= 0.9x plain and >= 1.2x TRL. Also prints the pad fraction of an epoch with and
without length grouping.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import matmul_flops_per_second, parse_arguments, save_results

BATCH = 8
LEARNING_RATE = 5e-4
VARIANTS = ("ours", "ours-random", "ours-packed", "plain", "trl")


# ----- setup (parent process) ------------------------------------------------------------------------


def write_rows(path: Path, count: int, seed: int = 0) -> None:
    """Conversations cut from the tokenizer's own corpus, sized to ~100-250 tokens each."""
    from align_core.models.tiny import corpus_texts

    words = " ".join(corpus_texts()).split()
    rng = random.Random(seed)

    def passage(length: int) -> str:
        start = rng.randrange(len(words) - length)
        return " ".join(words[start : start + length])

    with path.open("w") as handle:
        for _ in range(count):
            messages = [
                {"role": "user", "content": passage(rng.randint(12, 40))},
                {"role": "assistant", "content": passage(rng.randint(50, 150))},
            ]
            handle.write(json.dumps({"messages": messages}) + "\n")


def prepare(workdir: Path, rows: int) -> dict:
    from align_core.data import TokenDataset, tokenize_dataset
    from align_core.materialize import materialize_dataset
    from align_core.models.tiny import build_tiny_model

    model_dir = workdir / "model"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    source = workdir / "rows.jsonl"
    write_rows(source, rows)
    dataset_dir = materialize_dataset(source, "Messages", "supervised", workdir / "datasets", workers=1)
    cache = tokenize_dataset(dataset_dir, model_dir, 256, "truncate_prompt_left", workdir / "token_cache")
    lengths = TokenDataset(cache).lengths
    return {"model": str(model_dir), "dataset": str(dataset_dir), "cache": str(cache), "lengths": lengths.tolist(),
            "parameters": parameter_count(model_dir)}


def parameter_count(model_dir: Path) -> int:
    """Trainable parameters of the model: 6 x this x tokens is a training step's FLOPs."""
    from transformers import AutoModelForCausalLM

    return sum(parameter.numel() for parameter in AutoModelForCausalLM.from_pretrained(model_dir).parameters())


def pad_fractions(lengths: list[int]) -> tuple[float, float]:
    from align_core.data import LengthGroupedSampler, pad_fraction

    def epoch_pad(group: bool) -> float:
        sampler = LengthGroupedSampler(lengths, BATCH, seed=0, group_by_length=group)
        return pad_fraction(lengths, sampler.batches())

    return epoch_pad(False), epoch_pad(True)


def run_worker(variant: str, setup_file: Path, steps: int, warmup: int) -> float:
    completed = subprocess.run(
        [sys.executable, __file__, "--worker", variant, "--setup", str(setup_file), "--steps", str(steps), "--warmup", str(warmup)],
        check=False, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH "):
            return json.loads(line[6:])["value"]
    raise RuntimeError(f"{variant} failed (exit {completed.returncode}):\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")


# ----- workers (one fresh process each) ------------------------------------------------------------


def throughput(tokens: list[float], seconds: list[float], warmup: int) -> float:
    return sum(tokens[warmup:]) / sum(seconds[warmup:])


def worker_ours(setup: dict, steps: int, warmup: int, group: bool, packing: bool = False) -> float:
    import yaml

    from align_core.launch import run
    from align_core.trainers.metrics import read_metrics

    out = Path(setup["workdir"]) / f"run-ours-{group}-{packing}-{os.getpid()}"
    config = {
        "train_cfgs": {
            "algorithm": "sft", "max_steps": steps + warmup, "per_device_train_batch_size": BATCH,
            "learning_rate": LEARNING_RATE, "lr_scheduler_type": "cosine", "save_interval": 10_000,
            "zero_stage": 0, "length_grouping": group, "max_grad_norm": 1.0, "packing": packing,
        },
        "data_cfgs": {"train_datasets": [setup["dataset"]], "max_length": 256, "truncation": "truncate_prompt_left",
                      "token_cache_dir": str(Path(setup["cache"]).parent)},
        "model_cfgs": {"model_name_or_path": setup["model"]},
        "logger_cfgs": {"output_dir": str(out), "log_type": "none", "progress_bar": False},
    }
    config_file = out.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(config))
    run(config_file)
    records = read_metrics(out)
    return throughput([r["tokens"] for r in records], [r["tokens"] / r["tokens_per_second"] for r in records], warmup)


def worker_plain(setup: dict, steps: int, warmup: int) -> float:
    import torch
    from transformers import get_scheduler

    from align_core.data import LengthGroupedSampler, TokenDataset
    from align_core.models.registry import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm(setup["model"]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=steps + warmup)
    rows = TokenDataset(setup["cache"])
    collate = rows.collator()
    batches = LengthGroupedSampler(rows.lengths, BATCH, seed=0, group_by_length=False).batches()
    tokens, seconds = [], []
    started = time.perf_counter()
    for indices in batches[: steps + warmup]:
        batch = collate([rows[i] for i in indices])
        loss = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        now = time.perf_counter()
        tokens.append(float(batch.attention_mask.sum()))
        seconds.append(now - started)
        started = now
    return throughput(tokens, seconds, warmup)


def worker_trl(setup: dict, steps: int, warmup: int) -> float:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from align_core.data import TokenDataset
    from align_core.models.registry import load_causal_lm, load_tokenizer

    rows = TokenDataset(setup["cache"])
    train = datasets.Dataset.from_dict(
        {
            "input_ids": [rows[i]["input_ids"].tolist() for i in range(len(rows))],
            "labels": [rows[i]["labels"].tolist() for i in range(len(rows))],
        }
    )
    tokens: list[float] = []
    marks: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    trainer = SFTTrainer(
        model=load_causal_lm(setup["model"]),
        processing_class=load_tokenizer(setup["model"]),
        train_dataset=train,
        args=SFTConfig(
            output_dir=str(Path(setup["workdir"]) / "run-trl"), max_steps=steps + warmup + 1,
            per_device_train_batch_size=BATCH, learning_rate=LEARNING_RATE, lr_scheduler_type="cosine",
            max_grad_norm=1.0, use_cpu=True, bf16=False, report_to="none", save_strategy="no",
            logging_steps=10_000, max_length=256, dataloader_num_workers=0, seed=0, disable_tqdm=True,
        ),
        callbacks=[StepClock()],
    )
    collate = trainer.data_collator

    def counting_collator(examples):
        tokens.append(float(sum(len(example["input_ids"]) for example in examples)))
        return collate(examples)

    trainer.data_collator = counting_collator
    trainer.train()
    # step k runs from the end of step k-1 to its own end; the first step has no start mark, so drop it
    seconds = [later - earlier for earlier, later in itertools.pairwise(marks)]
    return throughput(tokens[1 : len(seconds) + 1], seconds, warmup)


def worker_interleaved(setup: dict, steps: int, warmup: int) -> float:
    """Median per-step time ratio plain / engine, the two alternating step by step in one process.

    On a shared machine whose load swings between runs, alternation exposes both to the same load:
    the like-for-like cost of the DeepSpeed engine + our loss over a hand-written step.
    """
    import torch

    from align_core.config import TrainCfgs
    from align_core.data import LengthGroupedSampler, TokenDataset
    from align_core.losses import sft_loss
    from align_core.models.registry import load_causal_lm
    from align_core.trainers.engine import Engine, deepspeed_config, setup_distributed

    setup_distributed()
    rows = TokenDataset(setup["cache"])
    collate = rows.collator()
    batches = [collate([rows[i] for i in b]) for b in LengthGroupedSampler(rows.lengths, BATCH, seed=0, group_by_length=False).batches()]
    train_cfgs = TrainCfgs(zero_stage=0, learning_rate=LEARNING_RATE, max_grad_norm=1.0)
    engine = Engine(load_causal_lm(setup["model"]), train_cfgs, deepspeed_config(train_cfgs, torch.float32), steps + warmup)
    plain = load_causal_lm(setup["model"]).train()
    optimizer = torch.optim.AdamW(plain.parameters(), lr=LEARNING_RATE)

    def engine_step(batch):
        logits = engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        nll_sum, n_tokens = sft_loss(logits, batch.labels)
        engine.backward(nll_sum / n_tokens, last=True)
        engine.step()

    def plain_step(batch):
        plain(**batch.model_kwargs(), labels=batch.labels).loss.backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ratios = []
    for index in range(steps + warmup):
        batch = batches[index % len(batches)]
        started = time.perf_counter()
        engine_step(batch)
        middle = time.perf_counter()
        plain_step(batch)
        if index >= warmup:
            ratios.append((time.perf_counter() - middle) / (middle - started))
    return statistics.median(ratios)


def worker(variant: str, setup_file: Path, steps: int, warmup: int) -> None:
    setup = json.loads(setup_file.read_text())
    measure = {
        "ours": lambda: worker_ours(setup, steps, warmup, group=True),
        "ours-random": lambda: worker_ours(setup, steps, warmup, group=False),
        "ours-packed": lambda: worker_ours(setup, steps, warmup, group=False, packing=True),
        "plain": lambda: worker_plain(setup, steps, warmup),
        "trl": lambda: worker_trl(setup, steps, warmup),
        "interleaved": lambda: worker_interleaved(setup, steps, warmup),
    }[variant]
    print("BENCH " + json.dumps({"variant": variant, "value": measure()}), flush=True)


# ----- main ----------------------------------------------------------------------------------------


def main() -> None:
    args = parse_arguments(__doc__.splitlines()[0], VARIANTS, rows=800, workdir="bench_out/train",
                           workers=(*VARIANTS, "interleaved"))
    from align_core.paths import configure_environment

    configure_environment()
    if args.worker:
        worker(args.worker, args.setup, args.steps, args.warmup)
        return

    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    setup = {**prepare(workdir, args.rows), "workdir": str(workdir)}
    setup_file = workdir / "setup.json"
    setup_file.write_text(json.dumps(setup))
    lengths = setup["lengths"]
    print(f"{len(lengths)} rows, tokens per row median {statistics.median(lengths):.0f} "
          f"(min {min(lengths)}, max {max(lengths)}); batch {BATCH}; {args.steps} timed steps", flush=True)
    shuffled, grouped = pad_fractions(lengths)
    print(f"pad fraction over an epoch: shuffled {shuffled:.1%}, length-grouped {grouped:.1%}", flush=True)

    variants = args.variants.split(",")
    results: dict[str, list[float]] = {variant: [] for variant in variants}
    for round_number in range(args.rounds):
        for variant in variants:
            value = run_worker(variant, setup_file, args.steps, args.warmup)
            results[variant].append(value)
            print(f"round {round_number + 1} {variant:12s} {value:8.0f} non-pad tokens/s", flush=True)
    medians = {variant: statistics.median(values) for variant, values in results.items()}
    print("\nvariant        tokens/s   vs plain   vs trl")
    for variant, value in medians.items():
        versus = [f"{value / medians[base]:7.2f}x" if base in medians else "      -" for base in ("plain", "trl")]
        print(f"{variant:12s} {value:10.0f}   {versus[0]}   {versus[1]}")
    interleaved = run_worker("interleaved", setup_file, args.steps, args.warmup)
    print(f"\nengine step vs plain step, alternating in one process: {interleaved:.2f}x (plain time / engine time)")
    if {"ours", "plain", "trl"} <= set(medians):
        print(f"\ntargets: ours/plain {medians['ours'] / medians['plain']:.2f} (>= 0.9), "
              f"ours/trl {medians['ours'] / medians['trl']:.2f} (>= 1.2)")
    matmul = matmul_flops_per_second()
    achieved = {variant: 6 * setup["parameters"] * value for variant, value in medians.items()}
    print(f"\nachieved FLOP/s (6 x {setup['parameters'] / 1e6:.1f}M parameters x tokens/s) as a fraction of this "
          f"machine's fp32 matmul {matmul / 1e9:.1f} GFLOP/s: "
          + ", ".join(f"{variant} {flops / matmul:.1%}" for variant, flops in achieved.items()))
    save_results("train", {"tokens_per_second": medians, "interleaved_engine_vs_plain": interleaved,
                           "pad_fraction": {"shuffled": shuffled, "length_grouped": grouped},
                           "flops_fraction": {variant: flops / matmul for variant, flops in achieved.items()},
                           "matmul_flops_per_second": matmul, "parameters": setup["parameters"]})


if __name__ == "__main__":
    main()
