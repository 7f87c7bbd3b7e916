"""Contrastive / self-supervised losses, one module per loss, plus a name registry.

Every loss is an ``nn.Module`` whose ``forward`` returns a scalar tensor; the
formulas, sources and input shapes are in each class docstring.  Shared numerics
(fp32 logits, self-masking, label similarities, gradient-preserving all-gather)
live in :mod:`train.losses.common`.  Every registered class declares how the
training step calls it (class attribute ``contract``, a
:class:`~train.losses.contract.LossContract`); :func:`loss_contract` reads it.
A new loss is its own module plus one line in :data:`LOSSES`.

Example:
    >>> from train.losses import build_loss
    >>> loss_fn = build_loss("softcon", temperature=0.2, lam=1.0, soft_term="bce")
    >>> loss_contract("softcon").labelled
    True
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
from .contract import LossCall, LossContract, Online, call_loss, contract_of
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


def loss_class(name: str) -> type[nn.Module]:
    """The class registered as ``name`` (case-insensitive, '-' == '_').

    Raises:
        KeyError: no loss of that name is registered.
    """
    key = name.lower().replace("-", "_")
    if key not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[key]


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the loss registered as ``name`` (case-insensitive, '-' == '_') with ``kwargs``."""
    return loss_class(name)(**kwargs)


def loss_contract(name: str) -> LossContract:
    """The input contract declared by the loss registered as ``name``.

    Raises:
        KeyError: no loss of that name is registered.
        TypeError: the registered class declares no contract.
    """
    return contract_of(loss_class(name), name)


__all__ = [
    "LOSSES",
    "NEG_LOGIT",
    "BYOLLoss",
    "InfoNCELoss",
    "LossCall",
    "LossContract",
    "MACLLoss",
    "MemoryQueue",
    "MoCoV2Loss",
    "MoCoV3Loss",
    "MulSupConLoss",
    "MultiViewRows",
    "NTXentLoss",
    "Online",
    "SoftConLoss",
    "SupConLoss",
    "TripletLoss",
    "binarize_labels",
    "build_loss",
    "byol_regression",
    "call_loss",
    "contract_of",
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
    "loss_class",
    "loss_contract",
    "masked_logits",
    "mean_over_valid",
    "pairwise_distance",
    "positive_mask",
    "rank_offset",
    "soft_label_target",
    "soft_target_nll",
    "to_label_matrix",
]
