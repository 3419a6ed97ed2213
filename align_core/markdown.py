"""Markdown for reports and Prefect artifacts: one table builder and one page layout every report uses."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right_aligned: Collection[int] = ()) -> str:
    """A GitHub-flavoured table; each cell is ``str()``-ed with ``|`` escaped and line breaks flattened.

    ``right_aligned``: indices of the columns to align right (numbers).
    """
    separator = ["---:" if index in right_aligned else "---" for index in range(len(headers))]
    lines = [_row(headers), "|" + "|".join(separator) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"table row {list(row)!r} has {len(row)} cells; the headers {list(headers)!r} have {len(headers)}")
        lines.append(_row(row))
    return "\n".join(lines)


def markdown_report(title: str, bullets: Sequence[str] = (), tables: Sequence[str] = (), level: int = 3) -> str:
    """A heading, a bullet list of facts, then the tables, separated by blank lines."""
    blocks = [f"{'#' * level} {title}"]
    if bullets:
        blocks.append("\n".join(f"- {bullet}" for bullet in bullets))
    blocks.extend(tables)
    return "\n\n".join(blocks) + "\n"


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(" ".join(str(cell).replace("|", "\\|").splitlines()) for cell in cells) + " |"
