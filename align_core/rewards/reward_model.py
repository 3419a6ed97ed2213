"""Scoring generations with a trained reward model (a saved score model folder), as a reward source."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch

from align_core.chat import ModelFormatter
from align_core.errors import UsageError
from align_core.models.registry import chat_formatter_for, load_config, load_score_model, load_tokenizer
from align_core.models.score import is_score_config
from align_core.rewards.registry import Prompt, register_reward


def scored_conversation(prompt: Prompt, completion: str) -> list[dict]:
    """The conversation a reward model reads: the prompt's messages (a text prompt is one user message)
    followed by the completion as the assistant's turn, as preference rows are rendered in training."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return [*messages, {"role": "assistant", "content": completion}]


class RewardModelScorer:
    """A reward model from ``model_dir`` (``alignflow train`` with algorithm rm) that scores
    (prompt, completion) pairs: each is rendered with the model's chat formatting, tokenised without
    added special tokens (the template has them), right padded into batches of ``batch_size``, and
    scored at its last real token (``end_scores``). Rows must fit the model's context; nothing is cut.
    """

    def __init__(
        self, model_dir: str | Path, *, batch_size: int = 8, device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
    ):
        if not is_score_config(load_config(model_dir, trust_remote_code)):
            raise UsageError(f"{model_dir}: holds no trained score model (its head would be random); train one with rm")
        self.batch_size = batch_size
        self.model = load_score_model(model_dir, trust_remote_code=trust_remote_code).to(device).eval()
        self.tokenizer = load_tokenizer(model_dir, trust_remote_code)
        self.formatter = ModelFormatter(self.tokenizer, custom_formatter=chat_formatter_for(self.model.config))

    def texts(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> list[str]:
        """The rendered text of each (prompt, completion) pair, as the reward model reads it."""
        return [self.formatter.render(scored_conversation(prompt, completion)) for prompt, completion in zip(prompts, completions)]

    @torch.no_grad()
    def score_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Rendered texts -> their scores (n,) float32 on the CPU."""
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(texts), self.batch_size):
            # right padded: real tokens keep positions 0..len-1, which absolute position embeddings (GPT-2) need
            batch = self.tokenizer(
                list(texts[start : start + self.batch_size]), add_special_tokens=False, padding=True,
                padding_side="right", return_tensors="pt",
            ).to(device)
            output = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            scores.append(output.end_scores.float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str]) -> torch.Tensor:
        """(prompt conversation or text, completion text) pairs -> scores (n,) float32."""
        if len(prompts) != len(completions):
            raise UsageError(f"reward model: {len(prompts)} prompts but {len(completions)} completions")
        return self.score_texts(self.texts(prompts, completions))


@lru_cache(maxsize=2)
def cached_scorer(path: str, batch_size: int, device: str) -> RewardModelScorer:
    """One loaded reward model per (folder, batch size, device) per process, reused across RL steps."""
    return RewardModelScorer(path, batch_size=batch_size, device=device)


@register_reward("reward_model")
def reward_model(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    metas: Sequence[dict | None],
    path: str,
    batch_size: int = 8,
    device: str = "cpu",
) -> list[float]:
    """The score of the reward model saved in folder ``path`` for each (prompt, completion)."""
    return cached_scorer(str(path), batch_size, device).score(prompts, completions).tolist()
