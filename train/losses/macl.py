"""MACL: multi-label adaptive contrastive loss (our parameterised reconstruction).

Reference:
    [0] Amir & Aptoula, "MACL: Multi-Label Adaptive Contrastive Learning Loss for
        Remote Sensing Image Retrieval" (v2: "MARC"), 2025,
        https://arxiv.org/abs/2512.16294 ; github.com/Amna-128/MARC (README only).

The paper's equations were NOT accessible.  Only the components are known:
a SupCon-style loss on L2-normalised projections with label-aware positives,
Pairwise Label Reweighting (rare label co-occurrences weigh more) and Dynamic
Temperature Scaling (temperature depends on how many labels a pair shares and on
how rare the anchor's labels are).  Everything below is OUR reconstruction
from the components named in the paper's abstract; every constant is our choice.  This is not lightly's
``MACLLoss`` (Model-Aware Contrastive Learning), which is a different method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from .contract import LossCall, LossContract, Online
from .labels import (
    PositiveRule,
    binarize_labels,
    check_positive_rule,
    label_intersection,
    label_jaccard,
)
from .logits import (
    check_positive,
    fp32_forward,
    masked_logits,
    mean_over_valid,
    soft_target_nll,
)
from .supcon import positive_mask
from .views import flatten_views

__all__ = ["MACLLoss", "label_rarity"]


def label_rarity(
    class_counts: Sequence[float] | Tensor,
    num_samples: int,
    kind: Literal["idf", "inverse_freq"] = "idf",
    floor: float = 0.05,
) -> Tensor:
    """Normalised rarity ``r~_c`` in ``[floor, 1]`` from training-split label counts ``n_c``.

    ``"idf"``: ``r_c = log(N / n_c)``; ``"inverse_freq"``: ``r_c = N / n_c``;
    then ``r~_c = max(r_c / max_c' r_c', floor)``.  ``n_c`` is clamped to >= 1.
    If every ``r_c`` is 0 (every class in every image), all rarities are 1.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float64).clamp_min(1.0)
    if counts.dim() != 1:
        raise ValueError("class_counts must be 1-D (one count per class)")
    n = float(num_samples)
    if n <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    if kind == "idf":
        r = torch.log(n / counts).clamp_min(0.0)
    elif kind == "inverse_freq":
        r = n / counts
    else:
        raise ValueError(f"rarity kind must be 'idf' or 'inverse_freq', got {kind!r}")
    top = float(r.max())
    if top <= 0 or not math.isfinite(top):
        return torch.ones_like(r, dtype=torch.float32)
    return (r / top).clamp(min=floor, max=1.0).to(torch.float32)


