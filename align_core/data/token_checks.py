"""Token-level checks on a token cache: what silently ruins training after tokenisation, found before it.

Per sequence (numpy over the memory-mapped token columns, so a million rows take seconds):

- ``double_bos`` (error): the sequence starts with two BOS tokens (the chat template and the tokenizer
  both added one), which the model never saw in pretraining;
- ``labels_end_without_stop`` (error): the last trained span holds no special token (EOS or an end of
  turn): the model never learns to stop;
- ``few_trained_tokens`` (warning): under ``min_trained_fraction`` of the sequence is trained;
- ``truncation_rate`` (warning, whole cache): over ``max_truncated_share`` of the rows were truncated
  or dropped by the truncation policy;
- ``template_mask_disagrees`` (error, supervised caches whose chat template marks ``{% generation %}``):
  on the first ``sample`` rows, the tokens the template calls the assistant's differ from the labels;
- ``token_length_bias`` (warning, preference caches, whole cache): in over ``max_length_bias`` of the pairs
  (ties aside) the answer with more trained tokens is the chosen one: the data contract's ``length_bias``
  in the model's tokens rather than characters. It reports that share and the mean difference in tokens.

``require_token_checks`` raises ``UsageError`` naming each failed error-severity check with row ids; the
trainer calls it on every cache before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from align_core.data.schema import SEQUENCE_PREFIXES, has_labels
from align_core.data.truncation import IGNORE_INDEX
from align_core.errors import UsageError
from align_core.shards.schema import Kind

SAMPLE_IDS = 5


@dataclass
class TokenFinding:
    name: str
    severity: str  # "error" | "warning"
    description: str
    count: int  # sequences (or rows) that break the check
    checked: int
    sample_ids: list[str] = field(default_factory=list)
    observed: dict[str, float] = field(default_factory=dict)  # a whole-cache statistic, where the check measures one

    @property
    def failed(self) -> bool:
        return self.count > 0


def check_token_cache(cache_dir: str | Path, *, min_trained_fraction: float = 0.02, max_truncated_share: float = 0.1,
                      sample: int = 32, max_length_bias: float = 0.75) -> list[TokenFinding]:
    """Every check's finding on the cache (see the module docstring)."""
    from align_core.data.token_dataset import TokenDataset
    from align_core.models.registry import load_tokenizer

    rows = TokenDataset(cache_dir)
    manifest = rows.manifest
    tokenizer = load_tokenizer(manifest["tokenizer_path"])  # once, for both checks that read it
    findings = []
    if has_labels(rows.kind):
        special = _special_ids(manifest, tokenizer)
        for prefix in SEQUENCE_PREFIXES[rows.kind]:
            findings += _sequence_findings(rows, prefix, manifest.get("bos_token_id"), special, min_trained_fraction)
    counts = manifest["counts"]
    cut = counts["rows_in"] - counts["rows_out"] + counts.get("truncated", 0)
    findings.append(TokenFinding(
        "truncation_rate", "warning",
        f"at most {max_truncated_share:.0%} of the rows truncated or dropped by the truncation policy "
        f"({manifest['key_inputs'].get('truncation')}, max_length {manifest['key_inputs'].get('max_length')})",
        int(cut > max_truncated_share * counts["rows_in"]) and cut, counts["rows_in"]))
    finding = _template_mask_finding(rows, tokenizer, sample)
    if finding is not None:
        findings.append(finding)
    if rows.kind is Kind.PREFERENCE:
        findings.append(_length_bias_finding(rows, max_length_bias))
    return findings


def require_token_checks(cache_dir: str | Path, warn=print) -> list[TokenFinding]:
    """The findings; a failed warning goes to ``warn`` in one line, a failed error raises naming row ids."""
    findings = check_token_cache(cache_dir)
    errors = [f for f in findings if f.failed and f.severity == "error"]
    for finding in findings:
        if finding.failed and finding.severity == "warning":
            warn(f"warning: token cache {Path(cache_dir).name[:16]}: {describe(finding)}")
    if errors:
        raise UsageError(f"token cache {cache_dir}: " + "; ".join(describe(f) for f in errors))
    return findings


def describe(finding: TokenFinding) -> str:
    ids = f" (e.g. {', '.join(finding.sample_ids)})" if finding.sample_ids else ""
    observed = f" (observed {', '.join(f'{key} {value}' for key, value in finding.observed.items())})" if finding.observed else ""
    return f"{finding.name}: {finding.count} of {finding.checked}{ids}: {finding.description}{observed}"


def _length_bias_finding(rows, max_share: float) -> TokenFinding:
    """Trained tokens of chosen minus rejected per pair: the share of untied pairs where chosen has more
    (counted, with the first ids, only when over ``max_share``) and the mean difference."""
    differences, ids = [], []
    for batch in rows._batches:
        trained = []
        for prefix in ("chosen_", "rejected_"):
            offsets, labels = batch.token_lists[f"{prefix}labels"]
            running = np.concatenate([[0], np.cumsum(labels != IGNORE_INDEX)])
            trained.append(running[offsets[1:]] - running[offsets[:-1]])
        differences.append(trained[0] - trained[1])
        ids.append(np.asarray(batch.scalars["id"]))
    difference = np.concatenate(differences) if differences else np.zeros(0, np.int64)
    chosen_longer = np.concatenate(ids)[difference > 0] if ids else np.zeros(0, str)
    untied = int(np.count_nonzero(difference))
    share = len(chosen_longer) / untied if untied else 0.0
    over = share > max_share
    return TokenFinding(
        "token_length_bias", "warning",
        f"in at most {max_share:.0%} of pairs (ties aside) has the chosen answer more trained tokens than the rejected one",
        len(chosen_longer) if over else 0, untied, [str(i) for i in chosen_longer[:SAMPLE_IDS]] if over else [],
        {"longer_is_chosen": round(share, 4), "mean_token_difference": round(float(difference.mean()), 2) if len(difference) else 0.0},
    )


