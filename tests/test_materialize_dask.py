"""Materialising in parts on a Dask cluster (prefect-dask's DaskTaskRunner on a real LocalCluster) gives the
same dataset, byte for byte, and the same contract result as the one-machine build, whatever the number
of workers and parts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from prefect_dask import DaskTaskRunner
from rows import SOURCE_WRITERS, many_alpaca_rows, usage_error_message, write_source

from align_core import materialize as materialize_lib
from align_core import sources
from align_core.errors import UsageError
from align_core.materialize import MaterializeSpec, build_dataset, format_part, merge_parts, plan_parts
from align_core.sources import fingerprint_source
from flows.materialize import materialize
from tasks.parallel import parse_runner

pytestmark = pytest.mark.usefixtures("prefect_harness")


def planted_source(path: Path) -> Path:
    """240 Alpaca rows with bad ones among them: empty output, a wrong type, invalid JSON, a blank line."""
    lines = [json.dumps(row) for row in many_alpaca_rows(240)]
    lines[17] = json.dumps({"instruction": "Say hi.", "input": "", "output": ""})
    lines[90] = json.dumps({"instruction": 7, "output": "x"})
    lines[150] = "{not json"
    lines[200] = ""
    path.write_text("\n".join(lines) + "\n")
    return path


def dataset_bytes(folder: str) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(Path(folder).rglob("*.arrow"))}


def contract_result(folder: str) -> dict:
    """validation.json without what differs between two validations of the same shards (times, run ids)."""
    record = json.loads((Path(folder) / "validation.json").read_text())
    return {key: value for key, value in record.items() if key not in ("dataset_dir", "seconds", "validated_at")}


def test_dask_cluster_builds_the_same_dataset_bytes_and_contract_result_as_one_machine(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 2_000)  # ~10 chunks
    monkeypatch.setattr(materialize_lib, "CHUNKS_PER_PART", 3)  # ~4 parts for the cluster's 2 workers
    source = planted_source(tmp_path / "rows.jsonl")
    common = {"source": str(source), "template": "Alpaca", "kind": "supervised", "rows_per_shard": 50}
    # (two local worker processes write the one-process bytes: test_materialize_lib)
    folders = {"local, 1 worker": materialize(out=str(tmp_path / "local1"), workers=1, **common)}
    cluster = {"n_workers": 2, "threads_per_worker": 1, "processes": False}
    on_dask = materialize.with_options(task_runner=DaskTaskRunner(cluster_kwargs=cluster))
    folders["dask, 2 workers"] = on_dask(out=str(tmp_path / "dask2"), runner="dask", **common)
    folders["parts on the flow's threads"] = materialize(out=str(tmp_path / "threads"), runner="dask", **common)

    reference = folders.pop("local, 1 worker")
    files = dataset_bytes(reference)
    assert len([name for name in files if name.startswith("shards/")]) == 5  # 236 good rows, 50 a shard
    for name, folder in folders.items():
        assert Path(folder).name == Path(reference).name, name
        assert dataset_bytes(folder) == files, name
        assert contract_result(folder) == contract_result(reference), name
    assert contract_result(reference)["passed"] is True
    assert not list(Path(tmp_path / "dask2").glob(".staging-*")), "the parts' staging folder is gone"


@pytest.mark.parametrize("source_format", list(SOURCE_WRITERS))
def test_parts_formatted_in_any_order_merge_into_the_build_bytes_for_every_format(tmp_path, monkeypatch, source_format):
    monkeypatch.setattr(sources, "JSONL_CHUNK_BYTES", 2_000)
    monkeypatch.setattr(materialize_lib, "CHUNKS_PER_PART", 2)
    rows = many_alpaca_rows(120)
    rows[30]["output"] = ""
    source = fingerprint_source(write_source(source_format, rows, tmp_path / source_format))
    spec = MaterializeSpec.checked("Alpaca", "supervised", rows_per_shard=25)
    built = build_dataset(source, spec, tmp_path / "built", workers=1)
    plan = plan_parts(source, spec, tmp_path / "parts")
    splits = SOURCE_WRITERS[source_format][2] == "jsonl" or source_format == "arrow_file"  # byte or row ranges
    assert (len(plan.parts) > 1) == splits
    parts = [format_part(source, spec, part) for part in reversed(plan.parts)]  # finished out of order
    merged = merge_parts(source, spec, plan, parts)
    assert merged.path.name == built.path.name
    assert dataset_bytes(str(merged.path)) == dataset_bytes(str(built.path))
    assert sorted(path.name for path in merged.path.iterdir()) == ["manifest.json", "quarantine.arrow", "shards"]


def test_a_rerun_on_the_cluster_finds_the_published_dataset(tmp_path):
    source = planted_source(tmp_path / "rows.jsonl")
    common = {"source": str(source), "template": "Alpaca", "kind": "supervised", "validate_contract": False}
    first = materialize(out=str(tmp_path / "out"), **common)
    stamps = {path: path.stat().st_mtime_ns for path in Path(first).rglob("*")}
    again = materialize(out=str(tmp_path / "out"), runner="dask", **common)  # parts on the flow's own threads
    assert again == first
    assert {path: path.stat().st_mtime_ns for path in Path(first).rglob("*")} == stamps


@pytest.mark.parametrize("runner", ["spark", "local:x", "dask:"])
def test_an_unknown_runner_is_a_usage_error_naming_the_runners(runner):
    assert usage_error_message(lambda: parse_runner(runner)) == (
        f"unknown runner {runner!r}; expected one of: local, dask, dask:ADDRESS"
    )


def test_the_cli_runs_on_the_runner_named_and_refuses_an_unknown_one(tmp_path):
    from typer.testing import CliRunner

    from alignflow.cli import app

    source = str(planted_source(tmp_path / "rows.jsonl"))
    args = ["materialize", source, "--template", "Alpaca", "--kind", "supervised", "--no-validate"]
    refused = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "bad"), "--runner", "spark"])
    assert isinstance(refused.exception, UsageError)  # main() prints it as one line and exits 2
    assert str(refused.exception) == "unknown runner 'spark'; expected one of: local, dask, dask:ADDRESS"
    assert not (tmp_path / "bad").exists()
    local = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "local")])
    # a LocalCluster of one worker process: the parts and the formatted results cross a process boundary
    environment = dict(os.environ)
    on_dask = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "dask"), "--runner", "dask", "--workers", "1"])
    assert on_dask.exit_code == 0, on_dask.output
    assert dict(os.environ) == environment  # the cluster's nannies set OMP_NUM_THREADS=1 here; it is put back
    folders = [result.output.strip().splitlines()[-1] for result in (local, on_dask)]
    assert dataset_bytes(folders[1]) == dataset_bytes(folders[0])


def test_a_pipeline_dataset_names_its_runner_and_an_unknown_one_is_refused(tmp_path):
    import yaml

    from flows.pipeline_config import check_pipeline, load_pipeline

    (tmp_path / "data.jsonl").write_text('{"instruction": "Say hi.", "output": "Hi."}\n')
    entry = {"source": "data.jsonl", "template": "Alpaca", "kind": "supervised", "runner": "dask:tcp://scheduler:8786"}
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"output_dir": "out", "datasets": {"alpaca": entry}}))
    check_pipeline(load_pipeline(config))
    config.write_text(yaml.safe_dump({"output_dir": "out", "datasets": {"alpaca": {**entry, "runner": "spark"}}}))
    message = usage_error_message(lambda: check_pipeline(load_pipeline(config)))
    assert message == "datasets.alpaca: unknown runner 'spark'; expected one of: local, dask, dask:ADDRESS"
