"""Materialisation throughput: alignflow's flow vs a datasets baseline, measured in the same run.

    python bench/materialize.py [--rows 2000000] [--workdir bench_out/materialize] [--runner local|dask[:ADDRESS]]

Baseline: ``datasets.load_dataset("json")`` + batched ``map(format)`` into the same nested
messages + ``save_to_disk``, the way align-anything/TRL scripts prepare data. alignflow does more
(quarantine, digests, manifest, atomic publish, Prefect task states). Prints rows/s for both, the
ratio (target >= 1.2x), and the warm rerun as a fraction of the cold run (target <= 5%); then a cold run
with Prefect's server already up (the first flow of a process also starts its temporary server), the same
build without Prefect (``build_dataset``: what the flow adds is its server start and task states) and
the row path (every row through the template's row method, no batch formatting) for comparison.
CPU seconds (this process and its finished children) are printed beside wall time: on a shared
machine they move less than wall time does.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
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


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(run, *args) -> tuple[float, float, object]:
    """``(wall seconds, CPU seconds, result)`` of ``run(*args)``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = run(*args)
    return time.perf_counter() - wall, cpu_seconds() - cpu, result


def run_baseline(source: Path, out: Path, cache_dir: Path) -> None:
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

    dataset = datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(cache_dir))
    dataset = dataset.map(to_messages, batched=True, remove_columns=dataset.column_names)
    dataset.save_to_disk(str(out))


def run_alignflow(source: Path, out: Path, runner: str) -> str:
    from flows.materialize import materialize_on

    return materialize_on(runner)(
        source=str(source), template="Alpaca", kind="supervised", out=str(out), validate_contract=False, runner=runner
    )


def run_library(source: Path, out: Path, batch_formatting: bool, workers: int | None = None) -> str:
    from align_core.materialize import MaterializeSpec, build_dataset
    from align_core.sources import fingerprint_source

    spec = MaterializeSpec.checked("Alpaca", "supervised")
    return str(build_dataset(fingerprint_source(source), spec, out, workers, batch_formatting=batch_formatting).path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("bench_out/materialize"))
    parser.add_argument("--runner", default="local", help="the flow's runner: local, dask or dask:ADDRESS")
    parser.add_argument("--no-extra", action="store_true", help="skip the runs without Prefect and on the row path")
    args = parser.parse_args()

    workdir = args.workdir.absolute()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    source = workdir / "alpaca.jsonl"
    write_alpaca_rows(source, args.rows)
    print(f"source: {args.rows} Alpaca rows, {source.stat().st_size / 1e6:.0f} MB", flush=True)

    import datasets  # noqa: F401  (both sides' imports stay outside the timings)

    import flows.materialize  # noqa: F401

    def report(label: str, wall: float, cpu: float) -> None:
        print(f"{label:<42} {wall:7.2f} s  {args.rows / wall:9.0f} rows/s  cpu {cpu:6.2f} s", flush=True)

    baseline_seconds, baseline_cpu, _ = timed(run_baseline, source, workdir / "baseline", workdir / "hf_cache")
    report("baseline  datasets load+map+save_to_disk:", baseline_seconds, baseline_cpu)
    cold_seconds, cold_cpu, dataset_dir = timed(run_alignflow, source, workdir / "shards", args.runner)
    report(f"alignflow materialize flow (cold, {args.runner}):", cold_seconds, cold_cpu)
    warm_seconds, _, warm_dir = timed(run_alignflow, source, workdir / "shards", args.runner)
    assert warm_dir == dataset_dir
    print(f"alignflow materialize flow (warm rerun):   {warm_seconds:7.2f} s", flush=True)
    # The first flow of a process also starts Prefect's temporary server (several seconds, whatever the
    # data); with a server running (`alignflow server start`) a cold run is this one: a new output root
    # and a touched source, so neither the fingerprint nor the build is cached.
    source.touch()
    served_seconds, served_cpu, served_dir = timed(run_alignflow, source, workdir / "shards-served", args.runner)
    assert Path(served_dir).name == Path(dataset_dir).name
    report("alignflow flow (cold, server running):", served_seconds, served_cpu)
    extra: dict[str, float] = {}
    if not args.no_extra:
        runs = (("build_dataset, no Prefect, 1 worker:", "one_worker", True, 1),
                ("build_dataset, no Prefect, 2 workers:", "two_workers", True, 2),
                ("build_dataset, row path only, 1 worker:", "row_path", False, 1))
        for label, name, batch_formatting, workers in runs:
            wall, cpu, _ = timed(run_library, source, workdir / f"library-{name}", batch_formatting, workers)
            report(label, wall, cpu)
            extra[f"library_{name}_seconds"] = wall

    manifest = json.loads((Path(dataset_dir) / "manifest.json").read_text())
    print(f"rows written {manifest['rows']}, quarantined {manifest['quarantined']} {manifest['quarantine_reasons']}")
    print(f"ratio alignflow/baseline throughput: {baseline_seconds / cold_seconds:.2f}x (target >= 1.2x)")
    print(f"  with Prefect's server already running: {baseline_seconds / served_seconds:.2f}x")
    print(f"warm rerun / cold run: {100 * warm_seconds / cold_seconds:.1f}% (target <= 5%)")
    from bench.harness import save_results

    workers_speedup = {"workers_speedup": extra["library_one_worker_seconds"] / extra["library_two_workers_seconds"]} if extra else {}
    save_results("materialize", {
        "rows": args.rows, "runner": args.runner, "baseline_seconds": baseline_seconds, "cold_seconds": cold_seconds,
        "warm_seconds": warm_seconds, "served_seconds": served_seconds, "ratio": baseline_seconds / cold_seconds,
        "ratio_server_running": baseline_seconds / served_seconds, "warm_fraction": warm_seconds / cold_seconds,
        **extra, **workers_speedup,
    })


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
