"""LoRA (Hu et al. 2021, through peft) on any trained model of any trainer: causal LMs, score models
(reward models, critics: the score head is trained in full), media models.

- ``apply_lora(model, cfgs)`` wraps the trainable part in a ``PeftModel``: every base weight frozen,
  adapters on ``target_modules``. A wrapper such as ``ResponseScorer`` adapts the model it holds
  (``adapt``), so the trainers need no LoRA code.
- ``adapters_disabled(model)``: the base model's forward, for a reference without a second copy.
- A trained run exports its adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``,
  loadable with ``PeftModel.from_pretrained``); ``merge_adapter_dir`` writes the merged model
  (``logger_cfgs.merge_lora``).
- ``adapter_base(path)`` tells an adapter folder from a model folder; the registry's loaders merge an
  adapter into its base on load, so a later job, ``generate`` or ``chat`` takes either.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from align_core.errors import UsageError

if TYPE_CHECKING:
    from align_core.config import LoraCfgs

ADAPTER_CONFIG = "adapter_config.json"
SCORE_HEAD = "score_head"  # align_core.models.score's head: trained in full, saved with the adapters


def apply_lora(model: torch.nn.Module, cfgs: LoraCfgs) -> torch.nn.Module:
    """``model`` with LoRA adapters, only they (and ``modules_to_save``) trainable."""
    if hasattr(model, "adapt"):  # a wrapper adapts the model inside it and stays the trainer's module
        return model.adapt(lambda inner: apply_lora(inner, cfgs))
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "is_quantized", False):  # QLoRA: norms in full precision, inputs that carry gradients
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)

    is_score_model = hasattr(model, SCORE_HEAD)
    modules_to_save = [*cfgs.modules_to_save, *([SCORE_HEAD] if is_score_model else [])]
    config = LoraConfig(
        r=cfgs.r, lora_alpha=cfgs.alpha, lora_dropout=cfgs.dropout, target_modules=cfgs.target_modules,
        modules_to_save=sorted(set(modules_to_save)) or None,
        # a causal LM's wrapper keeps generate(); a score model's plain wrapper forwards as the model does
        task_type=None if is_score_model else "CAUSAL_LM",
        exclude_modules=[SCORE_HEAD] if is_score_model else None,
    )
    return get_peft_model(model, config)


def quantized_loading(quantization: str | None, dtype: torch.dtype, zero_stage: int) -> dict[str, Any]:
    """``from_pretrained`` kwargs that load a base quantized for QLoRA (bitsandbytes NF4 with double
    quantization, or 8-bit); a one-line error where that cannot run. Not exercised on this project's CPU
    machines: the CUDA path follows peft's and transformers' documented recipe."""
    if quantization is None:
        return {}
    where = f"model_cfgs.quantization={quantization}"
    if not torch.cuda.is_available():
        raise UsageError(f"{where}: QLoRA loads the base with bitsandbytes, which needs a CUDA device; this machine has "
                         "none (train without quantization here, or on a GPU)")
    if zero_stage == 3:
        raise UsageError(f"{where}: ZeRO-3 cannot partition bitsandbytes' packed weights; use zero_stage 0, 1 or 2")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UsageError(f"{where}: needs the bitsandbytes package (pip install bitsandbytes)") from None
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                    bnb_4bit_compute_dtype=dtype)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}


def is_lora_model(model: Any) -> bool:
    from peft import PeftModel

    inner = getattr(model, "module", model)  # a DeepSpeed engine's module
    inner = getattr(inner, "causal_lm", inner)
    return isinstance(inner, PeftModel)


@contextlib.contextmanager
def adapters_disabled(model: Any) -> Iterator[None]:
    """The base model's forward inside the block (the adapters bypassed, not removed)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "causal_lm", inner)
    with inner.disable_adapter():
        yield


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


def adapter_base(path: str | Path) -> str | None:
    """The base model folder of an adapter folder; None for anything else."""
    config = Path(path) / ADAPTER_CONFIG
    if not config.is_file():
        return None
    return json.loads(config.read_text())["base_model_name_or_path"]


def adapter_has_score_head(path: str | Path) -> bool:
    """Whether an adapter folder carries a trained score head: a LoRA reward model, cost model or critic."""
    saved = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    return SCORE_HEAD in (saved.get("modules_to_save") or [])


def load_with_adapter(path: str | Path, load_base) -> torch.nn.Module:
    """``load_base(base folder)`` with the adapter folder ``path`` merged in: a plain model again."""
    from peft import PeftModel

    with whole_weights():
        base = load_base(adapter_base(path))
        merged = PeftModel.from_pretrained(base, str(path), is_trainable=False).merge_and_unload()
    return merged.requires_grad_(True)  # peft froze the base; as a loaded model it trains like any other


@contextlib.contextmanager
def whole_weights() -> Iterator[None]:
    """Models load whole inside, even while a ZeRO-3 run loads partitioned (a merge needs every weight):
    each rank holds one full copy until DeepSpeed partitions the merged model."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref  # transformers keeps no public getter
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if reference is not None and reference() is not None:
            hf_deepspeed.set_hf_deepspeed_config(reference())


def merge_adapter_dir(adapter_dir: Path, out_dir: Path, tokenizer: Any) -> None:
    """Write ``out_dir``: the adapter folder's model merged into its base, a plain Hugging Face model
    (a score model when the adapters carry a score head)."""
    from align_core.io import publish_dir, staging_dir
    from align_core.models.registry import load_causal_lm, load_score_model

    load = load_score_model if adapter_has_score_head(adapter_dir) else load_causal_lm
    staging = staging_dir(out_dir)
    load(adapter_dir).save_pretrained(staging, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(staging)
    publish_dir(staging, out_dir)
