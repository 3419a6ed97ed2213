"""The token cache: a materialised dataset tokenised for one tokenizer, template and length policy.

    tokenize_dataset(dataset_dir, tokenizer_path, max_length, truncation, cache_root) -> CACHE_ROOT/<key>/

The key is a digest of the dataset's shard digests and kind, the tokenizer files' digest, the chat
formatting's fingerprint (template text or custom function), ``max_length``, the truncation policy,
``assistant_turns`` and the tokenisation code's own version. A changed tokenizer, template or
policy is a new key, so a stale cache can never be read; the same inputs are a hit that rewrites
nothing. The folder is built in a staging folder and renamed into place after its manifest.

Layout: ``manifest.json`` (key inputs, counts of kept/truncated/dropped rows and tokens, shard
digests, pad/bos/eos ids, and each token file's ``{path, rows, sha256}``) +
``shards/tokens-NNNNN.arrow``: uncompressed Arrow IPC files, so ``TokenDataset`` memory-maps them and
a cache larger than RAM still trains. ``TokenDataset`` checks each file's sha256 before mapping it;
``verify_token_cache`` (``alignflow cache verify``) recomputes everything.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

import align_core
import align_core.chat as chat_module
import align_core.data.encode as encode_module
import align_core.data.media_inputs as media_module
import align_core.data.schema as schema_module
import align_core.data.truncation as truncation_module
from align_core.chat import ModelFormatter
from align_core.data.encode import ConversationEncoder
from align_core.data.media_inputs import MediaProcessor, MediaSource
from align_core.data.schema import SEQUENCE_PREFIXES, has_labels, token_record_batch, token_schema
from align_core.data.truncation import IGNORE_INDEX, OUTCOMES, parse_truncation
from align_core.errors import UsageError
from align_core.io import (
    atomic_write_json,
    publish_dir,
    remove_stale_staging,
    sha256_file,
    sha256_json,
    sha256_tree,
    staging_dir,
)
from align_core.models.registry import load_processor, require_local_dir
from align_core.parts import MapParts
from align_core.paths import state_dir
from align_core.shards.dataset import ShardDataset, arrow_file_problem
from align_core.shards.manifest import FileEntry

CACHE_FORMAT_VERSION = 1
DAMAGED = "the token cache is damaged; delete its folder and it is tokenised again on next use"
MANIFEST_NAME = "manifest.json"
SHARDS_SUBDIR = "shards"
DEFAULT_ROWS_PER_SHARD = 200_000

# Files that define a tokenizer and its chat formatting; model weights are deliberately not among
# them, so training a model further does not invalidate the token cache of its tokenizer.
TOKENIZER_FILE_PATTERNS = (
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab*",
    "merges.txt",
    "*.model",
    "chat_template*",
    "preprocessor_config.json",
    "processor_config.json",
)


def default_cache_root() -> Path:
    return state_dir() / "token_cache"


def tokenizer_files_digest(tokenizer_path: str | Path) -> str:
    folder = require_local_dir(tokenizer_path, "tokenizer")
    files = sorted({path for pattern in TOKENIZER_FILE_PATTERNS for path in folder.glob(pattern) if path.is_file()})
    if not files:
        raise UsageError(f"{folder}: no tokenizer files (tokenizer.json, tokenizer_config.json, ...)")
    return sha256_tree(folder, files)


def _code_version() -> str:
    """Digest of the modules whose code decides the tokens, so changing them invalidates old caches."""
    digest = hashlib.sha256()
    for module in (encode_module, schema_module, truncation_module, chat_module, media_module):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


CODE_VERSION = _code_version()


def formatting_for(
    dataset: ShardDataset, tokenizer_path: str | Path, trust_remote_code: bool = False
) -> tuple[ModelFormatter, MediaProcessor | None]:
    """The chat formatting for ``tokenizer_path``, and for a dataset with media the model's processor
    over the dataset's media store (a model without a processor cannot take them: a clear error)."""
    processor = None
    if dataset.manifest.media:
        processor = load_processor(tokenizer_path, trust_remote_code)
        if processor is None:
            raise UsageError(
                f"{dataset.path} carries {', '.join(dataset.manifest.media)} media, but {tokenizer_path} has no "
                "processor (processor_config.json): a text-only model cannot take them"
            )
    formatter = ModelFormatter.from_pretrained(tokenizer_path, trust_remote_code, processor=processor)
    media = MediaProcessor(processor, MediaSource([dataset.path])) if processor is not None else None
    return formatter, media


