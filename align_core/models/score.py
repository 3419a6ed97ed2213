"""Score models: any causal LM's base transformer plus a linear head giving one score per token.

A reward model reads the score at the last real token of a sequence; a PPO critic reads every
token's score as a value estimate. The class for a given architecture is built on demand
(``score_model_class(config)``) from that architecture's own ``PreTrainedModel`` base, so
``save_pretrained``/``from_pretrained``, weight init and sharding hints all stay the library's.

Checkpoint layout: the base model sits under the architecture's ``base_model_prefix`` (``model.``
for Llama/Qwen2/Mistral, ``transformer.`` for GPT-2), exactly where a causal LM keeps it, so a
causal LM checkpoint loads into a score model (``lm_head`` is dropped, ``score_head`` initialised)
and a saved score model restores its head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

# Marks a checkpoint as a score model in its config.json (``architectures`` also ends in "ForScore").
SCORE_MODEL_FLAG = "alignflow_score_model"


@dataclass
class ScoreModelOutput(ModelOutput):
    """``scores`` (b, L): one score per token; ``end_scores`` (b,): the score at each row's last real
    token; ``end_index`` (b,): that token's position."""

    scores: torch.Tensor | None = None
    end_scores: torch.Tensor | None = None
    end_index: torch.Tensor | None = None


def last_real_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last 1 in each row of ``attention_mask`` (b, L) -> (b,) long.

    Works for right padding (``1 1 1 0 0`` -> 2) and left padding (``0 0 1 1 1`` -> 4) alike,
    because it searches from the right rather than counting ones.
    """
    length = attention_mask.shape[-1]
    flipped_first_one = attention_mask.flip(-1).to(torch.int64).argmax(dim=-1)
    return length - 1 - flipped_first_one


class ScoreModelMixin:
    """Mixed in front of an architecture's ``PreTrainedModel`` base; see ``score_model_class_for``."""

    base_model_class: type[PreTrainedModel]  # e.g. LlamaModel, set per generated class

    def __init__(self, config: PretrainedConfig):
        super().__init__(config)
        setattr(config, SCORE_MODEL_FLAG, True)
        # The same attribute name a causal LM uses for its base, so checkpoints line up key for key.
        setattr(self, self.base_model_prefix, self.base_model_class(config))
        self.score_head = nn.Linear(config.get_text_config().hidden_size, 1, bias=getattr(config, "score_bias", True))
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> ScoreModelOutput:
        """``input_ids``/``attention_mask`` (b, L) -> scores (b, L), end_scores (b,), end_index (b,)."""
        kwargs.setdefault("use_cache", False)
        outputs = getattr(self, self.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden_states = outputs.last_hidden_state  # (b, L, hidden)
        scores = self.score_head(hidden_states).squeeze(-1)  # (b, L)
        if attention_mask is None:
            attention_mask = torch.ones(scores.shape, dtype=torch.long, device=scores.device)
        end_index = last_real_token_index(attention_mask.to(scores.device))
        end_scores = scores.gather(1, end_index.unsqueeze(1)).squeeze(1)
        return ScoreModelOutput(scores=scores, end_scores=end_scores, end_index=end_index)


_SCORE_CLASSES: dict[tuple[type, type], type[PreTrainedModel]] = {}


def architecture_base_class(causal_lm_class: type[PreTrainedModel]) -> type[PreTrainedModel]:
    """The ``<Arch>PreTrainedModel`` class a causal LM class derives from (its init and sharding rules)."""
    for klass in causal_lm_class.__mro__:
        if PreTrainedModel in klass.__bases__:
            return klass
    raise TypeError(f"{causal_lm_class.__name__} does not derive from a PreTrainedModel subclass")


def score_model_class_for(
    causal_lm_class: type[PreTrainedModel], base_model_class: type[PreTrainedModel]
) -> type[PreTrainedModel]:
    """``<Arch>ForScore``: ``base_model_class`` (e.g. LlamaModel) + a score head, built on the same
    ``<Arch>PreTrainedModel`` as ``causal_lm_class`` (cached per pair)."""
    key = (causal_lm_class, base_model_class)
    if key not in _SCORE_CLASSES:
        base = architecture_base_class(causal_lm_class)
        name = base.__name__.replace("PreTrainedModel", "") + "ForScore"
        # A causal LM's tied-weight map names its lm_head, which a score model does not have.
        attributes = {"base_model_class": base_model_class, "_tied_weights_keys": None}
        _SCORE_CLASSES[key] = type(name, (ScoreModelMixin, base), attributes)
    return _SCORE_CLASSES[key]


def is_score_config(config: PretrainedConfig) -> bool:
    return bool(getattr(config, SCORE_MODEL_FLAG, False)) or any(
        name.endswith("ForScore") for name in (getattr(config, "architectures", None) or [])
    )
