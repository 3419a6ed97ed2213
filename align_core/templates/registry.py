"""``@register_template("Name")``: the registry of dataset templates, built-in and user-supplied."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable
from typing import Any

from align_core.errors import UsageError
from align_core.templates.base import Template
from align_core.user_modules import import_user_module

_REGISTRY: dict[str, type[Template]] = {}


def _code_version(cls: type) -> str:
    """Digest of the template's source, its bases' and the shared helpers' (``templates.base`` and
    the conversation normaliser), so editing any of them invalidates the datasets they built."""
    from align_core.shards import conversation
    from align_core.templates import base

    digest = hashlib.sha256()
    for module in (base, conversation):
        digest.update(inspect.getsource(module).encode())
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            digest.update(inspect.getsource(klass).encode())
        except (OSError, TypeError):  # defined interactively: fall back to the qualified name
            digest.update(f"{klass.__module__}.{klass.__qualname__}".encode())
    return digest.hexdigest()[:16]


def register_template(name: str) -> Callable[[type[Template]], type[Template]]:
    def decorate(cls: type[Template]) -> type[Template]:
        if not (isinstance(cls, type) and issubclass(cls, Template)):
            raise TypeError(f"@register_template({name!r}) must decorate a subclass of Template")
        if not cls.supported_kinds():
            raise TypeError(f"template {name!r} implements no format_*_sample method")
        cls.name = name
        cls.code_version = _code_version(cls)
        _REGISTRY[name] = cls
        return cls

    return decorate


def known_templates() -> list[str]:
    return sorted(_REGISTRY)


def get_template(name: str, **options: Any) -> Template:
    """An instance of the template registered as ``name``; an unknown name lists the known ones."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown template {name!r}; known templates: {', '.join(known_templates())}") from None
    return cls(**options)


def load_template_module(spec: str) -> None:
    """Import a user's templates from a ``.py`` file path or a dotted module name."""
    import_user_module(spec, "template module")
