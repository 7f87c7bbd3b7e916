"""Contrastive / self-supervised losses, one module per loss, plus a name registry.

Every loss is an ``nn.Module`` whose ``forward`` returns a scalar tensor; the
formulas, sources and input shapes are in each class docstring.  Shared numerics
(fp32 logits, self-masking, label similarities, gradient-preserving all-gather)
live in :mod:`train.losses.common`.

Example:
    >>> from train.losses import build_loss
    >>> loss_fn = build_loss("softcon", temperature=0.2, lam=1.0, soft_term="bce")
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .byol import BYOLLoss, byol_regression
from .common import (
    NEG_LOGIT,
    MultiViewRows,
    binarize_labels,
    cosine_matrix,
    flatten_views,
    gather_no_grad,
    gather_with_grad,
    is_distributed,
    is_labelled,
    label_cosine,
    label_intersection,
    label_jaccard,
    label_positive_mask,
    label_similarity,
    masked_logits,
    mean_over_valid,
    rank_offset,
    soft_target_nll,
    to_label_matrix,
)
from .infonce import InfoNCELoss, NTXentLoss, diagonal_nll
from .macl import MACLLoss, label_rarity
from .moco import MemoryQueue, MoCoV2Loss, MoCoV3Loss
from .mulsupcon import MulSupConLoss
from .softcon import SoftConLoss, soft_label_target
from .supcon import SupConLoss, positive_mask
from .triplet import TripletLoss, pairwise_distance

#: Name -> loss class.
LOSSES: dict[str, type[nn.Module]] = {
    "infonce": InfoNCELoss,
    "ntxent": NTXentLoss,
    "simclr": NTXentLoss,
    "softcon": SoftConLoss,
    "moco_v2": MoCoV2Loss,
    "moco_v3": MoCoV3Loss,
    "supcon": SupConLoss,
    "mulsupcon": MulSupConLoss,
    "macl": MACLLoss,
    "triplet": TripletLoss,
    "byol": BYOLLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the loss registered as ``name`` (case-insensitive, '-' == '_') with ``kwargs``."""
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[key](**kwargs)


__all__ = [
    "LOSSES",
    "NEG_LOGIT",
    "BYOLLoss",
    "InfoNCELoss",
    "MACLLoss",
    "MemoryQueue",
    "MoCoV2Loss",
    "MoCoV3Loss",
    "MulSupConLoss",
    "MultiViewRows",
    "NTXentLoss",
    "SoftConLoss",
    "SupConLoss",
    "TripletLoss",
    "binarize_labels",
    "build_loss",
    "byol_regression",
    "cosine_matrix",
    "diagonal_nll",
    "flatten_views",
    "gather_no_grad",
    "gather_with_grad",
    "is_distributed",
    "is_labelled",
    "label_cosine",
    "label_intersection",
    "label_jaccard",
    "label_positive_mask",
    "label_rarity",
    "label_similarity",
    "masked_logits",
    "mean_over_valid",
    "pairwise_distance",
    "positive_mask",
    "rank_offset",
    "soft_label_target",
    "soft_target_nll",
    "to_label_matrix",
]
