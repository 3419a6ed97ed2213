"""Part mappers: how a job split into independent parts has its parts run.

A part mapper is a ``map``-like callable: ``map_parts(job, parts)`` calls ``job`` on every part and returns
the results in the parts' order, wherever and in whatever order the parts ran. Builtin ``map`` is one (here,
in order); ``tasks.parallel.map_parts`` is another (on a Dask cluster). The library takes a mapper as an
argument, so it never imports Dask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

Part = TypeVar("Part")
Result = TypeVar("Result")

# map_parts(job, parts) -> job's results, in the parts' order
MapParts = Callable[[Callable[[Part], Result], Sequence[Part]], Iterable[Result]]
