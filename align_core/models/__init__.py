"""Models: the registry (causal LMs and score models, local paths only) and offline tiny models.

See ``registry`` for loading, ``score`` for the score-head model and its outputs, ``tiny`` for the
offline tokenizer + model factory behind ``alignflow tiny-model``.
"""

from align_core.models.registry import (
    causal_lm_class,
    chat_formatter_for,
    load_causal_lm,
    load_config,
    load_score_model,
    load_tokenizer,
    register_model,
    score_model_class,
)
from align_core.models.score import ScoreModelOutput, is_score_config, last_real_token_index
from align_core.models.tiny import ARCHITECTURES, build_tiny_model, build_tiny_tokenizer

__all__ = [
    "ARCHITECTURES",
    "ScoreModelOutput",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "causal_lm_class",
    "chat_formatter_for",
    "is_score_config",
    "last_real_token_index",
    "load_causal_lm",
    "load_config",
    "load_score_model",
    "load_tokenizer",
    "register_model",
    "score_model_class",
]
