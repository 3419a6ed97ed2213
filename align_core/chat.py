"""ModelFormatter: a shard conversation -> the exact text a model reads, and where its assistant turns are.

Which formatting wins (align-anything's priority):

1. the model family's own formatting function (``register_model(model_type, chat_formatter=fn)``),
2. the processor's chat template, else the tokenizer's,
3. ``DEFAULT_CHAT_TEMPLATE``: ``ROLE: text`` lines, the assistant's text followed by EOS.

Shard content is a list of typed parts. Text-only templates get it flattened to one string per
message (parts joined by newlines; align-anything crashed on lists here); a media part becomes the
processor's placeholder token (``processor.image_token`` ...), and a model without one rejects it
with an error naming the message. A processor's own template gets the parts as structured content.

Assistant spans (character ranges of each assistant message's trained text in the rendered string)
come from the template's ``{% generation %}`` markers when it has them, else from incremental
prefix rendering: the span of message i runs from the end of ``render(messages[:i],
add_generation_prompt=True)`` to the end of ``render(messages[:i+1])``. Never from searching the
rendered text for the message, which breaks on repeated or template-altered text.

Public API::

    ModelFormatter(tokenizer, processor=None, custom_formatter=None)
    ModelFormatter.from_pretrained(path, trust_remote_code=False, processor=None)
    formatter.source            # "model" | "processor" | "tokenizer" | "default"
    formatter.fingerprint       # digest of everything that decides the rendered text (cache keys use it)
    formatter.template_messages(conversation) -> list[dict]
    formatter.render(conversation, add_generation_prompt=False) -> str
    formatter.render_with_spans(conversation) -> (str, list[AssistantSpan])
    formatter.message_starts(conversation, rendered) -> list[int | None]   # where each message's rendering begins
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2.exceptions import TemplateError
from transformers.utils.chat_template_utils import render_jinja_template

from align_core.errors import UsageError
from align_core.shards.schema import MEDIA_PART_TYPES, TEXT_PART

DEFAULT_CHAT_TEMPLATE = (
    "{%- if bos_token -%}{{- bos_token -}}{%- endif -%}"
    "{%- for message in messages -%}"
    "{{- message['role'] | upper + ': ' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] -}}{%- if eos_token -%}{{- eos_token -}}{%- endif -%}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT: ' -}}{%- endif -%}"
)

_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


class ChatTemplateError(UsageError):
    """A conversation this model's formatting cannot render, or render in a way we can label."""


@dataclass(frozen=True)
class AssistantSpan:
    """Characters ``[start, end)`` of the rendered text that belong to assistant message ``message_index``."""

    message_index: int
    start: int
    end: int


