"""``alignflow report RUN_ID|DIR``: where the validation reports are, and what a flow run produced;
``alignflow report --compare RUN...``: runs' and evaluations' metrics side by side.

For a dataset folder it prints the ``report.html`` the data contract wrote beside the manifest (for
a root of datasets, each one's). For a flow run it prints the run's artifacts (its tasks' too) and
the reports they point at: an artifact naming a dataset folder or a ``.html`` file that exists.
"""

from __future__ import annotations

import re
import webbrowser
from pathlib import Path

import typer

from align_core.errors import UsageError
from align_core.shards.manifest import MANIFEST_NAME
from alignflow.server import use_recorded_server

REPORT_NAME = "report.html"  # written by data_contracts beside each manifest
# Paths inside artifact text: `code spans` and markdown link targets.
PATH_PATTERN = re.compile(r"`([^`\n]+)`|\]\(([^)\s]+)\)")


def dataset_reports(folder: Path) -> dict[Path, Path | None]:
    """Dataset folder -> its report (None: not validated yet), for one dataset folder or a root of them."""
    datasets = [folder] if (folder / MANIFEST_NAME).is_file() else sorted(p.parent for p in folder.glob(f"*/{MANIFEST_NAME}"))
    return {dataset: (dataset / REPORT_NAME if (dataset / REPORT_NAME).is_file() else None) for dataset in datasets}


def reports_named_in(texts: list[str]) -> list[Path]:
    """Existing reports that the texts name directly (an .html file) or through their dataset folder."""
    found: dict[Path, None] = {}
    for text in texts:
        for match in PATH_PATTERN.finditer(text):
            candidate = Path(match.group(1) or match.group(2))
            if candidate.suffix == ".html" and candidate.is_file():
                found[candidate] = None
            elif candidate.is_dir() and (candidate / REPORT_NAME).is_file():
                found[candidate / REPORT_NAME] = None
    return list(found)


def report_command(
    targets: list[str] = typer.Argument(..., help="a dataset folder, a root of them, or a flow run id (or name); "
                                        "with --compare: training run or evaluation folders"),
    open_browser: bool = typer.Option(False, "--open", help="also open the report(s) in a web browser"),
    compare: bool = typer.Option(False, "--compare", help="the metrics of the runs or evaluations side by side"),
) -> None:
    """Print the HTML validation report(s) of a dataset folder, or the artifacts and reports of a flow run;
    with --compare, the final metrics of training runs and evaluations side by side."""
    if compare:
        from align_core.evaluation.compare import compare_table

        _print_columns(compare_table(targets))
        return
    if len(targets) != 1:
        raise UsageError(f"give one dataset folder or flow run (got {len(targets)}); several go with --compare")
    target = targets[0]
    folder = Path(target)
    if not folder.is_dir() and (folder.exists() or "/" in target):
        raise UsageError(f"{target} is not a folder (expected a dataset folder, a root of them, or a flow run id)")
    reports = _folder_reports(folder) if folder.is_dir() else _flow_run_reports(target)
    for report in reports:
        typer.echo(f"report: {report.absolute()}")
    if open_browser:
        for report in reports:
            webbrowser.open(report.absolute().as_uri())


def _print_columns(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                             for i, (cell, width) in enumerate(zip(row, widths))).rstrip())


def _folder_reports(folder: Path) -> list[Path]:
    reports = dataset_reports(folder)
    if not reports:
        typer.echo(f"error: {folder} holds no dataset folder (no {MANIFEST_NAME} in it or its subfolders)", err=True)
        raise typer.Exit(2)
    missing = [dataset for dataset, report in reports.items() if report is None]
    for dataset in missing:
        typer.echo(f"no {REPORT_NAME} in {dataset}: its data contract has not run (materialise it with --validate)", err=True)
    if len(missing) == len(reports):
        raise typer.Exit(1)
    return [report for report in reports.values() if report is not None]


def _flow_run_reports(id_or_name: str) -> list[Path]:
    use_recorded_server()  # before Prefect is imported: it reads PREFECT_API_URL once
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from alignflow.commands.runs import prefect_client, read_flow_run

    with prefect_client() as client:
        flow_run = read_flow_run(client, id_or_name)
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    typer.echo(f"flow run {flow_run.name} ({flow_run.id}): {flow_run.state.name if flow_run.state else 'no state'}, {len(artifacts)} artifact(s)")
    texts = []
    for artifact in sorted(artifacts, key=lambda a: a.created):
        text = artifact.data if isinstance(artifact.data, str) else str(artifact.data)
        texts.append(text)
        typer.echo(f"── {artifact.key or '(no key)'} [{artifact.type}] {artifact.description or ''}".rstrip())
        typer.echo("\n".join(f"   {line}" for line in text.splitlines()))
    reports = reports_named_in(texts)
    if not reports:
        typer.echo("(no report.html named by this run's artifacts)", err=True)
    return reports


def register(app: typer.Typer) -> None:
    app.command("report")(report_command)
