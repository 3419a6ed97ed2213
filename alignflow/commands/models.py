"""``alignflow tiny-model``: an offline tokenizer + random model folder for tests and the demo."""

from __future__ import annotations

from pathlib import Path

import typer


def tiny_model_command(
    out: Path = typer.Option(..., "--out", "-o", help="folder to write config, weights and tokenizer into"),
    arch: str = typer.Option("llama", "--arch", help="llama | qwen2 | mistral | gpt2 (text), llava (image), qwen2_audio (audio)"),
    seed: int = typer.Option(0, "--seed", help="weights depend on this only: same seed, same bytes"),
    vocab_size: int = typer.Option(2048, help="BPE vocabulary target"),
    hidden_size: int = typer.Option(256),
    num_layers: int = typer.Option(4),
    num_heads: int = typer.Option(4),
) -> None:
    """Build a tiny model that AutoModelForCausalLM/AutoTokenizer load offline; prints its folder last."""
    from transformers.utils import logging as hf_logging

    from align_core.errors import UsageError
    from align_core.models.tiny import ARCHITECTURES, build_tiny_model

    if arch not in ARCHITECTURES:
        raise UsageError(f"unknown --arch {arch!r}; expected one of: {', '.join(ARCHITECTURES)}")
    hf_logging.disable_progress_bar()
    path = build_tiny_model(
        out, arch=arch, seed=seed, vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads
    )
    typer.echo(str(path.resolve()))


def register(app: typer.Typer) -> None:
    app.command("tiny-model")(tiny_model_command)
