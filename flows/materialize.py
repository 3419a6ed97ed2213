"""The materialise flow: raw source -> formatted conversation shards -> (validated) dataset folder.

The runner is an option: ``local`` (the default) builds in one task, formatting in worker processes of
this machine; ``dask`` or ``dask:ADDRESS`` splits the source into parts (byte ranges of JSON Lines,
record batches of Arrow files) formatted as mapped tasks on a Dask cluster (a ``LocalCluster`` of
``workers`` processes, or the scheduler at ADDRESS, whose workers must see the source and output
paths), then merged in order. The dataset is byte for byte the same whichever runs it.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

from prefect import flow, unmapped

from align_core.shards.writer import DEFAULT_ROWS_PER_SHARD
from flows.pipeline_config import check_materialize
from tasks.materialize import build_shards, fingerprint, format_dataset_part, merge_dataset_parts, plan_dataset_parts
from tasks.parallel import environment_restored, parse_runner


def task_runner_for(runner: str | None, workers: int | None = None):
    """The Prefect task runner of a runner option: None (the flow's own) for ``local``, else prefect-dask's
    ``DaskTaskRunner`` on a LocalCluster of ``workers`` single-threaded processes or on the cluster at ADDRESS."""
    kind, address = parse_runner(runner)
    if kind == "local":
        return None
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    cluster = {"threads_per_worker": 1, **({"n_workers": workers} if workers else {})}
    return _local_cluster_runner()(cluster_kwargs=cluster)


@functools.cache
def _local_cluster_runner() -> type:
    """prefect-dask's ``DaskTaskRunner`` that gives this process its environment back once its LocalCluster
    has started (``tasks.parallel.environment_restored``: the nannies leave ``OMP_NUM_THREADS=1`` behind)."""
    from prefect_dask import DaskTaskRunner

    class LocalClusterTaskRunner(DaskTaskRunner):
        @property
        def client(self):  # the cluster starts on the first use of the client
            with environment_restored():
                return super().client

    return LocalClusterTaskRunner


def materialize_on(runner: str | None, workers: int | None = None):
    """The materialise flow with the task runner of ``runner`` (``task_runner_for``); call it with the same
    ``runner``."""
    task_runner = task_runner_for(runner, workers)
    return materialize if task_runner is None else materialize.with_options(task_runner=task_runner)


@flow(name="materialize")
def materialize(
    source: str,
    template: str,
    kind: str,
    out: str,
    template_options: dict[str, Any] | None = None,
    template_module: str | None = None,
    source_format: str | None = None,
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
    workers: int | None = None,
    validate_contract: bool = True,
    suite: str | None = None,
    contract_overrides: dict[str, Any] | None = None,
    media_root: str | None = None,
    runner: str = "local",
) -> str:
    """Materialise ``source`` with ``template`` into ``out/<digest>/``; returns that folder.

    With ``validate_contract`` (the default) the shards then pass through their data contract, and an
    error-severity failure fails this flow run. ``contract_overrides`` adjusts the suite's
    expectations (``{"turns_in_bounds.max_value": 32}``; see data_contracts). Media paths in rows resolve
    under ``media_root``, whose files' digests enter the dataset digest. Bad usage (template, source,
    suite, overrides, output root) fails the run before any task starts (``check_materialize``).
    ``runner`` other than ``local`` formats the source in parts, as mapped tasks on this flow's task
    runner (``materialize_on`` gives it a Dask one).
    """
    spec = check_materialize(
        source,
        template,
        kind,
        out,
        template_options=template_options,
        template_module=template_module,
        source_format=source_format,
        rows_per_shard=rows_per_shard,
        workers=workers,
        validate_contract=validate_contract,
        suite=suite,
        contract_overrides=contract_overrides,
        media_root=media_root,
        runner=runner,
    )
    out_root = str(Path(out).absolute())
    source_info = fingerprint(str(Path(source).absolute()), source_format)
    if parse_runner(runner)[0] == "local":
        dataset_dir = build_shards(source_info, spec, out_root, workers)
    else:
        plan = plan_dataset_parts(source_info, spec, out_root)
        parts = format_dataset_part.map(unmapped(source_info), unmapped(spec), list(plan.parts))
        try:
            dataset_dir = merge_dataset_parts(source_info, spec, plan, parts)
        except BaseException:
            if plan.staging:
                shutil.rmtree(plan.staging, ignore_errors=True)  # a failed part leaves nothing behind
            raise
    if validate_contract:
        from tasks.validate import validate_shards

        # submitted, so on a Dask runner it runs on the cluster and derives its batches there
        validate_shards.submit(dataset_dir, suite=suite, overrides=contract_overrides, runner=runner).result()
    return dataset_dir
