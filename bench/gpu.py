"""GPU throughput and MFU: our engine vs a plain bf16 PyTorch loop, SFT and DPO, padded and packed.

    python bench/gpu.py [--size 150m] [--steps 30] [--warmup 5] [--rounds 1] [--peak-tflops 989] [--attn sdpa]
    python bench/gpu.py --smoke        # a tiny model, a few steps: runs on CPU, tests the script

A Llama is built offline from a config (``--size``: tiny, 150m, 400m, 1b; the tokenizer is a BPE trained
on the local corpus, vocabulary ~2k), and conversations cut from that corpus are materialised and
tokenised as supervised rows and preference pairs (a prompt and two answers). Each variant trains in its
own fresh process (``bench/harness.py``), rounds interleave them, medians over rounds are reported, and
every ratio compares numbers from the same run. Variants are ``LOOP-ALGO[-packed][-liger][-compile]``:

  plain-sft         a hand-written loop: fp32 master weights, bf16 autocast (on CUDA), fused AdamW, the
                    model's own loss, shuffled padded batches
  plain-dpo         the same loop for DPO: policy log-probs from the full logits, reference log-probs
                    computed once before the timed steps (as our cached column)
  ours-sft          align_core's SFTTrainer through align_core.launch (ZeRO-0, precision auto: bf16 on
                    CUDA), the same shuffled rows per micro-batch
  ours-dpo          DPOTrainer, reference: cached (the column is built before training, untimed)
  ...-packed        train_cfgs.packing: each micro-batch's sequences packed padding-free
  ...-liger         train_cfgs.liger_kernel (CUDA with liger-kernel only)
  ...-compile       train_cfgs.torch_compile (CUDA only)

Every variant, ours and plain alike, loads the model with ``--attn`` (transformers' attn_implementation, our
``model_cfgs.attn_implementation``); default flash_attention_2 where it runs (CUDA and the flash-attn package),
else sdpa. Packed batches reach FlashAttention's varlen kernel without a mask; sdpa gets a dense (L, L) one.

Unit: non-pad tokens per second over the timed steps (SFT: the rows' tokens; DPO: the chosen and the
rejected sequences' tokens), everything between two optimizer steps counted. MFU = 6 x N x tokens/s over
the device's peak dense bf16 FLOP/s (N: every parameter of the model; a table of known cards, or
``--peak-tflops``); on CPU the peak is a measured one-thread fp32 matmul rate, so MFU there only checks
the arithmetic (at the tiny size attention, which 6N leaves out, is most of a step's FLOPs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_core.config import AttnImplementation
from bench.harness import (
    StepClock,
    emit,
    matmul_flops_per_second,
    parse_arguments,
    run_rounds,
    run_worker,
    save_results,
    summarize,
)

BETA = 0.1
LEARNING_RATE = 1e-4
SIZES = {  # build_tiny_model arguments; parameters at the ~2k vocabulary of the tiny tokenizer
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128},  # ~0.4M
    "150m": {"hidden_size": 1024, "num_layers": 12, "num_heads": 16, "intermediate_size": 2816},  # ~158M
    "400m": {"hidden_size": 1536, "num_layers": 16, "num_heads": 12, "intermediate_size": 4096},  # ~460M
    "1b": {"hidden_size": 2048, "num_layers": 20, "num_heads": 16, "intermediate_size": 5632},  # ~1.03B
}
# Peak dense (no sparsity) bf16 tensor-core TFLOP/s from the vendors' data sheets, matched in this order
# against torch.cuda.get_device_name() (more specific names first).
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)
DEFAULT_VARIANTS = ("plain-sft", "ours-sft", "ours-sft-packed", "plain-dpo", "ours-dpo", "ours-dpo-packed")


def shape(smoke: bool) -> dict:
    """Rows, batch and lengths: a smoke run is seconds on CPU; the full one is ~600-token rows at 1024."""
    if smoke:
        return {"rows": 32, "max_length": 128, "sft_batch": 4, "dpo_batch": 2, "prompt_words": (5, 20), "answer_words": (10, 40)}
    return {"rows": 1200, "max_length": 1024, "sft_batch": 16, "dpo_batch": 8, "prompt_words": (40, 200), "answer_words": (100, 450)}


def peak_flops(device_name: str | None, override_tflops: float | None = None) -> tuple[float | None, str]:
    """(peak FLOP/s, where it came from) for a CUDA device name; None when unknown and not overridden."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    for marker, tflops in PEAK_BF16_TFLOPS:
        if device_name and marker in device_name:
            return tflops * 1e12, f"{marker} bf16 dense"
    return None, "unknown device: pass --peak-tflops"


def mfu(tokens_per_second: float, parameters: int, peak: float | None) -> float | None:
    """Model FLOPs utilisation: 6 N FLOPs per trained token (forward 2N, backward 4N) over the peak."""
    return None if not peak else 6 * parameters * tokens_per_second / peak


