"""SoftCon: hard InfoNCE plus a soft, multi-label-guided term.

Reference:
    [0] Wang, Albrecht, Zhu, "Multi-Label Guided Soft Contrastive Learning for
        Efficient Earth Observation Pretraining" (SoftCon), IEEE TGRS 2024,
        https://arxiv.org/abs/2405.20462 ; github.com/zhu-xlab/softcon
        (the repo has no training code; the loss below follows the official
        figure ``assets/structure.png``: "hard target + soft target").

The exact form of the soft term is UNVERIFIED (the official repository has no
training code and the figure does not fix it): three candidates are implemented
and selectable, and every choice that is ours is flagged in :class:`SoftConLoss`'s
docstring.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .contract import LossCall, LossContract, Online
from .distributed import gather_no_grad, gather_with_grad, is_distributed, rank_offset
from .infonce import diagonal_nll
from .labels import LabelSimilarity, label_similarity, to_label_matrix
from .logits import (
    check_positive,
    cosine_matrix,
    fp32_forward,
    mean_over_valid,
    soft_target_nll,
)

__all__ = ["SoftConLoss", "SoftTerm", "soft_label_target"]

SoftTerm = Literal["bce", "soft_ce", "mse"]


def soft_label_target(
    anchor_labels: Tensor,
    key_labels: Tensor,
    offset: int,
    similarity: LabelSimilarity = "cosine",
) -> Tensor:
    """Soft target ``S`` ``[Na, Nk]`` for anchors ``i`` and keys ``j`` (anchor i's own key at ``offset + i``).

    ``S_ij`` = label similarity (cosine or Jaccard) of ``y_i`` and ``y_j``; rows or
    columns of unlabelled samples (all-zero labels) fall back to the hard target
    ``1[j = offset + i]``: both similarities are 0 when either label vector is all
    zero, and the diagonal (two views of one image) is always set to 1.
    """
    with torch.no_grad():
        s = label_similarity(anchor_labels, key_labels, similarity).clamp_(0.0, 1.0)
        s.diagonal(offset).fill_(1.0)
    return s


_BOUNDED_LOGIT_LIMIT = 60.0  # |logits| <= 60: sigmoid(x) >= e^-60 stays a normal float32
_LOG_PRODUCT_LIMIT = 80.0  # a product of factors >= e^-L each stays above float32's smallest normal (e^-87)


def _sum_log(values: Tensor, group: int) -> Tensor:
    """``sum(log(values))``, taking one logarithm per ``group`` multiplied values.

    The logarithm is the costliest kernel of the soft term on the CPU; multiplying
    ``group`` factors first (the caller bounds ``group`` so that the product can
    neither overflow nor underflow) takes ``group`` times fewer of them.  Exact up to
    float rounding (checked in the tests).
    """
    flat = values.reshape(-1)
    width = flat.numel() // group
    if group == 1 or width == 0:
        return torch.log(flat).sum()
    head = torch.log(flat[: group * width].view(group, width).prod(dim=0)).sum()
    return head + torch.log(flat[group * width:]).sum()


class _HardAndSoftBCE(torch.autograd.Function):
    """Both SoftCon terms (BCE soft term), summed over anchors, in one autograd node over the logits ``x`` [B, M].

    ``hard = -sum_i log softmax(x_i)[off + i]`` (InfoNCE) and
    ``soft = sum_ij BCE(sigmoid(x_ij), s_ij) = sum_ij log(1 + e^{x_ij}) - s_ij x_ij``.
    The soft sum is written with ``log(1 + e^x) = x - log sigmoid(x)``, i.e.
    ``sum_ij (1 - s_ij) x_ij - sum_ij log sigmoid(x_ij)``, so that its only elementwise
    transcendental is one sigmoid (several times cheaper on the CPU than
    ``binary_cross_entropy_with_logits``' exp + log1p) and the logarithms are taken of
    products of ``group`` sigmoids (:func:`_sum_log`; ``sigmoid(x) >= e^-L`` with
    ``L = log(1 + e^bound)`` for logits bounded by ``bound``).  The backward pass forms
    ``g_hard (softmax(x) - onehot) + g_soft (sigmoid(x) - s)`` in one buffer.  Equal to
    ``cross_entropy`` + ``binary_cross_entropy_with_logits`` (checked in the tests).
    """

    @staticmethod
    def forward(ctx, x: Tensor, s: Tensor, offset: int, bound: float) -> tuple[Tensor, Tensor]:  # noqa: D102
        log_prob = torch.log_softmax(x, dim=1)
        sig = torch.sigmoid(x)
        group = max(1, int(_LOG_PRODUCT_LIMIT // math.log1p(math.exp(bound))))
        ctx.save_for_backward(log_prob, sig, s)
        ctx.offset = offset
        hard = -log_prob.diagonal(offset).sum()
        soft = x.sum() - torch.dot(s.reshape(-1), x.reshape(-1)) - _sum_log(sig, group)
        return hard, soft

    @staticmethod
    def backward(ctx, g_hard: Tensor, g_soft: Tensor):  # noqa: D102
        log_prob, sig, s = ctx.saved_tensors
        grad = torch.exp(log_prob).mul_(g_hard)
        grad.addcmul_(sig, g_soft).addcmul_(s, g_soft, value=-1.0)
        grad.diagonal(ctx.offset).sub_(g_hard)
        return grad, None, None, None


class SoftConLoss(nn.Module):
    """SoftCon loss ``L = scale * L_hard + lambda * L_soft`` (one view direction).

    Let ``q`` be the online-branch (masked view) embeddings, ``k`` the EMA-branch
    embeddings, ``c_ij = cos(q_i, k_j)`` and ``p_ij = c_ij / tau`` over the B
    in-batch keys (all M gathered keys with ``gather_distributed``).

    Hard term (MoCo-v3 InfoNCE, identity target):
        ``L_hard = (1/B) sum_i -log softmax_j(p_ij)[j = i]``; ``scale = 2 tau`` when
        ``scale_by_2tau`` (as MoCo v3), else 1.  The scale multiplies the hard
        term only (our choice: ``lambda`` then weights the soft term relative to
        the verbatim MoCo-v3 loss).

    Soft target: ``s_ij = sim(y_i, y_j)`` with ``sim`` = cosine
    ``<y_i, y_j>/(|y_i||y_j|)`` (the paper's "cosine similarity of multi-label vectors", default) or Jaccard (weighted
    Jaccard ``sum min / sum max`` for fractions).  Unlabelled rows/columns (all-zero
    labels) fall back to the hard target ``1[i = j]`` (UNVERIFIED; our choice).

    Soft term (UNVERIFIED which one the paper uses; ``soft_term`` selects):
        * ``"bce"`` (candidate A, default): per-pair binary cross-entropy
          ``(1/(B M)) sum_ij BCE(sigmoid(c_ij / tau_soft), s_ij)``;
        * ``"soft_ce"`` (candidate B): cross-entropy against the row-normalised
          target ``t_ij = s_ij / sum_k s_ik``:
          ``(1/B) sum_i -sum_j t_ij log softmax_j(p_ij)``; for single-label
          batches this is the SupCon-style uniform-over-positives target;
        * ``"mse"`` (candidate C): ``(1/(B M)) sum_ij (c_ij - s_ij)^2``.

    ``lambda = 0`` gives exactly :class:`~train.losses.infonce.InfoNCELoss` with the
    same ``temperature`` / ``scale_by_2tau``.  MoCo-v3-style symmetrisation
    (``L(q1, k2) + L(q2, k1)``) is left to the caller.

    Args:
        temperature: ``tau`` (> 0); default 0.2 (SSL4EO-S12 MoCo-v3 recipe, UNVERIFIED
            for SoftCon).
        lam: weight ``lambda`` >= 0 of the soft term; default 1.0 (the figure's plain
            "+", UNVERIFIED).
        soft_term: ``"bce"``, ``"soft_ce"`` or ``"mse"``.
        label_similarity: ``"cosine"`` or ``"jaccard"``.
        scale_by_2tau: multiply the hard term by ``2 tau``.
        soft_temperature: temperature of the BCE logits ``c_ij / tau_soft``;
            defaults to ``temperature`` (our choice).
        gather_distributed: gather keys (with grad) and labels over ranks.

    Shapes:
        ``forward(q, k, labels)``: ``q``, ``k`` ``[B, d]``; ``labels`` ``[B, C]``
        multi-hot or class fractions, or ``[B]`` class indices (< 0 = unlabelled).
        Returns a scalar.
    """

    #: How the training step calls it (:mod:`train.losses.contract`).
    contract: ClassVar[LossContract] = LossContract(LossCall.CROSS_VIEW, Online.PREDICTION, labelled=True)

    def __init__(
        self,
        temperature: float = 0.2,
        lam: float = 1.0,
        soft_term: SoftTerm = "bce",
        label_similarity: LabelSimilarity = "cosine",
        scale_by_2tau: bool = True,
        soft_temperature: float | None = None,
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.lam = check_positive("lam", lam, minimum=0.0)
        if soft_term not in ("bce", "soft_ce", "mse"):
            raise ValueError(f"soft_term must be 'bce', 'soft_ce' or 'mse', got {soft_term!r}")
        if label_similarity not in ("cosine", "jaccard"):
            raise ValueError(f"label_similarity must be 'cosine' or 'jaccard', got {label_similarity!r}")
        self.soft_term = soft_term
        self.label_similarity = label_similarity
        self.scale_by_2tau = bool(scale_by_2tau)
        self.soft_temperature = check_positive(
            "soft_temperature", temperature if soft_temperature is None else soft_temperature
        )
        self.gather_distributed = bool(gather_distributed)

    @property
    def hard_scale(self) -> float:
        """Multiplier of the hard term (``2 tau`` or 1)."""
        return 2.0 * self.temperature if self.scale_by_2tau else 1.0

    @fp32_forward
    def terms(self, q: Tensor, k: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return the unscaled ``(L_hard, L_soft)`` (``L_soft`` is 0 when ``lam == 0``)."""
        if q.dim() != 2 or k.shape != q.shape:
            raise ValueError(f"q and k must both be [B, d], got {tuple(q.shape)} and {tuple(k.shape)}")
        if labels.shape[0] != q.shape[0]:
            raise ValueError(f"labels has {labels.shape[0]} rows, q has {q.shape[0]}")
        dist_on = self.gather_distributed and is_distributed()
        k_all = gather_with_grad(k) if dist_on else k
        offset = rank_offset(q.shape[0], q.device) if dist_on else 0

        cos = cosine_matrix(q, k_all)
        logits = cos / self.temperature
        ones = torch.ones(q.shape[0], device=cos.device, dtype=cos.dtype)
        if self.lam == 0.0:
            return mean_over_valid(diagonal_nll(logits, offset), ones, dist_on), cos.new_zeros(())

        num_classes = None
        if labels.dim() == 1 and dist_on:
            n_max = labels.max().clamp_min(0).reshape(1).to(torch.long)
            torch.distributed.all_reduce(n_max, op=torch.distributed.ReduceOp.MAX)
            num_classes = int(n_max.item()) + 1
        lab = to_label_matrix(labels, num_classes).to(device=cos.device, dtype=cos.dtype)
        all_lab = gather_no_grad(lab) if dist_on else lab
        s = soft_label_target(lab, all_lab, offset, self.label_similarity).to(cos.dtype)

        bound = 1.0 / self.temperature
        if self.soft_term == "bce" and self.soft_temperature == self.temperature and bound <= _BOUNDED_LOGIT_LIMIT:
            # the default: both terms in one node, summed over anchors
            hard, soft = _HardAndSoftBCE.apply(logits, s, offset, bound)
            soft = soft / s.shape[1]
            if not dist_on:  # every anchor is valid: plain means
                return hard / q.shape[0], soft / q.shape[0]
            return mean_over_valid(hard, ones, dist_on), mean_over_valid(soft, ones, dist_on)
        per_anchor = diagonal_nll(logits, offset)
        if self.soft_term == "soft_ce":
            per_soft, _ = soft_target_nll(logits, s)
        elif self.soft_term == "bce":
            bce = F.binary_cross_entropy_with_logits(cos / self.soft_temperature, s, reduction="none")
            per_soft = bce.mean(dim=1)
        else:  # mse
            per_soft = (cos - s).pow(2).mean(dim=1)
        return mean_over_valid(per_anchor, ones, dist_on), mean_over_valid(per_soft, ones, dist_on)

    @fp32_forward
    def forward(self, q: Tensor, k: Tensor, labels: Tensor) -> Tensor:
        """SoftCon loss of online ``q`` [B, d] vs EMA ``k`` [B, d] with ``labels`` (scalar)."""
        hard, soft = self.terms(q, k, labels)
        if self.lam == 0.0:
            return self.hard_scale * hard
        return self.hard_scale * hard + self.lam * soft
