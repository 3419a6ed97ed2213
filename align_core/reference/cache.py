"""Reference log-probs computed once into an Arrow column stored beside the token cache.

    compute_reference_logps(token_cache_dir, reference_model, pairing) -> <token_cache_dir>/reference/<key>/

The key digests the token cache key (which covers shard digests, tokenizer, chat template, length
policy), the reference model's weights digest (``config.json`` and weight files), the pairing
(``matched``: the rows' own sequences; ``mismatched``: KTO's pairs), the compute dtype and this
code's version. A model trained further, a changed dtype or a changed dataset is a new key, so a
stale column is never read; the same inputs are a hit that computes nothing.

Layout: ``logps.arrow`` (``id`` + one float32 column per sequence of a row: ``chosen_logps``,
``rejected_logps`` for preference rows, ``logps`` otherwise: summed over response tokens) and
``manifest.json`` (key inputs, rows, mean of each column, seconds, and ``columns``: the column
file's ``{path, rows, sha256}``), written last. ``read_reference_logps`` checks the sha256 before
reading (once per process); ``verify_reference_column`` (``alignflow cache verify``) recomputes it.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from pydantic import BaseModel, ConfigDict

import align_core.losses.logps as logps_module
import align_core.reference.mismatched as mismatched_module
import align_core.reference.scoring as scoring_module
from align_core.data.schema import SEQUENCE_PREFIXES
from align_core.data.token_cache import read_token_manifest, tokenizer_files_digest
from align_core.data.token_dataset import TokenDataset
from align_core.errors import UsageError
from align_core.io import (
    atomic_write_json,
    publish_dir,
    remove_stale_staging,
    require_sha256,
    sha256_file,
    sha256_json,
    sha256_tree,
    staging_dir,
)
from align_core.models.registry import require_local_dir
from align_core.parts import MapParts
from align_core.reference.mismatched import MismatchedRows
from align_core.reference.scoring import load_frozen_scorer, score_sequences
from align_core.shards.dataset import arrow_file_problem
from align_core.shards.manifest import FileEntry

FORMAT_VERSION = 2  # 2: the manifest records the column file's sha256
PAIRINGS = ("matched", "mismatched")
REFERENCE_SUBDIR = "reference"
MANIFEST_NAME = "manifest.json"
COLUMNS_NAME = "logps.arrow"
DAMAGED = "the reference column is damaged; delete its folder and it is computed again on next use"
# What decides a model's outputs; tokenizer files are checked separately (they must match the cache's).
WEIGHT_FILE_PATTERNS = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json")


def _code_version() -> str:
    digest = hashlib.sha256()
    for module in (logps_module, mismatched_module, scoring_module):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


CODE_VERSION = _code_version()


def model_weights_digest(model_dir: str | Path) -> str:
    """sha256 over the config and weight files of a saved model folder."""
    folder = require_local_dir(model_dir, "reference model")
    files = sorted({path for pattern in WEIGHT_FILE_PATTERNS for path in folder.glob(pattern) if path.is_file()})
    if not any(path.name != "config.json" for path in files):
        raise UsageError(f"{folder}: no weight files (*.safetensors or *.bin); not a saved model to score with")
    return sha256_tree(folder, files)


def column_names(token_cache_dir: str | Path) -> list[str]:
    """One column per sequence of a row, in the collator's order: ``chosen_logps``, ``rejected_logps`` / ``logps``."""
    from align_core.shards.schema import Kind

    kind = Kind(read_token_manifest(token_cache_dir)["kind"])
    return [f"{prefix}logps" for prefix in SEQUENCE_PREFIXES[kind]]


def reference_key(token_cache_dir: str | Path, reference_model: str | Path, pairing: str, dtype: torch.dtype) -> str:
    if pairing not in PAIRINGS:
        raise UsageError(f"reference pairing must be one of {', '.join(PAIRINGS)}, got {pairing!r}")
    return sha256_json(
        {
            "format": FORMAT_VERSION,
            "code_version": CODE_VERSION,
            "token_cache_key": read_token_manifest(token_cache_dir)["cache_key"],
            "reference_weights": model_weights_digest(reference_model),
            "pairing": pairing,
            "dtype": str(dtype),
        }
    )


def reference_dir(token_cache_dir: str | Path, reference_model: str | Path, pairing: str, dtype: torch.dtype) -> Path:
    """Where the column for these inputs lives (complete once its manifest exists)."""
    return Path(token_cache_dir) / REFERENCE_SUBDIR / reference_key(token_cache_dir, reference_model, pairing, dtype)


