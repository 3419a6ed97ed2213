"""Prefect task: the train/eval contamination check of one training dataset (``data_contracts.contamination``).

A warning, not a gate: contaminated rows are counted and listed by id in the ``contamination-...`` artifact
and the run's log, and training goes on (removing them is the user's decision). Cached by the digests of
the datasets and n.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from align_core.io import sha256_json
from align_core.markdown import markdown_table
from align_core.shards.dataset import ShardDataset
from data_contracts.contamination import DEFAULT_N, find_contamination
from tasks.artifacts import publish_markdown
from tasks.prefect_env import prefect_result_storage


def _key(context, parameters: dict[str, Any]) -> str:
    digests = [ShardDataset(folder).digest for folder in [parameters["train_dir"], *parameters["eval_dirs"]]]
    return "contamination-" + sha256_json({"datasets": digests, "n": parameters.get("n", DEFAULT_N)})


@task(name="check-contamination", cache_key_fn=_key, persist_result=True, result_storage=prefect_result_storage())
def check_contamination(train_dir: str, eval_dirs: list[str], names: dict[str, str], n: int = DEFAULT_N) -> dict[str, Any]:
    """Training rows of ``train_dir`` sharing an n-gram with ``eval_dirs``; ``names``: folder -> dataset name."""
    found = find_contamination(train_dir, eval_dirs, n)
    train, evaluation = names[train_dir], ", ".join(names[folder] for folder in eval_dirs)
    if found.contaminated_rows:
        get_run_logger().warning("%s: %d of %d training rows share a %d-gram with %s (e.g. %s)", train,
                                 found.contaminated_rows, found.train_rows, n, evaluation,
                                 ", ".join(f"{a} ~ {b}" for a, b in found.pairs[:3]))
    publish_markdown(
        key=f"contamination-{ShardDataset(train_dir).digest[:16]}",
        description=f"{n}-gram overlap of {train} with {evaluation}",
        title=f"Contamination of `{train}` by {evaluation}",
        bullets=[(f"{found.contaminated_rows} of {found.train_rows} training rows ({found.share:.2%}) share a "
                  f"{n}-word sequence with an evaluation row")],
        tables=[markdown_table(["training row", "evaluation row"], found.pairs)] if found.pairs else [],
    )
    return {"dataset": train, "rows": found.train_rows, "contaminated": found.contaminated_rows,
            "pairs": [list(pair) for pair in found.pairs]}