def conversation_encoder(
    dataset: ShardDataset,
    tokenizer_path: str | Path,
    max_length: int,
    truncation: str = "drop",
    assistant_turns: str = "all",
    trust_remote_code: bool = False,
) -> ConversationEncoder:
    """The encoder that tokenises ``dataset`` for this model and length policy: the one the token cache
    is built with, and what ``alignflow inspect`` renders rows through."""
    policy = parse_truncation(truncation)  # a bad policy fails before the tokenizer loads
    formatter, media = formatting_for(dataset, tokenizer_path, trust_remote_code)
    return ConversationEncoder(formatter, max_length, policy, assistant_turns, media)


def cache_key_inputs(
    dataset: ShardDataset,
    formatter: ModelFormatter,
    tokenizer_path: str | Path,
    max_length: int,
    truncation_policy: str,
    assistant_turns: str,
    media: MediaProcessor | None = None,
) -> dict[str, Any]:
    media_inputs = {"media": media.fingerprint()} if media is not None else {}
    return {
        **media_inputs,
        "format": CACHE_FORMAT_VERSION,
        "code_version": CODE_VERSION,
        "kind": dataset.kind.value,
        "shard_digests": dataset.shard_digests,
        "tokenizer_digest": tokenizer_files_digest(tokenizer_path),
        "chat_format": formatter.fingerprint,
        "max_length": max_length,
        "truncation": parse_truncation(truncation_policy).value,
        "assistant_turns": assistant_turns,
    }


def token_cache_key(
    dataset_dir: str | Path,
    tokenizer_path: str | Path,
    max_length: int,
    truncation: str = "drop",
    *,
    assistant_turns: str = "all",
    trust_remote_code: bool = False,
) -> str:
    """The cache key ``tokenize_dataset`` would use, without tokenising anything."""
    dataset = ShardDataset(dataset_dir)
    formatter, media = formatting_for(dataset, tokenizer_path, trust_remote_code)
    inputs = cache_key_inputs(dataset, formatter, tokenizer_path, max_length, truncation, assistant_turns, media)
    return sha256_json(inputs)


class TokenizeSpec(BaseModel):
    """Everything that decides one token cache. Built once from a training config
    (``align_core.trainers.cached_steps.tokenize_specs``); the trainer and the Prefect task both key
    and build the cache from it, so the two can never disagree on a key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dataset_dir: str
    tokenizer_path: str
    max_length: int
    truncation: str = "drop"
    assistant_turns: str = "all"
    trust_remote_code: bool = False
    cache_root: str | None = None

    def root(self) -> Path:
        return Path(self.cache_root).absolute() if self.cache_root else default_cache_root()

    def key(self) -> str:
        return token_cache_key(
            self.dataset_dir, self.tokenizer_path, self.max_length, self.truncation,
            assistant_turns=self.assistant_turns, trust_remote_code=self.trust_remote_code,
        )

    def cache_dir(self) -> Path:
        """Where the cache is (complete once its manifest exists), without tokenising anything."""
        return self.root() / self.key()

    def build(self, map_parts: MapParts = map) -> Path:
        """The cache folder, tokenised now unless it is already complete (``map_parts``: ``tokenize_dataset``)."""
        return tokenize_dataset(
            self.dataset_dir, self.tokenizer_path, self.max_length, self.truncation, self.root(),
            assistant_turns=self.assistant_turns, trust_remote_code=self.trust_remote_code, map_parts=map_parts,
        )


def is_complete(cache_dir: str | Path) -> bool:
    """A cache folder is complete once its manifest exists: the manifest is written last."""
    return (Path(cache_dir) / MANIFEST_NAME).is_file()


def is_token_cache(folder: str | Path) -> bool:
    """A published token cache folder: not a staging folder, and its manifest (written last) carries a
    ``cache_key``, which a dataset folder's manifest does not."""
    manifest = Path(folder) / MANIFEST_NAME
    if Path(folder).name.startswith(".") or not manifest.is_file():
        return False
    try:
        return "cache_key" in json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return False