class ModelFormatter:
    def __init__(self, tokenizer: Any, processor: Any = None, custom_formatter: Callable | None = None):
        self.tokenizer = tokenizer
        self.processor = processor
        self.custom_formatter = custom_formatter
        self.chat_template: str | None = None
        if custom_formatter is not None:
            self.source = "model"
        elif processor is not None and getattr(processor, "chat_template", None):
            self.source, self.chat_template = "processor", processor.chat_template
        elif getattr(tokenizer, "chat_template", None):
            self.source, self.chat_template = "tokenizer", tokenizer.chat_template
        else:
            self.source, self.chat_template = "default", DEFAULT_CHAT_TEMPLATE
        if isinstance(self.chat_template, dict):  # a tokenizer with several named templates
            self.chat_template = self.chat_template.get("default") or next(iter(self.chat_template.values()))
        # Processor templates handle typed parts (and expand media themselves); others need strings.
        self.structured_content = self.source == "processor"
        self.media_tokens = _media_tokens(tokenizer, processor)
        self.has_generation_markers = bool(self.chat_template and _GENERATION_MARKER.search(self.chat_template))
        self._template_kwargs = dict(getattr(tokenizer, "special_tokens_map", {}) or {})

    @classmethod
    def from_pretrained(cls, path: str | Path, trust_remote_code: bool = False, processor: Any = None) -> ModelFormatter:
        """The formatter for a saved model/tokenizer folder, with its family's custom formatter if registered."""
        from align_core.models.registry import chat_formatter_for, load_config, load_tokenizer

        tokenizer = load_tokenizer(path, trust_remote_code)
        config = load_config(path, trust_remote_code) if (Path(path) / "config.json").is_file() else None
        return cls(tokenizer, processor=processor, custom_formatter=chat_formatter_for(config))

    @property
    def fingerprint(self) -> str:
        """Digest of what decides the rendered text: source, template (or custom function code), media tokens."""
        if self.custom_formatter is not None:
            try:
                formatting = inspect.getsource(self.custom_formatter)
            except (OSError, TypeError):
                formatting = f"{self.custom_formatter.__module__}.{self.custom_formatter.__qualname__}"
        else:
            formatting = self.chat_template
        text = "\0".join([self.source, formatting, repr(sorted(self.media_tokens.items())), str(self.structured_content)])
        return hashlib.sha256(text.encode()).hexdigest()

    # ----- messages ---------------------------------------------------------------------------------

    def template_messages(self, conversation: list[dict]) -> list[dict]:
        """Shard messages as the formatting expects them: string content, or typed parts for processors."""
        return [
            {"role": message["role"], "content": self._content(message["content"], index)}
            for index, message in enumerate(conversation)
        ]

    def _content(self, content: str | list[dict], index: int) -> str | list[dict]:
        if isinstance(content, str):
            return content
        if self.structured_content:
            return [part if part["type"] == TEXT_PART else {"type": part["type"]} for part in content]
        pieces = []
        for part in content:
            if part["type"] == TEXT_PART:
                pieces.append(part["text"])
            elif part["type"] in self.media_tokens:
                pieces.append(self.media_tokens[part["type"]])
            else:
                raise ChatTemplateError(
                    f"message {index} has a {part['type']!r} part, but this model defines no {part['type']} "
                    "placeholder token (a text-only model cannot take media)"
                )
        return "\n".join(pieces)

    # ----- rendering --------------------------------------------------------------------------------

    def render(self, conversation: list[dict], add_generation_prompt: bool = False) -> str:
        return self._render(self.template_messages(conversation), add_generation_prompt)

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        if self.custom_formatter is not None:
            return self.custom_formatter(messages, add_generation_prompt)
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            **self._template_kwargs,
        )
        return rendered[0]

    def render_with_spans(self, conversation: list[dict]) -> tuple[str, list[AssistantSpan]]:
        """The full conversation's text and one span per assistant message, in message order."""
        messages = self.template_messages(conversation)
        assistant_indices = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
        if self.has_generation_markers and self.custom_formatter is None:
            return self._spans_from_markers(messages, assistant_indices)
        return self._spans_from_prefixes(messages, assistant_indices)

    def _spans_from_markers(self, messages: list[dict], assistant_indices: list[int]):
        rendered, generation_indices = render_jinja_template(
            conversations=[messages],
            chat_template=self.chat_template,
            return_assistant_tokens_mask=True,
            **self._template_kwargs,
        )
        char_spans = generation_indices[0]
        if len(char_spans) != len(assistant_indices):
            raise ChatTemplateError(
                f"the chat template marked {len(char_spans)} generation blocks for {len(assistant_indices)} "
                "assistant messages; it must wrap each assistant message in {% generation %}"
            )
        spans = [AssistantSpan(index, start, end) for index, (start, end) in zip(assistant_indices, char_spans)]
        return rendered[0], spans

    def _spans_from_prefixes(self, messages: list[dict], assistant_indices: list[int]):
        text = self._render(messages, False)
        spans = []
        for index in assistant_indices:
            if index == 0:
                raise ChatTemplateError("message 0 is an assistant message; a conversation must start with a prompt")
            before = self._render(messages[:index], True)
            through = self._render(messages[: index + 1], False)
            if not (text.startswith(before) and text.startswith(through) and len(before) <= len(through)):
                raise ChatTemplateError(
                    f"rendering messages[:{index}] is not a prefix of the whole conversation, so assistant "
                    f"message {index} cannot be located; use a template with {{% generation %}} markers"
                )
            spans.append(AssistantSpan(index, len(before), len(through)))
        return text, spans

    def message_starts(self, conversation: list[dict], rendered: str) -> list[int | None]:
        """Character offset in ``rendered`` (the whole conversation's rendering, with or without the
        generation prompt) where each message's rendering, its chat-template header included, begins.

        Message i begins at the end of ``render(messages[:i])``. None where that prefix is not a prefix of
        ``rendered`` (the template renders earlier messages differently depending on what follows) or the
        template rejects it (e.g. an empty conversation): that message's start is unknown.
        """
        messages = self.template_messages(conversation)
        starts: list[int | None] = []
        for index in range(len(messages)):
            try:
                before = self._render(messages[:index], False)
            except TemplateError:
                before = None
            starts.append(len(before) if before is not None and rendered.startswith(before) else None)
        return starts


def _media_tokens(tokenizer: Any, processor: Any) -> dict[str, str]:
    """Placeholder token per media type, from the processor (else tokenizer) attribute ``<type>_token``."""
    tokens = {}
    for media_type in MEDIA_PART_TYPES:
        for owner in (processor, tokenizer):
            token = getattr(owner, f"{media_type}_token", None) if owner is not None else None
            if isinstance(token, str) and token:
                tokens[media_type] = token
                break
    return tokens
