"""Weighted cosine k-nearest-neighbour classification on frozen features (as DINO's kNN eval).

For a query q, the k training items with the highest cosine similarity ``s_j`` (L2-normalised
features; ties broken by training index, lower first) vote with weights ``w_j = exp(s_j / T)``.
The class score is the **normalised** weighted vote ``Σ_j w_j y_jc / Σ_j w_j`` — the weighted
fraction of neighbours that carry class c — so scores lie in [0, 1] and are comparable across
queries (needed for micro mAP and per-class AP; DINO leaves the sum unnormalised, which does not
change its argmax). ``y_j`` is the multi-hot vector (multi-label) or the one-hot class
(single-label). Single-label: prediction = argmax, metric OA; multi-label: the scores feed the
mAP metrics of :func:`train.evaluate.probe.classification_metrics`.

Queries are processed in chunks so the full query × train similarity matrix never exists; several
``k`` share one ``topk`` of the largest k. ``k`` larger than the training set is clipped.

Default ``k``: :data:`DEFAULT_K` = 5, 10, 20, 100. k = 5 is the kNN of frozen-feature benchmark
tooling for Earth observation (e.g. torchgeo-bench's "KNN-5" on the GEO-Bench classification data
sets) and is the headline of ``softcon evaluate`` (:data:`HEADLINE_K`); 10, 20 and 100 are kept
from DINO's kNN evaluation. With ``bootstrap`` settings, the headline ``k``'s metrics get
percentile bootstrap intervals over the test items (:mod:`train.evaluate.bootstrap`; whole
``groups`` when given).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from train.evaluate.bootstrap import BootstrapConfig, classification_intervals
from train.evaluate.probe import classification_metrics, is_multilabel

__all__ = ["DEFAULT_K", "HEADLINE_K", "knn_evaluate", "knn_scores"]

#: Neighbour counts evaluated by default.
DEFAULT_K: tuple[int, ...] = (5, 10, 20, 100)
#: The k reported as the kNN headline by ``softcon evaluate`` (module docstring).
HEADLINE_K = 5

_CHUNK_ELEMENTS = 1 << 24


def _targets(y: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    if is_multilabel(y):
        return (y > 0).to(torch.float32)
    c = num_classes if num_classes is not None else int(y.max()) + 1
    return F.one_hot(y.long(), c).to(torch.float32)


def _topk_stable(sim: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k per row ordered by (similarity desc, index asc), exact also for ties at the cut."""
    if k >= sim.shape[1]:
        vals, idx = torch.sort(sim, dim=1, descending=True, stable=True)
        return vals, idx
    vals, idx = sim.topk(k + 1, dim=1)
    straddle = vals[:, k] == vals[:, k - 1]
    vals, idx = vals[:, :k], idx[:, :k]
    # put equal similarities in index order
    by_idx = idx.argsort(dim=1)
    vals, idx = vals.gather(1, by_idx), idx.gather(1, by_idx)
    order = vals.argsort(dim=1, descending=True, stable=True)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    if bool(straddle.any()):
        rows = torch.nonzero(straddle).squeeze(1)
        v, i = torch.sort(sim[rows], dim=1, descending=True, stable=True)
        vals[rows], idx[rows] = v[:, :k], i[:, :k]
    return vals, idx


