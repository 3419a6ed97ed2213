"""What a throughput benchmark needs on a shared machine: one fresh process per measurement, a clock
per optimizer step (wall and this process's CPU time), and medians over interleaved rounds.

CPU time is the steadier number here: other jobs on the same cores stretch a step's wall time but
barely its CPU time, as long as each worker runs one thread (``OMP_NUM_THREADS=1``, the default the
workers get). Ratios of medians measured in the same run are what a benchmark reports.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH "


class StepClock:
    """``tick()`` at the end of every optimizer step; step k lasts from tick k-1 to tick k."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def tick(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def step_seconds(self) -> tuple[list[float], list[float]]:
        """(wall, cpu) seconds of every step but the first, which has no start mark."""
        walls = [later[0] - earlier[0] for earlier, later in zip(self.marks, self.marks[1:])]
        cpus = [later[1] - earlier[1] for earlier, later in zip(self.marks, self.marks[1:])]
        return walls, cpus


def summarize(tokens: list[float], clock: StepClock, warmup: int) -> dict[str, float]:
    """Throughput over the steps after ``warmup``; ``tokens[k]`` belongs to step k (the first is dropped)."""
    walls, cpus = clock.step_seconds()
    timed_tokens = tokens[1 : len(walls) + 1][warmup:]
    walls, cpus = walls[warmup:], cpus[warmup:]
    return {
        "tokens_per_second": sum(timed_tokens) / sum(walls),
        "tokens_per_cpu_second": sum(timed_tokens) / sum(cpus),
        "step_seconds": statistics.median(walls),
        "step_cpu_seconds": statistics.median(cpus),
    }


def emit(result: dict) -> None:
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(script: str, variant: str, setup_file: Path, steps: int, warmup: int) -> dict:
    """Run ``script --worker variant`` in a fresh one-thread process; the dict it emitted."""
    env = {"OMP_NUM_THREADS": "1", **os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, script, "--worker", variant, "--setup", str(setup_file), "--steps", str(steps), "--warmup", str(warmup)]
    completed = subprocess.run(command, check=False, capture_output=True, text=True, cwd=REPO, env=env)
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    raise RuntimeError(f"{variant} failed (exit {completed.returncode}):\n{completed.stdout[-2000:]}\n{completed.stderr[-4000:]}")


def run_rounds(run: Callable[[str], dict], variants: list[str], rounds: int) -> dict[str, dict[str, float]]:
    """Interleave the variants round by round (so load swings hit them alike); medians per variant."""
    results: dict[str, list[dict]] = {variant: [] for variant in variants}
    for round_number in range(rounds):
        for variant in variants:
            measured = run(variant)
            results[variant].append(measured)
            print(
                f"round {round_number + 1} {variant:12s} {measured['tokens_per_second']:8.0f} tokens/s "
                f"({measured['tokens_per_cpu_second']:6.0f} per CPU s), step {measured['step_seconds'] * 1000:7.1f} ms "
                f"({measured['step_cpu_seconds'] * 1000:7.1f} CPU ms)",
                flush=True,
            )
    return {variant: {key: statistics.median(m[key] for m in runs) for key in runs[0]} for variant, runs in results.items()}


def parse_arguments(
    description: str,
    variants: tuple[str, ...],
    rows: int | None,
    workdir: str,
    *,
    rounds: int = 3,
    workers: tuple[str, ...] | Literal["any"] | None = None,
    options: Callable[[argparse.ArgumentParser], object] | None = None,
) -> argparse.Namespace:
    """The options every benchmark takes, after the script's own (``options(parser)`` adds them); ``--rows``
    only when ``rows`` is given. ``--worker``/``--setup`` are how ``run_worker`` calls it back: ``--worker``
    takes ``workers`` (default: the variants; ``"any"``: any name, for variants composed of parts the script
    checks itself)."""
    parser = argparse.ArgumentParser(description=description)
    if options:
        options(parser)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=rounds)
    if rows is not None:
        parser.add_argument("--rows", type=int, default=rows)
    parser.add_argument("--workdir", type=Path, default=Path(workdir))
    parser.add_argument("--variants", default=",".join(variants), help=f"comma-separated (default: {','.join(variants)})")
    workers = variants if workers is None else workers
    parser.add_argument("--worker", choices=None if workers == "any" else workers, help=argparse.SUPPRESS)
    parser.add_argument("--setup", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


def tiny_model_and_cache(workdir: Path, source: Path, kind: str, max_length: int) -> dict[str, str]:
    """The default tiny Llama (built once per workdir), ``source`` materialised as ``kind`` with the
    Messages template, and its token cache: the inputs every variant of a benchmark shares."""
    from align_core.data import tokenize_dataset
    from align_core.materialize import materialize_dataset
    from align_core.models.tiny import build_tiny_model

    model_dir = workdir / "model"
    if not (model_dir / "config.json").exists():
        build_tiny_model(model_dir)
    dataset_dir = materialize_dataset(source, "Messages", kind, workdir / "datasets", workers=1)
    cache = tokenize_dataset(dataset_dir, model_dir, max_length, "truncate_prompt_left", workdir / "token_cache")
    return {"model": str(model_dir), "dataset": str(dataset_dir), "cache": str(cache)}


def setup_or_work(args: argparse.Namespace, prepare: Callable[[Path, int], dict], work: Callable[[str, Path, int, int], None]) -> dict | None:
    """A worker process measures its variant and gets None; the parent prepares the shared inputs
    (``prepare(workdir, rows)``), saves them to ``workdir/setup.json`` for the workers, and gets them."""
    from align_core.paths import configure_environment

    configure_environment()
    if args.worker:
        work(args.worker, args.setup, args.steps, args.warmup)
        return None
    workdir = args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    setup = {**prepare(workdir, args.rows), "workdir": str(workdir)}
    setup["file"] = str(workdir / "setup.json")
    Path(setup["file"]).write_text(json.dumps(setup))
    return setup


# ----- results every benchmark saves for `make bench` ---------------------------------------------

RESULTS_DIR = REPO / "bench" / "results"  # ignored by git: measurements belong to a machine and a date


def machine() -> dict:
    """What the numbers were measured on."""
    import platform

    import torch

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def save_results(name: str, results: dict) -> Path:
    """``bench/results/NAME.json``: ``results`` with the date and machine, written atomically."""
    from align_core.io import atomic_write_text

    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "results": results}
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True))
    return path


def matmul_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
    """This process's fp32 matmul FLOP/s on square ``size`` matrices (median of ``repeats``): the ceiling a
    training step's achieved FLOP/s is compared with, under the same thread count as the worker."""
    import torch

    left, right = torch.randn(size, size), torch.randn(size, size)
    torch.mm(left, right)  # warm the kernels and the allocator
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(left, right)
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds)
