"""Label matrices for the supervised losses: class indices or multi-hot/fraction rows, label
similarities (cosine, Jaccard) and positive-pair masks.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from train.losses.logits import compute_dtype, fp32

__all__ = ["LabelSimilarity", "PositiveRule", "binarize_labels", "check_positive_rule", "is_labelled",
           "label_cosine", "label_intersection", "label_jaccard", "label_positive_mask", "label_similarity",
           "to_label_matrix"]

LabelSimilarity = Literal["cosine", "jaccard"]
PositiveRule = Literal["any", "all"]


def to_label_matrix(labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Float label matrix ``[N, C]`` from class indices ``[N]`` or a matrix ``[N, C]``.

    Class indices < 0 mean "unlabelled" and give an all-zero row.  A matrix may
    be multi-hot (0/1) or hold non-negative class fractions.  Output is >= fp32.
    """
    if labels.dim() == 1:
        if labels.is_floating_point():
            raise ValueError("1-D labels must be integer class indices")
        n_cls = int(num_classes) if num_classes is not None else int(labels.max().clamp_min(0).item()) + 1
        out = torch.zeros(labels.shape[0], n_cls, device=labels.device, dtype=torch.float32)
        has = labels >= 0
        out[has.nonzero(as_tuple=True)[0], labels[has].long()] = 1.0
        return out
    if labels.dim() != 2:
        raise ValueError(f"labels must be [N] or [N, C], got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or not labels.is_floating_point():
        return labels.to(torch.float32)
    return labels.to(compute_dtype(labels))


def is_labelled(label_matrix: Tensor) -> Tensor:
    """``[N]`` bool: rows with at least one positive entry (all-zero rows are unlabelled)."""
    return (label_matrix > 0).any(dim=1)


def binarize_labels(label_matrix: Tensor) -> Tensor:
    """Multi-hot float matrix ``1[y > 0]`` (turns fractions into label presence)."""
    return (label_matrix > 0).to(torch.promote_types(label_matrix.dtype, torch.float32))


def label_intersection(a: Tensor, b: Tensor) -> Tensor:
    """``I_ij = |y_i ∩ y_j|``: number of shared present labels, ``[Na, Nb]``."""
    with fp32(a.device):
        return binarize_labels(a) @ binarize_labels(b).T


def label_cosine(a: Tensor, b: Tensor) -> Tensor:
    """``<y_i, y_j> / (|y_i| |y_j|)``; 0 where either row is unlabelled.

    For multi-hot rows this is ``|A∩B| / sqrt(|A| |B|)``: the cosine similarity of multi-label
    vectors that SoftCon uses as soft targets (Wang et al. 2024, arXiv:2405.20462).
    """
    with fp32(a.device):
        a_n = F.normalize(a.to(compute_dtype(a)), dim=1)
        b_n = a_n if b is a else F.normalize(b.to(compute_dtype(b)), dim=1)
        return a_n @ b_n.T


def label_jaccard(a: Tensor, b: Tensor) -> Tensor:
    """Weighted Jaccard ``sum_c min(y_ic, y_jc) / sum_c max(y_ic, y_jc)``; 0 where both are empty.

    For multi-hot rows this is ``|A∩B| / |A∪B|``; for class fractions it is the
    Ruzicka similarity (our choice for non-binary labels).
    """
    a, b = a.to(compute_dtype(a)), b.to(compute_dtype(b))
    with fp32(a.device):
        if _is_binary(a) and _is_binary(b):
            inter = a @ b.T
        else:  # [Na, Nb, C] intermediate: fine for batch-sized inputs
            inter = torch.minimum(a[:, None, :], b[None, :, :]).sum(dim=2)
        union = a.sum(dim=1)[:, None] + b.sum(dim=1)[None, :] - inter
        safe = torch.where(union > 0, union, torch.ones_like(union))
        return torch.where(union > 0, inter / safe, torch.zeros_like(inter))


def _is_binary(x: Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


def label_similarity(a: Tensor, b: Tensor, kind: LabelSimilarity = "cosine") -> Tensor:
    """Label similarity matrix ``[Na, Nb]`` in [0, 1] (``"cosine"`` or ``"jaccard"``)."""
    if kind == "cosine":
        return label_cosine(a, b)
    if kind == "jaccard":
        return label_jaccard(a, b)
    raise ValueError(f"unknown label similarity {kind!r} (use 'cosine' or 'jaccard')")


def check_positive_rule(positive_rule: str, min_overlap: int = 1) -> int:
    """Validate the label-positive settings shared by SupCon, MACL and triplet; returns ``min_overlap``."""
    if positive_rule not in ("any", "all"):
        raise ValueError(f"positive_rule must be 'any' or 'all', got {positive_rule!r}")
    if int(min_overlap) < 1:
        raise ValueError(f"min_overlap must be >= 1, got {min_overlap}")
    return int(min_overlap)


def label_positive_mask(a: Tensor, b: Tensor, rule: PositiveRule = "any", min_overlap: int = 1) -> Tensor:
    """Label-based positive pairs ``[Na, Nb]`` (self-pairs not removed).

    ``"any"``: share at least ``min_overlap`` present labels (the ANY mask of MulSupCon's code,
    Zhang & Wu 2024, github.com/williamzhangsjtu/MulSupCon ``codes/utils.py``);
    ``"all"``: identical, non-empty label sets (ALL).  Unlabelled rows are never
    positives.  Fractions are binarised (a label is present if its fraction > 0).
    """
    inter = label_intersection(a, b)
    if rule == "any":
        return inter >= max(int(min_overlap), 1)
    if rule == "all":
        na = binarize_labels(a).sum(dim=1)[:, None]
        nb = binarize_labels(b).sum(dim=1)[None, :]
        return (inter == na) & (inter == nb) & (na > 0)
    raise ValueError(f"unknown positive rule {rule!r} (use 'any' or 'all')")