def knn_scores(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, k: int | Sequence[int] = 20,
               temperature: float = 0.07, num_classes: int | None = None, chunk_size: int | None = None,
               device: str | torch.device = "cpu") -> dict[int, torch.Tensor] | torch.Tensor:
    """Class scores ``(N_test, C)`` of the weighted kNN vote (module docstring).

    Returns one tensor for an int ``k`` and ``{k: scores}`` for a sequence of ``k``.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    ks = [k] if isinstance(k, int) else list(k)
    if not ks or any(int(v) < 1 for v in ks):
        raise ValueError("k must be >= 1")
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    xtr = F.normalize(torch.as_tensor(train_x).float(), dim=1).to(dev)
    xte = F.normalize(torch.as_tensor(test_x).float(), dim=1).to(dev)
    ytr = _targets(torch.as_tensor(train_y), num_classes).to(dev)
    n_train = xtr.shape[0]
    if n_train == 0:
        raise ValueError("empty training set")
    kmax = min(max(int(v) for v in ks), n_train)
    if chunk_size is None:
        chunk_size = max(1, min(4096, _CHUNK_ELEMENTS // max(1, n_train)))
    out = {int(v): torch.empty(xte.shape[0], ytr.shape[1]) for v in ks}
    for a in range(0, xte.shape[0], chunk_size):
        b = min(a + chunk_size, xte.shape[0])
        sims, idx = _topk_stable(xte[a:b] @ xtr.T, kmax)
        votes = ytr[idx]  # (c, kmax, C)
        for v in ks:
            kk = min(int(v), n_train)
            w = torch.softmax(sims[:, :kk] / temperature, dim=1)  # exp(s/T) / Σ exp(s/T)
            out[int(v)][a:b] = (w.unsqueeze(2) * votes[:, :kk]).sum(1).cpu()
    return out[int(k)] if isinstance(k, int) else out


def knn_evaluate(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, *,
                 k: int | Sequence[int] = DEFAULT_K, temperature: float = 0.07, primary_k: int | None = None,
                 num_classes: int | None = None, chunk_size: int | None = None,
                 device: str | torch.device = "cpu", bootstrap: BootstrapConfig | Mapping[str, Any] | None = None,
                 groups: Any = None) -> dict[str, Any]:
    """KNN metrics for each ``k``.

    Args:
        bootstrap: interval settings (:class:`~train.evaluate.bootstrap.BootstrapConfig` or a
            mapping); None = no intervals.
        groups: per test item group ids for the grouped bootstrap (None: items).

    Returns:
        ``{"metrics": ..., "per_class_ap": ..., "by_k": {str(k): metrics}, "config": ...}`` where the
        top-level ``metrics`` / ``per_class_ap`` are those of ``primary_k`` (default: 20 when
        evaluated, else the first ``k``; ``softcon evaluate`` passes :data:`HEADLINE_K`), plus
        ``"intervals"`` (of ``primary_k``) with ``bootstrap``. Multi-label metrics as the linear
        probe (scores are vote fractions, so ``F1``/Hamming use a 0.5 vote threshold); single-label ``OA``.
    """
    t0 = time.perf_counter()
    ks = [int(k)] if isinstance(k, int) else [int(v) for v in k]
    train_y, test_y = torch.as_tensor(train_y), torch.as_tensor(test_y)
    multilabel = is_multilabel(train_y)
    if not multilabel and num_classes is None:
        num_classes = int(max(int(train_y.max()), int(test_y.max()) if len(test_y) else 0)) + 1
    scores = knn_scores(train_x, train_y, test_x, ks, temperature, num_classes, chunk_size, device)
    by_k: dict[str, dict[str, float]] = {}
    per_class: dict[str, list[float | None]] = {}
    for v, s in scores.items():
        if multilabel:
            m, ap = classification_metrics(s, test_y, threshold=0.5)
        else:
            m, ap = classification_metrics(s, test_y, num_classes, probabilities=True)
        by_k[str(v)] = m
        per_class[str(v)] = ap
    pk = primary_k if primary_k is not None else (20 if 20 in ks else ks[0])
    if str(pk) not in by_k:
        raise ValueError(f"primary_k={pk} is not among k={ks}")
    out = {"metrics": dict(by_k[str(pk)], k=pk), "per_class_ap": per_class[str(pk)], "by_k": by_k,
           "config": {"k": ks, "primary_k": pk, "temperature": temperature, "n_train": len(train_y),
                      "n_test": len(test_y), "multilabel": multilabel,
                      "vote": "normalised exp(cos/T) weights"}}
    cfg = BootstrapConfig.coerce(bootstrap)
    if cfg is not None and len(test_y):
        s = scores[int(pk)]
        out["intervals"] = (classification_intervals(s, test_y, threshold=0.5, groups=groups, config=cfg)
                            if multilabel else
                            classification_intervals(s, test_y, num_classes, probabilities=True, groups=groups,
                                                     config=cfg))
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out

