"""Prefect task: the model a pipeline starts from (an offline tiny model, or a local path)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from prefect import task

from align_core.errors import UsageError
from align_core.io import sha256_json
from align_core.models import tiny
from tasks.caching import disk_output_key
from tasks.prefect_env import prefect_result_storage


def tiny_model_dir(models_root: str | Path, name: str, spec: dict[str, Any]) -> Path:
    """Content-addressed: the folder name covers the spec and the factory's code."""
    digest = sha256_json({"spec": spec, "code": inspect.getsource(tiny)})[:12]
    return Path(models_root).absolute() / f"{name}-{digest}"


def _is_built(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and (model_dir / "tokenizer_config.json").is_file()


def _tiny_key(context, parameters: dict[str, Any]) -> str:
    model_dir = tiny_model_dir(parameters["models_root"], parameters["name"], parameters["spec"])
    return disk_output_key(f"tiny-model-{sha256_json(str(model_dir))[:24]}", _is_built(model_dir))


@task(name="tiny-model", cache_key_fn=_tiny_key, persist_result=True, result_storage=prefect_result_storage())
def build_tiny(name: str, spec: dict[str, Any], models_root: str) -> str:
    """Build (once) the tiny model + tokenizer described by ``spec``; returns its folder."""
    model_dir = tiny_model_dir(models_root, name, spec)
    if not _is_built(model_dir):
        tiny.build_tiny_model(model_dir, **spec)
    return str(model_dir)


def check_model_path(path: str) -> str:
    if not (Path(path) / "config.json").is_file():
        raise UsageError(f"model path {path!r} has no config.json (alignflow loads local Hugging Face folders only)")
    return path
