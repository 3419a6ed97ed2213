"""Settings that change how fast a step runs, never what it computes: padding-free packing, Liger's fused
linear cross-entropy, torch.compile. Each is one field, declared once here; a trainer that supports it
inherits it into its settings class (an algorithm without it rejects the key, naming those with it).

==================  ==================================  =======================================================
setting             trainers                            what changes
==================  ==================================  =======================================================
``packing``         sft, dpo, ipo, simpo, orpo, kto,    each training micro-batch's sequences (a pair's chosen
                    rm                                  and rejected alike, KTO's mismatched pairs too) packed
                                                        padding-free (``align_core.data.packing``), under any
                                                        attention implementation transformers builds packed
                                                        masks for or FlashAttention; per-sequence log-probs
                                                        and reward scores read back per sequence
``liger_kernel``    sft, dpo, ipo, simpo, orpo          the output head and log-softmax of the label positions
                                                        run as Liger's fused linear cross-entropy: no (tokens,
                                                        vocab) logits (CUDA, ``pip install 'alignflow[gpu]'``,
                                                        a plain-head model: llama, mistral, qwen2, qwen3,
                                                        gpt2; not at ZeRO-3)
``torch_compile``   sft, dpo, ipo, simpo, orpo          the model's decoder body ``torch.compile``d in place
                                                        (CUDA; not at ZeRO-3); the head and losses stay eager
==================  ==================================  =======================================================

The attention kernel is ``model_cfgs.attn_implementation`` (every model of a run loads with it). A packed batch
gives each of its values the sequence boundaries: FlashAttention (``flash_attention_2/3``) reads them as
``cu_seq_lens`` with no mask at all, flex_attention builds a block-sparse mask, sdpa and eager a dense (L, L) one.

A switch or attention implementation this machine or model cannot run fails before any data is read, in one
line (``check_kernels``); an attention implementation packing cannot use fails at the first packed forward
(``align_core.data.packing.check_packable``).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
from typing import Any

import torch
from pydantic import Field
from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

from align_core.config import ModelCfgs, TrainCfgs
from align_core.errors import UsageError

# liger-kernel's fused cross-entropy with reduction="none" scaled every token's gradient by the first
# token's before Liger-Kernel PR #1298 (merged 2026-07); preference losses weigh each sequence differently
LIGER_MIN_VERSION = (0, 8, 5)
# what each FlashAttention implementation needs installed, transformers' check of it (on CUDA), and how to install it
FLASH_ATTENTION = {
    "flash_attention_2": ("the flash-attn package (>= 2.3.3)", is_flash_attn_2_available,
                          "pip install flash-attn --no-build-isolation"),
    "flash_attention_3": ("FlashAttention-3 (the flash-attn-3 package)", is_flash_attn_3_available,
                          "build it from the hopper/ folder of the Dao-AILab/flash-attention repository"),
}


class PackingSettings(TrainCfgs):
    """``packing`` alone: for a trainer whose model the fused kernels do not apply to (the reward model) or
    that has not been run with them (KTO)."""

    packing: bool = Field(False, description="pack each micro-batch's sequences end to end into rows of at most "
                          "data_cfgs.max_length tokens, padding-free (align_core.data.packing)")


class ThroughputSettings(PackingSettings):
    """The switches of this module: a trainer that supports them has its settings class derive from this."""

    liger_kernel: bool = Field(False, description="CUDA: Liger's fused linear cross-entropy for the label tokens' "
                               "log-probs (the gpu extra)")
    torch_compile: bool = Field(False, description="CUDA: torch.compile the model's decoder body")


def packing_collate(collate: Any, capacity: int) -> Any:
    """``collate`` (a ``Collator``, or a wrapper of one in ``base``) packing into rows of ``capacity`` tokens."""
    if hasattr(collate, "base"):  # ScoredCollator: the cached reference columns go beside the packed tokens
        return dataclasses.replace(collate, base=packing_collate(collate.base, capacity))
    if collate.media is not None:
        raise UsageError("train_cfgs.packing: rows with media inputs are not packed; set packing: false")
    return dataclasses.replace(collate, pack_capacity=capacity)


def check_kernels(train_cfgs: TrainCfgs, model_cfgs: ModelCfgs) -> None:
    """One line naming the first kernel switch or attention implementation this run cannot use here, and why;
    nothing when all can."""
    from deepspeed.accelerator import get_accelerator

    from align_core.models.registry import check_attention_support, load_config
    from align_core.reference.scoring import PLAIN_HEAD_MODEL_TYPES

    device = get_accelerator().device_name()
    for switch in ("liger_kernel", "torch_compile"):
        if not getattr(train_cfgs, switch, False):
            continue
        if device != "cuda":
            raise UsageError(f"train_cfgs.{switch}: needs a CUDA device; this run trains on {device} (set {switch}: false)")
        if train_cfgs.zero_stage == 3:
            raise UsageError(f"train_cfgs.{switch}: not supported at zero_stage 3 (ZeRO-3 partitions the weights it reads)")
    model_config = load_config(model_cfgs.model_name_or_path, model_cfgs.trust_remote_code)
    if getattr(train_cfgs, "liger_kernel", False):
        if importlib.util.find_spec("liger_kernel") is None:
            raise UsageError("train_cfgs.liger_kernel: the liger-kernel package is not installed (pip install 'alignflow[gpu]')")
        found = importlib.metadata.version("liger-kernel")
        if version_tuple(found) < LIGER_MIN_VERSION:
            wanted = ".".join(map(str, LIGER_MIN_VERSION))
            raise UsageError(f"train_cfgs.liger_kernel: needs liger-kernel >= {wanted} (correct per-token gradients); found {found}")
        if model_config.model_type not in PLAIN_HEAD_MODEL_TYPES:
            raise UsageError(f"train_cfgs.liger_kernel: a {model_config.model_type} model's logits are not a plain projection "
                             f"of its last hidden state; fused: {', '.join(sorted(PLAIN_HEAD_MODEL_TYPES))}")
    check_flash_attention(model_cfgs.attn_implementation, device, train_cfgs.precision)
    check_attention_support(model_config, model_cfgs.attn_implementation, model_cfgs.trust_remote_code)


def check_flash_attention(implementation: str, device: str, precision: str) -> None:
    """A FlashAttention implementation needs a CUDA device, its package and 16-bit training; a one-line error."""
    from align_core.trainers.engine import resolve_dtype

    if implementation not in FLASH_ATTENTION:
        return
    key = f"model_cfgs.attn_implementation: {implementation}"
    if device != "cuda":
        raise UsageError(f"{key} needs a CUDA device; this run trains on {device} (use sdpa, eager or flex_attention)")
    package, is_available, install = FLASH_ATTENTION[implementation]
    if not is_available():
        raise UsageError(f"{key} needs {package}, which is not installed ({install})")
    if resolve_dtype(precision) == torch.float32:
        raise UsageError(f"{key} runs in bf16 or fp16; this run trains in fp32 (set train_cfgs.precision: bf16)")


def version_tuple(version: str) -> tuple[int, ...]:
    """(0, 8, 5) from "0.8.5" or "0.8.5.dev2026"; non-numeric parts end it."""
    numbers = []
    for part in version.split("."):
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def compile_decoder(model: torch.nn.Module) -> None:
    """``torch.compile`` the decoder body of ``model`` (a causal LM, a ``ResponseScorer`` holding one, with or
    without LoRA) in place: parameter names, checkpoints and export stay the uncompiled model's."""
    causal_lm = getattr(model, "causal_lm", model)
    if hasattr(causal_lm, "get_base_model"):  # peft's wrapper around the LM its adapters are in
        causal_lm = causal_lm.get_base_model()
    causal_lm.base_model.compile()
