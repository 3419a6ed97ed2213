"""The materialise flow: raw source -> formatted conversation shards -> (validated) dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from align_core.shards.writer import DEFAULT_ROWS_PER_SHARD
from flows.pipeline_config import check_materialize
from tasks.materialize import build_shards, fingerprint


@flow(name="materialize")
def materialize(
    source: str,
    template: str,
    kind: str,
    out: str,
    template_options: dict[str, Any] | None = None,
    template_module: str | None = None,
    source_format: str | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    workers: int | None = None,
    validate_contract: bool = True,
    suite: str | None = None,
    contract_overrides: dict[str, Any] | None = None,
    media_root: str | None = None,
) -> str:
    """Materialise ``source`` with ``template`` into ``out/<digest>/``; returns that folder.

    With ``validate_contract`` (the default) the shards then pass through their data contract, and an
    error-severity failure fails this flow run. ``contract_overrides`` adjusts the suite's
    expectations (``{"turns_in_bounds.max_value": 32}``; see data_contracts). Media paths in rows resolve
    under ``media_root``, whose files' digests enter the dataset digest. Bad usage (template, source,
    suite, overrides, output root) fails the run before any task starts (``check_materialize``).
    """
    spec = check_materialize(
        source,
        template,
        kind,
        out,
        template_options=template_options,
        template_module=template_module,
        source_format=source_format,
        rows_per_shard=rows_per_shard,
        workers=workers,
        validate_contract=validate_contract,
        suite=suite,
        contract_overrides=contract_overrides,
        media_root=media_root,
    )
    out_root = str(Path(out).absolute())
    source_info = fingerprint(str(Path(source).absolute()), source_format)
    dataset_dir = build_shards(source_info, spec, out_root, workers)
    if validate_contract:
        from tasks.validate import validate_shards

        validate_shards(dataset_dir, suite=suite, overrides=contract_overrides)
    return dataset_dir
