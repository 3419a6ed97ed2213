"""Model registry: from ``config.model_type`` to the classes that load a checkpoint, local paths only.

Like align-anything's AnyModel, one lookup serves every architecture: a causal LM comes from
transformers' ``AutoModelForCausalLM`` mapping (llama, qwen2, mistral, gpt2, ... anything it knows)
unless ``register_model`` overrides it, and a score model is that architecture's base transformer
plus a linear head (``align_core.models.score``). A model family may also register its own chat
formatting function, which ``ModelFormatter`` then prefers over any chat template.

Public API::

    register_model(model_type, *, causal_lm=None, chat_formatter=None, processor=None)
    causal_lm_class(config, trust_remote_code=False) -> type        # text out: a causal LM or a media LM
    load_processor(path, trust_remote_code=False) -> processor | None  # None: a text-only model
    score_model_class(config, trust_remote_code=False) -> type      # "<Arch>ForScore"
    check_attention_support(config, attn_implementation, trust_remote_code=False)  # UsageError if unsupported
    chat_formatter_for(config) -> Callable[[list[dict], bool], str] | None
    load_config(path, trust_remote_code=False) -> PretrainedConfig
    load_tokenizer(path, trust_remote_code=False) -> PreTrainedTokenizerBase
    load_causal_lm(path, *, trust_remote_code=False, **from_pretrained_kwargs) -> PreTrainedModel
                                          # e.g. attn_implementation="flash_attention_2", dtype=torch.bfloat16
    load_score_model(path, *, trust_remote_code=False, score_bias=True, **from_pretrained_kwargs)

Nothing here downloads: a path that is not a local folder is a ``UsageError`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    MODEL_MAPPING,
)

from align_core.errors import UsageError
from align_core.models.lora import adapter_base, adapter_has_score_head, load_with_adapter
from align_core.models.score import SCORE_MODEL_FLAG, is_score_config, score_model_class_for

# (messages with string content, add_generation_prompt) -> the rendered prompt text.
ChatFormatter = Callable[[list[dict], bool], str]


@dataclass
class ModelEntry:
    causal_lm: type[PreTrainedModel] | None = None  # None: transformers' AutoModelForCausalLM mapping
    chat_formatter: ChatFormatter | None = None  # a model family's own template method
    # (folder) -> processor, for a family transformers has no processor for (align-anything's Accustomed*)
    processor: Callable[[Path], Any] | None = None


_ENTRIES: dict[str, ModelEntry] = {}


def register_model(
    model_type: str,
    *,
    causal_lm: type[PreTrainedModel] | None = None,
    chat_formatter: ChatFormatter | None = None,
    processor: Callable[[Path], Any] | None = None,
) -> None:
    """Override or extend what ``model_type`` loads as; fields left None keep their default."""
    entry = _ENTRIES.setdefault(model_type, ModelEntry())
    if causal_lm is not None:
        entry.causal_lm = causal_lm
    if chat_formatter is not None:
        entry.chat_formatter = chat_formatter
    if processor is not None:
        entry.processor = processor


def chat_formatter_for(config: PretrainedConfig | None) -> ChatFormatter | None:
    if config is None:
        return None
    entry = _ENTRIES.get(config.model_type)
    return entry.chat_formatter if entry else None


def require_local_dir(path: str | Path, what: str = "model") -> Path:
    """``path`` as an existing local folder, or a UsageError saying that hub ids are not fetched."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UsageError(
            f"{what} path {str(path)!r} is not a local folder: alignflow loads models and tokenizers from disk "
            "only and never downloads (make a test model with `alignflow tiny-model --out DIR`)"
        )
    return folder


def load_config(path: str | Path, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model's config; an adapter folder's is its base model's."""
    folder = require_local_dir(path)
    base = adapter_base(folder)
    if base is not None:  # a LoRA run's export: its base's config, a score model's if it trained a head
        config = load_config(base, trust_remote_code)
        if adapter_has_score_head(folder):
            setattr(config, SCORE_MODEL_FLAG, True)
        return config
    if not (folder / "config.json").is_file():
        raise UsageError(f"{folder}: no config.json; not a saved Hugging Face model folder")
    return AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)


def _remote_class(config: PretrainedConfig, auto_name: str, trust_remote_code: bool) -> type | None:
    """The class a checkpoint's own code defines for ``auto_name``, if it has one and we may run it."""
    reference = (getattr(config, "auto_map", None) or {}).get(auto_name)
    if reference is None:
        return None
    if not trust_remote_code:
        raise UsageError(
            f"model_type {config.model_type!r} ships its own code for {auto_name}; "
            "set model_cfgs.trust_remote_code=true to run it"
        )
    return get_class_from_dynamic_module(reference, config._name_or_path, local_files_only=True)


