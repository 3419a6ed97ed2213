"""Dataset templates: registry, base class and the built-in formatters (imported for registration)."""

from align_core.templates import text as _builtin_text  # noqa: F401  (registers the built-ins)
from align_core.templates.base import Template
from align_core.templates.multimodal import BaseFormatter
from align_core.templates.registry import get_template, known_templates, load_template_module, register_template

__all__ = ["BaseFormatter", "Template", "get_template", "known_templates", "load_template_module", "register_template"]