def read_token_manifest(cache_dir: str | Path) -> dict[str, Any]:
    path = Path(cache_dir) / MANIFEST_NAME
    if not path.is_file():
        raise UsageError(f"{cache_dir}: no {MANIFEST_NAME}; not a complete token cache (run tokenize_dataset)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != CACHE_FORMAT_VERSION:
        raise UsageError(f"{path}: token cache format {manifest.get('format')}, this alignflow reads {CACHE_FORMAT_VERSION}")
    return manifest


def verify_token_cache(cache_dir: str | Path) -> list[str]:
    """Recompute every token file's digest and row count; a list of mismatches (empty when intact)."""
    cache_dir = Path(cache_dir)
    manifest = read_token_manifest(cache_dir)
    entries = [FileEntry(**entry) for entry in manifest["shards"]]
    problems = [problem for entry in entries if (problem := arrow_file_problem(cache_dir, entry))]
    if sum(entry.rows for entry in entries) != manifest["rows"]:
        problems.append("manifest: token file rows do not add up to 'rows'")
    return problems


class _ShardSink:
    """Writes token record batches into uncompressed Arrow IPC files of at most ``rows_per_shard`` rows,
    named ``tokens-PPPPP-KKK.arrow`` after the dataset shard ``P`` they come from."""

    def __init__(self, folder: Path, arrow_schema: pa.Schema, rows_per_shard: int, part: int):
        self.folder = folder
        self.schema = arrow_schema
        self.rows_per_shard = rows_per_shard
        self.part = part
        self.entries: list[dict[str, Any]] = []
        self._writer = None
        self._rows = 0
        (folder / SHARDS_SUBDIR).mkdir(parents=True, exist_ok=True)

    def _path(self, number: int) -> Path:
        return self.folder / SHARDS_SUBDIR / f"tokens-{self.part:05d}-{number:03d}.arrow"

    def write(self, batch: pa.RecordBatch) -> None:
        while batch.num_rows:
            if self._writer is None:
                self._writer = pa.ipc.new_file(str(self._path(len(self.entries))), self.schema)
            take = min(batch.num_rows, self.rows_per_shard - self._rows)
            self._writer.write_batch(batch.slice(0, take))
            self._rows += take
            batch = batch.slice(take)
            if self._rows == self.rows_per_shard:
                self._close_shard()

    def _close_shard(self) -> None:
        self._writer.close()
        path = self._path(len(self.entries))
        self.entries.append({"path": str(path.relative_to(self.folder)), "rows": self._rows, "sha256": sha256_file(path)})
        self._writer, self._rows = None, 0

    def close(self) -> list[dict[str, Any]]:
        if self._writer is not None:
            self._close_shard()
        return self.entries


def _token_counts(kind, batch: pa.RecordBatch) -> tuple[int, int]:
    """(tokens, trained label tokens) in a token record batch."""
    tokens = labelled = 0
    for prefix in SEQUENCE_PREFIXES[kind]:
        tokens += len(batch.column(f"{prefix}input_ids").flatten())
        if has_labels(kind):
            labels = batch.column(f"{prefix}labels").flatten().to_numpy()
            labelled += int((labels != IGNORE_INDEX).sum())
    return tokens, labelled


def _encoder(dataset_dir: str, tokenizer_path: str, max_length: int, truncation: str, assistant_turns: str,
             trust_remote_code: bool) -> ConversationEncoder:
    """One encoder per process and inputs: the parts of one cache tokenised in this process share it. Keyed
    by the dataset's and the tokenizer files' digests too, so a tokenizer changed in place is loaded again."""
    digests = ShardDataset(dataset_dir).digest, tokenizer_files_digest(tokenizer_path)
    return _cached_encoder(dataset_dir, tokenizer_path, max_length, truncation, assistant_turns, trust_remote_code, digests)


@functools.lru_cache(maxsize=4)
def _cached_encoder(dataset_dir: str, tokenizer_path: str, max_length: int, truncation: str, assistant_turns: str,
                    trust_remote_code: bool, digests: tuple[str, str]) -> ConversationEncoder:
    return conversation_encoder(ShardDataset(dataset_dir), tokenizer_path, max_length, truncation, assistant_turns,
                                trust_remote_code)


@dataclass(frozen=True)
class TokenizePart:
    """Tokenises one dataset shard into the staging folder: a picklable job, so the parts of a large
    dataset can run in other processes or on a Dask cluster's workers (sharing the staging folder's file
    system). Each part's files and counts depend on its shard alone, so the cache's bytes are the same
    whatever ran the parts, and in whichever order."""

    dataset_dir: str
    tokenizer_path: str
    max_length: int
    truncation: str
    assistant_turns: str
    trust_remote_code: bool
    staging: str
    rows_per_shard: int
    batch_rows: int

    def __call__(self, part: int) -> dict[str, Any]:
        """``{"shards": token file entries, "outcomes": kept/truncated/dropped counts, "tokens", "label_tokens"}``."""
        dataset = ShardDataset(self.dataset_dir)
        encoder = _encoder(self.dataset_dir, self.tokenizer_path, self.max_length, self.truncation,
                           self.assistant_turns, self.trust_remote_code)
        kind = dataset.kind
        has_media = encoder.media is not None
        sink = _ShardSink(Path(self.staging), token_schema(kind, has_media), self.rows_per_shard, part)
        outcomes: Counter[str] = Counter({outcome: 0 for outcome in OUTCOMES})
        tokens = labelled = 0
        for record_batch in dataset.iter_batches(shards=[part]):
            for start in range(0, record_batch.num_rows, self.batch_rows):
                rows = record_batch.slice(start, self.batch_rows).to_pylist()
                tokenized = token_record_batch(kind, encoder.encode_rows(kind, rows, outcomes), has_media)
                batch_tokens, batch_labelled = _token_counts(kind, tokenized)
                tokens, labelled = tokens + batch_tokens, labelled + batch_labelled
                sink.write(tokenized)
        return {"shards": sink.close(), "outcomes": dict(outcomes), "tokens": tokens, "label_tokens": labelled}


def tokenize_dataset(
    dataset_dir: str | Path,
    tokenizer_path: str | Path,
    max_length: int,
    truncation: str = "drop",
    cache_root: str | Path | None = None,
    *,
    assistant_turns: str = "all",
    trust_remote_code: bool = False,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    batch_rows: int = 1024,
    map_parts: MapParts = map,
) -> Path:
    """Tokenise a materialised dataset folder into the token cache; returns the cache folder.

    A complete folder for the same key is returned as is. ``truncation`` is ``drop``,
    ``truncate_prompt_left`` or ``error``; ``assistant_turns`` (supervised) ``all`` or ``last``.
    ``map_parts(part_job, shard_numbers)`` runs the per-shard parts, in order, here by default
    (``tasks.parallel.map_parts`` spreads them over the Dask cluster a Prefect task runs on).
    """
    dataset = ShardDataset(dataset_dir)
    dataset.require_intact()  # also on a hit: the shard digests are the key, so they must be the bytes
    encoder = _encoder(str(dataset_dir), str(tokenizer_path), max_length, truncation, assistant_turns, trust_remote_code)
    formatter, media = encoder.formatter, encoder.media
    key_inputs = cache_key_inputs(dataset, formatter, tokenizer_path, max_length, truncation, assistant_turns, media)
    cache_key = sha256_json(key_inputs)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    final = root / cache_key
    if is_complete(final):
        return final
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(root)
    staging = staging_dir(final)
    job = TokenizePart(str(dataset_dir), str(tokenizer_path), max_length, truncation, assistant_turns, trust_remote_code,
                       str(staging), rows_per_shard, batch_rows)
    parts = list(map_parts(job, range(len(dataset.manifest.shards))))
    shards = [entry for part in parts for entry in part["shards"]]
    outcomes = {outcome: sum(part["outcomes"][outcome] for part in parts) for outcome in OUTCOMES}
    tokens, labelled = sum(part["tokens"] for part in parts), sum(part["label_tokens"] for part in parts)
    rows_out = sum(entry["rows"] for entry in shards)
    tokenizer = formatter.tokenizer
    manifest = {
        "format": CACHE_FORMAT_VERSION,
        "cache_key": cache_key,
        "key_inputs": key_inputs,
        "kind": dataset.kind.value,
        "dataset": {"path": str(Path(dataset_dir).resolve()), "digest": dataset.digest, "rows": dataset.num_rows},
        "media": media is not None,  # sequences name their media items, read from the dataset's media store
        "tokenizer_path": str(Path(tokenizer_path).resolve()),
        "chat_format_source": formatter.source,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "counts": {"rows_in": dataset.num_rows, "rows_out": rows_out, **outcomes, "tokens": tokens, "label_tokens": labelled},
        "rows": rows_out,
        "shards": shards,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "alignflow_version": align_core.__version__,
    }
    atomic_write_json(staging / MANIFEST_NAME, manifest)
    publish_dir(staging, final)
    return final
