"""Materialisation throughput: alignflow's flow vs a datasets baseline, measured in the same run.

    python bench/materialize.py [--rows 2000000] [--workdir bench_out/materialize]

Baseline: ``datasets.load_dataset("json")`` + batched ``map(format)`` into the same nested
messages + ``save_to_disk``, the way align-anything/TRL scripts prepare data. alignflow does more
(quarantine, digests, manifest, atomic publish, Prefect task states). Prints rows/s for both, the
ratio (target >= 1.0x), and the warm rerun as a fraction of the cold run (target <= 5%).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

WORDS = (  # noqa: SIM905  (a sentence reads better than 33 quoted words)
    "the model should answer the question carefully and explain each step of its reasoning so that "
    "a reader can follow why the result holds for every case we care about in alignment research"
).split()


def write_alpaca_rows(path: Path, rows: int, seed: int = 0) -> None:
    """Alpaca-shaped rows (instruction, input, output) of realistic length, 1% deliberately bad."""
    rng = random.Random(seed)

    def text(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    with open(path, "w") as handle:
        for index in range(rows):
            row = {"instruction": text(rng.randint(6, 20)), "input": text(8) if index % 3 == 0 else "", "output": text(rng.randint(20, 80))}
            if index % 100 == 99:
                row["output"] = ""  # quarantined by alignflow as empty_text
            handle.write(json.dumps(row) + "\n")


def run_baseline(source: Path, out: Path, cache_dir: Path) -> float:
    import datasets

    datasets.disable_progress_bars()

    def to_messages(batch):
        messages = []
        for instruction, extra, output in zip(batch["instruction"], batch["input"], batch["output"]):
            prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
            messages.append(
                [
                    {"role": "user", "content": [{"type": "text", "text": prompt}]},
                    {"role": "assistant", "content": [{"type": "text", "text": output}]},
                ]
            )
        return {"messages": messages}

    start = time.perf_counter()
    dataset = datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(cache_dir))
    dataset = dataset.map(to_messages, batched=True, remove_columns=dataset.column_names)
    dataset.save_to_disk(str(out))
    return time.perf_counter() - start


def run_alignflow(source: Path, out: Path) -> tuple[float, str]:
    from flows.materialize import materialize

    start = time.perf_counter()
    dataset_dir = materialize(source=str(source), template="Alpaca", kind="supervised", out=str(out), validate_contract=False)
    return time.perf_counter() - start, dataset_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("bench_out/materialize"))
    args = parser.parse_args()

    workdir = args.workdir.absolute()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    source = workdir / "alpaca.jsonl"
    write_alpaca_rows(source, args.rows)
    print(f"source: {args.rows} Alpaca rows, {source.stat().st_size / 1e6:.0f} MB", flush=True)

    baseline_seconds = run_baseline(source, workdir / "baseline", workdir / "hf_cache")
    print(f"baseline  datasets load+map+save_to_disk: {baseline_seconds:7.2f} s  {args.rows / baseline_seconds:9.0f} rows/s", flush=True)

    cold_seconds, dataset_dir = run_alignflow(source, workdir / "shards")
    print(f"alignflow materialize flow (cold):        {cold_seconds:7.2f} s  {args.rows / cold_seconds:9.0f} rows/s", flush=True)
    warm_seconds, warm_dir = run_alignflow(source, workdir / "shards")
    assert warm_dir == dataset_dir
    print(f"alignflow materialize flow (warm rerun):  {warm_seconds:7.2f} s", flush=True)

    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    print(f"rows written {manifest['rows']}, quarantined {manifest['quarantined']} {manifest['quarantine_reasons']}")
    print(f"ratio alignflow/baseline throughput: {baseline_seconds / cold_seconds:.2f}x (target >= 1.0x)")
    print(f"warm rerun / cold run: {100 * warm_seconds / cold_seconds:.1f}% (target <= 5%)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
