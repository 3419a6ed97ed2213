"""Rows as the model sees them: the formatted text, its token boundaries and the trained tokens.

    inspect_dataset(dataset_dir, model_dir, count=5, ids=None, max_length=512, ...) -> Inspection
    inspect_token_cache(cache_dir, model_dir=None, count=5, ids=None) -> Inspection
    render_text(row, style=PLAIN, token_ids=False) -> str          # a terminal's view of one row
    render_html(inspection) -> str                                   # one page of every shown row

A dataset row is tokenised through the encoder the token cache is built with
(``conversation_encoder``), so what is shown is what training reads; a token cache row is shown from
the cache itself. Each token's text comes from decoding the ids (``token_texts``), so the pieces of a
sequence concatenate to its decoded text and a trained span is exactly the text its labels cover.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from align_core.data.schema import SEQUENCE_PREFIXES, has_labels
from align_core.data.token_cache import MANIFEST_NAME, conversation_encoder, tokenizer_files_digest
from align_core.data.token_dataset import TokenDataset
from align_core.data.truncation import IGNORE_INDEX, KEPT, OUTCOMES, Truncation
from align_core.errors import UsageError
from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import Kind

RUN_TO_COLLAPSE = 4  # a media placeholder expanded into this many identical tokens or more is shown once, ×N


@dataclass(frozen=True)
class ShownToken:
    token_id: int
    text: str  # this token's share of the decoded text ("" while a multi-byte character is incomplete)
    trained: bool  # its label is not IGNORE_INDEX
    special: bool = False  # a special or added token (BOS, end of turn, a media placeholder)


@dataclass
class ShownSequence:
    """One sequence of a row: ``name`` is ``chosen`` / ``rejected`` for preference rows, else empty."""

    name: str
    tokens: list[ShownToken]
    reference_logps: dict[str, float] = field(default_factory=dict)  # reference model -> summed log-prob

    @property
    def trained_count(self) -> int:
        return sum(token.trained for token in self.tokens)

    @property
    def trained_text(self) -> str:
        return "".join(token.text for token in self.tokens if token.trained)


@dataclass
class ShownRow:
    """A row and what the truncation policy did to it: ``outcome`` is one of the token manifest's
    outcomes (``kept``, ``truncated``, ``dropped_*``; None when it cannot be told), and a dropped row
    has no sequences."""

    id: str
    outcome: str | None
    sequences: list[ShownSequence]
    desirable: bool | None = None
    meta: str | None = None


@dataclass
class Inspection:
    source: str  # one line: what was read, tokenised how
    kind: Kind
    rows: list[ShownRow]
    counts: dict[str, int] | None = None  # the token cache manifest's counts (None for a dataset)


# ----- tokens ---------------------------------------------------------------------------------------


def token_texts(input_ids: Sequence[int], tokenizer: Any) -> list[str]:
    """Each token's piece of the decoded text, (seq_len,) strings that concatenate to ``decode(input_ids)``.

    Decoding token by token would lose a SentencePiece token's leading space and split a multi-byte
    character across byte-level tokens into replacement characters; so, as streaming detokenisers do,
    a token's piece is what decoding it after its predecessors adds, and a token that ends in an
    incomplete character adds nothing until the one that completes it.
    """
    ids = [int(token_id) for token_id in input_ids]

    def decode(start: int, stop: int) -> str:
        return tokenizer.decode(ids[start:stop], skip_special_tokens=False, clean_up_tokenization_spaces=False)

    pieces, prefix_start, read_start = [], 0, 0
    for index in range(len(ids)):
        before, after = decode(prefix_start, read_start), decode(prefix_start, index + 1)
        if len(after) > len(before) and not after.endswith("\ufffd") and after.startswith(before):
            pieces.append(after[len(before) :])
            prefix_start, read_start = read_start, index + 1
        else:
            pieces.append("")
    if read_start < len(ids):  # undecodable to the end: the rest is what decoding all of it shows
        pieces[-1] = decode(prefix_start, len(ids))[len(decode(prefix_start, read_start)) :]
    return pieces


def shown_sequence(
    name: str, input_ids: Sequence[int], labels: Sequence[int] | None, tokenizer: Any,
    reference_logps: dict[str, float] | None = None,
) -> ShownSequence:
    """``input_ids``, ``labels`` (seq_len,) as shown tokens; ``labels`` None (prompt-only) trains nothing."""
    texts = token_texts(input_ids, tokenizer)
    trained = [False] * len(texts) if labels is None else [int(label) != IGNORE_INDEX for label in labels]
    special = special_token_ids(tokenizer)
    tokens = [
        ShownToken(int(token_id), text, flag, int(token_id) in special)
        for token_id, text, flag in zip(input_ids, texts, trained)
    ]
    return ShownSequence(name, tokens, dict(reference_logps or {}))


def special_token_ids(tokenizer: Any) -> set[int]:
    """Ids of the tokenizer's special tokens and of its added tokens marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return set(tokenizer.all_special_ids) | {token_id for token_id, token in added.items() if token.special}


