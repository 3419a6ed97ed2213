"""Prefect task: tokenise a materialised dataset into the token cache, from a ``TokenizeSpec``.

Cached on the spec's token cache key (shard digests + tokenizer files + chat formatting + max_length
+ truncation + assistant_turns + code version) and the cache root: the key the trainer uses for the
same spec. A deleted cache folder is rebuilt rather than served from a stale Prefect result
(``tasks.caching``).
"""

from __future__ import annotations

import functools

from prefect import task

from align_core.data.token_cache import TokenizeSpec, is_complete, read_token_manifest
from align_core.data.token_checks import check_token_cache
from align_core.io import sha256_json
from align_core.markdown import markdown_table
from data_contracts.distributions import histogram_table, token_length_histograms
from tasks.artifacts import publish_markdown
from tasks.caching import disk_output_key
from tasks.parallel import map_parts
from tasks.prefect_env import prefect_result_storage


def _task_key(context, parameters: dict) -> str:
    spec = TokenizeSpec.model_validate(parameters["spec"])
    cache_dir = spec.cache_dir()
    return disk_output_key(f"tokenize-{cache_dir.name}-{sha256_json(str(spec.root()))[:12]}", is_complete(cache_dir))


@task(name="tokenize", cache_key_fn=_task_key, persist_result=True, result_storage=prefect_result_storage())
def tokenize(spec: TokenizeSpec, runner: str = "local") -> str:
    """Token cache folder for the spec's dataset, tokenised shard by shard on ``runner`` (``tasks.parallel``);
    attaches tables of kept/truncated/dropped counts and of the token-level checks (``align_core.data.token_checks``)."""
    cache_dir = spec.build(map_parts=functools.partial(map_parts, runner=runner))
    manifest = read_token_manifest(cache_dir)
    findings = check_token_cache(cache_dir)  # the trainer refuses a cache whose error-severity checks fail
    publish_markdown(
        key=f"tokens-{manifest['cache_key'][:16]}",
        description=f"token cache of {manifest['kind']} dataset {manifest['dataset']['digest'][:16]}",
        title=f"Token cache `{manifest['cache_key'][:16]}`",
        bullets=[
            f"folder: `{cache_dir}`",
            f"tokenizer: `{manifest['tokenizer_path']}` (chat format: {manifest['chat_format_source']})",
            f"max_length {spec.max_length}, truncation {spec.truncation}, assistant turns {spec.assistant_turns}",
        ],
        tables=[markdown_table(["count", "value"], manifest["counts"].items()),
                markdown_table(["token check", "severity", "failing", "of", "e.g."],
                               [(f.name, f.severity, f.count, f.checked, ", ".join(f.sample_ids) or "-") for f in findings]),
                markdown_table(*histogram_table(token_length_histograms(cache_dir)))],  # sequences per length bin
    )
    return str(cache_dir)
