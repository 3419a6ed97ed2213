"""Checks on an online RL run's rollouts (``<output_dir>/rollouts/``, written by the RL trainers):
what a user must not miss before trusting a run, and the per-step summary ``alignflow rollouts`` prints.

Errors: a reward, per-source reward, advantage or log-prob that is not finite (a run that trained on
NaN is not a run). Reported, not errors: completions that are empty (EOS alone, or no text), per step.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa

FLOAT_COLUMNS = ("reward", "advantage")
LIST_COLUMNS = ("old_logps", "ref_logps")


@dataclass
class StepSummary:
    step: int
    rows: int = 0
    empty: int = 0
    sums: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def means(self) -> dict[str, float]:
        return {name: total / self.rows for name, total in self.sums.items()}


def check_rollouts(table: pa.Table) -> tuple[list[str], list[StepSummary]]:
    """(problems, one summary per step). A problem names the step, the row's prompt id and the column."""
    reward_columns = [name for name in table.column_names if name == "reward" or name.startswith("reward/")]
    float_columns = [*reward_columns, *(name for name in FLOAT_COLUMNS if name in table.column_names and name != "reward")]
    list_columns = [name for name in LIST_COLUMNS if name in table.column_names]
    problems: list[str] = []
    steps: dict[int, StepSummary] = {}
    for row in table.select(["step", "prompt_id", "completion", *float_columns, *list_columns]).to_pylist():
        summary = steps.setdefault(row["step"], StepSummary(row["step"]))
        summary.rows += 1
        summary.empty += not row["completion"].strip()
        for name in float_columns:
            value = row[name]
            if value is None or not math.isfinite(value):
                problems.append(f"step {row['step']}, prompt {row['prompt_id']}: {name} is {value}")
            elif name in reward_columns:
                summary.sums[name] += value
        for name in list_columns:
            if any(value is None or not math.isfinite(value) for value in row[name] or []):
                problems.append(f"step {row['step']}, prompt {row['prompt_id']}: {name} holds a non-finite value")
    return problems, [steps[step] for step in sorted(steps)]
