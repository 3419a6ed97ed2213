"""Prefect task: tokenise a materialised dataset into the token cache (``align_core.data.tokenize_dataset``).

Cached on the token cache key (shard digests + tokenizer files + chat formatting + max_length +
truncation + assistant_turns + code version) and the cache root; a deleted cache folder is rebuilt
rather than served from a stale Prefect result (``tasks.caching``).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from align_core.data.token_cache import (
    default_cache_root,
    is_complete,
    read_token_manifest,
    token_cache_key,
    tokenize_dataset,
)
from align_core.io import sha256_json
from align_core.markdown import markdown_table
from tasks.artifacts import publish_markdown
from tasks.caching import disk_output_key
from tasks.prefect_env import prefect_result_storage


def _cache_root(parameters: dict) -> Path:
    root = parameters.get("cache_root")
    return Path(root).absolute() if root else default_cache_root()


def _task_key(context, parameters: dict) -> str:
    key = token_cache_key(
        parameters["dataset_dir"],
        parameters["tokenizer_path"],
        parameters["max_length"],
        parameters.get("truncation", "drop"),
        assistant_turns=parameters.get("assistant_turns", "all"),
        trust_remote_code=parameters.get("trust_remote_code", False),
    )
    root = _cache_root(parameters)
    return disk_output_key(f"tokenize-{key}-{sha256_json(str(root))[:12]}", is_complete(root / key))


@task(name="tokenize", cache_key_fn=_task_key, persist_result=True, result_storage=prefect_result_storage())
def tokenize(
    dataset_dir: str,
    tokenizer_path: str,
    max_length: int,
    truncation: str = "drop",
    cache_root: str | None = None,
    assistant_turns: str = "all",
    trust_remote_code: bool = False,
) -> str:
    """Token cache folder for the dataset; attaches a table of kept/truncated/dropped counts."""
    cache_dir = tokenize_dataset(
        dataset_dir,
        tokenizer_path,
        max_length,
        truncation,
        _cache_root({"cache_root": cache_root}),
        assistant_turns=assistant_turns,
        trust_remote_code=trust_remote_code,
    )
    manifest = read_token_manifest(cache_dir)
    publish_markdown(
        key=f"tokens-{manifest['cache_key'][:16]}",
        description=f"token cache of {manifest['kind']} dataset {manifest['dataset']['digest'][:16]}",
        title=f"Token cache `{manifest['cache_key'][:16]}`",
        bullets=[
            f"folder: `{cache_dir}`",
            f"tokenizer: `{manifest['tokenizer_path']}` (chat format: {manifest['chat_format_source']})",
            f"max_length {max_length}, truncation {truncation}, assistant turns {assistant_turns}",
        ],
        tables=[markdown_table(["count", "value"], manifest["counts"].items())],
    )
    return str(cache_dir)