# ----- setup (parent process) ------------------------------------------------------------------------


def write_rows(folder: Path, count: int, prompt_words: tuple[int, int], answer_words: tuple[int, int]) -> tuple[Path, Path]:
    """Supervised conversations and preference pairs cut from the tokenizer's own corpus."""
    from align_core.models.tiny import corpus_texts

    words = " ".join(corpus_texts()).split()
    rng = random.Random(0)

    def passage(bounds: tuple[int, int]) -> str:
        length = rng.randint(*bounds)
        start = rng.randrange(len(words) - length)
        return " ".join(words[start : start + length])

    supervised, preference = folder / "supervised.jsonl", folder / "preference.jsonl"
    with supervised.open("w") as sft_rows, preference.open("w") as pairs:
        for _ in range(count):
            prompt = [{"role": "user", "content": passage(prompt_words)}]
            answer = [{"role": "assistant", "content": passage(answer_words)}]
            sft_rows.write(json.dumps({"messages": prompt + answer}) + "\n")
            rejected = [{"role": "assistant", "content": passage(answer_words)}]
            pairs.write(json.dumps({"prompt": prompt, "chosen": answer, "rejected": rejected}) + "\n")
    return supervised, preference


def attention(requested: str | None) -> str:
    """The attention implementation every variant loads with: ``requested``, else flash_attention_2 where it runs
    (transformers' check: a CUDA device and flash-attn >= 2.3.3), else sdpa. A FlashAttention this machine cannot
    run stops the script here, in one line, before the setup."""
    from deepspeed.accelerator import get_accelerator
    from transformers.utils import is_flash_attn_2_available

    from align_core.errors import UsageError
    from align_core.trainers.throughput import check_flash_attention

    attn = requested or ("flash_attention_2" if is_flash_attn_2_available() else "sdpa")
    try:
        check_flash_attention(attn, get_accelerator().device_name(), "auto")
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None
    return attn


def prepare(workdir: Path, size: str, smoke: bool, attn: str = "sdpa") -> dict:
    """The model, both datasets and their token caches, and the attention implementation: what every variant reads."""
    from align_core.data import TokenDataset, tokenize_dataset
    from align_core.materialize import materialize_dataset
    from align_core.models.tiny import build_tiny_model

    config = shape(smoke)
    model_dir = workdir / f"model-{size}"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir, max_position_embeddings=2 * config["max_length"], **SIZES[size])
    supervised, preference = write_rows(workdir, config["rows"], config["prompt_words"], config["answer_words"])
    caches, datasets = {}, {}
    for algorithm, source, kind in (("sft", supervised, "supervised"), ("dpo", preference, "preference")):
        datasets[algorithm] = str(materialize_dataset(source, "Messages", kind, workdir / "datasets", workers=1))
        caches[algorithm] = str(tokenize_dataset(datasets[algorithm], model_dir, config["max_length"], "truncate_prompt_left",
                                                 workdir / "token_cache"))
    lengths = {algorithm: TokenDataset(cache).lengths.tolist() for algorithm, cache in caches.items()}
    return {**config, "workdir": str(workdir), "model": str(model_dir), "size": size, "attn": attn, "datasets": datasets,
            "caches": caches, "lengths": lengths, "parameters": parameter_count(model_dir)}


def parameter_count(model_dir: Path) -> int:
    from align_core.models.registry import load_causal_lm

    return sum(parameter.numel() for parameter in load_causal_lm(model_dir).parameters())


# ----- workers (one fresh process each; ``measure`` also runs in-process) ---------------------------


def parse_variant(variant: str) -> dict:
    """``ours-dpo-packed-liger`` -> loop, algorithm and the switches."""
    loop, algorithm, *switches = variant.split("-")
    known = {"packed", "liger", "compile"}
    if loop not in ("plain", "ours") or algorithm not in ("sft", "dpo") or not set(switches) <= known:
        raise ValueError(f"unknown variant {variant!r}: LOOP-ALGO[-packed][-liger][-compile], LOOP plain|ours, ALGO sft|dpo")
    if loop == "plain" and switches:
        raise ValueError(f"{variant}: the plain loop has no switches (they are ours)")
    return {"loop": loop, "algorithm": algorithm, **{switch: switch in switches for switch in known}}


@contextlib.contextmanager
def clocked_steps(clock: StepClock) -> Iterator[None]:
    """Tick ``clock`` when the loop logs a step (right after its optimizer step); restored afterwards."""
    from align_core.trainers.metrics import MetricsLogger

    log_step = MetricsLogger.log
    MetricsLogger.log = lambda logger, step, metrics: (clock.tick(), log_step(logger, step, metrics))[1]
    try:
        yield
    finally:
        MetricsLogger.log = log_step


