"""Prefect tasks of the materialise flow: thin wrappers over ``align_core.materialize``.

Caching is declared here: the fingerprint is cached by the source's sizes and mtimes (hashing a
large file twice is the only cost a warm rerun would otherwise pay); the build is cached by the
dataset digest, and a deleted dataset folder is rebuilt rather than served from a stale cache
entry (``tasks.caching``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from align_core.markdown import markdown_table
from align_core.materialize import (
    FormattedPart,
    MaterializeResult,
    MaterializeSpec,
    Part,
    PartPlan,
    build_dataset,
    dataset_digest,
    format_part,
    merge_parts,
    plan_parts,
)
from align_core.sources import SourceInfo, fingerprint_source, stat_key
from tasks.artifacts import publish_markdown
from tasks.caching import disk_output_key
from tasks.prefect_env import prefect_result_storage


def _fingerprint_key(context, parameters) -> str:
    key = f"{parameters.get('source_format')}|{stat_key(parameters['source'])}"
    return "fingerprint-" + hashlib.sha256(key.encode()).hexdigest()


def _build_key(context, parameters) -> str:
    spec: MaterializeSpec = parameters["spec"]
    digest = dataset_digest(parameters["source"], spec, spec.load_template())
    out_root = Path(parameters["out_root"]).absolute()
    key = f"materialize-{digest}-{hashlib.sha256(str(out_root).encode()).hexdigest()[:12]}"
    return disk_output_key(key, (out_root / digest / "manifest.json").is_file())


@task(
    name="fingerprint-source",
    cache_key_fn=_fingerprint_key,
    persist_result=True,
    result_storage=prefect_result_storage(),
)
def fingerprint(source: str, source_format: str | None = None) -> SourceInfo:
    """sha256 of the source bytes and its detected format."""
    return fingerprint_source(source, source_format)


@task(
    name="build-shards",
    cache_key_fn=_build_key,
    persist_result=True,
    result_storage=prefect_result_storage(),
)
def build_shards(source: SourceInfo, spec: MaterializeSpec, out_root: str, workers: int | None = None) -> str:
    """Format the source into shards + quarantine + manifest, published atomically; returns the folder."""
    result = build_dataset(source, spec, out_root, workers)
    _publish_artifact(source, result)
    return str(result.path)


@task(name="plan-parts")
def plan_dataset_parts(source: SourceInfo, spec: MaterializeSpec, out_root: str) -> PartPlan:
    """The parts to format (none when the dataset is already published) and their staging folder."""
    return plan_parts(source, spec, out_root)


# A part's result (its quarantine rows and media) goes straight to the merge: nothing to cache or persist.
@task(name="format-part", cache_policy=NO_CACHE, persist_result=False)
def format_dataset_part(source: SourceInfo, spec: MaterializeSpec, part: Part) -> FormattedPart:
    """One part's chunks formatted into its Arrow file in the staging folder."""
    return format_part(source, spec, part)


@task(name="merge-parts", cache_policy=NO_CACHE, persist_result=False)
def merge_dataset_parts(source: SourceInfo, spec: MaterializeSpec, plan: PartPlan, parts: list[FormattedPart]) -> str:
    """The formatted parts written in order as shards + quarantine + manifest, published atomically; returns
    the folder."""
    result = merge_parts(source, spec, plan, parts)
    _publish_artifact(source, result)
    return str(result.path)


def _publish_artifact(source: SourceInfo, result: MaterializeResult) -> None:
    manifest = result.manifest
    reasons = list(manifest.quarantine_reasons.items()) or [("(none)", 0)]
    publish_markdown(
        key=f"dataset-{manifest.dataset_digest[:16]}",
        description=f"{manifest.template} {manifest.kind} shards",
        title=f"Dataset `{manifest.dataset_digest}`",
        bullets=[
            f"folder: `{result.path}`",
            f"source: `{source.path}` ({source.format}, sha256 `{source.sha256[:16]}`)",
            f"template: {manifest.template} (code {manifest.template_code_version}), kind: {manifest.kind}",
            f"rows: **{manifest.rows}** in {len(manifest.shards)} shard(s); quarantined: **{manifest.quarantined}**"
            + (" (already materialised: nothing rewritten)" if result.cache_hit else ""),
        ],
        tables=[markdown_table(["quarantine reason", "rows"], reasons)],
    )
