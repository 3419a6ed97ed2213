"""``alignflow samples OUT_DIR``: write the bundled sample datasets the demo trains on."""

from __future__ import annotations

from pathlib import Path

import typer

from alignflow.samples import MIN_ROWS, write_samples


def samples_command(
    out_dir: Path = typer.Argument(..., help="folder to write the sample files into (created if missing)"),
    rows: int = typer.Option(300, "--rows", min=MIN_ROWS, help="rows per file, the few planted bad rows included"),
    seed: int = typer.Option(0, "--seed", help="same seed, same bytes"),
) -> None:
    """Write sample Alpaca, HH-RLHF, PKU-SafeRLHF, UltraFeedback and GSM8K files; print each path, then OUT_DIR."""
    for path in write_samples(out_dir, rows=rows, seed=seed).values():
        typer.echo(str(path))
    typer.echo(str(out_dir))


def register(app: typer.Typer) -> None:
    app.command("samples")(samples_command)
