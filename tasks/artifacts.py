"""Publishing a Prefect markdown artifact laid out like every other alignflow report."""

from __future__ import annotations

from collections.abc import Sequence

from prefect.artifacts import create_markdown_artifact

from align_core.markdown import markdown_report


def publish_markdown(key: str, description: str, title: str, bullets: Sequence[str] = (), tables: Sequence[str] = (), level: int = 3) -> None:
    """Attach ``markdown_report(title, bullets, tables, level)`` to the current run as artifact ``key``.

    ``tables``: built with ``align_core.markdown.markdown_table``. ``key``: lowercase letters, digits and dashes (Prefect's rule).
    """
    create_markdown_artifact(key=key, description=description, markdown=markdown_report(title, bullets, tables, level))