class ReferenceSpec(BaseModel):
    """Everything that decides one reference column. Built once from a training config
    (``align_core.trainers.cached_steps.reference_specs``); the trainer and the Prefect task both key
    and build the column from it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token_cache_dir: str
    reference_model: str
    pairing: str = "matched"
    dtype: str = "float32"  # a torch dtype name: the compute dtype is part of the key
    batch_size: int = 8
    trust_remote_code: bool = False

    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    def folder(self) -> Path:
        """Where the column is (complete once its manifest exists); needs the token cache's manifest."""
        return reference_dir(self.token_cache_dir, self.reference_model, self.pairing, self.torch_dtype())

    def build(self, device: str | torch.device = "cpu", map_parts: MapParts = map) -> Path:
        return compute_reference_logps(
            self.token_cache_dir, self.reference_model, self.pairing, dtype=self.torch_dtype(),
            batch_size=self.batch_size, device=device, trust_remote_code=self.trust_remote_code, map_parts=map_parts,
        )


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST_NAME).is_file()


def read_reference_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise UsageError(f"{folder}: no {MANIFEST_NAME}; not a complete reference log-prob column")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_VERSION:
        raise UsageError(
            f"{path}: reference column format {manifest.get('format')}, this alignflow reads {FORMAT_VERSION}; "
            "delete the folder and it is computed again on next use"
        )
    return manifest


def verify_reference_column(folder: str | Path) -> list[str]:
    """Recompute the column file's digest and row count; a list of mismatches (empty when intact)."""
    manifest = read_reference_manifest(folder)
    problem = arrow_file_problem(Path(folder), FileEntry(**manifest["columns"]))
    return [problem] if problem else []


def _check_same_tokenizer(token_cache_dir: str | Path, reference_model: str | Path) -> None:
    """A reference model that ships a tokenizer must give every token the id the cache was built with."""
    from align_core.models.registry import load_tokenizer

    try:
        reference_tokenizer = tokenizer_files_digest(reference_model)
    except UsageError:
        return  # weights only: the cache's tokenizer is the one it reads
    manifest = read_token_manifest(token_cache_dir)
    if reference_tokenizer == manifest["key_inputs"]["tokenizer_digest"]:
        return
    # other files, maybe the same tokenizer saved again: what matters is the id of every token
    cache_tokenizer = Path(manifest["tokenizer_path"])
    if not cache_tokenizer.is_dir() or load_tokenizer(reference_model).get_vocab() != load_tokenizer(cache_tokenizer).get_vocab():
        raise UsageError(
            f"reference model {reference_model}: its tokenizer differs from the one token cache {token_cache_dir} "
            "was built with; a reference model must share the policy's tokenizer"
        )


def compute_reference_logps(
    token_cache_dir: str | Path,
    reference_model: str | Path,
    pairing: str = "matched",
    *,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
    map_parts: MapParts = map,
) -> Path:
    """Score every row of a token cache under ``reference_model`` once; returns the column's folder.

    A complete folder for the same key is returned as is, without loading the model. Concurrent
    callers for one key (two pipeline jobs on the same data, in threads or processes) take turns on
    a lock file: the second finds the first's column instead of scoring again. Each token file is a part
    (``ReferencePart``) that ``map_parts`` runs, here in order by default (``tasks.parallel.map_parts``:
    over a Dask cluster).
    """
    final = reference_dir(token_cache_dir, reference_model, pairing, dtype)
    if is_complete(final):
        return final
    _check_same_tokenizer(token_cache_dir, reference_model)
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not is_complete(final):
            started = time.perf_counter()
            rows = TokenDataset(token_cache_dir)
            job = ReferencePart(str(token_cache_dir), str(reference_model), pairing, str(dtype).removeprefix("torch."),
                                batch_size, str(device), trust_remote_code)
            parts = list(map_parts(job, range(len(rows.manifest["shards"]))))
            _loaded_scorer.cache_clear()  # the model is not needed here any more
            logps = np.concatenate(parts) if parts else np.zeros((0, len(column_names(token_cache_dir))), np.float32)
            _publish(final, rows, logps, {
                "token_cache": str(Path(token_cache_dir).absolute()),
                "reference_model": str(Path(reference_model).absolute()),
                "pairing": pairing,
                "dtype": str(dtype),
                "seconds": round(time.perf_counter() - started, 3),
            })
    return final