def _runs(tokens: list[ShownToken]) -> list[tuple[ShownToken, int]]:
    """(token, repeats): a run of at least ``RUN_TO_COLLAPSE`` identical special tokens (an expanded media
    placeholder) as one entry, every other token as itself."""
    runs: list[tuple[ShownToken, int]] = []
    for token in tokens:
        if runs and runs[-1][0] == token:
            runs[-1] = (token, runs[-1][1] + 1)
        else:
            runs.append((token, 1))
    return [
        entry for token, repeats in runs
        for entry in ([(token, repeats)] if token.special and repeats >= RUN_TO_COLLAPSE else [(token, 1)] * repeats)
    ]


# ----- text -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """How a terminal view marks trained text and token boundaries."""

    trained_open: str
    trained_close: str
    shades: tuple[str, str]  # alternate per token in the token view, when the terminal can show them
    separator: str  # between tokens in the token view
    reset: str  # ends a shade (the background only, so a trained span keeps its colour)


PLAIN = Style("«", "»", ("", ""), "|", "")
# Trained: bold green; token boundaries: alternating grey backgrounds.
ANSI = Style("\x1b[1;32m", "\x1b[22;39m", ("\x1b[48;5;236m", "\x1b[48;5;239m"), "", "\x1b[49m")


def _visible(text: str) -> str:
    """A token's text on one line: newlines and tabs written as escapes."""
    return text.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def _repeat_suffix(repeats: int) -> str:
    return f"×{repeats}" if repeats > 1 else ""


def text_view(sequence: ShownSequence, style: Style = PLAIN) -> str:
    """The decoded text, each trained span between ``style``'s trained markers."""
    parts, trained = [], False
    for token, repeats in _runs(sequence.tokens):
        if token.trained != trained:
            parts.append(style.trained_open if token.trained else style.trained_close)
            trained = token.trained
        parts.append(token.text + _repeat_suffix(repeats))
    if trained:
        parts.append(style.trained_close)
    return "".join(parts)


def token_view(sequence: ShownSequence, style: Style = PLAIN, token_ids: bool = False) -> str:
    """Every token on one line, its boundaries visible (separators, or alternating shades), each trained
    span between the trained markers; with ``token_ids`` each token followed by ``[id]``."""
    parts, trained = [], False
    for position, (token, repeats) in enumerate(_runs(sequence.tokens)):
        text = _visible(token.text) + (f"[{token.token_id}]" if token_ids else "") + _repeat_suffix(repeats)
        shade = style.shades[position % 2]
        text = shade + text + (style.reset if shade else "")
        if token.trained != trained:
            if trained:
                parts[-1] += style.trained_close
            else:
                text = style.trained_open + text
            trained = token.trained
        parts.append(text)
    if trained:
        parts[-1] += style.trained_close
    return style.separator.join(parts)


def row_summary(row: ShownRow) -> str:
    """``── ID  kept`` and what the row is beyond its tokens (desirable, meta)."""
    outcome = row.outcome or "kept or truncated (its dataset cannot be re-encoded here to tell)"
    if row.outcome and row.outcome.startswith("dropped"):
        outcome = f"{row.outcome}: not in the token cache, never trained on"
    extras = [f"desirable {row.desirable}"] if row.desirable is not None else []
    if row.meta:
        extras.append(f"meta {row.meta}")
    return "  ".join([f"── {row.id}", outcome, *extras])


def sequence_summary(sequence: ShownSequence) -> str:
    total, trained = len(sequence.tokens), sequence.trained_count
    share = f" ({trained / total:.0%})" if total else ""
    references = "".join(
        f", reference log-prob {logp:.3f} ({model})" for model, logp in sequence.reference_logps.items()
    )
    name = f"[{sequence.name}] " if sequence.name else ""
    return f"{name}tokens {total}, trained {trained}{share}{references}"


