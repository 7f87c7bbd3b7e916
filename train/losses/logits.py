"""The shared step of the contrastive losses: logits, target rows and the mean over valid anchors.

All contrastive losses of this package are written as one shared step (a
"target similarity matrix" per anchor): build a logits matrix between
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

The mean over anchors follows the distributed convention of :mod:`train.losses.common`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from train.losses.distributed import dist_world_size, is_distributed

__all__ = ["NEG_LOGIT", "check_positive", "compute_dtype", "cosine_matrix", "fp32", "fp32_forward", "masked_logits",
           "mean_over_valid", "self_mask", "soft_target_nll"]

#: Finite stand-in for -inf used to mask logits (SimCLR subtracts 1e9 the same way).
NEG_LOGIT: float = -1.0e9


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

