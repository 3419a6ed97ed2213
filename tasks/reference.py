"""Prefect task: the reference log-probs of a token cache, computed once (``align_core.reference``).

Cached on the column's own key (token cache key + reference weights digest + pairing + dtype + code
version). As with the token cache, the key function offers a key only while the folder it names is
complete, so a deleted column is recomputed rather than served from a stale Prefect result.

``reference_steps(train_config, token_caches)`` submits the tasks a training job waits for: one per
token cache and pairing for trainers that read cached reference columns (dpo, ipo, kto), none else.
"""

from __future__ import annotations

import json
from typing import Any

from prefect import task

from align_core.config import TrainConfig
from align_core.io import sha256_json
from align_core.markdown import markdown_table
from align_core.reference.cache import MANIFEST_NAME, compute_reference_logps, is_complete, reference_dir
from tasks.artifacts import publish_markdown
from tasks.prefect_env import prefect_result_storage


def _dtype(precision: str):
    from align_core.trainers.engine import resolve_dtype

    return resolve_dtype(precision)


def _task_key(context, parameters: dict) -> str | None:
    folder = reference_dir(
        parameters["token_cache_dir"],
        parameters["reference_model"],
        parameters.get("pairing", "matched"),
        _dtype(parameters.get("precision", "auto")),
    )
    if not is_complete(folder):
        return None  # nothing on disk to trust: run (compute_reference_logps skips work it finds done)
    return f"reference-{folder.name}-{sha256_json(str(folder))[:12]}"


@task(name="reference-logps", cache_key_fn=_task_key, persist_result=True, result_storage=prefect_result_storage())
def reference_logps(
    token_cache_dir: str,
    reference_model: str,
    pairing: str = "matched",
    precision: str = "auto",
    batch_size: int = 8,
    trust_remote_code: bool = False,
) -> str:
    """The folder of the cached column; attaches a summary (rows, mean log-probs, seconds)."""
    from deepspeed.accelerator import get_accelerator

    folder = compute_reference_logps(
        token_cache_dir,
        reference_model,
        pairing,
        dtype=_dtype(precision),
        batch_size=batch_size,
        device=get_accelerator().current_device_name(),
        trust_remote_code=trust_remote_code,
    )
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    means = [(f"mean {name}", f"{value:.4f}") for name, value in manifest["mean_logps"].items()]
    publish_markdown(
        key=f"reference-{manifest['key'][:16]}",
        description=f"{pairing} reference log-probs of token cache {token_cache_dir}",
        title=f"Reference log-probs `{manifest['key'][:16]}` ({pairing})",
        bullets=[f"folder: `{folder}`", f"reference model: `{manifest['reference_model']}` ({manifest['dtype']})"],
        tables=[markdown_table(["value", ""], [("rows", manifest["rows"]), *means, ("seconds", manifest["seconds"])])],
    )
    return str(folder)


def reference_steps(train_config: TrainConfig, token_caches: list[Any]) -> list[Any]:
    """Submit the reference columns ``train_config``'s trainer reads; futures to wait for (may be empty).

    ``token_caches``: token cache folders, or the futures of the tasks that make them.
    """
    from align_core.trainers import get_trainer

    trainer = get_trainer(train_config.train_cfgs.algorithm)
    if not getattr(trainer, "uses_reference", False) or train_config.train_cfgs.reference != "cached":
        return []
    model_cfgs = train_config.model_cfgs
    return [
        reference_logps.submit(
            cache,
            model_cfgs.reference_model_name_or_path or model_cfgs.model_name_or_path,
            pairing,
            train_config.train_cfgs.precision,
            train_config.train_cfgs.per_device_eval_batch_size,
            model_cfgs.trust_remote_code,
        )
        for cache in token_caches
        for pairing in trainer.reference_pairings
    ]
