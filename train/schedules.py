"""Per-step schedules of a pretraining run: learning rate and EMA momentum.

* learning rate: linear warm-up, then a half-cosine decay to 0 (the MoCo v3 recipe, Chen, Xie & He
  2021, arXiv:2104.02057), its peak scaled linearly with the effective batch size (``base_lr`` is
  the rate for a batch of 256);
* EMA momentum of the target branch: from ``momentum`` up to ``momentum_final`` on a half cosine
  (MoCo v3; BYOL, Grill et al. 2020, arXiv:2006.07733).
"""

from __future__ import annotations

import math

from train.pretrain_config import PretrainConfig

__all__ = ["lr_at", "momentum_at"]


def lr_at(cfg: PretrainConfig, step: int, steps_per_epoch: int, world: int) -> float:
    """Linear warm-up, then half-cosine decay to 0, per optimisation step.

    Args:
        cfg: the run's config (``base_lr``, ``batch_size``, ``accumulate``, ``epochs``, ``warmup_epochs``).
        step: the optimisation step (0-based, over the whole run).
        steps_per_epoch: optimisation steps per epoch.
        world: number of processes (the effective batch is ``batch_size × accumulate × world``).

    Returns:
        The learning rate of ``step``.
    """
    peak = cfg.base_lr * cfg.batch_size * cfg.accumulate * world / 256
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def momentum_at(cfg: PretrainConfig, step: int, total_steps: int) -> float:
    """EMA momentum rising from ``momentum`` to ``momentum_final`` on a half cosine (MoCo v3).

    Args:
        cfg: the run's config (``momentum``, ``momentum_final``).
        step: the optimisation step.
        total_steps: optimisation steps of the whole run.

    Returns:
        The momentum of ``step``.
    """
    progress = min(1.0, step / max(1, total_steps))
    return cfg.momentum_final - (cfg.momentum_final - cfg.momentum) * 0.5 * (1 + math.cos(math.pi * progress))