def measure_ours(setup: dict, name: str, variant: dict, steps: int, warmup: int) -> dict:
    import os

    import yaml

    from align_core.launch import run
    from align_core.trainers.metrics import read_metrics

    algorithm = variant["algorithm"]
    out = Path(setup["workdir"]) / f"run-{name}-{os.getpid()}"
    train_cfgs = {
        "algorithm": algorithm, "max_steps": steps + warmup + 1, "per_device_train_batch_size": setup[f"{algorithm}_batch"],
        "learning_rate": LEARNING_RATE, "lr_scheduler_type": "cosine", "save_interval": 1_000_000, "zero_stage": 0,
        "max_grad_norm": 1.0, "seed": 0, "packing": variant["packed"], "liger_kernel": variant["liger"],
        "torch_compile": variant["compile"],
    }
    if algorithm == "dpo":
        train_cfgs.update(beta=BETA, reference="cached")
    config = {
        "train_cfgs": train_cfgs,
        "data_cfgs": {"train_datasets": [setup["datasets"][algorithm]], "max_length": setup["max_length"],
                      "truncation": "truncate_prompt_left", "token_cache_dir": str(Path(setup["caches"][algorithm]).parent)},
        "model_cfgs": {"model_name_or_path": setup["model"], "attn_implementation": setup["attn"]},
        "logger_cfgs": {"output_dir": str(out), "log_type": "none", "progress_bar": False},
    }
    config_file = out.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(config))
    clock = StepClock()
    with clocked_steps(clock):
        run(config_file)
    records = read_metrics(out)
    return {**summarize([r["tokens"] for r in records], clock, warmup), "first_loss": records[0]["loss"]}


def measure_plain(setup: dict, algorithm: str, steps: int, warmup: int) -> dict:
    """The hand-written loop on the same rows in the same order (the sampler ours uses, shuffled, seed 0)."""
    import torch
    from deepspeed.accelerator import get_accelerator
    from transformers import get_scheduler

    from align_core.data import LengthGroupedSampler, TokenDataset
    from align_core.losses import dpo_loss, sequence_logps
    from align_core.models.registry import load_causal_lm

    accelerator = get_accelerator()
    device = torch.device(accelerator.current_device_name())
    on_cuda = device.type == "cuda"
    torch.manual_seed(0)
    model = load_causal_lm(setup["model"], attn_implementation=setup["attn"]).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), fused=on_cuda)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=steps + warmup + 1)
    rows = TokenDataset(setup["caches"][algorithm])
    collate = rows.collator()
    order = LengthGroupedSampler(rows.lengths, setup[f"{algorithm}_batch"], seed=0, group_by_length=False).batches()
    batches = [collate([rows[i] for i in indices]).to(device) for indices in order[: steps + warmup + 1]]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_cuda)

    def policy_logps(batch):
        return sequence_logps(model(**batch.model_kwargs(), use_cache=False).logits, batch.labels)[0]

    references = []
    if algorithm == "dpo":  # once, before the timed steps, as a cached reference column is
        with torch.no_grad(), autocast:
            references = [policy_logps(batch).float() for batch in batches]
    tokens, losses, clock = [], [], StepClock()
    accelerator.synchronize()
    clock.tick()
    for index, batch in enumerate(batches):
        with autocast:
            if algorithm == "sft":
                loss = model(**batch.model_kwargs(), labels=batch.labels, use_cache=False).loss
            else:
                chosen, rejected = policy_logps(batch).chunk(2)
                loss = dpo_loss(chosen, rejected, *references[index].chunk(2), BETA, 0.0)[0].mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # a sync point, as our loop's metrics are
        accelerator.synchronize()
        clock.tick()
        tokens.append(float(batch.non_pad_tokens()))
    # StepClock: step k lasts from tick k-1 to tick k; the first tick marks the start, so no step is lost
    return {**summarize([0.0, *tokens], clock, warmup), "first_loss": losses[0]}


def measure(variant: str, setup: dict, steps: int, warmup: int) -> dict:
    parsed = parse_variant(variant)
    if parsed["loop"] == "plain":
        return measure_plain(setup, parsed["algorithm"], steps, warmup)
    return measure_ours(setup, variant, parsed, steps, warmup)


def worker(variant: str, setup_file: Path, steps: int, warmup: int) -> None:
    emit(measure(variant, json.loads(setup_file.read_text()), steps, warmup))  # numbers only: rounds take medians


# ----- main ----------------------------------------------------------------------------------------


def device_peak(override_tflops: float | None) -> tuple[str, float | None, str]:
    """(device name, peak FLOP/s, source): a CUDA card's from the table; on CPU the measured matmul rate."""
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        return (name, *peak_flops(name, override_tflops))
    if override_tflops:
        return ("cpu", *peak_flops(None, override_tflops))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers run (bench/harness.py); restored: a caller's process keeps its own
    try:
        return "cpu", matmul_flops_per_second(), "this CPU's measured one-thread fp32 matmul"
    finally:
        torch.set_num_threads(threads)


