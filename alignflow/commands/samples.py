"""``alignflow samples OUT_DIR``: write the bundled sample datasets the demo trains on."""

from __future__ import annotations

from pathlib import Path

import typer

from alignflow.samples import MEDIA_ROOT_NAME, MIN_ROWS, write_media_samples, write_samples


def samples_command(
    out_dir: Path = typer.Argument(..., help="folder to write the sample files into (created if missing)"),
    rows: int = typer.Option(300, "--rows", min=MIN_ROWS, help="rows per file, the few planted bad rows included"),
    seed: int = typer.Option(0, "--seed", help="same seed, same bytes"),
    media: bool = typer.Option(
        False, "--media", help=f"also write the image, audio and video sets, their files under OUT_DIR/{MEDIA_ROOT_NAME}"
    ),
) -> None:
    """Write sample Alpaca, HH-RLHF, PKU-SafeRLHF, UltraFeedback and GSM8K files (with --media also
    align-anything image, audio and video ones); print each path, then with --media the media root, then OUT_DIR."""
    paths = list(write_samples(out_dir, rows=rows, seed=seed).values())
    if media:
        written = write_media_samples(out_dir, rows=rows, seed=seed).values()
        paths += [media_set.source for media_set in written] + [out_dir / MEDIA_ROOT_NAME]
    for path in paths:
        typer.echo(str(path))
    typer.echo(str(out_dir))


def register(app: typer.Typer) -> None:
    app.command("samples")(samples_command)