def render_text(row: ShownRow, style: Style = PLAIN, token_ids: bool = False) -> str:
    """One row for a terminal: its summary, then per sequence its counts, text and tokens."""
    lines = [row_summary(row)]
    for sequence in row.sequences:
        tokens = "tokens: " + token_view(sequence, style, token_ids)
        lines += [sequence_summary(sequence), text_view(sequence, style), tokens]
    return "\n".join(lines)


def counts_line(counts: dict[str, int]) -> str:
    """The token manifest's counts in the order a row meets them: rows in, outcomes, rows out, tokens."""
    order = ["rows_in", *OUTCOMES, "rows_out", "tokens", "label_tokens"]
    names = [name for name in order if name in counts] + sorted(set(counts) - set(order))
    return "token cache counts: " + ", ".join(f"{name} {counts[name]}" for name in names)


# ----- html -----------------------------------------------------------------------------------------

HTML_STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}
pre{white-space:pre-wrap;word-break:break-all;background:#fafafa;border:1px solid #ddd;padding:.6em;line-height:1.6}
.t0{background:#eeeeee}.t1{background:#d8d8d8}
.trained.t0{background:#b7e4b0}.trained.t1{background:#8fd18a}
.trained{font-weight:bold}
.row{border-top:2px solid #888;margin-top:1.5em}
.summary{color:#444}
</style>"""


def html_tokens(sequence: ShownSequence) -> str:
    """The sequence as ``<span>`` per token: alternating backgrounds (``t0``/``t1``) show the boundaries,
    class ``trained`` the trained tokens; the id (and repeats) in the title."""
    spans = []
    for position, (token, repeats) in enumerate(_runs(sequence.tokens)):
        classes = f"tok t{position % 2}" + (" trained" if token.trained else "")
        title = f"id {token.token_id}" + (f" ×{repeats}" if repeats > 1 else "")
        text = token.text + (f"×{repeats}" if repeats > 1 else "")
        spans.append(f'<span class="{classes}" title="{html.escape(title)}">{html.escape(text)}</span>')
    return "<pre>" + "".join(spans) + "</pre>"


def render_html(inspection: Inspection) -> str:
    """One self-contained page of every shown row, every text escaped."""
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>alignflow inspect: {html.escape(inspection.source)}</title>",
        HTML_STYLE,
        f"<h1>alignflow inspect</h1><p>{html.escape(inspection.source)}</p>",
        "<p>Trained tokens (label != -100) are green and bold; backgrounds alternate per token; hover for ids.</p>",
    ]
    if inspection.counts:
        parts.append(f"<p>{html.escape(counts_line(inspection.counts))}</p>")
    for row in inspection.rows:
        parts.append(f'<div class="row"><h2>{html.escape(row_summary(row))}</h2>')
        for sequence in row.sequences:
            parts.append(f'<p class="summary">{html.escape(sequence_summary(sequence))}</p>{html_tokens(sequence)}')
        parts.append("</div>")
    return "\n".join(parts) + "\n"


# ----- reading rows ---------------------------------------------------------------------------------


def _first_rows(dataset: ShardDataset, count: int) -> list[dict]:
    rows: list[dict] = []
    for batch in dataset.iter_batches():
        rows.extend(batch.slice(0, count - len(rows)).to_pylist())
        if len(rows) >= count:
            break
    return rows


def _rows_with_ids(dataset: ShardDataset, ids: Sequence[str]) -> dict[str, dict]:
    """The shard rows of ``dataset`` among ``ids``, by id (an id it lacks is simply not there)."""
    wanted = pa.array(list(ids), pa.string())
    return {
        row["id"]: row
        for batch in dataset.iter_batches()
        for row in batch.filter(pc.is_in(batch.column("id"), wanted)).to_pylist()
    }


def _unknown_ids(where: str, missing: Sequence[str]) -> UsageError:
    return UsageError(f"no row with id {', '.join(map(repr, missing))} in {where}")


def _encoded_rows(encoder, kind: Kind, rows: list[dict]) -> list[tuple[Any, str]]:
    """(TokenizedRow or None when dropped, outcome) per shard row, through the token cache's encoder."""
    results = []
    for row in rows:
        outcomes: Counter[str] = Counter()
        tokenized = encoder.encode_rows(kind, [row], outcomes)
        (outcome,) = (+outcomes).keys()  # one row: exactly one outcome counted
        results.append((tokenized[0] if tokenized else None, outcome))
    return results


def _meta(shard_row: dict | None) -> str | None:
    """A shard row's ``meta`` JSON (scores, labels) when it says anything."""
    meta = (shard_row or {}).get("meta")
    return meta if meta and meta != "{}" else None


def _sequence_names(kind: Kind) -> list[str]:
    return [prefix.rstrip("_") for prefix in SEQUENCE_PREFIXES[kind]]


def inspect_dataset(
    dataset_dir: str | Path,
    model_dir: str | Path,
    *,
    count: int = 5,
    ids: Sequence[str] | None = None,
    max_length: int = 512,
    truncation: str = "drop",
    assistant_turns: str = "all",
    trust_remote_code: bool = False,
) -> Inspection:
    """Rows of a materialised dataset tokenised with ``model_dir``'s tokenizer and chat formatting, as the
    token cache would hold them under this length policy (a dropped row is shown as dropped)."""
    dataset = ShardDataset(dataset_dir)
    tokenizer_files_digest(model_dir)  # a folder without a tokenizer: one line naming it, before transformers tries
    encoder = conversation_encoder(dataset, model_dir, max_length, truncation, assistant_turns, trust_remote_code)
    if ids:
        found = _rows_with_ids(dataset, ids)
        if missing := [row_id for row_id in ids if row_id not in found]:
            raise _unknown_ids(f"dataset {dataset.path}", missing)
        rows = [found[row_id] for row_id in ids]
    else:
        rows = _first_rows(dataset, count)
    names = _sequence_names(dataset.kind)
    shown = []
    for row, (tokenized, outcome) in zip(rows, _encoded_rows(encoder, dataset.kind, rows)):
        sequences = [] if tokenized is None else [
            shown_sequence(name, sequence.input_ids, sequence.labels, encoder.tokenizer)
            for name, sequence in zip(names, tokenized.sequences)
        ]
        shown.append(ShownRow(row["id"], outcome, sequences, row.get("label"), _meta(row)))
    source = (f"dataset {dataset.path} ({dataset.kind.value}) tokenised with {model_dir}: max_length {max_length}, "
              f"truncation {encoder.truncation.value}, assistant_turns {assistant_turns}")
    return Inspection(source, dataset.kind, shown)


def reference_columns(cache: TokenDataset) -> dict[str, Any]:
    """``{"<model> <dtype>": (len(cache), k) log-probs}`` for every complete reference column beside the
    cache scoring the rows' own sequences (``matched``; KTO's ``mismatched`` pairs are other sequences)."""
    from align_core.reference.cache import REFERENCE_SUBDIR, read_reference_logps, read_reference_manifest

    columns = {}
    for manifest_path in sorted((cache.path / REFERENCE_SUBDIR).glob(f"[!.]*/{MANIFEST_NAME}")):  # not .staging-*
        manifest = read_reference_manifest(manifest_path.parent)
        if manifest.get("pairing") == "matched":
            name = f"{Path(manifest['reference_model']).name} {manifest['dtype'].removeprefix('torch.')}"
            columns[name] = read_reference_logps(manifest_path.parent, cache)
    return columns


def _cache_tokenizer(manifest: dict, model_dir: str | Path | None) -> tuple[Path, Any]:
    """(folder, tokenizer) to decode a cache with: ``model_dir``'s, which must be the cache's tokenizer,
    else the one its manifest names."""
    from align_core.models.registry import load_tokenizer

    folder = Path(model_dir) if model_dir is not None else Path(manifest["tokenizer_path"])
    if model_dir is None and not folder.is_dir():
        raise UsageError(f"the token cache was built with tokenizer {folder}, which is not there now; pass --model")
    if tokenizer_files_digest(folder) != manifest["key_inputs"]["tokenizer_digest"]:
        raise UsageError(f"{folder}: its tokenizer files differ from the ones the token cache was built with")
    return folder, load_tokenizer(folder)


def _cache_dataset(manifest: dict) -> ShardDataset | None:
    """The dataset the cache was tokenised from, when it is still there."""
    folder = Path(manifest["dataset"]["path"])
    if not (folder / MANIFEST_NAME).is_file():
        return None
    dataset = ShardDataset(folder)
    return dataset if dataset.digest == manifest["dataset"]["digest"] else None


def _cache_outcomes(
    manifest: dict, tokenizer_dir: Path, dataset: ShardDataset, shard_rows: list[dict]
) -> list[str | None]:
    """What the cache's truncation policy did to each shard row, re-encoded with the cache's settings
    (None for every row when the chat formatting here is not the one the cache was built with)."""
    inputs = manifest["key_inputs"]
    encoder = conversation_encoder(
        dataset, tokenizer_dir, inputs["max_length"], inputs["truncation"], inputs["assistant_turns"]
    )
    if encoder.formatter.fingerprint != inputs["chat_format"]:
        return [None] * len(shard_rows)
    return [outcome for _, outcome in _encoded_rows(encoder, dataset.kind, shard_rows)]


def _row_outcomes(
    manifest: dict, tokenizer_dir: Path, dataset: ShardDataset | None, shard_rows: dict[str, dict], in_cache: set[str]
) -> dict[str, str | None]:
    """Each shard row's outcome. A row in the cache of a policy that never cuts was kept; one the
    cache lacks, or any row of ``truncate_prompt_left``, is re-encoded to tell (None without the dataset)."""
    cuts = manifest["key_inputs"]["truncation"] == Truncation.TRUNCATE_PROMPT_LEFT.value
    outcomes = {row_id: None if cuts else KEPT for row_id in in_cache}
    to_encode = [row_id for row_id in shard_rows if cuts or row_id not in in_cache]
    if dataset is not None and to_encode:
        found = _cache_outcomes(manifest, tokenizer_dir, dataset, [shard_rows[row_id] for row_id in to_encode])
        outcomes.update(zip(to_encode, found))
    return outcomes


def inspect_token_cache(
    cache_dir: str | Path, *, model_dir: str | Path | None = None, count: int = 5, ids: Sequence[str] | None = None
) -> Inspection:
    """Rows of a token cache as training reads them, with the reference log-probs cached beside it.

    Whether a row was truncated, and why an asked-for id is not in the cache (dropped), is read from the
    cache's dataset re-encoded with the cache's settings, when that dataset is still there; so are the
    rows' ``meta``.
    """
    cache = TokenDataset(cache_dir)
    manifest = cache.manifest
    tokenizer_dir, tokenizer = _cache_tokenizer(manifest, model_dir)
    positions = {row_id: position for position, row_id in enumerate(cache.ids())}
    wanted = list(ids) if ids else list(positions)[:count]
    dataset = _cache_dataset(manifest)
    shard_rows = _rows_with_ids(dataset, wanted) if dataset is not None else {}
    if missing := [row_id for row_id in wanted if row_id not in positions and row_id not in shard_rows]:
        if dataset is None:
            raise _unknown_ids(f"token cache {cache.path} (and its dataset is not there to tell whether "
                               "truncation dropped it)", missing)
        raise _unknown_ids(f"token cache {cache.path} nor in its dataset {dataset.path}", missing)
    outcomes = _row_outcomes(manifest, tokenizer_dir, dataset, shard_rows, set(wanted) & positions.keys())
    references = reference_columns(cache)
    shown = []
    for row_id in wanted:
        meta = _meta(shard_rows.get(row_id))
        if row_id not in positions:
            shown.append(ShownRow(row_id, outcomes[row_id] or "dropped", [], meta=meta))
            continue
        row = cache[positions[row_id]]
        sequences = []
        for k, (name, prefix) in enumerate(zip(_sequence_names(cache.kind), SEQUENCE_PREFIXES[cache.kind])):
            labels = row[f"{prefix}labels"] if has_labels(cache.kind) else None
            logps = {model: float(values[positions[row_id], k]) for model, values in references.items()}
            sequences.append(shown_sequence(name, row[f"{prefix}input_ids"], labels, tokenizer, logps))
        shown.append(ShownRow(row_id, outcomes[row_id], sequences, row.get("desirable"), meta))
    inputs = manifest["key_inputs"]
    source = (f"token cache {cache.path} ({cache.kind.value}) of dataset {manifest['dataset']['path']}, tokenizer "
              f"{tokenizer_dir}: max_length {inputs['max_length']}, truncation {inputs['truncation']}, "
              f"assistant_turns {inputs['assistant_turns']}")
    return Inspection(source, cache.kind, shown, manifest["counts"])
