"""MulSupCon: multi-label supervised contrastive loss with per-label anchors.

Reference:
    [0] Zhang & Wu, "Multi-Label Supervised Contrastive Learning", AAAI 2024,
        vol. 38(15), pp. 16786-16793 (williamzhangsjtu/MulSupCon ``codes/losses.py``,
        ``codes/utils.py``); the closed form below is ours.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .contract import LossCall, LossContract, Online
from .distributed import gather_no_grad, gather_with_grad, is_distributed
from .labels import binarize_labels, to_label_matrix
from .logits import (
    check_positive,
    compute_dtype,
    fp32_forward,
    masked_logits,
    mean_over_valid,
    soft_target_nll,
)
from .moco import MemoryQueue

__all__ = ["MulSupConLoss"]


class MulSupConLoss(nn.Module):
    """MulSupCon: every label of an anchor is a separate anchor.

    Queries ``q_i`` (online encoder) are contrasted with the key set ``K``: the
    momentum keys of the batch (all ranks with ``gather_distributed``) plus, once
    full, a label-carrying queue.  The anchor's own key is in ``K`` and the
    softmax runs over all of ``K`` (no self-exclusion: q and k come from
    different encoders/views).  For anchor ``i`` and label ``c`` with
    ``y_ic = 1`` let ``P_c = {k in K : y_kc = 1}``:

        l_ic = -(1/|P_c|) sum_{k in P_c} log softmax_k(q_i . K / tau)

    ``label_weighting="per_label"`` (official default, ``with_weight: False``):
    ``L = sum_{(i,c)} l_ic / #{(i,c)}`` (each anchor weighs ∝ its label count);
    ``"per_anchor"`` (``with_weight: True``): ``L = mean_i (1/|y_i|) sum_c l_ic``.
    Unlabelled anchors contribute nothing (our choice; the paper's data has none).
    Computed in closed form: ``sum_c l_ic = -sum_k W_ik log p_ik`` with
    ``W_ik = sum_{c in y_i ∧ y_k} 1/|P_c|`` (our rewriting).  Fractions are
    binarised (label present iff > 0).

    Args:
        temperature: ``tau`` (official config: 0.1).
        label_weighting: ``"per_label"`` or ``"per_anchor"``.
        queue_size: label-carrying queue length (0 = in-batch keys only; official 256).
            Used only once full, as in the official code.
        dim: embedding dimension (required with a queue).
        num_classes: label width (required with a queue or 1-D labels under DDP).
        gather_distributed: gather keys (with grad) and labels over ranks.

    Shapes:
        ``forward(q, k, labels, update_queue=True)``: ``q``, ``k`` ``[B, d]``;
        ``labels`` ``[B, C]`` (or ``[B]`` class indices); scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.OWN_SYMMETRIC, Online.PREDICTION, labelled=True,
                                                    queue_dim=True)

    def __init__(
        self,
        temperature: float = 0.1,
        label_weighting: Literal["per_label", "per_anchor"] = "per_label",
        queue_size: int = 0,
        dim: int | None = None,
        num_classes: int | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        if label_weighting not in ("per_label", "per_anchor"):
            raise ValueError(f"label_weighting must be 'per_label' or 'per_anchor', got {label_weighting!r}")
        self.label_weighting = label_weighting
        self.num_classes = num_classes
        self.gather_distributed = bool(gather_distributed)
        self.queue: MemoryQueue | None = None
        if queue_size:
            if dim is None or num_classes is None:
                raise ValueError("a MulSupCon queue needs dim and num_classes")
            self.queue = MemoryQueue(queue_size, dim, num_classes=num_classes, init="empty")

    @fp32_forward
    def forward(self, q: Tensor, k: Tensor, labels: Tensor, update_queue: bool = True) -> Tensor:
        """MulSupCon loss of ``q`` against keys ``k`` (+ queue) with multi-labels ``labels``."""
        if q.dim() != 2 or k.shape != q.shape:
            raise ValueError(f"q and k must both be [B, d], got {tuple(q.shape)} and {tuple(k.shape)}")
        dist_on = self.gather_distributed and is_distributed()
        lab = binarize_labels(to_label_matrix(labels, self.num_classes)).to(device=q.device, dtype=compute_dtype(q))
        k_all = gather_with_grad(k) if dist_on else k
        lab_all = gather_no_grad(lab) if dist_on else lab
        keys, key_lab = k_all, lab_all
        if self.queue is not None and self.queue.full:
            keys = torch.cat([k_all, self.queue.features.detach().to(k_all.dtype)], dim=0)
            key_lab = torch.cat([lab_all, self.queue.labels.to(lab_all.dtype)], dim=0)

        logits = masked_logits(q, keys, self.temperature)
        key_lab = key_lab.to(logits.dtype)
        count = key_lab.sum(dim=0)  # |P_c|
        anchor_lab = lab.to(logits.dtype) * (count > 0).to(logits.dtype)
        weights = (anchor_lab / count.clamp_min(1.0)) @ key_lab.T
        per_anchor, _ = soft_target_nll(logits, weights, normalize=False)
        n_labels = anchor_lab.sum(dim=1)
        if self.label_weighting == "per_label":
            loss = mean_over_valid(per_anchor, n_labels, dist_on)
        else:
            valid = (n_labels > 0).to(per_anchor.dtype)
            loss = mean_over_valid(per_anchor / n_labels.clamp_min(1.0), valid, dist_on)

        if update_queue and self.queue is not None:
            self.queue.enqueue(k_all.detach(), lab_all)
        return loss

    @torch.no_grad()
    def enqueue(self, k: Tensor, labels: Tensor) -> None:
        """Enqueue keys ``k`` ``[n, d]`` with their (binarised) label rows, as ``forward`` does with
        ``update_queue=True`` (all ranks' rows, in rank order, with ``gather_distributed``).
        """
        if self.queue is None:
            return
        lab = binarize_labels(to_label_matrix(labels, self.num_classes)).to(k.device)
        if self.gather_distributed and is_distributed():
            k, lab = gather_no_grad(k.detach()), gather_no_grad(lab)
        self.queue.enqueue(k.detach(), lab)

    def symmetric(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor, labels: Tensor) -> Tensor:
        """``L(q1, k2) + L(q2, k1)`` (both views share ``labels``), both against the queue as it was
        before the call; then the keys of both views are enqueued once, ``k1`` before ``k2`` (as
        :meth:`train.losses.moco.MoCoV2Loss.symmetric`).
        """
        loss = self(q1, k2, labels, update_queue=False) + self(q2, k1, labels, update_queue=False)
        self.enqueue(torch.cat([k1, k2]), torch.cat([labels, labels]))
        return loss
