"""MoCo-v3 projection and prediction heads.

Sizes and layout follow MoCo v3 (Chen, Xie & He, 2021, "An Empirical Study of Training
Self-Supervised Vision Transformers", arXiv:2104.02057; github.com/facebookresearch/moco-v3),
which the SSL4EO-S12 MoCo-v3 scripts (github.com/zhu-xlab/SSL4EO-S12) reuse.
"""

from __future__ import annotations

import torch
from torch import nn

#: MoCo-v3 head sizes (hidden 4096, output 256; MoCo v3 paper and official repository).
MOCO_V3_HIDDEN: int = 4096
MOCO_V3_OUT: int = 256
#: Small head sizes for CPU smoke runs and tests.
CPU_HIDDEN: int = 512
CPU_OUT: int = 128


def _mlp(in_dim: int, hidden: int, out: int, layers: int, last_bn: bool) -> nn.Sequential:
    """MoCo-v3 MLP: ``layers`` bias-free Linear layers; BN+ReLU between; optional affine-free BN."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    mods: list[nn.Module] = []
    dim = in_dim
    for i in range(layers):
        last = i == layers - 1
        nxt = out if last else hidden
        mods.append(nn.Linear(dim, nxt, bias=False))
        if not last:
            mods += [nn.BatchNorm1d(nxt), nn.ReLU(inplace=True)]
        elif last_bn:
            mods.append(nn.BatchNorm1d(nxt, affine=False))
        dim = nxt
    return nn.Sequential(*mods)


class ProjectionHead(nn.Module):
    """MoCo-v3 projector: ``layers`` × (Linear → BN → ReLU), the last Linear followed by BN
    without affine parameters. MoCo v3 uses 3 layers for ViT and 2 for ResNet, hidden 4096,
    output 256 (MoCo v3, arXiv:2104.02057); use :data:`CPU_HIDDEN` / :data:`CPU_OUT` for smoke runs.

    Shapes: ``(B, in_dim)`` → ``(B, out)``. BatchNorm needs ``B > 1`` in training mode.
    """

    def __init__(
        self, in_dim: int, hidden: int = MOCO_V3_HIDDEN, out: int = MOCO_V3_OUT, layers: int = 3
    ) -> None:
        super().__init__()
        self.in_dim, self.hidden, self.out_dim = in_dim, hidden, out
        self.net = _mlp(in_dim, hidden, out, layers, last_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PredictionHead(nn.Module):
    """MoCo-v3 predictor: Linear → BN → ReLU → Linear (no final BN), ``dim → hidden → dim``.

    Shapes: ``(B, dim)`` → ``(B, dim)``.
    """

    def __init__(self, dim: int = MOCO_V3_OUT, hidden: int = MOCO_V3_HIDDEN, layers: int = 2) -> None:
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.net = _mlp(dim, hidden, dim, layers, last_bn=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
