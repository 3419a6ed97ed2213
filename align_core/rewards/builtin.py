"""Built-in reward functions: rule-based checks of a completion's text (verifiable rewards).

Each is ``fn(prompts, completions, metas, **kwargs) -> list[float]`` (see ``registry``); kwargs are
the parameters a config sets in ``RewardSpec.kwargs``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Literal

from align_core.errors import UsageError
from align_core.rewards.registry import Prompt, register_reward, row_meta

# A number as written in prose: optional sign and "$", then thousands groups ("1,000") or plain digits with
# optional decimals, or ".5". Never starts inside a word or a number, so "3-5" is 3 and 5, "x2" is none, and a
# sentence's full stop is not a decimal point.
NUMBER = re.compile(r"(?<![\w.])(-?)\$?(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?!\d)")

# The answer line a GSM8K solution ends with, "#### 72": format_check's default pattern.
GSM8K_ANSWER_LINE = r"^####\s*-?\$?[\d,]*\.?\d+\s*$"


def parse_number(text: str) -> Decimal:
    """``text`` as an exact number: "1,000" -> 1000, "$5" -> 5, "5.0" == 5; a UsageError if it is none."""
    try:
        return Decimal(text.replace(",", "").replace("$", "").strip())
    except InvalidOperation:
        raise UsageError(f"{text!r} is not a number") from None


def last_number(text: str) -> Decimal | None:
    """The last number written in ``text`` (see ``NUMBER``), or None when it has none."""
    matches = NUMBER.findall(text)
    if not matches:
        return None
    sign, digits = matches[-1]
    return parse_number(sign + digits)


@register_reward("gsm8k_exact_match")
def gsm8k_exact_match(prompts: Sequence[Prompt], completions: Sequence[str], metas: Sequence[dict | None]) -> list[float]:
    """1.0 when the completion's last number equals ``meta["final_answer"]`` (what the GSM8K template
    stores: the number after "####", separators removed), else 0.0."""
    rewards = []
    for index, completion in enumerate(completions):
        final_answer = row_meta(metas, index, "final_answer", "gsm8k_exact_match")
        answer = last_number(completion)
        rewards.append(float(answer is not None and answer == parse_number(str(final_answer))))
    return rewards


@lru_cache(maxsize=64)
def _compiled(pattern: str, flags: int) -> re.Pattern:
    try:
        return re.compile(pattern, flags)
    except re.error as error:
        raise UsageError(f"reward 'format_check': pattern {pattern!r} is not a valid regex: {error}") from None


@register_reward("format_check")
def format_check(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    metas: Sequence[dict | None],
    pattern: str = GSM8K_ANSWER_LINE,
    match: Literal["search", "full"] = "search",
) -> list[float]:
    """1.0 when the completion contains a match of ``pattern`` (``match="search"``, ``^``/``$`` match at
    line ends) or matches it as a whole (``match="full"``), else 0.0. The default pattern is GSM8K's
    answer line ``#### <number>``."""
    if match == "search":
        check = _compiled(pattern, re.MULTILINE).search
    elif match == "full":
        check = _compiled(pattern, 0).fullmatch
    else:
        raise UsageError(f"reward 'format_check': match is {match!r}; expected 'search' or 'full'")
    return [float(check(completion) is not None) for completion in completions]


@lru_cache(maxsize=4)
def _tokenizer(path: str):
    from align_core.models.registry import load_tokenizer

    return load_tokenizer(path)


def completion_lengths(completions: Sequence[str], unit: Literal["chars", "tokens"], tokenizer: str | None) -> list[int]:
    """Each completion's length in characters, or in tokens of the tokenizer saved in folder ``tokenizer``."""
    if unit == "chars":
        return [len(completion) for completion in completions]
    if unit != "tokens":
        raise UsageError(f"reward 'length_penalty': unit is {unit!r}; expected 'chars' or 'tokens'")
    if tokenizer is None:
        raise UsageError("reward 'length_penalty': unit 'tokens' needs kwarg 'tokenizer' (a model or tokenizer folder)")
    encoded = _tokenizer(str(tokenizer))(list(completions), add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


@register_reward("length_penalty")
def length_penalty(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    metas: Sequence[dict | None],
    target_length: int,
    coefficient: float = 0.01,
    unit: Literal["chars", "tokens"] = "chars",
    tokenizer: str | None = None,
) -> list[float]:
    """``-coefficient * max(0, length - target_length)``: 0 up to the target, then linearly negative.
    ``length`` counts characters, or tokens (``unit="tokens"``) of the tokenizer in folder ``tokenizer``."""
    lengths = completion_lengths(completions, unit, tokenizer)
    return [-coefficient * max(0, length - target_length) for length in lengths]


@register_reward("target_word")
def target_word(
    prompts: Sequence[Prompt],
    completions: Sequence[str],
    metas: Sequence[dict | None],
    word: str,
    case_sensitive: bool = False,
) -> list[float]:
    """1.0 when ``word`` appears as a whole word in the completion, else 0.0: a toy task a tiny model
    can learn in a few RL steps."""
    found = _compiled(rf"(?<!\w){re.escape(word)}(?!\w)", 0 if case_sensitive else re.IGNORECASE).search
    return [float(found(completion) is not None) for completion in completions]