class MACLLoss(nn.Module):
    """MACL (reconstruction): SupCon with rarity-weighted positives and per-pair temperatures.

    Notation: N = V*B rows (view-major), binarised labels ``y_i``, shared labels
    ``I_ij = |y_i ∧ y_j|``, rarity ``r~_c`` (:func:`label_rarity`, computed once on
    the training split; uniform 1 when ``class_counts`` is None).

    1. Positives (label-aware): ``P(i) = {p != i : I_ip >= min_overlap}`` (``"any"``)
       or identical label sets (``"all"``), plus the other views of the same image
       (``instance_positives``).
    2. PLR weight of a positive: ``w_ip = (1/I_ip) sum_{c in y_i ∧ y_p} r~_c`` (mean
       rarity of the shared labels; 1 if nothing is shared, e.g. an unlabelled
       image's own views).  ``weighting="plr_jaccard"`` (MACL-W) multiplies by the
       Jaccard ``J_ip`` (1 for two views of one image); ``"uniform"`` uses 1.
    3. DTS temperature for every pair ``j != i``:
       ``T_ij = clip(tau0 (1 + alpha (1 - o_ij)) / (1 + beta rho_i), tau_min, tau_max)``
       with overlap ``o_ij = I_ij / |y_i|`` (1 for the same image, 0 for an
       unlabelled anchor otherwise) and anchor rarity ``rho_i = mean_{c in y_i} r~_c``
       (0 if unlabelled).  Positive ``alpha``/``beta`` sharpen high-overlap pairs
       and rare anchors; negative values (> -1) reverse the direction (ablation).
    4. Loss with ``l_ij = cos(z_i, z_j) / T_ij``:
       ``L_i = -(1/sum_p w_ip) sum_{p in P(i)} w_ip [l_ip - log sum_{a != i} exp(l_ia)]``,
       ``L = mean of L_i over anchors with a positive of non-zero weight``.
       (The spec's rescale of ``w`` to mean 1 over ``P(i)`` cancels in this form.)

    ``alpha = beta = 0`` with ``weighting="uniform"`` is SupCon-ANY at ``tau0``
    (with ``tau_min <= tau0 <= tau_max``).  Label-aware *sampling* belongs to the
    data sampler, not to this loss.

    Args:
        class_counts: ``n_c`` per class on the training split (None = uniform rarity).
        num_samples: ``N_train`` (required with ``class_counts``).
        rarity: ``"idf"`` (default) or ``"inverse_freq"``.
        rarity_floor: lower bound of ``r~_c`` (default 0.05).
        tau0: base temperature (default 0.1).
        alpha: overlap sensitivity (default 0.5, > -1).
        beta: anchor-rarity sensitivity (default 0.5, > -1).
        tau_min, tau_max: temperature clip (default 0.03, 0.5).
        weighting: ``"plr"`` (default), ``"plr_jaccard"`` (MACL-W) or ``"uniform"``.
        positive_rule, min_overlap, instance_positives, contrast_mode: as
            :class:`~train.losses.supcon.SupConLoss`.
        gather_distributed: gather features (with grad) and labels over ranks.

    Shapes:
        ``forward(features, labels)``: ``features`` ``[B, V, d]`` (or ``[B, d]``);
        ``labels`` ``[B, C]`` multi-hot / fractions (binarised), or ``[B]`` indices; scalar.
    """

    rarity: Tensor

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.STACKED_VIEWS, Online.PROJECTION, labelled=True,
                                                    class_counts=True)

    def __init__(
        self,
        class_counts: Sequence[float] | Tensor | None = None,
        num_samples: int | None = None,
        rarity: Literal["idf", "inverse_freq"] = "idf",
        rarity_floor: float = 0.05,
        tau0: float = 0.1,
        alpha: float = 0.5,
        beta: float = 0.5,
        tau_min: float = 0.03,
        tau_max: float = 0.5,
        weighting: Literal["plr", "plr_jaccard", "uniform"] = "plr",
        positive_rule: PositiveRule = "any",
        min_overlap: int = 1,
        instance_positives: bool = True,
        contrast_mode: str = "all",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.tau0 = check_positive("tau0", tau0)
        self.tau_min = check_positive("tau_min", tau_min)
        self.tau_max = check_positive("tau_max", tau_max)
        if self.tau_min > self.tau_max:
            raise ValueError(f"tau_min ({tau_min}) must be <= tau_max ({tau_max})")
        if not (alpha > -1.0 and beta > -1.0):
            raise ValueError(f"alpha and beta must be > -1, got {alpha}, {beta}")
        if weighting not in ("plr", "plr_jaccard", "uniform"):
            raise ValueError(f"weighting must be 'plr', 'plr_jaccard' or 'uniform', got {weighting!r}")
        check_positive_rule(positive_rule)
        if contrast_mode not in ("all", "one"):
            raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
        if int(min_overlap) < 1:
            raise ValueError(f"min_overlap must be >= 1, got {min_overlap}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.weighting = weighting
        self.positive_rule = positive_rule
        self.min_overlap = int(min_overlap)
        self.instance_positives = bool(instance_positives)
        self.contrast_mode = contrast_mode
        self.gather_distributed = bool(gather_distributed)
        if class_counts is not None:
            if num_samples is None:
                raise ValueError("num_samples (N_train) is required with class_counts")
            table = label_rarity(class_counts, num_samples, rarity, check_positive("rarity_floor", rarity_floor, 0.0))
        else:
            table = torch.empty(0)
        self.register_buffer("rarity", table)

    def _rarity(self, num_classes: int, like: Tensor) -> Tensor:
        if self.rarity.numel() == 0:
            return torch.ones(num_classes, device=like.device, dtype=like.dtype)
        if self.rarity.numel() != num_classes:
            raise ValueError(f"labels have {num_classes} classes, class_counts {self.rarity.numel()}")
        return self.rarity.to(device=like.device, dtype=like.dtype)

    def pair_temperature(self, anchor_labels: Tensor, key_labels: Tensor, same_instance: Tensor) -> Tensor:
        """DTS temperatures ``T_ij`` ``[Na, Nk]`` (see class docstring, step 3)."""
        ya, yk = binarize_labels(anchor_labels), binarize_labels(key_labels).to(anchor_labels.dtype)
        ya = ya.to(yk.dtype)
        r = self._rarity(ya.shape[1], ya)
        n_a = ya.sum(dim=1)
        overlap = (ya @ yk.T) / n_a.clamp_min(1.0)[:, None]
        overlap = torch.where(same_instance, torch.ones_like(overlap), overlap)
        rho = (ya @ r) / n_a.clamp_min(1.0)
        temp = self.tau0 * (1.0 + self.alpha * (1.0 - overlap)) / (1.0 + self.beta * rho)[:, None]
        return temp.clamp(self.tau_min, self.tau_max)

    def pair_weight(self, anchor_labels: Tensor, key_labels: Tensor, same_instance: Tensor) -> Tensor:
        """PLR weights ``w_ij`` ``[Na, Nk]`` before masking by the positive set (step 2)."""
        ya, yk = binarize_labels(anchor_labels), binarize_labels(key_labels)
        yk = yk.to(ya.dtype)
        if self.weighting == "uniform":
            return torch.ones(ya.shape[0], yk.shape[0], device=ya.device, dtype=ya.dtype)
        r = self._rarity(ya.shape[1], ya)
        inter = label_intersection(ya, yk)
        w = torch.where(inter > 0, ((ya * r) @ yk.T) / inter.clamp_min(1.0), torch.ones_like(inter))
        if self.weighting == "plr_jaccard":
            jac = label_jaccard(ya, yk)
            jac = torch.where(same_instance, torch.ones_like(jac), jac)
            w = w * jac
        return w

    @fp32_forward
    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        """MACL loss of ``features`` ``[B, V, d]`` with ``labels`` ``[B, C]``."""
        rows = flatten_views(
            features, labels, self.gather_distributed, self.contrast_mode, num_classes=self.rarity.numel() or None
        )
        assert rows.anchor_labels is not None and rows.key_labels is not None
        same = rows.instance_mask()
        temp = self.pair_temperature(rows.anchor_labels, rows.key_labels, same)
        logits = masked_logits(rows.anchors, rows.keys, temp, rows.anchor_index)
        pos = positive_mask(rows, self.positive_rule, self.min_overlap, self.instance_positives)
        weight = self.pair_weight(rows.anchor_labels, rows.key_labels, same).to(logits.dtype)
        target = torch.where(pos, weight, torch.zeros_like(weight))
        per_anchor, row_sum = soft_target_nll(logits, target)
        valid = (row_sum > 0).to(per_anchor.dtype)
        return mean_over_valid(per_anchor * valid, valid, self.gather_distributed)
