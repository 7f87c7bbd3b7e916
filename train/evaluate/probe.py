"""Linear probing on frozen features, as in the BigEarthNet multi-label benchmarks (Sumbul et al.) and SoftCon.

One ``nn.Linear`` on standardised features (mean/std of the **training** features; constant
features become 0), trained with AdamW and a cosine learning-rate schedule:

* multi-label targets ``(N, C)`` (BigEarthNet, archive multi-hot): ``BCEWithLogits``; reported
  macro / micro / samples mAP (:func:`~train.evaluate.metrics.mean_average_precision`; classes with
  no positive in the test set are dropped from the macro mean and counted in ``n_classes_scored``),
  micro / macro F1 at probability 0.5 (sklearn, ``zero_division=0``) and the Hamming loss at 0.5;
* single-label targets ``(N,)`` (EuroSAT, archive dominant class): cross-entropy; reported
  overall accuracy (OA) and, for the per-class charts, one-vs-rest AP of the softmax scores
  (``mAP_macro``).

The head starts at zero (the problem is convex, so the optimum does not depend on the start) and the
minibatch order comes from a ``torch.Generator`` seeded with ``seed``: a run is a pure function of
its inputs. ``batch_size=None`` trains full-batch. ``lr`` may be a list: each value is trained on
``1 − val_fraction`` of the training set and scored on the rest (mAP_macro or OA), and the best one is
retrained on the whole training set (``selected_lr`` in the result).

With ``bootstrap`` settings the test metrics get percentile bootstrap intervals over the test
items (:mod:`train.evaluate.bootstrap`; whole ``test_groups`` when given), in ``intervals``. The
probe with the regularisation chosen on a validation split is :mod:`train.evaluate.logistic`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from train.evaluate.bootstrap import BootstrapConfig, classification_intervals
from train.evaluate.metrics import (
    average_precision,
    hamming_loss,
    mean_average_precision,
    overall_accuracy,
)

__all__ = ["ProbeResult", "Standardizer", "classification_metrics", "is_multilabel", "train_linear_probe"]


def is_multilabel(y: torch.Tensor) -> bool:
    """``(N, C)`` targets are multi-label; ``(N,)`` integer class ids are single-label."""
    return y.ndim == 2


def _nan_to_none(values: torch.Tensor) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in values.tolist()]


def classification_metrics(scores: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None, *,
                           threshold: float = 0.0, probabilities: bool = False
                           ) -> tuple[dict[str, float], list[float | None]]:
    """Metrics of ``scores`` against ``targets`` and the per-class AP (None = no positive).

    ``scores`` are logits by default: multi-label decisions are ``score > threshold`` (0 = probability
    0.5) and single-label scores go through a softmax for the one-vs-rest AP. Pass ``threshold=0.5``
    for multi-label probabilities and ``probabilities=True`` for single-label probabilities.

    Multi-label (``targets`` 2-D): ``mAP_macro``, ``mAP_micro``, ``mAP_samples``, ``F1_macro``,
    ``F1_micro``, ``hamming_loss``, ``n_classes_scored``. Single-label: ``OA``, ``mAP_macro``
    (one-vs-rest on the softmax), ``n_classes_scored``.
    """
    from sklearn.metrics import f1_score

    scores = scores.detach().double().cpu()
    targets = targets.detach().cpu()
    if is_multilabel(targets):
        t = (targets > 0).to(torch.int64)
        ap = average_precision(scores, t)
        pred = (scores > threshold).to(torch.int64)
        metrics = {
            "mAP_macro": mean_average_precision(scores, t, "macro"),
            "mAP_micro": mean_average_precision(scores, t, "micro"),
            "mAP_samples": mean_average_precision(scores, t, "samples"),
            "F1_macro": float(f1_score(t.numpy(), pred.numpy(), average="macro", zero_division=0)),
            "F1_micro": float(f1_score(t.numpy(), pred.numpy(), average="micro", zero_division=0)),
            "hamming_loss": hamming_loss(scores, t, threshold=threshold),
        }
    else:
        c = num_classes if num_classes is not None else scores.shape[1]
        one_hot = F.one_hot(targets.long(), c).to(torch.int64)
        probs = scores if probabilities else scores.softmax(1)
        ap = average_precision(probs, one_hot)
        metrics = {"OA": overall_accuracy(scores, targets.long()),
                   "mAP_macro": mean_average_precision(probs, one_hot, "macro")}
    metrics["n_classes_scored"] = int((~torch.isnan(ap)).sum())
    return metrics, _nan_to_none(ap)


class Standardizer:
    """Per-feature ``(x − μ)/σ`` with statistics of the fitting set; σ < 1e-6 maps the feature to 0."""

    def __init__(self, x: torch.Tensor, eps: float = 1e-6):
        x = x.double()
        self.mean = x.mean(0)
        std = x.std(0, unbiased=False)
        self.inv = torch.where(std > eps, 1.0 / std.clamp_min(eps), torch.zeros_like(std))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.double() - self.mean) * self.inv).float()


@dataclass
class ProbeResult:
    """Outcome of :func:`train_linear_probe`."""

    metrics: dict[str, float]
    per_class_ap: list[float | None]
    scores: torch.Tensor | None
    train_losses: list[float]
    config: dict[str, Any]
    head: nn.Linear
    standardizer: Standardizer | None = None
    seconds: float = 0.0
    lr_search: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (no tensors)."""
        out = {"metrics": self.metrics, "per_class_ap": self.per_class_ap, "config": self.config,
               "final_train_loss": self.train_losses[-1] if self.train_losses else None,
               "lr_search": self.lr_search, "seconds": round(self.seconds, 3)}
        if self.intervals:
            out["intervals"] = self.intervals
        return out


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, multilabel: bool, epochs: int, lr: float,
         weight_decay: float, batch_size: int | None, seed: int, device: torch.device) -> tuple[nn.Linear, list[float]]:
    n, d = x.shape
    head = nn.Linear(d, num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    bs = n if batch_size is None or batch_size >= n else int(batch_size)
    steps_per_epoch = math.ceil(n / bs)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total) / total)))
    g = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    y = y.float() if multilabel else y.long()
    losses = []
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(device) if bs < n else torch.arange(n, device=device)
        total_loss = 0.0
        for a in range(0, n, bs):
            idx = order[a:a + bs]
            logits = head(x[idx])
            loss = (F.binary_cross_entropy_with_logits(logits, y[idx]) if multilabel
                    else F.cross_entropy(logits, y[idx]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total_loss += float(loss.detach()) * len(idx)
        losses.append(total_loss / n)
    return head.cpu(), losses


def _selection_score(metrics: dict[str, float]) -> float:
    v = metrics.get("OA", metrics.get("mAP_macro", float("nan")))
    return -math.inf if v is None or math.isnan(v) else float(v)


def train_linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor | None = None,
                       test_y: torch.Tensor | None = None, *, multilabel: bool | None = None,
                       num_classes: int | None = None, epochs: int = 100, lr: float | Sequence[float] = 1e-3,
                       weight_decay: float = 1e-4, batch_size: int | None = 256, seed: int = 0,
                       device: str | torch.device = "cpu", standardize: bool = True,
                       val_fraction: float = 0.2, keep_scores: bool = True,
                       bootstrap: BootstrapConfig | Mapping[str, Any] | None = None,
                       test_groups: Any = None) -> ProbeResult:
    """Train a linear classifier on ``train_x`` and score it on ``test_x`` (module docstring).

    Args:
        train_x, test_x: ``(N, D)`` features.
        train_y, test_y: ``(N, C)`` multi-hot or ``(N,)`` class ids.
        multilabel: default: ``train_y.ndim == 2``.
        num_classes: single-label class count (default ``max label + 1`` over train and test).
        epochs, lr, weight_decay, batch_size: AdamW with a cosine schedule to 0 over all steps;
            ``batch_size=None`` = full batch; a list of ``lr`` values is searched on a validation split.
        seed: minibatch order and the validation split.
        standardize: z-score the features with the training statistics.
        keep_scores: keep the test logits in the result.
        bootstrap: interval settings (:class:`~train.evaluate.bootstrap.BootstrapConfig` or a
            mapping); None = no intervals.
        test_groups: per test item group ids for the grouped bootstrap (None: items).

    Returns:
        :class:`ProbeResult`; ``metrics`` is empty when no test set is given.
    """
    t0 = time.perf_counter()
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    train_x = torch.as_tensor(train_x).float()
    train_y = torch.as_tensor(train_y)
    multilabel = is_multilabel(train_y) if multilabel is None else multilabel
    if multilabel:
        c = train_y.shape[1]
    else:
        seen = [int(train_y.max())] if len(train_y) else [0]
        if test_y is not None and len(test_y):
            seen.append(int(torch.as_tensor(test_y).max()))
        c = num_classes or max(seen) + 1
    std = Standardizer(train_x) if standardize else None
    xtr = std(train_x) if std else train_x

    lrs = [float(v) for v in lr] if isinstance(lr, Sequence) and not isinstance(lr, str) else [float(lr)]
    search: dict[str, float] = {}
    if len(lrs) > 1:
        n = len(xtr)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))
        n_val = max(1, round(val_fraction * n))
        vi, ti = perm[:n_val], perm[n_val:]
        s_fit = Standardizer(train_x[ti]) if standardize else None
        fx = s_fit(train_x[ti]) if s_fit else train_x[ti]
        vx = s_fit(train_x[vi]) if s_fit else train_x[vi]
        for v in lrs:
            head, _ = _fit(fx, train_y[ti], c, multilabel, epochs, v, weight_decay, batch_size, seed, dev)
            with torch.no_grad():
                m, _ = classification_metrics(head(vx), train_y[vi], c)
            search[f"{v:g}"] = _selection_score(m)
        best = max(lrs, key=lambda v: search[f"{v:g}"])
    else:
        best = lrs[0]
    head, losses = _fit(xtr, train_y, c, multilabel, epochs, best, weight_decay, batch_size, seed, dev)
    metrics: dict[str, float] = {}
    per_class: list[float | None] = []
    scores = None
    intervals: dict[str, Any] = {}
    if test_x is not None and test_y is not None:
        xte = torch.as_tensor(test_x).float()
        xte = std(xte) if std else xte
        with torch.no_grad():
            scores = head(xte)
        metrics, per_class = classification_metrics(scores, torch.as_tensor(test_y), c)
        cfg = BootstrapConfig.coerce(bootstrap)
        if cfg is not None and len(scores):
            intervals = classification_intervals(scores, torch.as_tensor(test_y), c, threshold=0.0,
                                                 groups=test_groups, config=cfg)
    config = {"multilabel": multilabel, "num_classes": c, "epochs": epochs, "lr": lrs if len(lrs) > 1 else best,
              "selected_lr": best, "weight_decay": weight_decay, "batch_size": batch_size, "seed": seed,
              "standardize": standardize, "optimizer": "AdamW, cosine to 0, zero-initialised head",
              "n_train": len(train_x), "n_test": len(test_x) if test_x is not None else 0}
    return ProbeResult(metrics=metrics, per_class_ap=per_class, scores=scores if keep_scores else None,
                       train_losses=losses, config=config, head=head, standardizer=std,
                       seconds=time.perf_counter() - t0, lr_search=search, intervals=intervals)

