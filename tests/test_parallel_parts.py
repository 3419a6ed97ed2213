"""Tokenising a dataset shard by shard and scoring reference log-probs token file by token file: the same
bytes whether the parts run here in order, in other processes, out of order, or on a Dask cluster under
prefect-dask's DaskTaskRunner."""

from __future__ import annotations

import functools
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from test_tokenize import assistant, user, write_dataset
from train_data import tiny_model  # noqa: F401

from align_core.data.token_cache import TokenizeSpec, read_token_manifest, tokenize_dataset
from align_core.data.token_dataset import TokenDataset
from align_core.reference.cache import ReferenceSpec, compute_reference_logps, read_reference_logps
from align_core.shards.schema import Kind

ROWS = 11  # 4 shards of 3, 3, 3 and 2 rows; a long row in shard 2 is dropped


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_model) -> Path:
    return tiny_model  # the model folder holds its tokenizer: the reference model must share the cache's


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


def column_bytes(folder: Path) -> bytes:
    return (folder / "logps.arrow").read_bytes()


def test_reference_parts_out_of_order_give_the_same_column(dataset_dir, tokenizer_dir, tmp_path):
    # (no process pool: each worker would spend ~20 s importing torch; the Dask test below runs parts on workers)
    cache = tokenize(dataset_dir, tokenizer_dir, tmp_path)
    in_order = compute_reference_logps(cache, tokenizer_dir, batch_size=2)
    expected = column_bytes(in_order)
    shutil.rmtree(in_order)
    assert column_bytes(compute_reference_logps(cache, tokenizer_dir, batch_size=2, map_parts=reversed_map)) == expected


def test_reference_parts_score_each_row_as_it_scores_alone(dataset_dir, tokenizer_dir, tmp_path):
    cache = tokenize(dataset_dir, tokenizer_dir, tmp_path)
    rows = TokenDataset(cache)
    batched = read_reference_logps(compute_reference_logps(cache, tokenizer_dir, batch_size=4), rows)
    shutil.rmtree(cache / "reference")
    alone = read_reference_logps(compute_reference_logps(cache, tokenizer_dir, batch_size=1), rows)
    assert batched.shape == (ROWS - 1, 2) and np.allclose(batched, alone, atol=1e-4)


