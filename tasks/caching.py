"""Cache keys for tasks whose real output is a folder on disk.

Prefect persists a cached result (here: a path) in a file named by the cache key in the result
storage. A key that exists only once the output exists would make every first rerun a miss; a key
that always exists would return a stale path after someone deletes the output. So: the key is
always the content key, and when the output is gone the stored record is dropped first, making
that one call a miss that rebuilds.
"""

from __future__ import annotations

from tasks.prefect_env import prefect_result_storage


def disk_output_key(key: str, output_ready: bool) -> str:
    if not output_ready:
        (prefect_result_storage() / key).unlink(missing_ok=True)
    return key
