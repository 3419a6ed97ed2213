"""Freeze switches for the parts of a media model: its vision or audio tower, its projector, its language model.

align-anything's names (``freeze_vision_tower``, ``freeze_mm_proj``, ``freeze_language_model``) plus
``freeze_audio_tower``. A part is found by the module names transformers' families give it, at any
depth (``model.vision_tower`` in LLaVA, ``model.audio_tower`` in Qwen2-Audio), so no family needs code
here; a switch that matches nothing in the model is a configuration error, not a silent no-op.
"""

from __future__ import annotations

import torch

from align_core.errors import UsageError

# switch -> module names that part has in transformers' families
PART_NAMES: dict[str, tuple[str, ...]] = {
    "freeze_vision_tower": ("vision_tower", "vision_model", "visual"),
    "freeze_audio_tower": ("audio_tower",),
    "freeze_mm_proj": ("multi_modal_projector", "mm_projector"),
    "freeze_language_model": ("language_model",),
}


def freeze_parts(model: torch.nn.Module, switches: list[str]) -> int:
    """Stop gradients to every parameter of the parts the switches name; the number of parameters frozen."""
    frozen = 0
    for switch in switches:
        names = PART_NAMES[switch]
        modules = [module for name, module in model.named_modules() if name.rsplit(".", 1)[-1] in names]
        if not modules:
            model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise UsageError(f"model_cfgs.{switch}: a {model_type} model has no {' / '.join(names)} module")
        for module in modules:
            for parameter in module.parameters():
                if parameter.requires_grad:
                    parameter.requires_grad_(False)
                    frozen += parameter.numel()
    return frozen
