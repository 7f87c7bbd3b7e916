"""Shared building blocks for every loss in :mod:`train.losses`.

All contrastive losses of this package are written as one shared step (the
project's anchors/losses specs, "target similarity matrix"): build a logits matrix between
*anchors* (rows) and *keys* (columns) with :func:`masked_logits`, build a
non-negative *target matrix* ``T`` of the same shape, and take

    loss_i = - sum_j  t_ij * log softmax_j(logits_i)          (soft_target_nll)

where ``t_ij = T_ij / sum_k T_ik`` when the rows are normalised.  InfoNCE uses
the identity target, SupCon a uniform target over the positive set, SoftCon a
target built from label similarity, MACL a rarity-weighted target over
positives, MulSupCon a per-label-normalised (unnormalised-row) target.

Numerics (our conventions):

* logits are always computed in at least float32, with autocast disabled,
  from L2-normalised embeddings (``cos / tau``);
* the self-pair is masked with a large *finite* negative number (``NEG_LOGIT``,
  the SimCLR convention) instead of ``-inf`` so that a fully masked row never
  produces NaN; ``log_softmax`` subtracts the row max internally;
* anchors whose target row is empty (no positive) are excluded from the mean;
  if no anchor is valid the loss is an exact zero that is still attached to the
  graph (so DDP sees every parameter used).

Distributed convention (used by every loss that takes ``gather_distributed``):

* keys (embeddings) are all-gathered with :func:`gather_with_grad`, whose
  backward *sums* the incoming gradients over ranks and returns each rank its
  own slice; labels are all-gathered without gradient;
* anchors stay local; :func:`rank_offset` gives the position of this rank's
  first sample in the gathered tensor, so positives/self-pairs index correctly;
* the per-rank loss is ``sum_{local valid anchors} loss_i * W / N_valid_global``
  (:func:`mean_over_valid`), so the *mean of the rank losses* equals the
  single-process loss on the concatenated batch, and DDP's gradient averaging
  yields exactly the gradient of that single-process loss.  On each rank the
  gradient w.r.t. its local embeddings is ``W`` times the single-process one.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NEG_LOGIT",
    "LabelSimilarity",
    "MultiViewRows",
    "PositiveRule",
    "binarize_labels",
    "check_positive",
    "compute_dtype",
    "cosine_matrix",
    "dist_world_size",
    "flatten_views",
    "fp32",
    "fp32_forward",
    "gather_no_grad",
    "gather_with_grad",
    "is_distributed",
    "is_labelled",
    "label_cosine",
    "label_intersection",
    "label_jaccard",
    "label_positive_mask",
    "label_similarity",
    "masked_logits",
    "mean_over_valid",
    "rank_offset",
    "self_mask",
    "soft_target_nll",
    "to_label_matrix",
]

#: Finite stand-in for -inf used to mask logits (SimCLR subtracts 1e9 the same way).
NEG_LOGIT: float = -1.0e9

LabelSimilarity = Literal["cosine", "jaccard"]
PositiveRule = Literal["any", "all"]


# --------------------------------------------------------------------------- numerics
def compute_dtype(x: Tensor) -> torch.dtype:
    """Dtype used for the loss math: at least float32 (float64 stays float64)."""
    return torch.promote_types(x.dtype, torch.float32) if x.is_floating_point() else torch.float32


@contextlib.contextmanager
def fp32(device: torch.device) -> Iterator[None]:
    """Context with autocast disabled for ``device``'s type, so matmuls stay in fp32."""
    try:
        ctx = torch.autocast(device_type=device.type, enabled=False)
    except RuntimeError:  # device type without autocast support
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def fp32_forward(method: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Decorator for ``forward(self, x, ...)``: run the whole method with autocast disabled.

    The loss math (label similarities, weights, logits, softmax) then stays in
    >= fp32 even when the caller runs under ``torch.autocast``.
    """

    @functools.wraps(method)
    def wrapper(self: Any, first: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        with fp32(first.device):
            return method(self, first, *args, **kwargs)

    return wrapper


def check_positive(name: str, value: float, minimum: float = 1e-8) -> float:
    """Raise ``ValueError`` unless ``value`` >= ``minimum``; returns ``float(value)``."""
    value = float(value)
    if not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarities ``[Na, Nb]`` of the rows of ``a`` [Na, d] and ``b`` [Nb, d], in >= fp32."""
    dtype = torch.promote_types(compute_dtype(a), compute_dtype(b))
    with fp32(a.device):
        a_n = F.normalize(a.to(dtype), dim=-1)
        b_n = F.normalize(b.to(dtype), dim=-1)
        return a_n @ b_n.T


def masked_logits(
    anchors: Tensor,
    keys: Tensor,
    temperature: float | Tensor,
    self_index: Tensor | None = None,
) -> Tensor:
    """Cosine logits ``cos(a_i, k_j) / tau`` with the self-pairs masked out.

    Args:
        anchors: ``[Na, d]`` anchor embeddings (any dtype; need not be normalised).
        keys: ``[Nk, d]`` key embeddings.
        temperature: scalar, or a tensor broadcastable to ``[Na, Nk]`` (per-pair
            temperatures, e.g. MACL); the division happens before any max-shift.
        self_index: optional ``[Na]`` long tensor; ``keys[self_index[i]]`` is anchor
            ``i`` itself (SimCLR 2N-view layout) and gets the logit ``NEG_LOGIT``.
            Entries < 0 mean "no self column".

    Returns:
        ``[Na, Nk]`` logits in float32 (float64 if the inputs are float64).
    """
    cos = cosine_matrix(anchors, keys)
    with fp32(cos.device):
        if isinstance(temperature, Tensor):
            logits = cos / temperature.to(device=cos.device, dtype=cos.dtype)
        else:
            logits = cos / float(temperature)
        if self_index is not None:
            logits = logits.masked_fill(self_mask(self_index, logits.shape[1]), NEG_LOGIT)
    return logits


def self_mask(self_index: Tensor, n_keys: int) -> Tensor:
    """Boolean ``[Na, n_keys]`` mask, True at ``(i, self_index[i])`` (ignoring negative indices)."""
    cols = torch.arange(n_keys, device=self_index.device)
    return (cols[None, :] == self_index[:, None]) & (self_index[:, None] >= 0)


def soft_target_nll(logits: Tensor, target: Tensor, normalize: bool = True) -> tuple[Tensor, Tensor]:
    """The shared contrastive step: ``loss_i = -sum_j t_ij log softmax_j(logits_i)``.

    Args:
        logits: ``[Na, Nk]`` (masked entries already at ``NEG_LOGIT``).
        target: ``[Na, Nk]`` non-negative target weights (masked entries must be 0).
        normalize: divide each target row by its sum (rows summing to 0 give loss 0).

    Returns:
        ``(loss, row_sum)``: per-anchor loss ``[Na]`` and the raw target row sums
        ``[Na]`` (``row_sum > 0`` marks anchors that have a positive).
    """
    with fp32(logits.device):
        target = target.to(logits.dtype)
        row_sum = target.sum(dim=1)
        if normalize:
            target = target / torch.where(row_sum > 0, row_sum, torch.ones_like(row_sum))[:, None]
        log_prob = torch.log_softmax(logits, dim=1)
        weighted = torch.where(target > 0, target * log_prob, torch.zeros_like(log_prob))
        return -weighted.sum(dim=1), row_sum


def mean_over_valid(numer: Tensor, denom: Tensor, distributed: bool = False) -> Tensor:
    """``sum(numer) / sum(denom)`` with the distributed convention of this module.

    ``numer`` holds per-anchor loss contributions (0 for invalid anchors) and
    ``denom`` their weights in the mean (e.g. 1 for a valid anchor, 0 otherwise).
    Returns an exact (graph-attached) zero when the total weight is zero.  When
    ``distributed`` and a process group is active, the denominator is the
    all-reduced global weight divided by the world size (see module docstring).
    """
    total = denom.detach().to(numer.dtype).sum()
    scale = 1.0
    if distributed and is_distributed():
        total = total.clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        scale = float(dist_world_size())
    safe = torch.where(total > 0, total, torch.ones_like(total))
    return numer.sum() * scale / safe


# --------------------------------------------------------------------------- distributed
def is_distributed() -> bool:
    """True when a default process group is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def dist_world_size() -> int:
    """World size, 1 when not distributed."""
    return dist.get_world_size() if is_distributed() else 1


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s.item()) for s in sizes]


def _all_gather_cat(x: Tensor, sizes: list[int]) -> Tensor:
    """All-gather along dim 0 (padding to the largest rank) and concatenate in rank order."""
    x = x.contiguous()
    longest = max(sizes)
    if x.shape[0] < longest:
        pad = x.new_zeros((longest - x.shape[0], *x.shape[1:]))
        x = torch.cat([x, pad], dim=0)
    parts = [torch.empty_like(x) for _ in sizes]
    dist.all_gather(parts, x)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward all-reduces (sums) the gradient and keeps this rank's slice."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        sizes = _gather_sizes(x.shape[0], x.device)
        ctx.sizes = sizes
        ctx.rank = dist.get_rank()
        return _all_gather_cat(x, sizes)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping gradients.

    The backward sums the gradient of every rank's loss w.r.t. each slice and
    hands each rank the gradient of its own slice (``sum_r dL_r / dx``).  Ranks
    may hold different batch sizes.  Identity when not distributed.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: Tensor) -> Tensor:
    """All-gather without gradient (labels, EMA keys for queues); identity when not distributed."""
    if not is_distributed():
        return x
    with torch.no_grad():
        sizes = _gather_sizes(x.shape[0], x.device)
        if x.dtype == torch.bool:
            return _all_gather_cat(x.to(torch.uint8), sizes).bool()
        return _all_gather_cat(x.detach(), sizes)


def rank_offset(n_local: int, device: torch.device | None = None) -> int:
    """Index of this rank's first row in a :func:`gather_with_grad` result (0 when not distributed)."""
    if not is_distributed():
        return 0
    sizes = _gather_sizes(n_local, device or _default_device())
    return sum(sizes[: dist.get_rank()])


def _default_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# --------------------------------------------------------------------------- labels
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


# --------------------------------------------------------------------------- multi-view layout
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
