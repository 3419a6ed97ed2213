"""Where the parts of a task run: the runner option, and mapping a task's parts over a Dask cluster.

A runner is ``local`` (this machine: the task's parts run in order in it), ``dask`` (a ``LocalCluster`` of
this machine's cores) or ``dask:ADDRESS`` (the scheduler of a running cluster, whose workers must see the
same paths). A task that splits its work into parts (tokenising a dataset shard by shard, scoring
reference log-probs token file by token file, deriving a dataset's contract columns record batch by record
batch) maps them with ``map_parts``: onto the cluster it runs on when it is a submitted task of a flow whose
task runner is prefect-dask's ``DaskTaskRunner``, else onto the cluster its runner names. ``worker_client``
secedes the task's thread from the worker's pool while it waits, so a cluster of one thread cannot deadlock on
its own parts. A task that maps its parts in many calls holds one ``RunnerMapper`` (``parts_mapper``) for all
of them, so runner ``dask`` starts one ``LocalCluster`` per task, not one per call.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

from align_core.errors import UsageError

RUNNERS = ("local", "dask", "dask:ADDRESS")


def parse_runner(runner: str | None) -> tuple[str, str | None]:
    """``(kind, address)`` of a runner option: ``local``, ``dask`` (a LocalCluster here) or ``dask:ADDRESS``."""
    kind, _, address = (runner or "local").partition(":")
    if kind not in ("local", "dask") or (kind == "local" and address) or (address == "" and ":" in (runner or "")):
        raise UsageError(f"unknown runner {runner!r}; expected one of: {', '.join(RUNNERS)}")
    return kind, address or None


@contextlib.contextmanager
def environment_restored() -> Iterator[None]:
    """This process's environment as it was, after a Dask ``LocalCluster`` started here: its nannies set
    ``OMP_NUM_THREADS=1`` (and MKL/OpenBLAS/malloc settings) in the parent's ``os.environ`` for the workers
    they spawn and never put it back, so every later subprocess (a training run) would get one thread."""
    import os

    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


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


@contextlib.contextmanager
def _runner_client(runner: str | None) -> Iterator[Any]:
    """A Dask client of the cluster a ``dask:ADDRESS`` runner names, or of a ``LocalCluster`` of this machine's
    cores started for runner ``dask`` (and shut down after, this process's environment restored)."""
    from distributed import Client, LocalCluster

    address = parse_runner(runner)[1]
    if address:
        with Client(address) as client:
            yield client
        return
    with environment_restored(), LocalCluster(threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
        yield client


class RunnerMapper:
    """``map_parts`` bound to ``runner``, holding the runner's cluster client from the first call that sends
    parts until ``close`` (or the end of a ``with`` block): a caller that maps its parts in many calls
    (validation, a window of record batches at a time) starts runner ``dask``'s ``LocalCluster`` once, not
    once per call. On a Dask worker each call borrows the worker's client only while it waits."""

    def __init__(self, runner: str | None = None) -> None:
        self.runner = runner
        self._held = contextlib.ExitStack()
        self._client: Any = None

    def __call__(self, function: Callable[[Any], Any], items: Iterable[Any]) -> list[Any]:
        items = list(items)
        if on_dask_worker():
            from distributed import worker_client

            with worker_client() as client:
                return _gathered(client, function, items)
        if len(items) < 2 or parse_runner(self.runner)[0] == "local":  # one part is not worth a cluster's start
            return [function(item) for item in items]
        if self._client is None:
            self._client = self._held.enter_context(_runner_client(self.runner))
        return _gathered(self._client, function, items)

    def close(self) -> None:
        """Close the runner's client and shut down the LocalCluster started for it, if any."""
        self._client = None
        self._held.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextlib.contextmanager
def parts_mapper(runner: str | None) -> Iterator[RunnerMapper | None]:
    """A ``RunnerMapper`` of ``runner`` for the ``with`` block when the parts would leave this process (the
    task runs on a Dask worker, or ``runner`` names a cluster); None when they would run here, for a caller
    with its own threads to use them instead."""
    if parse_runner(runner)[0] == "local" and not on_dask_worker():
        yield None
        return
    with RunnerMapper(runner) as mapper:
        yield mapper


def map_parts(function: Callable[[Any], Any], items: Iterable[Any], runner: str | None = None) -> list[Any]:
    """``[function(item) for item in items]``, results in the items' order: on a Dask cluster (the one this
    task runs on, else the one ``runner`` names, started for this call alone), or here in order."""
    with RunnerMapper(runner) as mapper:
        return mapper(function, items)


def _gathered(client: Any, function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """The parts as Dask tasks keyed by the job's name and this call, gathered in the items' order."""
    name = getattr(function, "__name__", type(function).__name__)  # a part job may be a callable instance
    run = uuid.uuid4().hex[:12]
    return client.gather(client.map(function, items, key=[f"{name}-{run}-{index}" for index in range(len(items))]))
