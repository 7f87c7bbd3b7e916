"""All-gathers across ranks for the losses (module docstring of :mod:`train.losses.common`:
"Distributed convention"): keys with gradient, labels and queue keys without.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["dist_world_size", "gather_no_grad", "gather_with_grad", "is_distributed", "rank_offset"]


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
