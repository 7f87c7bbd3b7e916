"""Classification metrics (linear probing, §5.6), in torch and device-agnostic.

:func:`average_precision`, :func:`mean_average_precision`, :func:`overall_accuracy`,
:func:`hamming_loss`. AP is the non-interpolated step-wise AP of
``sklearn.metrics.average_precision_score``. :class:`WeightedAP` /
:func:`weighted_average_precision` give the same AP for many count-weighted copies of a data set
at once (bootstrap resamples, :mod:`train.evaluate.bootstrap`).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

__all__ = ["WeightedAP", "average_precision", "hamming_loss", "mean_average_precision", "overall_accuracy",
           "weighted_average_precision"]


def _tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))



def average_precision(scores, targets) -> torch.Tensor:
    """Per-class non-interpolated average precision, as ``sklearn.metrics.average_precision_score``.

    ``AP = Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds, highest first: items with
    equal scores enter together, so every positive in a tied group gets the precision at the end
    of the group.

    Args:
        scores: ``(N, C)`` (or ``(N,)``) real scores; higher means more likely positive.
        targets: same shape, binary (anything ``> 0`` is positive).

    Returns:
        float64 tensor ``(C,)`` (0-dim for 1-D input). Classes with no positive are ``NaN``.
    """
    s = _tensor(scores).to(torch.float64)
    t = _tensor(targets).to(s.device)
    if s.shape != t.shape:
        raise ValueError(f"scores {tuple(s.shape)} and targets {tuple(t.shape)} differ in shape")
    if s.ndim not in (1, 2):
        raise ValueError(f"expected (N,) or (N, C) inputs, got {tuple(s.shape)}")
    squeeze = s.ndim == 1
    if squeeze:
        s, t = s[:, None], t[:, None]
    n = s.shape[0]
    if n == 0:
        out = torch.full((s.shape[1],), math.nan, dtype=torch.float64, device=s.device)
        return out[0] if squeeze else out

    order = torch.argsort(s, dim=0, descending=True, stable=True)
    s_sorted = s.gather(0, order)
    pos = (t > 0).to(torch.float64).gather(0, order)
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=s.device)[:, None]
    precision = pos.cumsum(0) / rank
    # Index of the last member of each tied group, broadcast back to every member of the group.
    is_end = torch.ones_like(s_sorted, dtype=torch.bool)
    is_end[:-1] = s_sorted[:-1] != s_sorted[1:]
    idx = torch.arange(n, device=s.device)[:, None].expand_as(s_sorted)
    end = torch.where(is_end, idx, torch.full_like(idx, n))
    end = torch.cummin(end.flip(0), dim=0).values.flip(0)
    ap = (pos * precision.gather(0, end)).sum(0) / pos.sum(0)  # 0/0 -> NaN for no positives
    return ap[0] if squeeze else ap


class WeightedAP:
    """Average precision of many **weighted copies** of one data set (bootstrap resamples).

    Weight ``w_bn`` is how many times item ``n`` occurs in copy ``b`` (integer counts, 0 =
    absent). ``WeightedAP(scores, targets)(weights)`` equals :func:`average_precision` of each data
    set in which every item is repeated ``w_bn`` times (copies of an item tie with each other, and
    ties enter together). The ranking is computed once, in the constructor. Let
    ``e_1 < e_2 < ... < e_K`` be the ranks that end a tied group holding a positive, and segment
    ``k`` the ranks in ``(e_{k−1}, e_k]``: every positive of segment ``k`` has group end ``e_k``.
    With ``A_k`` / ``T_k`` the weight of all / of the positive items in segment ``k``
    (``numpy.bincount`` with weights), ``AP_b = Σ_k T_k · (Σ_{k'≤k} T_k') / (Σ_{k'≤k} A_k') / Σ_k T_k``.
    Integer counts are summed in float64, exactly.

    Args:
        scores, targets: ``(N, C)`` or ``(N,)``, as :func:`average_precision`.
        flatten: one AP of the ``N·C`` flattened (score, target) pairs, each pair weighted by its
            item (micro averaging).
    """

    def __init__(self, scores, targets, flatten: bool = False):
        s = _tensor(scores).to(torch.float64).cpu().numpy()
        t = _tensor(targets).cpu().numpy()
        if s.shape != t.shape or s.ndim not in (1, 2):
            raise ValueError(f"scores {s.shape} and targets {t.shape} must be equal (N,) or (N, C)")
        self.squeeze = s.ndim == 1 or flatten
        if s.ndim == 1:
            s, t = s[:, None], t[:, None]
        self.n, self.c = s.shape
        self.flatten = flatten
        columns = [(s.reshape(-1), t.reshape(-1) > 0)] if flatten else [(s[:, j], t[:, j] > 0) for j in range(self.c)]
        self.n_columns = len(columns)
        self.plans = []  # (column, K, segment rows per weight vector, positive items, their segments)
        for j, (sc, pos) in enumerate(columns):
            length = len(sc)
            if length == 0 or not pos.any():
                continue
            order = np.argsort(-sc, kind="stable")
            s_sorted = sc[order]
            is_end = np.ones(length, bool)
            is_end[:-1] = s_sorted[:-1] != s_sorted[1:]
            end = np.where(is_end, np.arange(length), length)
            end = np.minimum.accumulate(end[::-1])[::-1]  # group end of every rank
            ends = np.unique(end[pos[order]])  # e_1 < ... < e_K
            seg = np.empty(length, np.int64)
            seg[order] = np.searchsorted(ends, np.arange(length))  # K = after e_K (unused)
            pos_idx = np.flatnonzero(pos)
            rows = np.ascontiguousarray(seg.reshape(self.n, self.c).T) if flatten else seg[None, :]
            self.plans.append((j, len(ends), rows, pos_idx // self.c if flatten else pos_idx, seg[pos_idx]))

    def __call__(self, weights) -> torch.Tensor:
        """float64 ``(B, C)`` for ``(B, N)`` weights (``(B,)`` for 1-D input or ``flatten``); ``NaN``
        where a class has no weighted positive.
        """
        w_all = np.asarray(weights.cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64)
        if w_all.ndim != 2 or w_all.shape[1] != self.n:
            raise ValueError(f"weights must be (B, {self.n}), got {w_all.shape}")
        out = np.full((w_all.shape[0], self.n_columns), np.nan)
        for j, k, rows, pos_item, pos_seg in self.plans:
            for b, w in enumerate(w_all):
                a_seg = np.zeros(k + 1)
                for row in rows:  # every element of item n takes the weight of item n
                    a_seg += np.bincount(row, weights=w, minlength=k + 1)
                t_seg = np.bincount(pos_seg, weights=w[pos_item], minlength=k + 1)[:k]
                total = t_seg.sum()
                if total > 0:
                    ratio = np.cumsum(t_seg) / np.maximum(np.cumsum(a_seg[:k]), 1e-300)
                    out[b, j] = float((t_seg * ratio).sum()) / total  # not BLAS: slower for this size
        res = torch.from_numpy(out)
        return res[:, 0] if self.squeeze else res


def weighted_average_precision(scores, targets, weights, flatten: bool = False) -> torch.Tensor:
    """:class:`WeightedAP` in one call: AP of every weighted copy ``(B, N)`` of the data set.

    Returns float64 ``(B, C)`` (``(B,)`` for 1-D input or ``flatten``).
    """
    return WeightedAP(scores, targets, flatten)(weights)


def mean_average_precision(
    scores, targets, average: Literal["macro", "micro", "samples"] = "macro"
) -> float:
    """Mean average precision for multi-label classification.

    * ``"macro"``: mean of the per-class AP over classes **with at least one positive**; classes
      without positives (AP undefined) are dropped. ``NaN`` if no class has a positive.
    * ``"micro"``: AP of the flattened ``N·C`` (score, label) pairs.
    * ``"samples"``: mean over images of the per-image AP, images without positives dropped.
    """
    s, t = _tensor(scores), _tensor(targets)
    if average == "macro":
        ap = average_precision(s, t)
    elif average == "micro":
        ap = average_precision(s.reshape(-1), t.reshape(-1))
    elif average == "samples":
        if s.ndim != 2:
            raise ValueError("average='samples' needs (N, C) inputs")
        ap = average_precision(s.T, t.T)
    else:
        raise ValueError(f"average must be 'macro', 'micro' or 'samples', got {average!r}")
    return float(torch.nanmean(ap.reshape(-1)))


def overall_accuracy(logits, y) -> float:
    """Fraction of correct single-label predictions (OA).

    Args:
        logits: ``(N, C)`` scores (argmax is the prediction) or ``(N,)`` predicted class ids.
        y: ``(N,)`` class ids, or ``(N, C)`` one-hot / scores (argmax is taken).
    """
    p, t = _tensor(logits), _tensor(y)
    pred = p.argmax(dim=1) if p.ndim == 2 else p
    true = t.argmax(dim=1) if t.ndim == 2 else t
    if pred.shape != true.shape or pred.ndim != 1:
        raise ValueError(f"incompatible shapes {tuple(p.shape)} and {tuple(t.shape)}")
    if pred.numel() == 0:
        return math.nan
    return float((pred.to(true.device).long() == true.long()).double().mean())


def hamming_loss(pred, target, threshold: float | None = None) -> float:
    """Fraction of wrong label entries, ``mean(pred_ic != target_ic)`` (sklearn's Hamming loss).

    Args:
        pred: ``(N, C)`` binary predictions, or scores when ``threshold`` is given
            (positive where ``pred > threshold``).
        target: ``(N, C)`` binary targets (anything ``> 0`` is positive).
    """
    p, t = _tensor(pred), _tensor(target)
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ in shape")
    if p.numel() == 0:
        return math.nan
    pb = p > threshold if threshold is not None else p > 0
    return float((pb.to(t.device) != (t > 0)).double().mean())


