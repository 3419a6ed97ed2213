"""``alignflow materialize`` and ``alignflow shards ls|show|head|verify``."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml

from align_core.errors import UsageError
from align_core.rollouts import read_rollouts, rollouts_run_dir
from align_core.shards.dataset import ShardDataset
from align_core.shards.manifest import MANIFEST_NAME
from align_core.shards.schema import CONVERSATION_COLUMNS, Kind

shards_app = typer.Typer(help="Inspect materialised dataset folders.", no_args_is_help=True)


def parse_options(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are read as YAML scalars (so ``3`` is an int, ``true`` a bool)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"option {pair!r} must look like key=value")
        options[key] = yaml.safe_load(value)
    return options


def materialize_command(
    source: Path = typer.Argument(..., help="jsonl / json / csv / parquet / arrow file, or a save_to_disk folder"),
    template: str = typer.Option(..., "--template", "-t", help="registered template name, e.g. Alpaca"),
    kind: str = typer.Option(..., "--kind", "-k", help="supervised | preference | prompt_only | unpaired_preference"),
    out: Path = typer.Option(..., "--out", "-o", help="root folder; the dataset lands in OUT/<digest>/"),
    template_module: str | None = typer.Option(None, help="a .py file or module that registers more templates"),
    option: list[str] = typer.Option([], "--option", help="template option key=value (repeatable)"),
    source_format: str | None = typer.Option(None, "--format", help="override format detection"),
    rows_per_shard: int = typer.Option(100_000, help="rows per shard file"),
    workers: int | None = typer.Option(None, help="formatting processes (default: by source size)"),
    validate: bool = typer.Option(True, "--validate/--no-validate", help="run the data contract (default on)"),
    contract_set: list[str] = typer.Option([], "--contract-set", help="contract override EXPECTATION.SETTING=VALUE (repeatable)"),
    media_root: Path | None = typer.Option(None, "--media-root", help="folder that media paths in the rows are relative to"),
    runner: str = typer.Option(
        "local", "--runner", help="local (worker processes here) | dask (a LocalCluster of --workers) | dask:ADDRESS"
    ),
) -> None:
    """Materialise SOURCE into content-addressed conversation shards; prints the dataset folder last."""
    from data_contracts.suite import parse_override_pairs
    from flows.pipeline_config import check_materialize

    # Check everything cheap before a Prefect server starts: bad usage fails in a second, writing nothing.
    # the flow's parameters, checked here with the function the flow itself starts with
    arguments = {
        "source": str(source), "template": template, "kind": kind, "out": str(out),
        "template_options": parse_options(option), "template_module": template_module, "source_format": source_format,
        "rows_per_shard": rows_per_shard, "workers": workers, "validate_contract": validate,
        "contract_overrides": parse_override_pairs(contract_set) if contract_set else None,
        "media_root": str(media_root) if media_root is not None else None, "runner": runner,
    }
    arguments["template_options"] = check_materialize(**arguments).template_options

    from alignflow.cli import run_flow
    from flows.materialize import materialize_on

    dataset_dir = run_flow(materialize_on(runner, workers), **arguments)
    manifest = ShardDataset(dataset_dir).manifest
    typer.echo(f"rows {manifest.rows}, quarantined {manifest.quarantined}, shards {len(manifest.shards)}", err=True)
    typer.echo(dataset_dir)


def _validation_status(dataset_dir: Path, with_reason: bool = False) -> str:
    from data_contracts.gate import check_validation

    status, reason = check_validation(dataset_dir)
    return f"{status} ({reason})" if with_reason and reason else status


@shards_app.command("ls")
def shards_ls(root: Path = typer.Argument(..., help="an --out root holding dataset folders")) -> None:
    """List the datasets under ROOT: kind, template, rows, quarantined, validation, created."""
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder")
    rows = []
    for manifest_path in sorted(root.glob(f"*/{MANIFEST_NAME}")):
        dataset = ShardDataset(manifest_path.parent)
        m = dataset.manifest
        rows.append((m.dataset_digest[:16], m.kind, m.template, str(m.rows), str(m.quarantined), _validation_status(dataset.path), m.created))
    header = ("digest", "kind", "template", "rows", "quarantined", "validation", "created")
    print_table(header, rows)


@shards_app.command("show")
def shards_show(dataset_dir: Path = typer.Argument(..., help="a dataset folder (OUT/<digest>)")) -> None:
    """Manifest, schema, counts, quarantine reasons and validation status."""
    dataset = ShardDataset(dataset_dir)
    m = dataset.manifest
    typer.echo(f"dataset      {m.dataset_digest}")
    typer.echo(f"folder       {dataset.path.absolute()}")
    typer.echo(f"kind         {m.kind}")
    typer.echo(f"template     {m.template} (code {m.template_code_version}) options {json.dumps(m.template_options)}")
    typer.echo(f"source       {m.source.get('path')} ({m.source.get('format')}, {m.source.get('bytes')} bytes)")
    typer.echo(f"source sha   {m.source_sha256}")
    typer.echo(f"schema       version {m.schema_version}, {m.shard_format}")
    typer.echo(f"created      {m.created} by alignflow {m.alignflow_version}")
    typer.echo(f"rows         {m.rows} in {len(m.shards)} shard(s)")
    typer.echo(f"quarantined  {m.quarantined}")
    for reason, count in m.quarantine_reasons.items():
        typer.echo(f"  {reason:<26} {count}")
    typer.echo(f"validation   {_validation_status(dataset.path, with_reason=True)}")
    typer.echo("shards")
    for entry in m.shards:
        typer.echo(f"  {entry.path}  rows {entry.rows}  sha256 {entry.sha256[:16]}")
    typer.echo("schema")
    for schema_field in dataset.schema():
        typer.echo(f"  {schema_field.name}: {schema_field.type}")


@shards_app.command("head")
def shards_head(
    dataset_dir: Path = typer.Argument(..., help="a dataset folder"),
    n: int = typer.Option(5, "-n", help="how many samples"),
    quarantine: bool = typer.Option(False, "--quarantine", help="show quarantined rows instead"),
) -> None:
    """Print the first N samples as readable conversations (of an online RL run's folder or its rollouts/:
    the first N rollouts, verified)."""
    run_dir = rollouts_run_dir(dataset_dir)
    if run_dir is not None:
        from alignflow.commands.rollouts import format_rollout

        for row in read_rollouts(run_dir).slice(0, n).to_pylist():
            typer.echo(format_rollout(row))
        return
    dataset = ShardDataset(dataset_dir)
    if quarantine:
        for row in dataset.read_quarantine().slice(0, n).to_pylist():
            typer.echo(f"── row {row['source_index']}: {row['reason']}: {row['detail']}\n   {row['raw'][:300]}")
        return
    shown = 0
    for batch in dataset.iter_batches():
        for sample in batch.slice(0, n - shown).to_pylist():
            typer.echo(format_sample(sample, dataset.kind))
            shown += 1
        if shown >= n:
            break


def format_sample(sample: dict, kind: Kind) -> str:
    lines = [f"── {sample['id']} (source row {sample['source_index']})"]
    for column in CONVERSATION_COLUMNS[kind]:
        if len(CONVERSATION_COLUMNS[kind]) > 1:
            lines.append(f"  [{column}]")
        for message in sample[column]:
            text = " ".join(part["text"] if part["type"] == "text" else f"<{part['type']}>" for part in message["content"])
            lines.append(f"  {message['role']:>9}: {text}")
    if kind is Kind.UNPAIRED_PREFERENCE:
        lines.append(f"  desirable: {sample['label']}")
    if sample.get("meta"):
        lines.append(f"  meta: {sample['meta']}")
    return "\n".join(lines)


@shards_app.command("verify")
def shards_verify(dataset_dir: Path = typer.Argument(..., help="a dataset folder")) -> None:
    """Recompute every digest and row count; exit 1 on any mismatch."""
    dataset = ShardDataset(dataset_dir)
    problems = dataset.verify()
    for problem in problems:
        typer.echo(f"MISMATCH {problem}")
    files = len(dataset.manifest.shards) + 1 + (dataset.manifest.media_store is not None)
    if problems:
        typer.echo(f"verify failed: {len(problems)} problem(s) in {dataset.path}")
        raise typer.Exit(1)
    typer.echo(f"ok: {files} file(s), {dataset.manifest.rows} rows, digests match")


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for row in (header, *rows):
        typer.echo("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
    if not rows:
        typer.echo("(no datasets)")


def register(app: typer.Typer) -> None:
    app.command("materialize")(materialize_command)
    app.add_typer(shards_app, name="shards")
