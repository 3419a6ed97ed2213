"""A media model family transformers has no processor for, registered the way align-anything's
``Accustomed*`` classes add one (MiniCPM-V and the like): its own config and model class, a processor
built from the folder's tokenizer, and its own chat formatting. Imported by the tests that use it."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoConfig, LlavaConfig, LlavaForConditionalGeneration

from align_core.models import register_model

MODEL_TYPE = "test_accustomed_vlm"


class AccustomedConfig(LlavaConfig):
    model_type = MODEL_TYPE


class AccustomedForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = AccustomedConfig


def accustomed_processor(folder: Path):
    """The processor this family ships no files for: CLIP-style resizing to 32 px and 8 px patches."""
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    from align_core.models.registry import load_tokenizer

    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(image_processor=images, tokenizer=load_tokenizer(folder), patch_size=8,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1)


def accustomed_chat(messages: list[dict], add_generation_prompt: bool) -> str:
    """The family's own prompt format (no chat template): ``USER: ... ASSISTANT: ...<|im_end|>``."""
    text = "".join(
        f"{message['role'].upper()}: {message['content']}" + ("<|im_end|>" if message["role"] == "assistant" else "") + "\n"
        for message in messages
    )
    return text + ("ASSISTANT: " if add_generation_prompt else "")


AutoConfig.register(MODEL_TYPE, AccustomedConfig, exist_ok=True)
register_model(MODEL_TYPE, causal_lm=AccustomedForConditionalGeneration, processor=accustomed_processor,
               chat_formatter=accustomed_chat)


def accustomed_model(llava_dir: Path, out_dir: Path) -> Path:
    """A tiny LLaVA's weights and tokenizer saved as this family: no processor or chat template files."""
    llava = LlavaForConditionalGeneration.from_pretrained(llava_dir)
    model = AccustomedForConditionalGeneration(AccustomedConfig(**llava.config.to_dict()))
    model.load_state_dict(llava.state_dict())
    model.save_pretrained(out_dir)
    from align_core.models.registry import load_tokenizer

    tokenizer = load_tokenizer(llava_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(out_dir)
    for name in ("chat_template.jinja", "processor_config.json"):
        (out_dir / name).unlink(missing_ok=True)
    return out_dir
