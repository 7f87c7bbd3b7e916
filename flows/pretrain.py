"""Prefect flow around the pretraining loop (for deployments; the CLI calls the loop directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger


@flow(name="pretrain")
def pretrain(config: str = "configs/pretrain_mini.yaml", archive: str | None = None,
             resume: bool | None = None) -> dict[str, Any]:
    """Pretrain as ``config`` says; ``resume=None`` resumes when the run folder has a checkpoint."""
    from train.checkpoints import latest_checkpoint
    from train.pretrain import run_pretraining
    from train.pretrain_config import load_config

    if resume is None:
        resume = latest_checkpoint(Path(load_config(config, archive=archive).output_dir)) is not None
    summary = run_pretraining(config, archive=archive, resume=resume, progress=False)
    losses = summary["losses"]
    get_run_logger().info("pretraining: %d steps%s; outputs in %s", summary["steps"],
                          f", loss {losses[0]:.4f} → {losses[-1]:.4f}" if losses else "", summary["output_dir"])
    return {k: v for k, v in summary.items() if k != "losses"} | {"final_loss": losses[-1] if losses else None}
