"""Train/eval contamination: training rows that share a word n-gram (default 13, as GPT-3's and the
Llama papers' decontamination did) with an evaluation or benchmark dataset's rows.

Every text of a row counts (prompt and responses, all conversation columns), lower-cased and split
into words on anything that is not a letter or digit, so punctuation and spacing do not hide a copy.
The evaluation side's n-grams are hashed into one set (64-bit blake2b); the training side streams
through it, so memory is the evaluation sets' n-grams. A training row that shares at least one n-gram
with an evaluation row is contaminated; both rows are listed by id.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from align_core.shards.dataset import ShardDataset
from align_core.shards.schema import CONVERSATION_COLUMNS

WORD = re.compile(r"[^\W_]+", re.UNICODE)
DEFAULT_N = 13
LISTED = 20  # overlapping row pairs kept for the report


@dataclass
class Contamination:
    train: str
    evaluation: list[str]
    n: int
    train_rows: int = 0
    contaminated_rows: int = 0
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (training row id, evaluation row id), first LISTED

    @property
    def share(self) -> float:
        return self.contaminated_rows / self.train_rows if self.train_rows else 0.0


def row_words(row: dict, columns: tuple[str, ...]) -> list[str]:
    """Every word of a row's conversations, lower-cased, in order (columns joined by a break)."""
    words: list[str] = []
    for column in columns:
        for message in row.get(column) or []:
            for part in message["content"]:
                words += WORD.findall((part.get("text") or "").lower())
            words.append("\x00")  # an n-gram never spans two messages
    return words


def ngram_hashes(words: list[str], n: int) -> Iterator[int]:
    for start in range(len(words) - n + 1):
        gram = words[start : start + n]
        if "\x00" not in gram:
            yield int.from_bytes(hashlib.blake2b(" ".join(gram).encode(), digest_size=8).digest(), "little")


def _rows(dataset_dir: str | Path) -> Iterator[tuple[str, list[str]]]:
    dataset = ShardDataset(dataset_dir)
    columns = CONVERSATION_COLUMNS[dataset.kind]
    for batch in dataset.iter_batches(columns=["id", *columns]):
        for row in batch.to_pylist():
            yield row["id"], row_words(row, columns)


def find_contamination(train_dir: str | Path, eval_dirs: list[str | Path], n: int = DEFAULT_N) -> Contamination:
    """Training rows of ``train_dir`` sharing an ``n``-word n-gram with any row of ``eval_dirs``."""
    owner: dict[int, str] = {}
    for eval_dir in eval_dirs:
        for row_id, words in _rows(eval_dir):
            for gram in ngram_hashes(words, n):
                owner.setdefault(gram, row_id)
    found = Contamination(str(train_dir), [str(d) for d in eval_dirs], n)
    for row_id, words in _rows(train_dir):
        found.train_rows += 1
        match = next((owner[gram] for gram in ngram_hashes(words, n) if gram in owner), None)
        if match is not None:
            found.contaminated_rows += 1
            if len(found.pairs) < LISTED:
                found.pairs.append((row_id, match))
    return found
