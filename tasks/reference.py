"""Prefect task: the reference log-probs of a token cache, computed once (``align_core.reference``).

Cached on the column's own key (token cache key + reference weights digest + pairing + dtype + code
version). As with the token cache, a stored result whose folder is gone is dropped before the lookup
(``tasks.caching``), so a deleted column is recomputed rather than served from a stale Prefect result.

``reference_steps(train_config, token_caches)`` submits the tasks a training job waits for: one per
token cache and pairing for trainers that read cached reference columns (dpo, ipo, kto), none else,
from the same ``ReferenceSpec`` the trainer builds.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from prefect import task

from align_core.config import TrainConfig
from align_core.io import sha256_json
from align_core.markdown import markdown_table
from align_core.reference.cache import MANIFEST_NAME, ReferenceSpec, is_complete
from align_core.trainers.cached_steps import reference_specs
from tasks.artifacts import publish_markdown
from tasks.caching import disk_output_key
from tasks.parallel import map_parts
from tasks.prefect_env import prefect_result_storage


def _task_key(context, parameters: dict) -> str:
    folder = ReferenceSpec.model_validate(parameters["spec"]).folder()
    return disk_output_key(f"reference-{folder.name}-{sha256_json(str(folder))[:12]}", is_complete(folder))


@task(name="reference-logps", cache_key_fn=_task_key, persist_result=True, result_storage=prefect_result_storage())
def reference_logps(spec: ReferenceSpec, runner: str = "local") -> str:
    """The folder of the cached column; attaches a summary (rows, mean log-probs, seconds)."""
    from deepspeed.accelerator import get_accelerator

    # token file by token file, on runner's cluster (tasks.parallel)
    folder = spec.build(get_accelerator().current_device_name(), map_parts=functools.partial(map_parts, runner=runner))
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    means = [(f"mean {name}", f"{value:.4f}") for name, value in manifest["mean_logps"].items()]
    publish_markdown(
        key=f"reference-{manifest['key'][:16]}",
        description=f"{spec.pairing} reference log-probs of token cache {spec.token_cache_dir}",
        title=f"Reference log-probs `{manifest['key'][:16]}` ({spec.pairing})",
        bullets=[f"folder: `{folder}`", f"reference model: `{manifest['reference_model']}` ({manifest['dtype']})"],
        tables=[markdown_table(["value", ""], [("rows", manifest["rows"]), *means, ("seconds", manifest["seconds"])])],
    )
    return str(folder)


def reference_steps(train_config: TrainConfig, token_caches: dict[str, Any], runner: str = "local") -> list[Any]:
    """Submit the reference columns ``train_config``'s trainer reads; futures to wait for (may be empty).

    ``token_caches``: token cache folder -> the future of the task that makes it (or None when it exists).
    """
    return [
        reference_logps.submit(spec, runner, wait_for=[future] if future is not None else [])
        for cache_dir, future in token_caches.items()
        for spec in reference_specs(train_config, cache_dir)
    ]
