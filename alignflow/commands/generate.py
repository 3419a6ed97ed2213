"""``alignflow generate MODEL_DIR PROMPTS --out ROOT``: completions for a prompt_only dataset, as a supervised one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from align_core.errors import UsageError

# The sampling options, shared with ``alignflow chat``.
MaxNewTokens = Annotated[int, typer.Option(help="tokens generated at most per answer (EOS ends one sooner)")]
Temperature = Annotated[float, typer.Option(help="0: greedy")]
TopP = Annotated[float, typer.Option(help="nucleus sampling mass; 1: off")]
TopK = Annotated[int, typer.Option(help="sample from the k likeliest tokens; 0: off")]
Seed = Annotated[int, typer.Option(help="same seed and settings, same answers")]
TrustRemoteCode = Annotated[bool, typer.Option(help="run code the model folder ships")]


def generate_command(
    model_dir: Path = typer.Argument(..., help="a saved model folder (weights, config, tokenizer)"),
    prompts: Path = typer.Argument(..., help="a prompt_only dataset folder (OUT/<digest>)"),
    out: Path = typer.Option(..., "--out", "-o", help="root folder; the samples land in OUT/<digest>/"),
    max_new_tokens: MaxNewTokens = 64,
    temperature: Temperature = 1.0,
    top_p: TopP = 1.0,
    top_k: TopK = 0,
    num_generations: int = typer.Option(1, help="completions per prompt"),
    seed: Seed = 0,
    batch_size: int = typer.Option(8, help="prompts per generate() call (part of the address: it decides the draws)"),
    trust_remote_code: TrustRemoteCode = False,
) -> None:
    """Sample completions for every prompt into a content-addressed supervised dataset (prompt + generated
    assistant turn; meta keeps the prompt's id and the sampling settings); prints the folder last. The same
    model, prompts and settings reuse the folder and load nothing."""
    from transformers.utils import logging as hf_logging

    from align_core.generation import SamplingSettings, generate_dataset

    hf_logging.disable_progress_bar()  # a weights-loading bar per run is noise beside the summary line
    settings = SamplingSettings(max_new_tokens, temperature, top_p, top_k, num_generations, seed, batch_size)
    try:
        result = generate_dataset(model_dir, prompts, out, settings, trust_remote_code)
    except UsageError as error:
        from alignflow.cli import fail_usage, one_line

        fail_usage(one_line(error))
    manifest = result.manifest
    if result.cache_hit:
        typer.echo(f"exists (same model, prompts and settings): rows {manifest.rows}, "
                   f"quarantined {manifest.quarantined}", err=True)
    else:
        rate = result.generated_tokens / result.seconds if result.seconds else 0.0
        typer.echo(f"rows {manifest.rows}, quarantined {manifest.quarantined}, {result.generated_tokens} tokens "
                   f"in {result.seconds:.1f} s ({rate:.0f} tokens/s)", err=True)
    if num_generations > 1:
        typer.echo(f"each prompt repeats {num_generations} times; validate with "
                   f"`alignflow validate {result.path} --set duplicate_prompts.mostly=0`", err=True)
    typer.echo(str(result.path))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
