"""One validation result, three ways to read it: a terminal table, Prefect markdown, an HTML page.

The HTML page is self-contained (inline CSS, no scripts, no fonts or styles from a CDN), so it
reads the same offline as online; GX's own Data Docs fetch their CSS from a CDN.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup

from align_core.markdown import markdown_report, markdown_table
from data_contracts.results import ExpectationResult, ValidationResult

TEMPLATE = "report.html.jinja"
THUMBNAIL_PX = 96  # the longer side of a failing image's thumbnail
CHART_WIDTH, CHART_HEIGHT, AXIS_HEIGHT = 560, 150, 34  # px of a histogram's inline SVG


@dataclass
class Row:
    """One expectation, formatted for display."""

    status: str
    name: str
    severity: str
    unexpected: str
    rows: str
    percent: str
    mostly: str
    samples: str
    rule: str
    description: str


def rows(result: ValidationResult) -> list[Row]:
    return [_row(r) for r in result.results]


def _row(r: ExpectationResult) -> Row:
    table_level = r.observed_value is not None
    return Row(
        status=r.status,
        name=r.name,
        severity=r.severity,
        unexpected=f"observed {_observed(r.observed_value)}" if table_level else str(r.unexpected_count),
        rows=str(r.element_count),
        percent="" if table_level else f"{r.unexpected_percent:.2f}%",
        mostly="" if table_level else f"{r.mostly:g}",
        samples=", ".join(r.sample_ids),
        rule=f"{r.type}({', '.join(r.columns)}{', ' if r.columns and r.kwargs else ''}{_kwargs(r.kwargs)})",
        description=r.description,
    )


def _observed(value) -> str:
    """A measured value; a mapping (the KTO balance and its suggested weights) as ``key value, ...``."""
    return ", ".join(f"{key} {item}" for key, item in value.items()) if isinstance(value, dict) else str(value)


def _kwargs(kwargs: dict) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in kwargs.items())


def verdict(result: ValidationResult) -> str:
    """e.g. "FAILED: 2 error(s), 1 warning(s)" or "PASSED (1 warning)"."""
    errors, warnings = len(result.failures), len(result.warnings)
    if not result.passed:
        return f"FAILED: {errors} error(s), {warnings} warning(s)"
    return f"PASSED ({warnings} warning(s))" if warnings else "PASSED"


def render_text(result: ValidationResult) -> str:
    """A fixed-width table for the terminal, then the verdict."""
    header = ("status", "expectation", "severity", "unexpected", "rows", "%", "mostly", "sample ids")
    body = [(r.status, r.name, r.severity, r.unexpected, r.rows, r.percent, r.mostly, r.samples) for r in rows(result)]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header) - 1)]
    right_aligned = {3, 4, 5, 6}
    lines = []
    for line in (header, *body):
        cells = [cell.rjust(w) if i in right_aligned else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))]
        lines.append("  ".join([*cells, line[-1]]).rstrip())
    lines.append("")
    lines.append(f"{verdict(result)}  ({result.rows} rows, {result.kind}, suite {result.suite_version}, {result.seconds:.2f} s)")
    return "\n".join(lines)


def render_markdown(result: ValidationResult) -> str:
    """The Prefect artifact: verdict, dataset facts and the expectation table."""
    table = markdown_table(
        ["status", "expectation", "severity", "unexpected", "rows", "%", "mostly", "sample ids"],
        [(r.status, f"`{r.name}`", r.severity, r.unexpected, r.rows, r.percent, r.mostly, r.samples) for r in rows(result)],
        right_aligned={3, 4, 5, 6},
    )
    bullets = [
        f"dataset: `{result.dataset_digest}` ({result.kind}, {result.rows} rows)",
        f"folder: `{result.dataset_dir}`",
        f"suite: `{result.suite_version}`" + (f" with overrides `{json.dumps(result.overrides)}`" if result.overrides else ""),
        f"report: [{result.report_path.name}]({result.report_path.absolute().as_uri()}) (`{result.report_path}`)",
    ]
    return markdown_report(f"Data contract {verdict(result)}", bullets, [table])


@dataclass
class Thumbnail:
    """A failing image as the page shows it: a PNG data URI, or None for an image that does not decode."""

    sample_id: str
    uri: str | None


def thumbnail(sample_id: str, data: bytes) -> Thumbnail:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (THUMBNAIL_PX, THUMBNAIL_PX))  # JPEG: decode at a reduced scale
            image.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
            buffer = io.BytesIO()
            image.convert("RGBA").save(buffer, format="PNG")
    except Exception:  # noqa: BLE001  (what fails to decode is shown as such, never breaks the report)
        return Thumbnail(sample_id, None)
    return Thumbnail(sample_id, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))


def histogram_svg(histogram: dict) -> Markup:
    """One histogram (``distributions.Histogram.to_dict``) as an inline SVG bar chart: no script, no library,
    nothing fetched; each bar's count shows on hover."""
    bins = histogram["bins"]
    peak = max([b["count"] for b in bins] + [1])
    width = CHART_WIDTH / max(len(bins), 1)
    label_every = max(1, round(len(bins) / 8))  # about 8 labels fit under the axis
    size = f'width="{CHART_WIDTH}" height="{CHART_HEIGHT + AXIS_HEIGHT}"'
    parts = [f'<svg {size} role="img" aria-label="{html.escape(histogram["title"])}">']
    for index, item in enumerate(bins):
        height = CHART_HEIGHT * item["count"] / peak
        x = index * width
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{CHART_HEIGHT - height:.1f}" width="{max(width - 2, 1):.1f}" height="{height:.1f}" '
            f'fill="#4c78a8"><title>{html.escape(item["label"])}: {item["count"]}</title></rect>'
        )
        if index % label_every == 0:
            parts.append(
                f'<text x="{x + width / 2:.1f}" y="{CHART_HEIGHT + 14}" font-size="10" text-anchor="middle" '
                f'fill="#5a6268">{html.escape(item["label"])}</text>'
            )
    parts.append(f'<line x1="0" y1="{CHART_HEIGHT}" x2="{CHART_WIDTH}" y2="{CHART_HEIGHT}" stroke="#adb5bd"/>')
    parts.append(f'<text x="0" y="{CHART_HEIGHT + 30}" font-size="10" fill="#5a6268">max bar {peak} rows</text></svg>')
    return Markup("".join(parts))


def render_html(result: ValidationResult, images: dict[str, list[tuple[str, bytes]]] | None = None) -> str:
    """The page; ``images`` (expectation name -> (sample id, image bytes) of failing samples) are shown
    as small inline thumbnails beside the expectation."""
    thumbnails = {name: [thumbnail(*image) for image in shown] for name, shown in (images or {}).items()}
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=True,  # ids and descriptions come from data: never let them become markup
        undefined=jinja2.StrictUndefined,
    )
    charts = [(h, histogram_svg(h)) for h in result.distributions.get("histograms", []) if h["total"]]
    return environment.get_template(TEMPLATE).render(
        result=result, rows=rows(result), verdict=verdict(result), thumbnails=thumbnails, charts=charts
    )
