"""ModelFormatter: formatting priority, list-of-parts content, media placeholders, assistant spans."""

from __future__ import annotations

import pytest
import transformers
from transformers import LlavaProcessor

from align_core.chat import DEFAULT_CHAT_TEMPLATE, ChatTemplateError, ModelFormatter
from align_core.models import build_tiny_model, register_model, registry
from align_core.models.tiny import build_tiny_tokenizer


@pytest.fixture
def tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("gpt2"), arch="gpt2", hidden_size=32, num_layers=1, num_heads=2)


def parts(*texts):
    return [{"type": "text", "text": text} if text != "<image>" else {"type": "image", "text": None} for text in texts]


CONVERSATION = [
    {"role": "user", "content": parts("Look at this.", "What is it?")},
    {"role": "assistant", "content": parts("A cat.")},
]

# A processor-style template: iterates typed parts, emits <image> for image parts.
PROCESSOR_TEMPLATE = (
    "{%- for message in messages -%}{{- message['role'] + ': ' -}}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{- '<image>' -}}"
    "{%- elif message['role'] == 'assistant' -%}{%- generation -%}{{- part['text'] -}}{%- endgeneration -%}"
    "{%- else -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}{{- '\\n' -}}{%- endfor -%}"
)


def llava_processor(tokenizer, chat_template):
    """A real LlavaProcessor around the tiny tokenizer (PIL image processor, nothing downloaded)."""
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, patch_size=16,
        vision_feature_select_strategy="default",
    )


def test_text_only_template_gets_parts_flattened_with_newlines(tokenizer):
    formatter = ModelFormatter(tokenizer)
    assert formatter.source == "tokenizer"
    assert formatter.render(CONVERSATION) == (
        "<|bos|><|im_start|>user\nLook at this.\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
    )


def test_default_template_is_role_colon_text_when_there_is_no_chat_template(tokenizer):
    tokenizer.chat_template = None
    formatter = ModelFormatter(tokenizer)
    assert formatter.source == "default" and formatter.chat_template == DEFAULT_CHAT_TEMPLATE
    assert formatter.render(CONVERSATION[:1], add_generation_prompt=True) == (
        "<|bos|>USER: Look at this.\nWhat is it?\nASSISTANT: "
    )


def test_a_models_own_formatter_wins_over_the_chat_template(tokenizer):
    def shouting(messages, add_generation_prompt):
        text = "".join(f"[{m['role'].upper()}] {m['content'].upper()}\n" for m in messages)
        return text + ("[ASSISTANT] " if add_generation_prompt else "")

    formatter = ModelFormatter(tokenizer, custom_formatter=shouting)
    assert formatter.source == "model"
    text, spans = formatter.render_with_spans(CONVERSATION)
    assert text == "[USER] LOOK AT THIS.\nWHAT IS IT?\n[ASSISTANT] A CAT.\n"
    assert [text[span.start : span.end] for span in spans] == ["A CAT.\n"]


def test_formatter_registered_for_the_model_type_is_found_from_the_folder(model_dir, monkeypatch):
    monkeypatch.setattr(registry, "_ENTRIES", {})
    register_model("gpt2", chat_formatter=lambda messages, add_generation_prompt: "|".join(m["content"] for m in messages))
    formatter = ModelFormatter.from_pretrained(model_dir)
    assert formatter.source == "model" and formatter.render(CONVERSATION) == "Look at this.\nWhat is it?|A cat."


def test_processor_template_beats_the_tokenizers_and_gets_typed_parts(tokenizer):
    processor = llava_processor(tokenizer, PROCESSOR_TEMPLATE)
    formatter = ModelFormatter(tokenizer, processor=processor)
    conversation = [{"role": "user", "content": parts("<image>", "What is it?")}, CONVERSATION[1]]
    text, spans = formatter.render_with_spans(conversation)
    assert formatter.source == "processor" and formatter.structured_content
    assert text == "user: <image>What is it?\nassistant: A cat.\n"
    assert [text[span.start : span.end] for span in spans] == ["A cat."]


def test_media_part_becomes_the_processors_placeholder_in_a_text_template(tokenizer):
    processor = llava_processor(tokenizer, None)
    formatter = ModelFormatter(tokenizer, processor=processor)
    assert formatter.source == "tokenizer" and formatter.media_tokens == {"image": "<image>"}
    rendered = formatter.render([{"role": "user", "content": parts("<image>", "What is it?")}])
    assert "<|im_start|>user\n<image>\nWhat is it?<|im_end|>" in rendered


def test_media_part_for_a_text_only_model_is_an_error_naming_the_message(tokenizer):
    conversation = [{"role": "system", "content": parts("Be kind.")}, {"role": "user", "content": parts("<image>")}]
    with pytest.raises(ChatTemplateError, match="message 1 has a 'image' part, but this model defines no image"):
        ModelFormatter(tokenizer).render(conversation)


def test_fingerprint_follows_the_template_text(tokenizer):
    marked = ModelFormatter(tokenizer).fingerprint
    tokenizer.chat_template = tokenizer.chat_template.replace("'\\n'", "'\\n\\n'", 1)
    edited = ModelFormatter(tokenizer).fingerprint
    tokenizer.chat_template = None
    default = ModelFormatter(tokenizer).fingerprint
    assert len({marked, edited, default}) == 3


def test_template_that_rewrites_earlier_turns_cannot_be_labelled_by_prefixes(tokenizer):
    # Marks whichever message is last, so a prefix rendering differs from the full conversation.
    tokenizer.chat_template = (
        "{%- for m in messages -%}{%- if loop.last -%}{{- 'FINAL ' -}}{%- endif -%}"
        "{{- m['role'] + ': ' + m['content'] + '\\n' -}}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- 'assistant: ' -}}{%- endif -%}"
    )
    with pytest.raises(ChatTemplateError, match="messages\\[:1\\] is not a prefix"):
        ModelFormatter(tokenizer).render_with_spans(CONVERSATION)


def test_generation_markers_must_wrap_every_assistant_message(tokenizer):
    tokenizer.chat_template = (
        "{%- for m in messages -%}"
        "{%- if m['role'] == 'assistant' and loop.index0 == 1 -%}{%- generation -%}{{- m['content'] -}}{%- endgeneration -%}"
        "{%- else -%}{{- m['content'] -}}{%- endif -%}{%- endfor -%}"
    )
    conversation = CONVERSATION + [{"role": "user", "content": "More?"}, {"role": "assistant", "content": "No."}]
    with pytest.raises(ChatTemplateError, match="marked 1 generation blocks for 2 assistant messages"):
        ModelFormatter(tokenizer).render_with_spans(conversation)