def causal_lm_class(config: PretrainedConfig, trust_remote_code: bool = False) -> type[PreTrainedModel]:
    entry = _ENTRIES.get(config.model_type)
    if entry and entry.causal_lm is not None:
        return entry.causal_lm
    remote = _remote_class(config, "AutoModelForCausalLM", trust_remote_code)
    if remote is not None:
        return remote
    for mapping in (MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING):
        if type(config) in mapping:
            return mapping[type(config)]
    # A text-out media model transformers maps under no auto class of ours (Qwen2-Audio): the class its
    # config names, when transformers has it and it generates text.
    for name in getattr(config, "architectures", None) or []:
        klass = getattr(transformers, name, None)
        if isinstance(klass, type) and issubclass(klass, GenerationMixin):
            return klass
    raise UsageError(
        f"model_type {config.model_type!r} has no causal LM class in transformers; "
        "register one with align_core.models.register_model"
    )


# the class flag with which a transformers model declares each attention implementation it runs (eager: all)
ATTENTION_SUPPORT_FLAGS = {
    "sdpa": "_supports_sdpa",
    "flex_attention": "_supports_flex_attn",
    "flash_attention_2": "_supports_flash_attn",
    "flash_attention_3": "_supports_flash_attn",
}


def check_attention_support(config: PretrainedConfig, attn_implementation: str, trust_remote_code: bool = False) -> None:
    """A one-line UsageError when ``config``'s model class does not run ``attn_implementation``, before it loads
    (transformers' own refusal comes at load time, over several lines)."""
    flag = ATTENTION_SUPPORT_FLAGS.get(attn_implementation)
    model_class = causal_lm_class(config, trust_remote_code)
    if flag is None or getattr(model_class, flag, False):
        return
    supported = ["eager", *(name for name, other in ATTENTION_SUPPORT_FLAGS.items() if getattr(model_class, other, False))]
    raise UsageError(f"model_cfgs.attn_implementation: a {config.model_type} model ({model_class.__name__}) does not run "
                     f"{attn_implementation}; it runs {', '.join(supported)}")


def score_model_class(config: PretrainedConfig, trust_remote_code: bool = False) -> type[PreTrainedModel]:
    """``<Arch>ForScore`` for ``config``'s architecture (its base model + a scalar head)."""
    lm_class = causal_lm_class(config, trust_remote_code)
    base_class = _remote_class(config, "AutoModel", trust_remote_code) or MODEL_MAPPING.get(type(config), None)
    if base_class is None:
        raise UsageError(f"model_type {config.model_type!r} has no base model class to put a score head on")
    return score_model_class_for(lm_class, base_class)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer saved in ``path``; a missing pad token becomes the EOS token.

    Padding is located by attention masks everywhere in alignflow, never by comparing ids with the
    pad id, so reusing EOS as pad cannot hide real EOS tokens from the loss.
    """
    folder = require_local_dir(path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UsageError(f"{folder}: the tokenizer has neither a pad nor an EOS token to pad batches with")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")


def load_processor(path: str | Path, trust_remote_code: bool = False) -> Any | None:
    """The processor saved with a media model (tokenizer + image processor / feature extractor), the one its
    family registered, or None for a text-only model folder."""
    folder = require_local_dir(path)
    has_config = (folder / "config.json").is_file() or adapter_base(folder) is not None
    config = load_config(folder, trust_remote_code) if has_config else None
    entry = _ENTRIES.get(config.model_type) if config is not None else None
    if entry is not None and entry.processor is not None:
        return entry.processor(folder)
    if not any((folder / name).is_file() for name in PROCESSOR_FILES):
        return None
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=trust_remote_code, local_files_only=True)
    if not hasattr(processor, "tokenizer"):  # a bare image processor or feature extractor: not a text model's
        return None
    return processor


def load_causal_lm(path: str | Path, *, trust_remote_code: bool = False, **from_pretrained_kwargs: Any):
    """The causal LM saved in ``path`` (extra kwargs, e.g. ``dtype``, go to ``from_pretrained``); an adapter
    folder (a LoRA run's export) comes back merged into its base model."""
    if adapter_base(require_local_dir(path)) is not None:
        return load_with_adapter(path, lambda base: load_causal_lm(base, trust_remote_code=trust_remote_code, **from_pretrained_kwargs))
    config = load_config(path, trust_remote_code)
    if is_score_config(config):
        raise UsageError(f"{path}: holds a score model (reward model/critic), not a causal LM")
    model_class = causal_lm_class(config, trust_remote_code)
    return model_class.from_pretrained(Path(path), config=config, local_files_only=True, **from_pretrained_kwargs)


def load_score_model(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    score_bias: bool = True,
    **from_pretrained_kwargs: Any,
):
    """A score model from ``path``: a causal LM checkpoint gets a freshly initialised head (seed the
    RNG first for a reproducible one); a saved score model gets its trained head back, an adapter folder
    its adapters and head merged in."""
    if adapter_base(require_local_dir(path)) is not None:
        return load_with_adapter(path, lambda base: load_score_model(
            base, trust_remote_code=trust_remote_code, score_bias=score_bias, **from_pretrained_kwargs))
    config = load_config(path, trust_remote_code)
    if not is_score_config(config):
        config.score_bias = score_bias
    model_class = score_model_class(config, trust_remote_code)
    return model_class.from_pretrained(Path(path), config=config, local_files_only=True, **from_pretrained_kwargs)
