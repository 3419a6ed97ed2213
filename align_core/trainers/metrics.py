"""Training metrics on the main rank: metrics.jsonl, TensorBoard scalars, a loss-curve PNG, a progress bar.

``metrics.jsonl`` holds one JSON object per optimiser step (``step``, ``loss``, ``lr``, ``tokens``, the
algorithm's metrics, and ``eval/*`` on evaluation steps). After a resume from step k the lines past k
are dropped first, so the file always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from align_core.io import atomic_write_text

METRICS_NAME = "metrics.jsonl"
LOSS_CURVE_NAME = "loss_curve.png"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(output_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(output_dir) / METRICS_NAME
    if not path.is_file():
        return []
    # a run killed mid-write may leave a partial last line: it is not a record
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def plot_loss_curve(records: list[dict[str, Any]], png_path: Path, title: str = "") -> None:
    """Training loss per step (and eval loss where measured), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    losses = [math.nan if r["loss"] is None else r["loss"] for r in records]
    axes.plot([r["step"] for r in records], losses, label="train loss", linewidth=1)
    evals = [r for r in records if "eval/loss" in r]
    if evals:
        axes.plot([r["step"] for r in evals], [r["eval/loss"] for r in evals], "o-", label="eval loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    temporary = png_path.with_name(f".{png_path.name}.tmp-{os.getpid()}.png")
    figure.savefig(temporary, dpi=100, bbox_inches="tight")
    plt.close(figure)
    os.replace(temporary, png_path)


class MetricsLogger:
    """Writes each step's metrics; a no-op on every rank but the main one."""

    def __init__(
        self,
        output_dir: Path,
        enabled: bool,
        start_step: int,
        total_steps: int,
        tensorboard: bool,
        progress_bar: bool,
        title: str = "",
    ):
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.title = title
        self.total_steps = total_steps
        # without a bar (e.g. output streamed into a log), ~20 plain lines per run say how it goes
        self.print_every = 0 if progress_bar else max(1, total_steps // 20)
        self._board = self._bar = self._file = None
        if not enabled:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics(self.output_dir) if r["step"] <= start_step]
        atomic_write_text(self.output_dir / METRICS_NAME, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.output_dir / METRICS_NAME, "a")  # noqa: SIM115  (open for the run; close() shuts it)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step hides events a killed run wrote past the checkpoint we resumed from
            self._board = SummaryWriter(str(self.output_dir / TENSORBOARD_DIR), purge_step=start_step + 1)
        if progress_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, desc=title or "train", unit="step", dynamic_ncols=True)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{key: _finite(value) for key, value in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._board is not None:
            for key, value in metrics.items():
                self._board.add_scalar(key if "/" in key else f"train/{key}", value, step)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", refresh=False)
        elif self.print_every and (step % self.print_every == 0 or step == self.total_steps):
            shown = " ".join(f"{key} {value:.4g}" for key, value in metrics.items() if key != "epoch")
            print(f"{self.title} step {step}/{self.total_steps} {shown}", flush=True)

    def plot(self) -> None:
        if self.enabled:
            records = read_metrics(self.output_dir)
            if records:
                plot_loss_curve(records, self.output_dir / LOSS_CURVE_NAME, self.title)

    def close(self) -> None:
        if not self.enabled:
            return
        self.plot()
        for handle in (self._file, self._board, self._bar):
            if handle is not None:
                handle.close()


def _finite(value: float) -> float | None:
    # JSON has no NaN/inf; None keeps the line valid and the step visible
    return value if math.isfinite(value) else None
