"""Verify before use: one flipped byte in a shard, a token file or a reference column stops every
consumer with the file named, instead of feeding garbled text or token ids on; ``alignflow cache
verify`` finds it; and each file is hashed once per process however many readers open it."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from train_data import materialize_validated, preference_rows, supervised_rows, tiny_model, write_config  # noqa: F401
from typer.testing import CliRunner

import align_core.io
from align_core.data import TokenDataset, tokenize_dataset
from align_core.errors import IntegrityError
from align_core.reference import compute_reference_logps, read_reference_logps
from align_core.shards.dataset import ShardDataset
from alignflow.cli import app
from data_contracts.gate import require_validated
from data_contracts.runner import validate_dataset

MAX_LENGTH = 96


def flip_a_byte_that_still_reads(path: Path, column: str) -> None:
    """Flip one bit where the file still reads as Arrow but ``column`` holds other values: the silent
    kind of damage (garbled text, another token id), not the kind a reader trips over."""
    data = path.read_bytes()
    original = pa.ipc.open_file(pa.BufferReader(data)).read_all().column(column)
    for offset in range(len(data) // 4, len(data)):
        damaged = bytearray(data)
        damaged[offset] ^= 0x01
        try:
            changed = pa.ipc.open_file(pa.BufferReader(bytes(damaged))).read_all().column(column)
        except (pa.ArrowException, OSError):
            continue
        if not changed.equals(original):
            path.write_bytes(bytes(damaged))
            return
    raise AssertionError(f"{path}: no single-bit flip changes {column} and still reads")


@pytest.fixture
def sft_dataset(tmp_path) -> Path:
    return materialize_validated(supervised_rows(24), "supervised", tmp_path, "sft")


def first_shard(dataset_dir: Path) -> Path:
    return ShardDataset(dataset_dir).shard_paths[0]


def first_token_file(cache: Path) -> Path:
    return cache / "shards" / "tokens-00000-000.arrow"


# ----- shards ---------------------------------------------------------------------------------------


def test_a_flipped_shard_byte_stops_validation_naming_the_file(sft_dataset):
    shard = first_shard(sft_dataset)
    flip_a_byte_that_still_reads(shard, "messages")

    with pytest.raises(IntegrityError, match=f"^{shard}: sha256 mismatch .*the dataset is damaged, rematerialise it$"):
        validate_dataset(sft_dataset)
    with pytest.raises(IntegrityError, match=f"^{shard}: sha256 mismatch"):
        require_validated(sft_dataset)  # the gate of `alignflow train`, the train task and the pipeline
    result = CliRunner().invoke(app, ["validate", str(sft_dataset)])
    assert result.exit_code == 2
    assert f"{shard}: sha256 mismatch (manifest says " in result.output


def test_a_flipped_shard_byte_stops_tokenisation_naming_the_file(tmp_path, sft_dataset, tiny_model):
    shard = first_shard(sft_dataset)
    flip_a_byte_that_still_reads(shard, "messages")

    with pytest.raises(IntegrityError, match=f"^{shard}: sha256 mismatch"):
        tokenize_dataset(sft_dataset, tiny_model, MAX_LENGTH, cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_flipped_shard_byte_stops_trainings_dataset_loading_even_with_a_warm_token_cache(tmp_path, sft_dataset, tiny_model):
    from align_core.config import load_config
    from align_core.trainers import get_trainer

    config = load_config(write_config(tmp_path / "sft.yaml", tiny_model, [sft_dataset], tmp_path / "run"))
    trainer = get_trainer("sft")(config)
    trainer.local_main_first = lambda make: make()  # one process, no process group
    rows, _, _ = trainer.load_datasets([str(sft_dataset)])
    assert len(rows) == 24
    shard = first_shard(sft_dataset)
    flip_a_byte_that_still_reads(shard, "messages")

    with pytest.raises(IntegrityError, match=f"^{shard}: sha256 mismatch"):
        trainer.load_datasets([str(sft_dataset)])


# ----- token cache and reference column -------------------------------------------------------------


def test_a_flipped_token_file_byte_stops_the_token_dataset_naming_the_file(tmp_path, sft_dataset, tiny_model):
    cache = tokenize_dataset(sft_dataset, tiny_model, MAX_LENGTH, cache_root=tmp_path / "cache")
    token_file = first_token_file(cache)
    flip_a_byte_that_still_reads(token_file, "input_ids")

    with pytest.raises(IntegrityError, match=f"^{token_file}: sha256 mismatch .*the token cache is damaged"):
        TokenDataset(cache)


@pytest.fixture
def reference_column(tmp_path, tiny_model) -> tuple[Path, Path]:
    """(token cache, reference column folder) of a small preference dataset, under ``tmp_path/cache``."""
    dataset = materialize_validated(preference_rows(8), "preference", tmp_path, "pairs")
    cache = tokenize_dataset(dataset, tiny_model, MAX_LENGTH, cache_root=tmp_path / "cache")
    return cache, compute_reference_logps(cache, tiny_model)


def test_a_flipped_reference_column_byte_stops_reading_it_naming_the_file(reference_column):
    cache, folder = reference_column
    rows = TokenDataset(cache)
    assert read_reference_logps(folder, rows).shape == (8, 2)
    column_file = folder / "logps.arrow"
    flip_a_byte_that_still_reads(column_file, "chosen_logps")

    with pytest.raises(IntegrityError, match=f"^{column_file}: sha256 mismatch .*the reference column is damaged"):
        read_reference_logps(folder, rows)


def test_cache_verify_passes_intact_caches_and_exits_1_naming_a_damaged_file(tmp_path, reference_column):
    cache, folder = reference_column
    runner = CliRunner()

    intact = runner.invoke(app, ["cache", "verify", str(tmp_path / "cache")])
    assert intact.exit_code == 0, intact.output
    assert intact.output.splitlines() == [f"ok        token cache  {cache}", f"ok        reference    {folder}"]

    flip_a_byte_that_still_reads(first_token_file(cache), "chosen_input_ids")
    damaged = runner.invoke(app, ["cache", "verify", str(tmp_path / "cache")])
    assert damaged.exit_code == 1
    first_line = damaged.output.splitlines()[0]
    assert first_line.startswith(f"MISMATCH  token cache  {cache}: shards/tokens-00000-000.arrow: sha256 mismatch (manifest says ")
    assert f"ok        reference    {folder}" in damaged.output
    assert runner.invoke(app, ["cache", "verify", str(folder)]).exit_code == 0  # one reference column alone
    assert runner.invoke(app, ["cache", "verify", str(cache)]).exit_code == 1  # one token cache (+ its columns)


def test_cache_verify_names_a_damaged_reference_column(reference_column):
    _, folder = reference_column
    flip_a_byte_that_still_reads(folder / "logps.arrow", "chosen_logps")

    result = CliRunner().invoke(app, ["cache", "verify", str(folder)])
    assert result.exit_code == 1
    assert result.output.startswith(f"MISMATCH  reference    {folder}: logps.arrow: sha256 mismatch")


# ----- once per process -----------------------------------------------------------------------------


def test_a_second_open_in_the_same_process_does_not_hash_again(tmp_path, sft_dataset, tiny_model, monkeypatch):
    cache = tokenize_dataset(sft_dataset, tiny_model, MAX_LENGTH, cache_root=tmp_path / "cache")
    files = [*ShardDataset(sft_dataset).shard_paths, first_token_file(cache)]
    for path in files:  # a new mtime: a new version of each file, so none is memoised yet
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000_000))
    hashed: list[str] = []
    real_sha256_file = align_core.io.sha256_file
    monkeypatch.setattr(align_core.io, "sha256_file", lambda path: hashed.append(str(path)) or real_sha256_file(path))

    for _ in range(2):
        ShardDataset(sft_dataset).require_intact()
        list(ShardDataset(sft_dataset).iter_batches())
        TokenDataset(cache)

    assert sorted(hashed) == sorted(str(path) for path in files)  # each once, though opened six times
