"""An online RL run's rollouts on disk (``<output_dir>/rollouts/``, written by the RL trainers): reading
them back verified, and the per-step summary ``alignflow rollouts`` prints.

Each rank writes one Arrow file per step, ``step-NNNNNN-rankR.arrow``, and lists it with its sha256 in
``manifest-rankR.json``. The contract on their values (finite rewards, advantages and log-probs; empty
completions flagged) is ``data_contracts.rollouts``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from align_core.errors import UsageError
from align_core.io import atomic_write_json, require_sha256, sha256_file, staging_dir

ROLLOUTS_DIR = "rollouts"


def write_rollouts(output_dir: str | Path, step: int, rank: int, table: pa.Table) -> Path:
    """``table`` as the rank's rollout file of ``step`` (atomically), then listed with its sha256 in the
    rank's manifest (one writer per manifest: its rank)."""
    folder = Path(output_dir) / ROLLOUTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:06d}-rank{rank}.arrow"
    staging = staging_dir(folder / name)
    with pa.OSFile(str(staging / name), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    (staging / name).replace(folder / name)
    staging.rmdir()
    manifest_path = folder / f"manifest-rank{rank}.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"files": {}}
    manifest["files"][name] = {"rows": table.num_rows, "sha256": sha256_file(folder / name)}
    atomic_write_json(manifest_path, manifest)
    return folder / name


def rollouts_run_dir(path: str | Path) -> Path | None:
    """The run folder when ``path`` is a run with rollouts or its ``rollouts/`` folder; None otherwise."""
    path = Path(path)
    for run in (path, path.parent):
        if any((run / ROLLOUTS_DIR).glob("manifest-rank*.json")) and path in (run, run / ROLLOUTS_DIR):
            return run
    return None


def rollout_files(output_dir: str | Path) -> dict[Path, str]:
    """``{file: sha256}`` of every rollout file the run's manifests list, in rank then step order."""
    folder = Path(output_dir) / ROLLOUTS_DIR
    files = {}
    for manifest_path in sorted(folder.glob("manifest-rank*.json")):
        for name, entry in sorted(json.loads(manifest_path.read_text())["files"].items()):
            files[folder / name] = entry["sha256"]
    if not files:
        raise UsageError(f"{folder}: no rollouts")
    return files


def read_rollouts(output_dir: str | Path) -> pa.Table:
    """Every rollout file of a run, checked against its manifest sha256, in rank then step order."""
    tables = []
    for path, digest in rollout_files(output_dir).items():
        require_sha256(path, digest, "a rollout file does not match its manifest")
        with pa.memory_map(str(path)) as source:
            tables.append(pa.ipc.open_file(source).read_all())
    return pa.concat_tables(tables, promote_options="default")


@dataclass
class StepSummary:
    step: int
    rows: int = 0
    empty: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def means(self) -> dict[str, float]:
        return {name: total / self.rows for name, total in self.sums.items()}


def summarize_steps(table: pa.Table) -> list[StepSummary]:
    """Per step: rollouts, empty completions and the mean of each reward column (non-finite ones left out)."""
    reward_columns = [name for name in table.column_names if name == "reward" or name.startswith("reward/")]
    steps: dict[int, StepSummary] = {}
    for row in table.select(["step", "completion", *reward_columns]).to_pylist():
        summary = steps.setdefault(row["step"], StepSummary(row["step"]))
        summary.rows += 1
        summary.empty += not row["completion"].strip()
        for name in reward_columns:
            if row[name] is not None and abs(row[name]) != float("inf") and row[name] == row[name]:
                summary.sums[name] += row[name]
    return [steps[step] for step in sorted(steps)]
