"""Data-contract throughput: validation time as a fraction of materialisation, measured in one run.

    python bench/validate.py [--rows 200000] [--repeats 3] [--kind supervised|preference] [--workdir bench_out/validate]

Materialises Alpaca-shaped rows into supervised shards, or UltraFeedback-shaped pairs (prompts of 6-20
words, answers of 20-120 and 20-80 words, scores in meta) into preference shards (``materialize_dataset``,
the library call the flow wraps; in one process and with its default worker count), then validates the
folder with its suite (``validate_dataset``, one process). All timed in this process, medians over
``--repeats``; GX's one-time import is reported apart because a long-lived worker pays it once.
Prints rows/s and the ratios (target <= 25%).

To compare validation with another version of the contracts, run the same command with
``PYTHONPATH=<a checkout's root>`` in front: ``data_contracts`` then comes from there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path


def save_results(name: str, results: dict) -> None:
    """bench/harness.py's ``save_results`` from this checkout, whichever ``bench`` package PYTHONPATH put first (a
    baseline checkout's harness may predate it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_harness_of_this_checkout", Path(__file__).with_name("harness.py"))
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    harness.save_results(name, results)


def timed(function, repeats: int) -> tuple[float, object]:
    """Median seconds of ``repeats`` calls, and the last call's return value."""
    seconds, value = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), value


def write_ultrafeedback_rows(path: Path, rows: int, seed: int = 0) -> None:
    """UltraFeedback-shaped pairs (HuggingFaceH4/ultrafeedback_binarized's fields) of realistic length."""
    import json
    import random

    from bench.materialize import WORDS

    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w") as handle:
        for index in range(rows):
            prompt = text(rng.randint(6, 20))
            turns = [{"role": "user", "content": prompt}]
            row = {
                "prompt": prompt,
                "prompt_id": str(index),
                "chosen": [*turns, {"role": "assistant", "content": text(rng.randint(20, 120))}],
                "rejected": [*turns, {"role": "assistant", "content": text(rng.randint(20, 80))}],
                "score_chosen": 8.0,
                "score_rejected": 5.0,
            }
            handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kind", choices=("supervised", "preference"), default="supervised")
    parser.add_argument("--workdir", type=Path, default=Path("bench_out/validate"))
    parser.add_argument("--name", help="the results file, bench/results/NAME.json (default: validate-KIND)")
    args = parser.parse_args()

    from align_core.materialize import materialize_dataset
    from bench.materialize import write_alpaca_rows

    workdir = args.workdir.absolute()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    template = "Alpaca" if args.kind == "supervised" else "UltraFeedback"
    source = workdir / f"{template.lower()}.jsonl"
    (write_alpaca_rows if args.kind == "supervised" else write_ultrafeedback_rows)(source, args.rows)
    print(f"source: {args.rows} {template} rows, {source.stat().st_size / 1e6:.0f} MB", flush=True)

    attempt = iter(range(2 * args.repeats))  # a fresh out root each time: a second build would be a cache hit

    def materialize(workers: int | None):
        return materialize_dataset(source, template, args.kind, workdir / f"shards-{next(attempt)}", workers=workers)

    materialize_seconds, dataset_dir = timed(lambda: materialize(1), args.repeats)
    print(f"materialize (1 process):   {materialize_seconds:6.2f} s  {args.rows / materialize_seconds:9.0f} rows/s", flush=True)
    parallel_seconds, _ = timed(lambda: materialize(None), args.repeats)
    print(f"materialize (default workers, {os.cpu_count()} cpus): {parallel_seconds:6.2f} s  {args.rows / parallel_seconds:9.0f} rows/s", flush=True)

    start = time.perf_counter()
    import great_expectations  # noqa: F401  (its import is a one-time cost per process)

    print(f"great_expectations import: {time.perf_counter() - start:6.2f} s (once per process)", flush=True)
    from data_contracts.runner import validate_dataset

    validate_seconds, result = timed(lambda: validate_dataset(dataset_dir), args.repeats)
    print(f"validate:                  {validate_seconds:6.2f} s  {result.rows / validate_seconds:9.0f} rows/s  ({len(result.results)} expectations, {'passed' if result.passed else 'FAILED'})")
    print(f"validation / materialisation time: {100 * validate_seconds / materialize_seconds:.1f}% of 1 process, "
          f"{100 * validate_seconds / parallel_seconds:.1f}% of default workers (target <= 25%)")
    save_results(args.name or f"validate-{args.kind}", {
        "rows": args.rows, "kind": args.kind, "materialize_seconds": materialize_seconds,
        "materialize_default_workers_seconds": parallel_seconds, "validate_seconds": validate_seconds,
        "validation_fraction": validate_seconds / materialize_seconds, "expectations": len(result.results),
    })


if __name__ == "__main__":
    sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: a baseline checkout may come first
    main()
