"""Triplet loss with batch-hard mining, multi-label positives.

References:
    [0] Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face
        Recognition and Clustering", CVPR 2015, https://arxiv.org/abs/1503.03832
    [1] Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
        Re-Identification" (batch-hard mining), 2017, https://arxiv.org/abs/1703.07737
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import LossCall, LossContract, Online
from .labels import PositiveRule, check_positive_rule, label_positive_mask
from .logits import check_positive, compute_dtype, fp32, fp32_forward, mean_over_valid
from .views import flatten_views

__all__ = ["TripletLoss", "pairwise_distance"]

Distance = Literal["euclidean", "squared_euclidean", "cosine"]


def pairwise_distance(a: Tensor, b: Tensor, kind: Distance = "euclidean", eps: float = 1e-12) -> Tensor:
    """Distances ``[Na, Nb]`` in >= fp32: Euclidean, squared Euclidean or cosine ``1 - cos``.

    Euclidean uses ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, eps))`` (finite gradient at 0).
    """
    dtype = torch.promote_types(compute_dtype(a), compute_dtype(b))
    with fp32(a.device):
        a, b = a.to(dtype), b.to(dtype)
        if kind == "cosine":
            return 1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
        sq = (a * a).sum(dim=1)[:, None] + (b * b).sum(dim=1)[None, :] - 2.0 * (a @ b.T)
        sq = sq.clamp_min(0.0)
        if kind == "squared_euclidean":
            return sq
        if kind == "euclidean":
            return sq.clamp_min(eps).sqrt()
    raise ValueError(f"unknown distance {kind!r}")


class TripletLoss(nn.Module):
    """Batch-hard triplet loss.

    For each anchor ``i`` (every view of every image), with distance ``D``:

        d+_i = max_{p in P(i)} D(i, p)          (hardest positive)
        d-_i = min_{n in N(i)} D(i, n)          (hardest negative)
        l_i  = max(0, d+_i - d-_i + margin)
        L    = mean of l_i over anchors with both a positive and a negative

    ``P(i)``: other views of the same image (``instance_positives``) and samples
    whose labels match (``positive_rule="any"``: share >= ``min_overlap`` labels;
    ``"all"``: identical sets).  ``N(i)``: every other sample that is neither a
    positive nor a view of the same image.  FaceNet uses the squared Euclidean
    distance of L2-normalised embeddings with margin 0.2; Hermans et al. the
    plain Euclidean distance.

    Args:
        margin: ``alpha`` >= 0 (default 0.2).
        distance: ``"euclidean"`` (default), ``"squared_euclidean"`` or ``"cosine"``.
        normalize: L2-normalise the embeddings first (default True).
        positive_rule, min_overlap, instance_positives: positive definition.
        num_classes: width for 1-D class labels (inferred if None).
        gather_distributed: mine over the keys of all ranks (gathered with grad).

    Shapes:
        ``forward(features, labels=None)``: ``features`` ``[B, V, d]`` or ``[B, d]``;
        ``labels`` ``None``, ``[B]`` or ``[B, C]``; scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.STACKED_VIEWS, Online.PROJECTION, labelled=True)

    def __init__(
        self,
        margin: float = 0.2,
        distance: Distance = "euclidean",
        normalize: bool = True,
        positive_rule: PositiveRule = "any",
        min_overlap: int = 1,
        instance_positives: bool = True,
        num_classes: int | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.margin = check_positive("margin", margin, minimum=0.0)
        if distance not in ("euclidean", "squared_euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean', 'squared_euclidean' or 'cosine', got {distance!r}")
        check_positive_rule(positive_rule, min_overlap)
        self.distance = distance
        self.normalize = bool(normalize)
        self.positive_rule = positive_rule
        self.min_overlap = int(min_overlap)
        self.instance_positives = bool(instance_positives)
        self.num_classes = num_classes
        self.gather_distributed = bool(gather_distributed)

    @fp32_forward
    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        """Batch-hard triplet loss of ``features`` with optional ``labels``."""
        if self.normalize:
            features = F.normalize(features.to(compute_dtype(features)), dim=-1)
        rows = flatten_views(features, labels, self.gather_distributed, "all", self.num_classes)
        dist_mat = pairwise_distance(rows.anchors, rows.keys, self.distance)
        own = rows.self_mask()
        same = rows.instance_mask()
        label_pos = torch.zeros_like(own)
        if rows.anchor_labels is not None:
            label_pos = label_positive_mask(rows.anchor_labels, rows.key_labels, self.positive_rule, self.min_overlap)
        pos = (label_pos | (same if self.instance_positives else torch.zeros_like(own))) & ~own
        neg = ~(label_pos | same)
        valid = pos.any(dim=1) & neg.any(dim=1)
        # distances are >= 0, so -1 / +inf fillers never win against a real pair
        hardest_pos = dist_mat.masked_fill(~pos, -1.0).amax(dim=1)
        hardest_neg = dist_mat.masked_fill(~neg, float("inf")).amin(dim=1)
        hardest_neg = torch.where(valid, hardest_neg, hardest_pos.detach())
        per_anchor = torch.where(valid, F.relu(hardest_pos - hardest_neg + self.margin), torch.zeros_like(hardest_pos))
        return mean_over_valid(per_anchor, valid.to(per_anchor.dtype), self.gather_distributed)
