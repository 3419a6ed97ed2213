"""Tokenising a dataset shard by shard: the same cache bytes whether the parts run here in order, in other
processes, out of order, or on a Dask cluster under prefect-dask's DaskTaskRunner."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from test_tokenize import assistant, user, write_dataset

from align_core.data.token_cache import TokenizeSpec, read_token_manifest, tokenize_dataset
from align_core.models.tiny import build_tiny_tokenizer
from align_core.shards.schema import Kind

ROWS = 11  # 4 shards of 3, 3, 3 and 2 rows; a long row in shard 2 is dropped


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    samples = [{"prompt": [user(f"Question {index}?")],
                "chosen": [assistant(("A long answer. " * 40) if index == 7 else f"Answer {index}.")],
                "rejected": [assistant(f"No {index}.")]} for index in range(ROWS)]
    return write_dataset(tmp_path_factory.mktemp("datasets"), Kind.PREFERENCE, samples, rows_per_shard=3)


def cache_contents(cache: Path) -> tuple[dict, dict[str, bytes]]:
    """The manifest without its creation time, and every token file's bytes by name."""
    manifest = read_token_manifest(cache)
    manifest.pop("created")
    return manifest, {path.name: path.read_bytes() for path in sorted((cache / "shards").iterdir())}


def tokenize(dataset_dir: Path, tokenizer_dir: Path, root: Path, **options) -> Path:
    return tokenize_dataset(dataset_dir, tokenizer_dir, 64, "drop", root, **options)


def reversed_map(function, items):
    """Runs the parts last first, answering in the items' order, as a cluster finishing them in any order would."""
    items = list(items)
    results = {item: function(item) for item in reversed(items)}
    return [results[item] for item in items]


def test_each_dataset_shard_is_a_part_with_its_own_token_files_and_the_counts_add_up(dataset_dir, tokenizer_dir, tmp_path):
    manifest, files = cache_contents(tokenize(dataset_dir, tokenizer_dir, tmp_path))
    assert sorted(files) == [f"tokens-{part:05d}-000.arrow" for part in range(4)]
    assert [entry["rows"] for entry in manifest["shards"]] == [3, 3, 2, 2]
    assert manifest["counts"]["rows_in"] == ROWS and manifest["counts"]["dropped_too_long"] == 1 and manifest["rows"] == ROWS - 1


def test_parts_in_other_processes_or_out_of_order_give_the_same_cache_bytes(dataset_dir, tokenizer_dir, tmp_path):
    in_order = cache_contents(tokenize(dataset_dir, tokenizer_dir, tmp_path / "in-order"))
    assert cache_contents(tokenize(dataset_dir, tokenizer_dir, tmp_path / "reversed", map_parts=reversed_map)) == in_order
    with ProcessPoolExecutor(2) as pool:
        assert cache_contents(tokenize(dataset_dir, tokenizer_dir, tmp_path / "processes", map_parts=pool.map)) == in_order


@pytest.mark.slow
def test_the_tokenize_task_maps_its_parts_over_the_dask_cluster_its_flow_runs_on(dataset_dir, tokenizer_dir, tmp_path,
                                                                                 prefect_harness):
    from distributed import Client, LocalCluster, get_task_stream
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from tasks.tokenize import tokenize as tokenize_task

    here = cache_contents(tokenize(dataset_dir, tokenizer_dir, tmp_path / "here"))
    spec = TokenizeSpec(dataset_dir=str(dataset_dir), tokenizer_path=str(tokenizer_dir), max_length=64,
                        cache_root=str(tmp_path / "dask"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:

        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def tokenize_on_dask() -> str:
            return tokenize_task.submit(spec).result()

        with Client(cluster) as client, get_task_stream(client) as stream:
            cache = Path(tokenize_on_dask())
    assert cache_contents(cache) == here
    parts = [task["key"] for task in stream.data if str(task["key"]).startswith("TokenizePart-")]
    assert len(parts) == 4, stream.data  # one Dask task per dataset shard, beside the Prefect task itself
    assert json.loads((cache / "manifest.json").read_text())["counts"]["dropped_too_long"] == 1
