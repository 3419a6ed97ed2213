"""Prefect task: evaluate a job's trained model (``align_core.evaluation``) and publish its metrics.

Cached by the evaluation's digest (the trained weights, the datasets, the reward and reference models'
weights, every setting) while its folder's ``eval.json`` exists: a retrained model or a changed setting
is evaluated again, an unchanged one never.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from align_core.evaluation.evaluate import EVAL_NAME, REPORT_NAME, EvalSpec, evaluate
from align_core.generation import SamplingSettings
from align_core.markdown import markdown_table
from tasks.artifacts import publish_markdown
from tasks.caching import disk_output_key
from tasks.prefect_env import prefect_result_storage


def eval_spec(trained: dict[str, Any], evaluation: dict[str, Any]) -> EvalSpec:
    """The spec of a job's evaluation: its trained model, and ``evaluation`` (datasets and model folders
    resolved by the flow, sampling and scoring settings)."""
    sampling = SamplingSettings(max_new_tokens=evaluation["max_new_tokens"], temperature=evaluation["temperature"])
    return EvalSpec(
        model_dir=trained["model_dir"], datasets=tuple(evaluation["datasets"]), reward_model=evaluation.get("reward_model"),
        reference=evaluation.get("reference"), sampling=sampling, max_length=evaluation["max_length"],
        tie_margin=evaluation["tie_margin"], names=tuple(evaluation["names"]),
    )


def _evaluate_key(context, parameters: dict[str, Any]) -> str:
    digest = eval_spec(parameters["trained"], parameters["evaluation"]).digest()
    return disk_output_key(f"evaluate-{digest}", (Path(parameters["out_root"]) / digest / EVAL_NAME).is_file())


@task(name="evaluate-model", cache_key_fn=_evaluate_key, persist_result=True, result_storage=prefect_result_storage())
def evaluate_model(trained: dict[str, Any], evaluation: dict[str, Any], out_root: str) -> dict[str, Any]:
    """Evaluate the model a training task returned; the folder and the metrics per dataset."""
    result = evaluate(eval_spec(trained, evaluation), out_root)
    rows = [(dataset, key, f"{value:.4g}" if isinstance(value, float) else value)
            for dataset, metrics in result.metrics.items() for key, value in metrics.items() if key != "kind"]
    publish_markdown(
        key=f"evaluation-{result.path.name[:16]}",
        description=f"evaluation of {trained['model_dir']}",
        title=f"Evaluation `{result.path.name[:12]}`",
        bullets=[f"model: `{trained['model_dir']}`", f"folder: `{result.path}`", f"report: `{result.path / REPORT_NAME}`"],
        tables=[markdown_table(["dataset", "metric", "value"], rows)],
    )
    return {"path": str(result.path), "metrics": result.metrics}
