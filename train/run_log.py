"""What a pretraining run logs per step: ``metrics.csv`` and TensorBoard scalars (rank 0 only)."""

from __future__ import annotations

import csv
from pathlib import Path

from train.checkpoints import METRICS_FILE, TENSORBOARD_DIR

__all__ = ["MetricsLog"]

_COLUMNS = ["epoch", "step", "loss", "lr", "momentum", "samples_per_s"]


class MetricsLog:
    """The per-step metrics of a run, in ``<run>/metrics.csv`` and ``<run>/tensorboard/``.

    On resume the CSV is appended to and TensorBoard events after the resumed step are purged.

    Args:
        out: the run folder.
        resume: whether the run continues from a checkpoint.
        global_step: the step it starts from.
    """

    def __init__(self, out: Path, resume: bool, global_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(out / TENSORBOARD_DIR), purge_step=global_step if resume else None)
        path = out / METRICS_FILE
        new = not (resume and path.exists())
        self.file = open(path, "w" if new else "a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(_COLUMNS)

    def step(self, epoch: int, step: int, loss: float, lr: float, momentum: float, rate: float) -> None:
        """Record one optimisation step (``step`` counts from 1)."""
        self.csv.writerow([epoch, step, f"{loss:.6f}", f"{lr:.6g}", f"{momentum:.6f}", f"{rate:.1f}"])
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/momentum", momentum, step)
        self.writer.add_scalar("train/samples_per_s", rate, step)

    def flush(self) -> None:
        """Flush the CSV (after each epoch's checkpoint)."""
        self.file.flush()

    def close(self) -> None:
        """Close the TensorBoard writer and the CSV file."""
        self.writer.close()
        self.file.close()
