"""``alignflow inspect DATASET_OR_TOKEN_CACHE``: rows as the model sees them (``align_core.inspect``)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from align_core.errors import UsageError


def inspect_command(
    path: Path = typer.Argument(..., help="a materialised dataset folder or a token cache folder"),
    model: Path | None = typer.Option(None, "--model", "-m", help="tokenise a dataset with this model's "
                                      "tokenizer and chat template (a token cache names its own)"),
    count: int = typer.Option(5, "-n", min=1, help="show the first N rows"),
    ids: list[str] = typer.Option([], "--ids", help="show these row ids instead (repeatable, or comma-separated)"),
    html: Path | None = typer.Option(None, "--html", help="also write the rows as an HTML page here"),
    token_ids: bool = typer.Option(False, "--token-ids", help="print each token's id after it"),
    max_length: int = typer.Option(512, help="dataset: tokens per row, as data_cfgs.max_length"),
    truncation: str = typer.Option("drop", help="dataset: drop | truncate_prompt_left | error (data_cfgs.truncation)"),
    assistant_turns: str = typer.Option("all", help="dataset: all | last, as data_cfgs.assistant_turns"),
    color: bool | None = typer.Option(None, "--color/--no-color", help="colour (default: when stdout is a terminal)"),
    trust_remote_code: bool = typer.Option(False, help="run code the model folder ships"),
) -> None:
    """Render rows as the model will see them: the formatted chat text, the token boundaries and the trained
    tokens (label != -100) highlighted («…» when not on a terminal), each sequence's token counts, the
    reference log-probs cached beside a token cache, and what the truncation policy did to the row."""
    from align_core.inspect import ANSI, PLAIN, counts_line, render_html, render_text
    from alignflow.cli import fail_usage, one_line

    wanted = [row_id for value in ids for row_id in value.split(",") if row_id]
    try:
        inspection = _inspect(path, model, count, wanted, max_length, truncation, assistant_turns, trust_remote_code)
    except UsageError as error:
        fail_usage(one_line(error))
    use_colour = sys.stdout.isatty() if color is None else color
    style = ANSI if use_colour else PLAIN
    typer.echo(inspection.source)
    if inspection.counts:
        typer.echo(counts_line(inspection.counts))
    for row in inspection.rows:
        typer.echo("")
        typer.echo(render_text(row, style, token_ids), color=use_colour)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_html(inspection), encoding="utf-8")
        typer.echo(f"wrote {html}", err=True)


def _inspect(path: Path, model: Path | None, count: int, ids: list[str], max_length: int, truncation: str,
             assistant_turns: str, trust_remote_code: bool):
    """The ``Inspection`` of a token cache or a dataset folder; anything else is a ``UsageError``."""
    from align_core.data.token_cache import is_token_cache
    from align_core.inspect import inspect_dataset, inspect_token_cache
    from align_core.shards.manifest import MANIFEST_NAME

    if model is not None and not model.is_dir():
        raise UsageError(f"--model {model}: not a folder")
    if is_token_cache(path):
        return inspect_token_cache(path, model_dir=model, count=count, ids=ids)
    if not (path / MANIFEST_NAME).is_file():
        raise UsageError(f"{path}: neither a materialised dataset folder nor a token cache folder (no {MANIFEST_NAME})")
    if model is None:
        raise UsageError(f"{path} is a dataset folder: --model is needed to tokenise it with that model's tokenizer "
                         "and chat template")
    return inspect_dataset(path, model, count=count, ids=ids, max_length=max_length, truncation=truncation,
                           assistant_turns=assistant_turns, trust_remote_code=trust_remote_code)


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect_command)
