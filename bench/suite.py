"""``make bench``: every benchmark, one after another, then one summary table of the ratios they measured.

    python bench/suite.py [--only materialize,train] [--quick]

Each benchmark runs in its own process with its documented defaults (``--quick``: smaller inputs, for a
check that the suite works, not for figures), saves ``bench/results/NAME.json`` (ignored by git) and
prints its own detail; the table below reads those files, so it also summarises benchmarks run by hand.
Run it on a quiet machine: nothing else on the cores (no test suite, no second benchmark).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import RESULTS_DIR

# The data contracts before issue 14's dataset-level checks: validation may cost at most 2x what it cost there.
CONTRACTS_BEFORE = "e4c7a57^"
BEFORE_CHECKOUT = REPO / "bench_out" / "contracts-before"

# name -> (script and arguments, the smaller arguments of --quick); a name ending in -before runs the same
# script with the CONTRACTS_BEFORE checkout first on PYTHONPATH (its data_contracts and align_core)
BENCHMARKS = {
    "materialize": (["bench/materialize.py"], ["--rows", "100000"]),
    "validate-supervised": (["bench/validate.py"], ["--rows", "20000", "--repeats", "1"]),
    "validate-preference": (["bench/validate.py", "--kind", "preference"], ["--rows", "20000", "--repeats", "1"]),
    "validate-supervised-before": (["bench/validate.py", "--name", "validate-supervised-before"],
                                   ["--rows", "20000", "--repeats", "1"]),
    "validate-preference-before": (["bench/validate.py", "--kind", "preference", "--name", "validate-preference-before"],
                                   ["--rows", "20000", "--repeats", "1"]),
    "train": (["bench/train.py"], ["--rows", "200", "--steps", "8", "--warmup", "2", "--rounds", "1"]),
    "dpo": (["bench/dpo.py"], ["--rows", "100", "--steps", "8", "--warmup", "2", "--rounds", "1"]),
    "rl": (["bench/rl.py"], ["--steps", "4", "--warmup", "1", "--rounds", "1"]),
    "pipeline": (["bench/pipeline.py"], ["--rows", "60"]),
}


def before_checkout() -> Path:
    """A detached worktree of CONTRACTS_BEFORE (made once) for the -before benchmarks."""
    if not (BEFORE_CHECKOUT / "data_contracts").is_dir():
        BEFORE_CHECKOUT.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--force", "--detach", str(BEFORE_CHECKOUT), CONTRACTS_BEFORE],
                       cwd=REPO, check=True)
    return BEFORE_CHECKOUT


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def summary_rows(results: dict[str, dict]) -> list[tuple[str, float | None, str, str]]:
    """(measure, value, how it is shown, target) for every figure the issue's table asks for."""
    def get(name: str, *keys: str) -> float | None:
        value = results.get(name, {}).get("results")
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    sft = lambda variant: get("train", "tokens_per_second", variant)
    dpo = lambda variant, key="tokens_per_second": get("dpo", "variants", variant, key)
    return [
        ("materialise: alignflow cold / datasets throughput", get("materialize", "ratio"), "x", ">= 1.2x"),
        ("materialise: warm rerun / cold run", get("materialize", "warm_fraction"), "%", "<= 5%"),
        ("materialise: 2 workers / 1 worker throughput", get("materialize", "workers_speedup"), "x", "-"),
        ("validation / materialisation time, supervised", get("validate-supervised", "validation_fraction"), "%", "<= 25%"),
        ("validation / materialisation time, preference", get("validate-preference", "validation_fraction"), "%", "<= 25%"),
        # validate-*-before: bench/validate.py run with PYTHONPATH at the commit before issue 14's checks
        ("validation time, supervised: now / before issue 14",
         ratio(get("validate-supervised", "validate_seconds"), get("validate-supervised-before", "validate_seconds")), "x",
         "<= 2x"),
        ("validation time, preference: now / before issue 14",
         ratio(get("validate-preference", "validate_seconds"), get("validate-preference-before", "validate_seconds")), "x",
         "<= 2x"),
        ("SFT: ours / plain loop tokens/s", ratio(sft("ours"), sft("plain")), "x", ">= 0.9x"),
        ("SFT: ours / TRL tokens/s", ratio(sft("ours"), sft("trl")), "x", ">= 1.2x"),
        ("SFT: packed / unpacked (shuffled) tokens/s", ratio(sft("ours-packed"), sft("ours-random")), "x", "-"),
        ("SFT: pad fraction, shuffled batches", get("train", "pad_fraction", "shuffled"), "%", "-"),
        ("SFT: pad fraction, length-grouped batches", get("train", "pad_fraction", "length_grouped"), "%", "-"),
        ("SFT: achieved FLOP/s / machine matmul FLOP/s", get("train", "flops_fraction", "ours"), "%", "-"),
        ("DPO: cached / live reference step time",
         ratio(dpo("ours-cached", "step_seconds"), dpo("ours-live", "step_seconds")), "x", "<= 0.7x"),
        ("DPO: ours (cached) / TRL tokens/s", ratio(dpo("ours-cached"), dpo("trl")), "x", ">= 1.3x"),
        ("GRPO: ours / plain rollout tokens/s",
         ratio(get("rl", "variants", "ours", "rollout_tokens_per_second"),
               get("rl", "variants", "plain", "rollout_tokens_per_second")), "x", "-"),
        ("pipeline: warm rerun / cold run", get("pipeline", "warm_fraction"), "%", "-"),
    ]


def print_summary(results: dict[str, dict]) -> None:
    dates = sorted({record["date"] for record in results.values()})
    machine = next(iter(results.values()))["machine"] if results else {}
    print(f"\nsummary ({', '.join(dates) or 'no results'}; {machine.get('cpus')} CPUs, {machine.get('processor')}, "
          f"torch {machine.get('torch')}, GPU {machine.get('cuda') or 'none'})")
    print(f"{'measure':<54} {'value':>8}  target")
    for measure, value, unit, target in summary_rows(results):
        shown = "-" if value is None else f"{value:.1%}" if unit == "%" else f"{value:.2f}x"
        print(f"{measure:<54} {shown:>8}  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated: " + ",".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small inputs: checks the suite runs, not figures")
    parser.add_argument("--summary-only", action="store_true", help="print the table from bench/results/ only")
    args = parser.parse_args()
    names = args.only.split(",") if args.only else list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    failed = []
    for name in [] if args.summary_only else names:
        command, quick = BENCHMARKS[name]
        print(f"\n===== {name}: {' '.join(command + (quick if args.quick else []))}", flush=True)
        start = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(before_checkout())} if name.endswith("-before") else None
        completed = subprocess.run([sys.executable, *command, *(quick if args.quick else [])], cwd=REPO, env=env, check=False)
        print(f"===== {name}: exit {completed.returncode} in {time.perf_counter() - start:.0f} s", flush=True)
        if completed.returncode != 0:
            failed.append(name)
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS_DIR.glob("*.json"))}
    print_summary(results)
    if failed:
        raise SystemExit(f"benchmarks that failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
