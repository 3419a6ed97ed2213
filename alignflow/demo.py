"""``make demo``: the whole pipeline on bundled data and tiny models, on Prefect's embedded server.

    python -m alignflow.demo [--out demo_out] [--rows 300] [--multimodal]

Writes the sample datasets (train and eval splits from different seeds), copies the demo pipeline
next to them, runs it, and prints where the shards, reports, checkpoints and TensorBoard logs are,
then the table of the run's steps. Rerunning is cheap: every finished step is a cache hit (Cached).
"""

from __future__ import annotations

import argparse
import shutil
import time
from importlib import resources
from pathlib import Path

DEMO_PIPELINE = "demo.yaml"
MULTIMODAL_PIPELINE = "multimodal.yaml"  # image -> text on the synthetic media samples


def prepare(out: Path, rows: int, multimodal: bool = False) -> Path:
    from alignflow.samples import write_media_samples, write_samples

    write = write_media_samples if multimodal else write_samples
    write(out / "data" / "train", rows=rows, seed=0)
    write(out / "data" / "eval", rows=max(rows // 5, 20), seed=1)
    pipeline_path = out / "pipeline.yaml"
    shutil.copyfile(resources.files("alignflow.pipelines") / (MULTIMODAL_PIPELINE if multimodal else DEMO_PIPELINE), pipeline_path)
    return pipeline_path


def print_outputs(summary: dict, seconds: float) -> None:
    from align_core.shards.dataset import ShardDataset

    print(f"\nalignflow demo finished in {seconds:.0f} s. Outputs under {summary['output_dir']}:")
    print("\ndatasets (shards, quarantine, contract report):")
    for name, dataset_dir in summary["datasets"].items():
        manifest = ShardDataset(dataset_dir).manifest
        print(f"  {name:<12} {manifest.rows:>4} rows, {manifest.quarantined} quarantined  {dataset_dir}")
        print(f"  {'':<12} report: {Path(dataset_dir) / 'report.html'}")
    print("\ntraining jobs (checkpoints, final model, metrics):")
    for name, result in summary["jobs"].items():
        run_dir = Path(result["model_dir"]).parent
        metrics = sorted(result.get("eval", {}).items())
        evaluation = ", ".join(f"{key} {value:.3f}" for key, value in metrics if isinstance(value, (int, float)))
        print(f"  {name:<5} {result['algorithm']:<4} {result['steps']:>4} steps  model: {result['model_dir']}")
        print(f"  {'':<5} eval: {evaluation or '-'}")
        print(f"  {'':<5} run folder: {run_dir}")
    for name, evaluation in summary.get("evaluations", {}).items():
        print(f"\nevaluation of {name} against its starting model (report.html, eval.json, completions): {evaluation['path']}")
        for dataset, metrics in evaluation["metrics"].items():
            shown = ", ".join(f"{key} {value:.3f}" for key, value in metrics.items() if isinstance(value, float))
            print(f"  {dataset:<16} {shown}")
    print(f"\nTensorBoard:  tensorboard --logdir {Path(summary['output_dir']) / 'jobs'}")
    print(f"Inspect data: alignflow shards ls {Path(summary['output_dir']) / 'shards'}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the alignflow demo pipeline end to end.")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--multimodal", action="store_true", help="the image -> text pipeline (multimodal.yaml) instead")
    args = parser.parse_args()
    out = args.out.absolute()
    pipeline_path = prepare(out, args.rows, args.multimodal)
    print(f"demo data and pipeline in {out}; running the pipeline (first run builds everything)...", flush=True)

    from alignflow.commands.pipeline import report_run
    from flows.pipeline import pipeline
    from flows.pipeline_config import load_pipeline

    start = time.perf_counter()
    state = pipeline(config=str(pipeline_path), return_state=True)
    if state.is_completed():
        print_outputs(state.result(), time.perf_counter() - start)
    report_run(state, load_pipeline(pipeline_path))  # the table of steps; exits non-zero when the run failed


if __name__ == "__main__":
    main()