def report(setup: dict, medians: dict[str, dict], device: str, peak: float | None, source: str) -> dict:
    """Print the table (tokens/s per wall and per CPU second, step, vs the same algorithm's plain loop, MFU);
    the rows it printed. On a shared CPU the per-CPU-second ratio is the steadier one; on a GPU, wall."""
    parameters = setup["parameters"]
    peak_text = f"{peak / 1e12:.1f} TFLOP/s" if peak else "none"
    print(f"\n{device}; attention {setup['attn']}; peak {peak_text} ({source}); N = {parameters / 1e6:.1f}M parameters")
    print("variant                tokens/s  per CPU s   step ms   vs plain (wall, CPU)      MFU   first loss")
    rows = {}
    for variant, values in medians.items():
        plain = medians.get(f"plain-{parse_variant(variant)['algorithm']}")
        versus = {key: values[key] / plain[key] if plain else None for key in ("tokens_per_second", "tokens_per_cpu_second")}
        utilisation = mfu(values["tokens_per_second"], parameters, peak)
        rows[variant] = {**values, "vs_plain": versus["tokens_per_second"], "vs_plain_cpu": versus["tokens_per_cpu_second"],
                         "mfu": utilisation}
        ratios = ", ".join(f"{ratio:.2f}x" for ratio in versus.values()) if plain else "-"
        print(f"{variant:20s} {values['tokens_per_second']:10.0f} {values['tokens_per_cpu_second']:10.0f} "
              f"{values['step_seconds'] * 1000:9.1f}   {ratios:20s} {f'{utilisation:8.2%}' if utilisation is not None else '       -'}"
              f"   {values['first_loss']:.4f}")
    return rows


def pad_fractions(setup: dict) -> dict[str, float]:
    """Padding share of an epoch of shuffled batches, per algorithm: what packing removes."""
    from align_core.data import LengthGroupedSampler, pad_fraction

    def shuffled(lengths: list[int], batch: int) -> list[list[int]]:
        return LengthGroupedSampler(lengths, batch, seed=0, group_by_length=False).batches()

    return {algorithm: pad_fraction(lengths, shuffled(lengths, setup[f"{algorithm}_batch"]))
            for algorithm, lengths in setup["lengths"].items()}


def gpu_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", choices=tuple(SIZES), default="150m")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 3 timed steps, 1 round: a CPU check of the script")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak bf16 TFLOP/s (default: the table, by name)")
    parser.add_argument("--attn", choices=get_args(AttnImplementation),
                        help="attention implementation of every variant (default: flash_attention_2 where it runs, else sdpa)")


def main() -> None:
    from align_core.paths import configure_environment

    # --worker takes any variant name: they are composed (parse_variant checks them)
    args = parse_arguments(__doc__.splitlines()[0], DEFAULT_VARIANTS, rows=None, workdir="bench_out/gpu", rounds=1,
                           workers="any", options=gpu_options)
    configure_environment()
    if args.worker:
        worker(args.worker, args.setup, args.steps, args.warmup)
        return
    if args.smoke:
        args.size, args.steps, args.warmup, args.rounds = "tiny", 3, 1, 1
    variants = args.variants.split(",") if args.variants else list(DEFAULT_VARIANTS)
    for variant in variants:
        parse_variant(variant)  # a typo fails here, before minutes of setup
    attn = attention(args.attn)
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    setup = prepare(workdir, args.size, args.smoke, attn)
    setup_file = workdir / "setup.json"
    setup_file.write_text(json.dumps(setup))
    pads = pad_fractions(setup)
    for algorithm, lengths in setup["lengths"].items():
        print(f"{algorithm}: {len(lengths)} rows, tokens per row (longest sequence) median {statistics.median(lengths):.0f} "
              f"(max {max(lengths)}), batch {setup[f'{algorithm}_batch']}, padding {pads[algorithm]:.1%} shuffled", flush=True)
    print(f"setup {time.perf_counter() - started:.0f} s; {args.steps} timed steps after {args.warmup}; attention {attn}",
          flush=True)
    medians = run_rounds(lambda variant: run_worker(__file__, variant, setup_file, args.steps, args.warmup), variants, args.rounds)
    device, peak, source = device_peak(args.peak_tflops)
    rows = report(setup, medians, device, peak, source)
    save_results("gpu", {"size": args.size, "smoke": args.smoke, "device": device, "attn_implementation": attn,
                         "peak_flops": peak, "peak_source": source,
                         "parameters": setup["parameters"], "pad_fraction": pads, "variants": rows})


if __name__ == "__main__":
    main()
