"""``alignflow evaluate MODEL_DIR --datasets D ... --out ROOT``: a model's measures per dataset, into a
content-addressed folder (``align_core.evaluation``)."""

from __future__ import annotations

from pathlib import Path

import typer

from align_core.errors import UsageError


def evaluate_command(
    model_dir: Path = typer.Argument(..., help="a saved model folder (a policy, a reward model, or a LoRA adapter folder)"),
    datasets: list[Path] = typer.Option(..., "--datasets", "-d", help="supervised, preference or prompt_only dataset folders"),
    out: Path = typer.Option(..., "--out", "-o", help="root folder; the evaluation lands in OUT/<digest>/"),
    reward_model: Path | None = typer.Option(None, help="judges the completions of prompt sets"),
    reference: Path | None = typer.Option(None, help="the model to compare with: win rates, implicit rewards"),
    max_new_tokens: int = typer.Option(64, help="tokens per completion at most"),
    temperature: float = typer.Option(0.0, help="0: greedy"),
    max_length: int = typer.Option(512, help="tokens per row of supervised and preference sets"),
    tie_margin: float = typer.Option(0.0, help="reward differences within this are ties"),
    trust_remote_code: bool = typer.Option(False, help="run code the model folders ship"),
) -> None:
    """Loss and perplexity on supervised sets; accuracy and margin on preference sets (a reward model's
    scores, or a policy's implicit reward against --reference); on prompt sets the reward model's mean score
    of sampled completions and, with --reference, win/tie/loss rates and the length-controlled win rate.
    Writes eval.json, completions-<dataset>.arrow and report.html; prints the metrics, then the folder."""
    from transformers.utils import logging as hf_logging

    from align_core.evaluation.evaluate import EvalSpec, evaluate
    from align_core.generation import SamplingSettings

    hf_logging.disable_progress_bar()
    spec = EvalSpec(
        str(model_dir), tuple(str(folder) for folder in datasets),
        reward_model=str(reward_model) if reward_model else None, reference=str(reference) if reference else None,
        sampling=SamplingSettings(max_new_tokens=max_new_tokens, temperature=temperature), max_length=max_length,
        tie_margin=tie_margin, trust_remote_code=trust_remote_code,
    )
    try:
        result = evaluate(spec, out)
    except UsageError as error:
        from alignflow.cli import fail_usage, one_line

        fail_usage(one_line(error))
    for dataset, metrics in result.metrics.items():
        shown = "  ".join(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"
                          for key, value in metrics.items())
        typer.echo(f"{dataset}: {shown}", err=True)
    if result.cache_hit:
        typer.echo("(found: the same model, datasets and settings were evaluated before)", err=True)
    typer.echo(str(result.path))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
