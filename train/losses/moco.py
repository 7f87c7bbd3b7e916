"""MoCo losses: v2 (queue of negatives) and v3 (symmetrised in-batch InfoNCE).

References:
    [0] He et al., "Momentum Contrast for Unsupervised Visual Representation
        Learning" (MoCo v1), CVPR 2020, https://arxiv.org/abs/1911.05722
    [1] Chen et al., "Improved Baselines with Momentum Contrastive Learning"
        (MoCo v2), 2020, https://arxiv.org/abs/2003.04297
        (facebookresearch/moco ``moco/builder.py``)
    [2] Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision
        Transformers" (MoCo v3), 2021, https://arxiv.org/abs/2104.02057
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import LossCall, LossContract, Online
from .distributed import gather_no_grad
from .infonce import InfoNCELoss
from .logits import check_positive, compute_dtype, fp32, fp32_forward, soft_target_nll

__all__ = ["MemoryQueue", "MoCoV2Loss", "MoCoV3Loss"]


class MemoryQueue(nn.Module):
    """FIFO queue of (detached) key embeddings, optionally with their labels.

    Stored as buffers (so it follows ``.to(device)`` and the state dict):
    ``features`` ``[size, dim]``, ``labels`` ``[size, num_classes]`` (when
    ``num_classes > 0``), ``ptr`` (next write position) and ``count`` (number of
    valid entries, saturating at ``size``).  :meth:`enqueue` writes at ``ptr``
    and wraps around; if more than ``size`` rows arrive only the last ``size``
    are kept.

    Args:
        size: number of slots (> 0).
        dim: embedding dimension.
        num_classes: label width, 0 for a feature-only queue.
        init: ``"random"`` fills the features with L2-normalised Gaussian noise and
            marks the queue full (MoCo v1/v2 behaviour), ``"empty"`` starts empty
            (MulSupCon behaviour: use it only once full).
    """

    features: Tensor
    labels: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, size: int, dim: int, num_classes: int = 0, init: str = "random") -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"size and dim must be > 0, got {size}, {dim}")
        if init not in ("random", "empty"):
            raise ValueError(f"init must be 'random' or 'empty', got {init!r}")
        self.size, self.dim, self.num_classes = int(size), int(dim), int(num_classes)
        if init == "random":
            feats = F.normalize(torch.randn(size, dim), dim=1)
            count = size
        else:
            feats = torch.zeros(size, dim)
            count = 0
        self.register_buffer("features", feats)
        self.register_buffer("labels", torch.zeros(size, max(num_classes, 0)))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.tensor(count, dtype=torch.long))

    @property
    def full(self) -> bool:
        """True once every slot holds a real (or random-init) entry."""
        return int(self.count) >= self.size

    @torch.no_grad()
    def enqueue(self, features: Tensor, labels: Tensor | None = None) -> None:
        """Write ``features`` ``[n, dim]`` (and ``labels`` ``[n, C]``) at the pointer, FIFO with wrap-around."""
        features = features.detach()
        if features.dim() != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected [n, {self.dim}] features, got {tuple(features.shape)}")
        if self.num_classes > 0:
            if labels is None or labels.shape != (features.shape[0], self.num_classes):
                raise ValueError(f"expected [n, {self.num_classes}] labels with the features")
        n = features.shape[0]
        if n == 0:
            return
        if n > self.size:
            features = features[-self.size :]
            labels = labels[-self.size :] if labels is not None else None
            n = self.size
        idx = (int(self.ptr) + torch.arange(n, device=self.features.device)) % self.size
        self.features[idx] = features.to(self.features.dtype)
        if self.num_classes > 0 and labels is not None:
            self.labels[idx] = labels.detach().to(self.labels.dtype)
        self.ptr.fill_((int(self.ptr) + n) % self.size)
        self.count.fill_(min(int(self.count) + n, self.size))


class MoCoV2Loss(nn.Module):
    """MoCo v1/v2 InfoNCE against a queue of negatives.

    With normalised ``q_i`` (online), ``k_i`` (momentum encoder, same image) and
    queue entries ``n_1..n_K``:

        L = (1/B) sum_i -log( exp(q_i.k_i / tau) /
                              (exp(q_i.k_i / tau) + sum_{m=1..K} exp(q_i.n_m / tau)) )

    (positive logit in column 0, as in ``moco/builder.py``).  After the loss the
    keys (all-gathered across ranks without gradient when ``gather_distributed``,
    as ``concat_all_gather`` does) are enqueued, FIFO with wrap-around.
    ``k`` is used as given; MoCo computes it under ``no_grad``.

    Symmetrised use (``L(q1, k2) + L(q2, k1)``): both directions see the queue as
    it was at the start of the step, and the keys of both views are enqueued once
    afterwards, as the symmetric option of the official MoCo CIFAR-10 demo does
    (facebookresearch/moco, ``colab/moco_cifar10_demo.ipynb``: ``k = cat([k1, k2])``
    then one ``_dequeue_and_enqueue(k)``).  Enqueueing after the first direction
    would put that direction's keys, among them the EMA view of the second
    direction's own image, among the second direction's negatives.
    :meth:`symmetric` does it; or call ``forward`` twice with ``update_queue=False``
    and then :meth:`enqueue`.

    Args:
        dim: embedding dimension (MoCo: 128).
        queue_size: ``K`` (MoCo: 65536).
        temperature: ``tau``; 0.07 for v1, 0.2 for v2 (default).
        gather_distributed: all-gather keys before enqueueing.

    Shapes:
        ``forward(q, k, update_queue=True)``: ``q``, ``k`` ``[B, dim]``; scalar.
        ``symmetric(q1, q2, k1, k2)``: all ``[B, dim]``; scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.OWN_SYMMETRIC, Online.PROJECTION, queue_dim=True)

    def __init__(
        self, dim: int = 128, queue_size: int = 65536, temperature: float = 0.2, gather_distributed: bool = False
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.queue = MemoryQueue(queue_size, dim, init="random")
        self.gather_distributed = bool(gather_distributed)

    @fp32_forward
    def forward(self, q: Tensor, k: Tensor, update_queue: bool = True) -> Tensor:
        """Loss of ``q`` vs. positive ``k`` and the queued negatives; then enqueue ``k``."""
        if q.dim() != 2 or k.shape != q.shape:
            raise ValueError(f"q and k must both be [B, d], got {tuple(q.shape)} and {tuple(k.shape)}")
        dtype = torch.promote_types(compute_dtype(q), compute_dtype(k))
        with fp32(q.device):
            q_n = F.normalize(q.to(dtype), dim=1)
            k_n = F.normalize(k.to(dtype), dim=1)
            # a copy: the enqueue below writes the queue in place, and backward still needs these values
            negatives = self.queue.features.detach().to(device=q.device, dtype=dtype, copy=True)
            pos = (q_n * k_n).sum(dim=1, keepdim=True)
            neg = q_n @ negatives.T
            logits = torch.cat([pos, neg], dim=1) / self.temperature
            target = torch.zeros_like(logits)
            target[:, 0] = 1.0
            per_anchor, _ = soft_target_nll(logits, target)
            loss = per_anchor.mean()
        if update_queue:
            self.enqueue(k)
        return loss

    @torch.no_grad()
    def enqueue(self, k: Tensor) -> None:
        """Enqueue the L2-normalised keys ``k`` ``[n, dim]`` (all ranks' keys, in rank order, when
        ``gather_distributed``: every rank must call it, as for ``concat_all_gather``).
        """
        k_n = F.normalize(k.detach().to(compute_dtype(k)), dim=1)
        self.queue.enqueue(gather_no_grad(k_n) if self.gather_distributed else k_n)

    def symmetric(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
        """``L(q1, k2) + L(q2, k1)``, both against the queue as it was before the call; then the keys
        of both views are enqueued once, ``k1`` before ``k2`` (``q*``: online, ``k*``: momentum
        encoder; index = view).
        """
        loss = self(q1, k2, update_queue=False) + self(q2, k1, update_queue=False)
        self.enqueue(torch.cat([k1, k2], dim=0))
        return loss


class MoCoV3Loss(nn.Module):
    """MoCo v3 loss: ``ctr(q1, k2) + ctr(q2, k1)``.

    ``ctr`` is :class:`~train.losses.infonce.InfoNCELoss`: in-batch keys
    (all-gathered when ``gather_distributed``), label ``arange(B) + offset``,
    cross-entropy multiplied by ``2 tau`` when ``scale_by_2tau``.

    Args:
        temperature: ``tau``; MoCo v3: 1.0 (ResNet-50), 0.2 (ViT, default).
        scale_by_2tau: MoCo v3's ``2 * T`` factor.
        gather_distributed: gather keys over ranks.

    Shapes:
        ``forward(q1, q2, k1, k2)``: all ``[B, d]``; ``q*`` from the online
        predictor, ``k*`` from the momentum encoder; scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.VIEWS_AND_KEYS, Online.PREDICTION)

    def __init__(self, temperature: float = 0.2, scale_by_2tau: bool = True, gather_distributed: bool = False) -> None:
        super().__init__()
        self.ctr = InfoNCELoss(temperature, scale_by_2tau=scale_by_2tau, gather_distributed=gather_distributed)

    @fp32_forward
    def forward(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
        """Symmetrised MoCo-v3 loss."""
        return self.ctr(q1, k2) + self.ctr(q2, k1)
