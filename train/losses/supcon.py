"""Supervised contrastive loss (SupCon, L_out), single- or multi-label.

Reference:
    [0] Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020,
        https://arxiv.org/abs/2004.11362 (HobbitLong/SupContrast ``losses.py``)
    [1] Multi-label ALL/ANY positive masks: Zhang & Wu, "Multi-Label Supervised
        Contrastive Learning" (MulSupCon), AAAI 2024 (williamzhangsjtu/MulSupCon
        ``codes/utils.py``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from .contract import LossCall, LossContract, Online
from .labels import PositiveRule, check_positive_rule, label_positive_mask
from .logits import (
    check_positive,
    fp32_forward,
    masked_logits,
    mean_over_valid,
    soft_target_nll,
)
from .views import MultiViewRows, flatten_views

__all__ = ["SupConLoss", "positive_mask"]


def positive_mask(rows: MultiViewRows, rule: PositiveRule, min_overlap: int, instance_positives: bool) -> Tensor:
    """Positives ``[Na, Nk]`` of a :class:`~train.losses.common.MultiViewRows` layout.

    A key is a positive of an anchor if it is another view of the same image
    (when ``instance_positives``) or if the labels match under ``rule``; the
    self-pair is never a positive.
    """
    own = rows.self_mask()
    pos = rows.instance_mask() if instance_positives else torch.zeros_like(own)
    if rows.anchor_labels is not None:
        pos = pos | label_positive_mask(rows.anchor_labels, rows.key_labels, rule, min_overlap)
    return pos & ~own


class SupConLoss(nn.Module):
    """SupCon ``L_out`` over V views of B images.

    With N = V*B rows ``z_n`` (view-major), ``A(i)`` = all rows but ``i`` and
    ``P(i) ⊂ A(i)`` the positives of anchor ``i``:

        l_i = -(tau / tau_base) * (1/|P(i)|) sum_{p in P(i)}
               log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )
        L   = mean of l_i over anchors with |P(i)| > 0

    (anchors with no positive are *excluded* from the mean, unlike SupContrast
    which counts them as 0; if none is valid the loss is 0).

    Positives: the other views of the same image (``instance_positives``) plus,
    with labels, samples whose labels match: class indices -> same class;
    multi-hot / fractions -> ``positive_rule="any"`` (share >= ``min_overlap``
    labels, default 1) or ``"all"`` (identical label sets).  Unlabelled samples
    (class < 0 or all-zero row) only have their instance positives.  Without
    labels this is SimCLR's NT-Xent (with the ``tau / tau_base`` factor).

    Args:
        temperature: ``tau`` (SupContrast default 0.07).
        base_temperature: ``tau_base``; ``None`` means ``= temperature`` (factor 1).
        contrast_mode: ``"all"`` (every view is an anchor) or ``"one"`` (view 0 only).
        positive_rule: ``"any"`` or ``"all"`` for multi-label rows.
        min_overlap: minimum number of shared labels for ``"any"``.
        instance_positives: count other views of the same image as positives.
        num_classes: width for 1-D class labels (inferred if None).
        gather_distributed: gather features (with grad) and labels over ranks.

    Shapes:
        ``forward(features, labels=None)``: ``features`` ``[B, V, d]`` (or
        ``[B, d]``, V = 1); ``labels`` ``None``, ``[B]`` or ``[B, C]``; scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.STACKED_VIEWS, Online.PROJECTION, labelled=True)

    def __init__(
        self,
        temperature: float = 0.07,
        base_temperature: float | None = None,
        contrast_mode: str = "all",
        positive_rule: PositiveRule = "any",
        min_overlap: int = 1,
        instance_positives: bool = True,
        num_classes: int | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.base_temperature = check_positive(
            "base_temperature", temperature if base_temperature is None else base_temperature
        )
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        check_positive_rule(positive_rule, min_overlap)
        self.contrast_mode = contrast_mode
        self.positive_rule = positive_rule
        self.min_overlap = int(min_overlap)
        self.instance_positives = bool(instance_positives)
        self.num_classes = num_classes
        self.gather_distributed = bool(gather_distributed)

    @fp32_forward
    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """SupCon loss of ``features`` ``[B, V, d]`` with optional ``labels``."""
        rows = flatten_views(features, labels, self.gather_distributed, self.contrast_mode, self.num_classes)
        logits = masked_logits(rows.anchors, rows.keys, self.temperature, rows.anchor_index)
        pos = positive_mask(rows, self.positive_rule, self.min_overlap, self.instance_positives)
        per_anchor, count = soft_target_nll(logits, pos.to(logits.dtype))
        valid = (count > 0).to(per_anchor.dtype)
        factor = self.temperature / self.base_temperature
        return factor * mean_over_valid(per_anchor * valid, valid, self.gather_distributed)
