"""BYOL regression loss.

Reference:
    [0] Grill et al., "Bootstrap Your Own Latent: A New Approach to
        Self-Supervised Learning", NeurIPS 2020, https://arxiv.org/abs/2006.07733
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import LossCall, LossContract, Online
from .logits import compute_dtype, fp32, fp32_forward

__all__ = ["BYOLLoss", "byol_regression"]


def byol_regression(p: Tensor, z: Tensor) -> Tensor:
    """Per-sample ``|p/|p| - z/|z||^2 = 2 - 2 cos(p, z)`` ``[B]`` in >= fp32."""
    dtype = torch.promote_types(compute_dtype(p), compute_dtype(z))
    with fp32(p.device):
        cos = (F.normalize(p.to(dtype), dim=-1) * F.normalize(z.to(dtype), dim=-1)).sum(dim=-1)
        return 2.0 - 2.0 * cos


class BYOLLoss(nn.Module):
    """Symmetrised BYOL loss ``L + L~``.

    With online predictions ``p1 = q(g(f(v1)))``, ``p2`` and target projections
    ``z1 = g'(f'(v1))``, ``z2`` (EMA network, stop-gradient):

        L  = (1/B) sum_i 2 - 2 cos(p1_i, sg(z2_i))
        L~ = (1/B) sum_i 2 - 2 cos(p2_i, sg(z1_i))
        loss = L + L~

    (the paper sums the two directions).  BYOL's EMA schedule
    ``tau_k = 1 - (1 - 0.996)(cos(pi k / K) + 1) / 2`` lives in the trainer.

    Args:
        detach_targets: stop the gradient through ``z1``/``z2`` (default True).

    Shapes:
        ``forward(p1, p2, z1, z2)``: all ``[B, d]``; scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.VIEWS_AND_KEYS, Online.PREDICTION, gathers=False)

    def __init__(self, detach_targets: bool = True) -> None:
        super().__init__()
        self.detach_targets = bool(detach_targets)

    @fp32_forward
    def forward(self, p1: Tensor, p2: Tensor, z1: Tensor, z2: Tensor) -> Tensor:
        """Symmetrised BYOL loss of predictions ``p1``, ``p2`` and targets ``z1``, ``z2``."""
        if not (p1.shape == p2.shape == z1.shape == z2.shape) or p1.dim() != 2:
            raise ValueError("p1, p2, z1, z2 must all be [B, d] with the same shape")
        if self.detach_targets:
            z1, z2 = z1.detach(), z2.detach()
        return byol_regression(p1, z2).mean() + byol_regression(p2, z1).mean()
