"""Built-in templates for public text datasets, each shaped like the real dataset's rows."""

from __future__ import annotations

from align_core.shards.conversation import text_message
from align_core.templates.base import Template, optional_text_field, text_field
from align_core.templates.registry import register_template


@register_template("Alpaca")
class Alpaca(Template):
    """tatsu-lab/alpaca and its clones: ``instruction``, optional ``input``, ``output``."""

    def _prompt(self, raw: dict) -> list:
        instruction = text_field(raw, "instruction")
        extra_input = optional_text_field(raw, "input")
        text = f"{instruction}\n\n{extra_input}" if extra_input.strip() else instruction
        return [text_message("user", text)]

    def format_supervised_sample(self, raw: dict):
        return [*self._prompt(raw), text_message("assistant", text_field(raw, "output"))], None

    def format_prompt_only_sample(self, raw: dict):
        return self._prompt(raw), None
