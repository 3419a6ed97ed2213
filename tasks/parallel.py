"""Parts of one task spread over the Dask cluster the task runs on, or run in order here.

A flow whose task runner is prefect-dask's ``DaskTaskRunner`` runs each task on a Dask worker; a task that
splits its work into parts (tokenising a dataset shard by shard) maps them over the whole cluster from
there. ``worker_client`` secedes the task's thread from the worker's pool while it waits, so a cluster of
one thread cannot deadlock on its own parts. Under any other runner the parts run in order in the task.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def on_dask_worker() -> bool:
    """Whether this code runs inside a Dask worker (a task under ``DaskTaskRunner``)."""
    try:
        from distributed import get_worker
    except ImportError:
        return False
    try:
        get_worker()
    except ValueError:
        return False
    return True


def map_parts(function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
    """``[function(item) for item in items]``: on the Dask cluster when the caller runs on one, results in
    the items' order either way."""
    items = list(items)
    if not on_dask_worker() or len(items) < 2:
        return [function(item) for item in items]
    import uuid

    from distributed import worker_client

    name = getattr(function, "__name__", type(function).__name__)  # a part job may be a callable instance
    run = uuid.uuid4().hex[:12]
    with worker_client() as client:
        return client.gather(client.map(function, items, key=[f"{name}-{run}-{index}" for index in range(len(items))]))
