"""Metrics of several runs side by side (``alignflow report --compare``): a training run's final train and
eval metrics (``train_result.json``) or an evaluation's measures per dataset (``eval.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from align_core.errors import UsageError
from align_core.evaluation.evaluate import EVAL_NAME
from align_core.trainers.rundir import RESULT_NAME


def run_metrics(folder: str | Path) -> dict[str, float]:
    """``{metric: value}`` of a training run folder (``train/...``, ``eval/...``) or an evaluation folder
    (``<dataset>/<metric>``); numbers only."""
    folder = Path(folder)
    if (folder / EVAL_NAME).is_file():
        datasets = json.loads((folder / EVAL_NAME).read_text())["datasets"]
        found = {f"{dataset}/{key}": value for dataset, metrics in datasets.items() for key, value in metrics.items()}
    elif (folder / RESULT_NAME).is_file():
        result = json.loads((folder / RESULT_NAME).read_text())
        found = {**{f"train/{key}": value for key, value in result.get("final_train_metrics", {}).items()},
                 **{f"eval/{key.removeprefix('eval/')}": value for key, value in result.get("eval", {}).items()}}
    else:
        raise UsageError(f"{folder}: neither a training run ({RESULT_NAME}) nor an evaluation ({EVAL_NAME})")
    return {key: value for key, value in found.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}


def compare_table(folders: list[str | Path]) -> list[list[str]]:
    """Rows of [metric, value per folder] (``-`` where a run lacks the metric), under a header of run names:
    each folder's name, with its parent's when two names are the same."""
    metrics = [run_metrics(folder) for folder in folders]
    names = [Path(folder).name for folder in folders]
    names = [f"{Path(folder).parent.name}/{name}" if names.count(name) > 1 else name for folder, name in zip(folders, names)]
    keys = sorted({key for found in metrics for key in found})
    rows = [["metric", *names]]
    for key in keys:
        rows.append([key, *(f"{found[key]:.4g}" if key in found else "-" for found in metrics)])
    return rows
