"""The demo pipeline cold, then rerun warm in the same process: what caching saves a user who reruns a flow.

    python bench/pipeline.py [--rows 300] [--workdir bench_out/pipeline]

Cold: a fresh folder (datasets, tiny models, token caches, reference columns and every job built).
Warm: the same pipeline again, every step a cache hit. Prints both and the ratio (target <= 10%).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.harness import save_results


def timed_pipeline(pipeline_path: Path) -> float:
    from flows.pipeline import pipeline

    start = time.perf_counter()
    state = pipeline(config=str(pipeline_path), return_state=True)
    if not state.is_completed():
        raise SystemExit(f"the pipeline run ended {state.type.value}: {state.message}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=Path("bench_out/pipeline"))
    args = parser.parse_args()
    from align_core.paths import configure_environment
    from alignflow.demo import prepare

    configure_environment()
    workdir = args.workdir.absolute()
    shutil.rmtree(workdir, ignore_errors=True)
    pipeline_path = prepare(workdir, args.rows)
    cold = timed_pipeline(pipeline_path)
    print(f"demo pipeline cold: {cold:7.1f} s", flush=True)
    warm = timed_pipeline(pipeline_path)
    print(f"demo pipeline warm: {warm:7.1f} s  ({100 * warm / cold:.1f}% of cold; target <= 10%)", flush=True)
    save_results("pipeline", {"cold_seconds": cold, "warm_seconds": warm, "warm_fraction": warm / cold})


if __name__ == "__main__":
    main()
