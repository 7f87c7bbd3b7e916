"""Multi-view batches as anchor and key rows (the SupContrast view-major layout, Khosla et al. 2020,
"Supervised Contrastive Learning", github.com/HobbitLong/SupContrast).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch import Tensor

from train.losses.distributed import (
    gather_no_grad,
    gather_with_grad,
    is_distributed,
    rank_offset,
)
from train.losses.labels import to_label_matrix
from train.losses.logits import compute_dtype, self_mask

__all__ = ["MultiViewRows", "flatten_views"]


@dataclass
class MultiViewRows:
    """Anchors/keys for a multi-view batch in the SupContrast view-major layout.

    ``features`` ``[B, V, d]`` become rows ``v * B + b``.  Keys are the gathered
    features ``[M, V, d]`` (``M = sum of batch sizes over ranks``) laid out as
    ``v * M + m``.

    Attributes:
        anchors: ``[Na, d]`` (``Na = V*B``, or ``B`` with ``contrast_mode='one'``).
        keys: ``[V*M, d]``.
        anchor_index: ``[Na]`` position of each anchor among the keys (its self column).
        anchor_instance / key_instance: global image ids (same id = same image).
        anchor_labels / key_labels: ``[Na, C]`` / ``[V*M, C]`` float label matrices, or None.
    """

    anchors: Tensor
    keys: Tensor
    anchor_index: Tensor
    anchor_instance: Tensor
    key_instance: Tensor
    anchor_labels: Tensor | None
    key_labels: Tensor | None

    def self_mask(self) -> Tensor:
        """``[Na, Nk]`` True at each anchor's own column."""
        return self_mask(self.anchor_index, self.keys.shape[0])

    def instance_mask(self) -> Tensor:
        """``[Na, Nk]`` True where key and anchor come from the same image (self included)."""
        return self.anchor_instance[:, None] == self.key_instance[None, :]


def flatten_views(
    features: Tensor,
    labels: Tensor | None = None,
    gather_distributed: bool = False,
    contrast_mode: Literal["all", "one"] = "all",
    num_classes: int | None = None,
) -> MultiViewRows:
    """Turn ``[B, V, d]`` (or ``[B, d]``, V = 1) features into anchor and key rows.

    Args:
        features: ``[B, V, d]`` embeddings, V views per image.
        labels: ``None``, ``[B]`` class indices (< 0 = unlabelled) or ``[B, C]``
            multi-hot / fractions (all-zero row = unlabelled).
        gather_distributed: gather keys (with grad) and labels over ranks.
        contrast_mode: ``"all"`` uses every view as an anchor, ``"one"`` only view 0.
        num_classes: number of classes for 1-D labels (inferred when None; pass it
            under DDP so that every rank builds the same width).
    """
    if features.dim() == 2:
        features = features[:, None, :]
    if features.dim() != 3:
        raise ValueError(f"features must be [B, V, d] or [B, d], got {tuple(features.shape)}")
    if contrast_mode not in ("all", "one"):
        raise ValueError(f"contrast_mode must be 'all' or 'one', got {contrast_mode!r}")
    b, v, d = features.shape
    device = features.device
    if gather_distributed:
        gathered = gather_with_grad(features)
        offset = rank_offset(b, device)
    else:
        gathered, offset = features, 0
    m = gathered.shape[0]
    keys = gathered.transpose(0, 1).reshape(v * m, d)
    n_anchor_views = v if contrast_mode == "all" else 1
    anchors = features[:, :n_anchor_views].transpose(0, 1).reshape(n_anchor_views * b, d)
    local = torch.arange(b, device=device)
    views = torch.arange(n_anchor_views, device=device)
    anchor_index = (views[:, None] * m + offset + local[None, :]).reshape(-1)
    anchor_instance = (offset + local).repeat(n_anchor_views)
    key_instance = torch.arange(m, device=device).repeat(v)
    anchor_labels = key_labels = None
    if labels is not None:
        if labels.shape[0] != b:
            raise ValueError(f"labels has {labels.shape[0]} rows, features {b}")
        if labels.dim() == 1 and num_classes is None and gather_distributed and is_distributed():
            # every rank must agree on the one-hot width
            n_max = labels.max().clamp_min(0).reshape(1).to(torch.long)
            dist.all_reduce(n_max, op=dist.ReduceOp.MAX)
            num_classes = int(n_max.item()) + 1
        lab = to_label_matrix(labels, num_classes).to(device=device, dtype=compute_dtype(features))
        all_lab = gather_no_grad(lab) if gather_distributed else lab
        anchor_labels = lab.repeat(n_anchor_views, 1)
        key_labels = all_lab.repeat(v, 1)
    return MultiViewRows(anchors, keys, anchor_index, anchor_instance, key_instance, anchor_labels, key_labels)
