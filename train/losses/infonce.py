"""InfoNCE losses: SimCLR's NT-Xent (2N-view form) and the MoCo-v3 in-batch form.

References:
    [0] van den Oord et al., "Representation Learning with Contrastive Predictive
        Coding", 2018, https://arxiv.org/abs/1807.03748
    [1] Chen et al., "A Simple Framework for Contrastive Learning of Visual
        Representations" (SimCLR), 2020, https://arxiv.org/abs/2002.05709
        (google-research/simclr ``objective.py``)
    [2] Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision
        Transformers" (MoCo v3), 2021, https://arxiv.org/abs/2104.02057
        (facebookresearch/moco-v3 ``moco/builder.py``)
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import LossCall, LossContract, Online
from .distributed import gather_with_grad, rank_offset
from .logits import (
    check_positive,
    fp32_forward,
    masked_logits,
    mean_over_valid,
    soft_target_nll,
)
from .views import flatten_views

__all__ = ["InfoNCELoss", "NTXentLoss", "diagonal_nll", "infonce_logits"]


def diagonal_nll(logits: Tensor, offset: int) -> Tensor:
    """Per-anchor ``-log softmax(logits_i)[offset + i]``: :func:`soft_target_nll` with a one-hot target,
    computed by picking the one column instead of weighting the whole row.
    """
    columns = torch.arange(logits.shape[0], device=logits.device) + offset
    return F.cross_entropy(logits, columns, reduction="none")


def infonce_logits(q: Tensor, k: Tensor, temperature: float, gather_distributed: bool) -> tuple[Tensor, int]:
    """``cos(q_i, k_j) / tau`` against (optionally all-gathered) keys, plus this rank's offset."""
    if q.dim() != 2 or k.shape != q.shape:
        raise ValueError(f"q and k must both be [B, d], got {tuple(q.shape)} and {tuple(k.shape)}")
    if gather_distributed:
        k_all = gather_with_grad(k)
        offset = rank_offset(q.shape[0], q.device)
    else:
        k_all, offset = k, 0
    return masked_logits(q, k_all, temperature), offset


class InfoNCELoss(nn.Module):
    """InfoNCE in the MoCo-v3 in-batch form (query vs. key, diagonal targets).

    With ``p_ij = cos(q_i, k_j) / tau`` over the B (or, gathered, all M) keys:

        L = scale * (1/B) * sum_i  -log( exp(p_ii) / sum_j exp(p_ij) )

    where ``scale = 2 * tau`` when ``scale_by_2tau`` (MoCo-v3 ``contrastive_loss``
    multiplies the cross-entropy by ``2 * T``) and 1 otherwise.  This is one
    direction; MoCo v3 symmetrises ``ctr(q1, k2) + ctr(q2, k1)``
    (see :class:`train.losses.moco.MoCoV3Loss`).  Keys are not detached here:
    pass EMA keys that carry no gradient for MoCo; pass both branches with
    gradient for a SimCLR-like one-directional InfoNCE.

    Args:
        temperature: ``tau`` (> 0).  MoCo v3 uses 1.0 for ResNet-50, 0.2 for ViT;
            0.2 is the SSL4EO-S12 MoCo-v3 recipe (Wang et al. 2023, arXiv:2211.07044;
            github.com/zhu-xlab/SSL4EO-S12).
        scale_by_2tau: multiply the loss by ``2 * tau`` (MoCo v3 convention).
        gather_distributed: use the keys of all ranks as negatives
            (:func:`~train.losses.common.gather_with_grad`); positives sit at
            ``rank_offset + i``.

    Shapes:
        ``forward(q, k)``: ``q`` and ``k`` are ``[B, d]``; returns a scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.CROSS_VIEW, Online.PREDICTION)

    def __init__(self, temperature: float = 0.2, scale_by_2tau: bool = True, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.scale_by_2tau = bool(scale_by_2tau)
        self.gather_distributed = bool(gather_distributed)

    @property
    def scale(self) -> float:
        """Multiplier applied to the cross-entropy (``2 * tau`` or 1)."""
        return 2.0 * self.temperature if self.scale_by_2tau else 1.0

    @fp32_forward
    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        """InfoNCE of queries ``q`` [B, d] against keys ``k`` [B, d] (scalar)."""
        logits, offset = infonce_logits(q, k, self.temperature, self.gather_distributed)
        per_anchor = diagonal_nll(logits, offset)  # every anchor has its positive
        return self.scale * mean_over_valid(per_anchor, torch.ones_like(per_anchor), self.gather_distributed)


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR) over the 2N views of a batch.

    Stack the two views as 2N rows ``z_1..z_2N``; with ``i+`` the other view of
    the same image and ``s_ij = cos(z_i, z_j)``:

        l_i = -log( exp(s_{i,i+} / tau) / sum_{k != i} exp(s_ik / tau) )
        L   = (1 / 2N) * sum_i l_i

    i.e. the paper's average over both orderings (the TF code returns
    ``loss_a + loss_b``, twice this value).  The self-pair is masked in the
    denominator.  With ``gather_distributed`` the 2N local rows are anchors and
    the views of every rank are keys/negatives.

    Args:
        temperature: ``tau`` (> 0); SimCLR default 0.1 (ImageNet), 0.5 (CIFAR).
        gather_distributed: gather keys over ranks (with gradient).

    Shapes:
        ``forward(z_a, z_b)``: two ``[B, d]`` views; returns a scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.VIEW_PAIR, Online.PROJECTION)

    def __init__(self, temperature: float = 0.1, gather_distributed: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.gather_distributed = bool(gather_distributed)

    @fp32_forward
    def forward(self, z_a: Tensor, z_b: Tensor) -> Tensor:
        """NT-Xent of two views ``z_a``, ``z_b`` (``[B, d]`` each)."""
        if z_a.dim() != 2 or z_a.shape != z_b.shape:
            raise ValueError(f"z_a and z_b must both be [B, d], got {tuple(z_a.shape)} and {tuple(z_b.shape)}")
        rows = flatten_views(torch.stack([z_a, z_b], dim=1), gather_distributed=self.gather_distributed)
        logits = masked_logits(rows.anchors, rows.keys, self.temperature, rows.anchor_index)
        target = (rows.instance_mask() & ~rows.self_mask()).to(logits.dtype)
        per_anchor, row_sum = soft_target_nll(logits, target)
        return mean_over_valid(per_anchor, (row_sum > 0).to(per_anchor.dtype), self.gather_distributed)
