"""Importing a user's own code (templates, trainers) from a ``.py`` file path or a dotted module name."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from align_core.errors import UsageError


def import_user_module(spec: str, what: str) -> None:
    """Import ``spec`` once per process; ``what`` names it in errors ("template module", ...)."""
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        if not path.is_file():
            raise UsageError(f"{what} {spec!r}: no such file")
        # one module name per file, so importing it again (another config naming it) is a no-op
        module_name = f"alignflow_user_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
        if module_name in sys.modules:
            return
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[module_name]
            raise UsageError(f"{what} {spec!r} failed to import: {error}") from error
        return
    try:
        importlib.import_module(spec)
    except ImportError as error:
        raise UsageError(f"{what} {spec!r} cannot be imported: {error}") from error
