"""``alignflow cache verify PATH``: recompute the digests of token caches and reference columns."""

from __future__ import annotations

from pathlib import Path

import typer

from align_core.errors import UsageError

cache_app = typer.Typer(help="Check the token caches and reference log-prob columns training reads.", no_args_is_help=True)

TOKEN_CACHE, REFERENCE = "token cache", "reference"


def find_caches(path: Path) -> list[tuple[str, Path]]:
    """``(what, folder)`` for every complete cache at or below ``path``: a reference column, a token
    cache (with its reference columns), or a cache root (every token cache in it, with theirs)."""
    from align_core.data.token_cache import MANIFEST_NAME, is_token_cache
    from align_core.reference.cache import REFERENCE_SUBDIR

    if not path.is_dir():
        raise UsageError(f"{path} is not a folder")
    if path.parent.name == REFERENCE_SUBDIR and (path / MANIFEST_NAME).is_file():
        return [(REFERENCE, path)]
    found = []
    for cache in [path] if is_token_cache(path) else sorted(p for p in path.iterdir() if is_token_cache(p)):
        found.append((TOKEN_CACHE, cache))
        references = sorted((cache / REFERENCE_SUBDIR).glob(f"[!.]*/{MANIFEST_NAME}"))  # not .staging-*
        found.extend((REFERENCE, manifest.parent) for manifest in references)
    if not found:
        raise UsageError(f"{path}: no complete token cache or reference column here or one level below")
    return found


@cache_app.command("verify")
def cache_verify(path: Path = typer.Argument(..., help="a token cache folder, a reference column folder, or a cache root")) -> None:
    """Recompute every digest and row count; one line per folder; exit 1 on any mismatch."""
    from align_core.data.token_cache import verify_token_cache
    from align_core.reference.cache import verify_reference_column

    damaged = 0
    caches = find_caches(path)
    for what, folder in caches:
        try:
            problems = verify_token_cache(folder) if what == TOKEN_CACHE else verify_reference_column(folder)
        except UsageError as error:  # an unreadable or outdated manifest: report it with the others
            problems = [str(error)]
        if problems:
            damaged += 1
            typer.echo(f"MISMATCH  {what:<11}  {folder}: {'; '.join(problems)}")
        else:
            typer.echo(f"ok        {what:<11}  {folder}")
    if damaged:
        typer.echo(
            f"verify failed: {damaged} of {len(caches)} folder(s) damaged; delete them and they are rebuilt on next use",
            err=True,
        )
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app, name="cache")