@dataclass(frozen=True)
class ReferencePart:
    """Scores the rows of one token file: a picklable job, so a large cache's parts can run in other
    processes or on a Dask cluster's workers. A part's batches depend on its rows alone, so the column's
    bytes are the same whatever ran the parts."""

    token_cache_dir: str
    reference_model: str
    pairing: str
    dtype: str  # a torch dtype name
    batch_size: int
    device: str
    trust_remote_code: bool

    def __call__(self, part: int) -> np.ndarray:
        """(rows of token file ``part``, k) summed log-probs, in the rows' order."""
        rows = TokenDataset(self.token_cache_dir)
        sizes = [entry["rows"] for entry in rows.manifest["shards"]]
        start = sum(sizes[:part])
        scorer = _loaded_scorer(self.reference_model, model_weights_digest(self.reference_model), self.dtype, self.device,
                                self.trust_remote_code)
        return _score_rows(scorer, rows, np.arange(start, start + sizes[part]), self.pairing, self.batch_size, self.device)


@functools.lru_cache(maxsize=1)
def _loaded_scorer(reference_model: str, weights_digest: str, dtype: str, device: str,
                   trust_remote_code: bool) -> torch.nn.Module:
    """The frozen scorer, loaded once per process for all the parts it scores (keyed by the weights' digest)."""
    return load_frozen_scorer(reference_model, getattr(torch, dtype), trust_remote_code).to(device)


def _score_rows(scorer: torch.nn.Module, rows: TokenDataset, indices: np.ndarray, pairing: str, batch_size: int,
                device) -> np.ndarray:
    """(len(indices), k) summed log-probs of those rows' k sequences (or of their mismatched pairs)."""
    source = MismatchedRows(rows) if pairing == "mismatched" else rows
    collate = rows.collator()
    logps = np.zeros((len(indices), len(column_names(rows.path))), dtype=np.float32)
    order = np.argsort(-rows.lengths[indices], kind="stable")  # similar lengths together: less padding to score
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            batch = collate([source[int(indices[position])] for position in positions]).to(device)
            scores = score_sequences(scorer, batch)
            logps[positions] = scores.sum.float().cpu().numpy().reshape(logps.shape[1], len(positions)).T  # sequence-major -> (b, k)
    return logps


def _publish(final: Path, rows: TokenDataset, logps: np.ndarray, about: dict) -> None:
    """Write the column and its manifest (last) in a staging folder, then rename it into place."""
    remove_stale_staging(final.parent)
    staging = staging_dir(final)
    names = column_names(rows.path)
    table = pa.table({"id": _token_ids(rows), **{name: logps[:, k] for k, name in enumerate(names)}})
    with pa.ipc.new_file(str(staging / COLUMNS_NAME), table.schema) as writer:
        writer.write_table(table)
    manifest = {
        "format": FORMAT_VERSION,
        "key": final.name,
        **about,
        "rows": len(rows),
        "columns": {"path": COLUMNS_NAME, "rows": len(rows), "sha256": sha256_file(staging / COLUMNS_NAME)},
        "mean_logps": {name: float(logps[:, k].mean()) if len(rows) else 0.0 for k, name in enumerate(names)},
    }
    atomic_write_json(staging / MANIFEST_NAME, manifest)
    publish_dir(staging, final)


def _token_ids(rows: TokenDataset) -> pa.ChunkedArray:
    """The ``id`` column of a token cache, read column-wise from its shards."""
    chunks = []
    for entry in rows.manifest["shards"]:
        # memory-mapped and zero-copy: only the id column's pages are read, not the tokens
        table = pa.ipc.open_file(pa.memory_map(str(rows.path / entry["path"]))).read_all()
        chunks.extend(table.column("id").chunks)
    return pa.chunked_array(chunks, type=pa.string())


def read_reference_logps(folder: str | Path, rows: TokenDataset) -> np.ndarray:
    """(len(rows), k) float32 reference log-probs, checked to be aligned row by row with ``rows``."""
    folder = Path(folder)
    columns = read_reference_manifest(folder)["columns"]
    require_sha256(folder / columns["path"], columns["sha256"], DAMAGED)
    table = pa.ipc.open_file(pa.OSFile(str(folder / columns["path"]))).read_all()  # small: 4 bytes per sequence
    if table.num_rows != len(rows) or not table.column("id").equals(_token_ids(rows)):
        raise UsageError(f"{folder}: reference log-probs are not row-aligned with token cache {rows.path} (rebuild it)")
    names = column_names(rows.path)
    return np.stack([table.column(name).to_numpy() for name in names], axis=1).astype(np.float32)