def _special_ids(manifest: dict[str, Any], tokenizer: Any) -> np.ndarray:
    ids = set(tokenizer.all_special_ids) | {manifest.get("eos_token_id")}
    ids |= {token_id for token_id, token in tokenizer.added_tokens_decoder.items() if token.special}
    return np.array(sorted(i for i in ids if i is not None), dtype=np.int64)


def _sequence_findings(rows, prefix: str, bos: int | None, special: np.ndarray, min_fraction: float) -> list[TokenFinding]:
    """The per-sequence checks on one token column pair (``chosen_`` ...), over every mapped batch."""
    double, unstopped, few = [], [], []
    checked = 0
    for batch in rows._batches:
        offsets, values = batch.token_lists[f"{prefix}input_ids"]
        label_offsets, labels = batch.token_lists[f"{prefix}labels"]
        ids = batch.scalars["id"]
        starts, lengths = offsets[:-1], np.diff(offsets)
        checked += len(lengths)
        if bos is not None:
            two = lengths >= 2
            first = np.where(two, values[np.minimum(starts, len(values) - 1)], -1)
            second = np.where(two, values[np.minimum(starts + 1, len(values) - 1)], -1)
            double += list(ids[(first == bos) & (second == bos)])
        trained = labels != IGNORE_INDEX
        label_starts = label_offsets[:-1]
        nonempty = np.diff(label_offsets) > 0
        # the last trained span (a run of trained tokens) must hold a stop token: its end may be a newline
        # the template writes after the end of turn, as long as the end of turn itself is trained
        previous = np.concatenate([[False], trained[:-1]])
        previous[label_starts[nonempty]] = False  # a row's first token starts a run
        last_run = _last_position(trained & ~previous, label_starts, nonempty, len(labels))
        last_stop = _last_position(trained & np.isin(labels, special), label_starts, nonempty, len(labels))
        unstopped += list(ids[(last_run >= 0) & (last_stop < last_run)])
        trained_counts = np.zeros(len(label_starts), dtype=np.int64)
        if len(labels):
            trained_counts[nonempty] = np.add.reduceat(trained.astype(np.int64), label_starts[nonempty])
        few += list(ids[trained_counts < min_fraction * np.maximum(lengths, 1)])
    side = f"[{prefix.rstrip('_')}]" if prefix else ""
    return [
        TokenFinding(f"double_bos{side}", "error", "the sequence starts with two BOS tokens (template and tokenizer "
                     "both add one)", len(double), checked, [str(i) for i in double[:SAMPLE_IDS]]),
        TokenFinding(f"labels_end_without_stop{side}", "error", "the last trained span holds no EOS or end-of-turn "
                     "token: the model would not learn to stop", len(unstopped), checked,
                     [str(i) for i in unstopped[:SAMPLE_IDS]]),
        TokenFinding(f"few_trained_tokens{side}", "warning", f"under {min_fraction:.0%} of the sequence's tokens "
                     "are trained", len(few), checked, [str(i) for i in few[:SAMPLE_IDS]]),
    ]


def _last_position(flags: np.ndarray, starts: np.ndarray, nonempty: np.ndarray, size: int) -> np.ndarray:
    """(rows,) the last position (absolute) where ``flags`` holds within each row, -1 where it never does."""
    last = np.full(len(starts), -1)
    if size:
        positions = np.where(flags, np.arange(size), -1)
        last[nonempty] = np.maximum.reduceat(positions, starts[nonempty])
    return last


def _template_mask_finding(rows, tokenizer: Any, sample: int) -> TokenFinding | None:
    """The chat template's assistant mask against the labels on the first ``sample`` comparable rows of a
    supervised cache with ``assistant_turns: all``; None where it cannot be compared."""
    from align_core.shards.dataset import ShardDataset

    manifest = rows.manifest
    if rows.kind is not Kind.SUPERVISED or manifest.get("media") or manifest["key_inputs"].get("assistant_turns") != "all":
        return None
    if "generation" not in (tokenizer.chat_template or "") or manifest.get("chat_format_source") != "tokenizer":
        return None
    dataset_dir = Path(manifest["dataset"]["path"])
    if not dataset_dir.is_dir():
        return None
    cached = {row_id: index for index, row_id in enumerate(rows.ids()[: sample * 4])}
    disagree, compared = [], 0
    for record_batch in ShardDataset(dataset_dir).iter_batches():
        for row in record_batch.to_pylist():
            if compared >= sample:
                break
            if row["id"] not in cached:
                continue
            messages = [{"role": m["role"], "content": "".join(p["text"] or "" for p in m["content"])} for m in row["messages"]]
            rendered = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
            ours = rows[cached[row["id"]]]
            if list(rendered["input_ids"]) != ours["input_ids"].tolist():
                continue  # formatted differently (a system default, truncation): not comparable
            compared += 1
            template_mask = np.asarray(rendered["assistant_masks"], dtype=bool)
            if not np.array_equal(template_mask, ours["labels"] != IGNORE_INDEX):
                disagree.append(row["id"])
        if compared >= sample:
            break
    if not compared:
        return None
    return TokenFinding("template_mask_disagrees", "error", "the chat template's assistant tokens ({% generation %}) "
                        "differ from the trained tokens", len(disagree), compared, disagree[:SAMPLE_IDS])