def test_a_runner_naming_a_cluster_sends_the_parts_there_from_outside_it(dataset_dir, tokenizer_dir, tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    from tasks.parallel import map_parts

    here = cache_contents(tokenize(dataset_dir, tokenizer_dir, tmp_path / "here"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        on_cluster = functools.partial(map_parts, runner=f"dask:{cluster.scheduler_address}")
        with Client(cluster) as client, get_task_stream(client) as stream:
            cache = tokenize(dataset_dir, tokenizer_dir, tmp_path / "dask", map_parts=on_cluster)
    assert cache_contents(cache) == here
    assert sum(str(task["key"]).startswith("TokenizePart-") for task in stream.data) == 4


def validation_record(result) -> dict:
    record = result.to_dict()
    for key in ("validated_at", "seconds"):
        record.pop(key)
    return record


def test_validation_derives_its_batches_on_a_cluster_to_the_same_result_and_report(dataset_dir, tmp_path):
    from distributed import Client, LocalCluster, get_task_stream

    from data_contracts.runner import validate_dataset
    from tasks.parallel import parts_mapper

    copy = tmp_path / dataset_dir.name
    shutil.copytree(dataset_dir, copy)
    threads = validate_dataset(copy)
    report = (copy / "report.html").read_text()
    with parts_mapper("local") as here:
        assert here is None  # here the threads do it
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    on_cluster_runner = parts_mapper(f"dask:{cluster.scheduler_address}")
    with cluster, Client(cluster) as client, get_task_stream(client) as stream, on_cluster_runner as map_parts:
        on_cluster = validate_dataset(copy, map_parts=map_parts)
    assert validation_record(on_cluster) == validation_record(threads) and on_cluster.rows == ROWS
    assert (copy / "report.html").read_text().split("validated", 1)[0] == report.split("validated", 1)[0]
    assert sum(str(task["key"]).startswith("DeriveBatchPart-") for task in stream.data) == 4  # one per record batch


def test_validation_on_runner_dask_starts_one_local_cluster_for_all_its_windows_and_gives_the_environment_back(
        dataset_dir, tmp_path, monkeypatch):
    import data_contracts.runner
    from data_contracts.runner import validate_dataset
    from tasks.parallel import parts_mapper

    copy = tmp_path / dataset_dir.name
    shutil.copytree(dataset_dir, copy)
    threads = validate_dataset(copy)
    monkeypatch.setattr(data_contracts.runner, "PART_WINDOW", 2)  # 4 record batches: two windows, two calls
    environment = dict(os.environ)
    schedulers = []  # the scheduler that each part ran under, seen from its worker

    with parts_mapper("dask") as map_parts:

        def noting_the_scheduler(job, parts):
            def part_and_scheduler(part):
                from distributed import get_worker

                return job(part), get_worker().scheduler.address

            results = map_parts(part_and_scheduler, parts)
            schedulers.append({scheduler for _, scheduler in results})
            return [result for result, _ in results]

        on_cluster = validate_dataset(copy, map_parts=noting_the_scheduler)
    assert len(schedulers) == 2 and len(set.union(*schedulers)) == 1  # two windows, one cluster
    assert validation_record(on_cluster) == validation_record(threads) and on_cluster.rows == ROWS
    assert dict(os.environ) == environment  # the nannies' OMP_NUM_THREADS=1 went with the cluster


def test_a_pipeline_names_its_runner_for_every_step_with_parts_and_an_unknown_one_is_refused(tmp_path):
    import yaml

    from align_core.errors import UsageError
    from flows.pipeline_config import check_pipeline, load_pipeline

    (tmp_path / "data.jsonl").write_text('{"instruction": "Say hi.", "output": "Hi."}\n')
    datasets = {"alpaca": {"source": "data.jsonl", "template": "Alpaca", "kind": "supervised"},
                "local": {"source": "data.jsonl", "template": "Alpaca", "kind": "supervised", "runner": "local"}}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"output_dir": "out", "runner": "dask:tcp://scheduler:8786", "datasets": datasets}))
    spec = load_pipeline(config)
    check_pipeline(spec)
    assert (spec.dataset_runner("alpaca"), spec.dataset_runner("local")) == ("dask:tcp://scheduler:8786", "local")
    config.write_text(yaml.safe_dump({"output_dir": "out", "runner": "spark", "datasets": datasets}))
    with pytest.raises(UsageError) as error:
        check_pipeline(load_pipeline(config))
    assert str(error.value) == "runner: unknown runner 'spark'; expected one of: local, dask, dask:ADDRESS"


@pytest.mark.slow
def test_the_tokenize_and_reference_tasks_map_their_parts_over_the_dask_cluster_their_flow_runs_on(dataset_dir, tokenizer_dir, tmp_path,
                                                                                 prefect_harness):
    from distributed import Client, LocalCluster, get_task_stream
    from prefect import flow
    from prefect_dask import DaskTaskRunner

    from tasks.reference import reference_logps
    from tasks.tokenize import tokenize as tokenize_task

    here = tokenize(dataset_dir, tokenizer_dir, tmp_path / "here")
    here_column = column_bytes(compute_reference_logps(here, tokenizer_dir))
    spec = TokenizeSpec(dataset_dir=str(dataset_dir), tokenizer_path=str(tokenizer_dir), max_length=64,
                        cache_root=str(tmp_path / "dask"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:

        @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
        def tokenize_and_score_on_dask() -> tuple[str, str]:
            cache = tokenize_task.submit(spec).result()
            reference = ReferenceSpec(token_cache_dir=cache, reference_model=str(tokenizer_dir))
            return cache, reference_logps.submit(reference).result()

        with Client(cluster) as client, get_task_stream(client) as stream:
            cache, column = map(Path, tokenize_and_score_on_dask())
    assert cache_contents(cache) == cache_contents(here) and column_bytes(column) == here_column
    keys = [str(task["key"]) for task in stream.data]
    # one Dask task per dataset shard and per token file, beside the two Prefect tasks themselves
    assert sum(key.startswith("TokenizePart-") for key in keys) == 4, keys
    assert sum(key.startswith("ReferencePart-") for key in keys) == 4, keys
    assert json.loads((cache / "manifest.json").read_text())["counts"]["dropped_too_long"] == 1
