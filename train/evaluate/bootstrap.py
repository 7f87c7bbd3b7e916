"""Bootstrap confidence intervals of test-set metrics (percentile bootstrap).

Method (Efron & Tibshirani, *An Introduction to the Bootstrap*, Chapman & Hall 1993, ch. 6 and 13)
    The test set is the sample. One bootstrap resample draws, **with replacement**, as many
    *units* as the test set has; a unit is one item, or one whole group when per-item ``groups``
    are given (e.g. the location of an archive item, so all seasons of a location are drawn
    together and correlated items are not treated as independent: the grouped, "cluster"
    bootstrap). The metric is recomputed on every resample (a unit drawn twice counts twice); the
    ``(1 − confidence)/2`` and ``(1 + confidence)/2`` quantiles of these replicates are the
    interval (the *percentile interval*; quantiles by linear interpolation,
    ``numpy.quantile``'s default). The point value is the metric of the full test set, not the
    mean of the replicates. Only the test set is resampled: the model (probe, neighbours) stays
    fixed, so the interval is the uncertainty due to the finite test set.

    A replicate in which the metric is undefined (``NaN``, e.g. micro mAP of a resample without
    any positive) is left out of the quantiles; ``n_valid`` counts the replicates used.

Our choices (configurable): :data:`DEFAULT_N_RESAMPLES` = 1000 resamples (Efron & Tibshirani
recommend at least about 1000 for percentile intervals), confidence 0.95, seed 0
(``numpy.random.default_rng(seed)``; the draws of resample ``b`` do not depend on how resamples
are batched).

Speed
    :func:`bootstrap_ci` recomputes any metric on index resamples (one call per resample).
    :func:`classification_intervals` computes the classification metrics of
    :func:`train.evaluate.probe.classification_metrics` for many resamples at once from the
    per-item **counts** of each resample (AP through
    :func:`~train.evaluate.metrics.weighted_average_precision`; F1, Hamming loss and OA from
    count-weighted sums); the values are those of the index resamples (tests check this), at a
    cost that allows 1000 resamples of BigEarthNet's 125k test patches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from train.evaluate.metrics import WeightedAP, average_precision

__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_N_RESAMPLES",
    "METHOD",
    "BootstrapConfig",
    "bootstrap_ci",
    "bootstrap_replicates",
    "classification_intervals",
    "classification_replicates",
    "group_codes",
    "percentile_interval",
    "resample_counts",
]

#: Resamples per interval (our default; at least ~1000 for percentile intervals, Efron & Tibshirani 1993).
DEFAULT_N_RESAMPLES = 1000
#: Two-sided coverage of the intervals.
DEFAULT_CONFIDENCE = 0.95
#: How the intervals are made, as written into results.json.
METHOD = "percentile bootstrap over test items (Efron & Tibshirani 1993)"


@dataclass(frozen=True)
class BootstrapConfig:
    """Settings of the intervals: resamples, two-sided confidence, seed of the draws."""

    n_resamples: int = DEFAULT_N_RESAMPLES
    confidence: float = DEFAULT_CONFIDENCE
    seed: int = 0

    def __post_init__(self):
        if int(self.n_resamples) < 1:
            raise ValueError(f"n_resamples must be >= 1, got {self.n_resamples}")
        if not 0.0 < float(self.confidence) < 1.0:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}")

    @classmethod
    def coerce(cls, value: BootstrapConfig | Mapping[str, Any] | None) -> BootstrapConfig | None:
        """``None`` → None (no intervals); a mapping → its fields; a config as is."""
        if value is None or isinstance(value, BootstrapConfig):
            return value
        return cls(**dict(value))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ============================================================================ resampling
def group_codes(groups: Sequence[Any] | np.ndarray | torch.Tensor | None, n: int) -> tuple[np.ndarray, int]:
    """``(codes, n_groups)``: item → group number 0..G−1 (in order of first appearance of the sorted ids).

    ``groups=None`` makes every item its own group.
    """
    if groups is None:
        return np.arange(n, dtype=np.int64), n
    arr = groups.cpu().numpy() if isinstance(groups, torch.Tensor) else np.asarray(groups)
    if arr.shape != (n,):
        raise ValueError(f"groups must have one entry per item ({n}), got shape {arr.shape}")
    _, codes = np.unique(arr, return_inverse=True)
    codes = codes.reshape(-1).astype(np.int64)
    return codes, int(codes.max()) + 1 if n else 0


def resample_counts(n: int, groups: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
                    n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = 0,
                    chunk: int = 64) -> Iterator[np.ndarray]:
    """Per-item counts of each resample, in blocks of at most ``chunk`` resamples: ``(b, n)`` int32.

    Resample ``b`` draws ``G`` group numbers uniformly with replacement
    (``rng.integers(0, G, G)`` of ``numpy.random.default_rng(seed)``, one call per resample, in
    order) and gives every item the count of its group, so a group is always drawn whole.
    """
    codes, n_groups = group_codes(groups, n)
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_resamples:
        b = min(chunk, n_resamples - done)
        block = np.empty((b, n), np.int32)
        for i in range(b):
            per_group = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups) if n_groups else \
                np.zeros(0, np.int64)
            block[i] = per_group[codes]
        yield block
        done += b


def percentile_interval(replicates: np.ndarray | Sequence[float],
                        confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The ``(1 ∓ confidence)/2`` quantiles of the finite replicates; ``(nan, nan)`` when none is finite."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan
    alpha = 1.0 - confidence
    low, high = np.quantile(r, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _take(a: Any, idx: np.ndarray) -> Any:
    if isinstance(a, torch.Tensor):
        return a[torch.from_numpy(idx).to(a.device)]
    return np.asarray(a)[idx]


def bootstrap_replicates(metric: Callable[..., float], *arrays: Any, groups: Any = None,
                         n_resamples: int = DEFAULT_N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``metric(*resampled arrays)`` for every resample of :func:`resample_counts` (``(B,)`` float64).

    ``arrays`` (numpy arrays or tensors) are indexed along their first axis; in a resample an
    item drawn ``k`` times appears ``k`` times (items in their original order).
    """
    if not arrays:
        raise ValueError("give at least one per-item array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError("all per-item arrays must have the same length")
    out = np.empty(n_resamples, np.float64)
    b = 0
    items = np.arange(n)
    for block in resample_counts(n, groups, n_resamples, seed):
        for counts in block:
            idx = np.repeat(items, counts)
            value = metric(*(_take(a, idx) for a in arrays))
            out[b] = math.nan if value is None else float(value)
            b += 1
    return out


def bootstrap_ci(metric: Callable[..., float], *arrays: Any, groups: Any = None,
                 n_resamples: int = DEFAULT_N_RESAMPLES, confidence: float = DEFAULT_CONFIDENCE,
                 seed: int = 0) -> tuple[float, float, float]:
    """``(point, low, high)``: ``metric(*arrays)`` and its percentile bootstrap interval (module docstring).

    Args:
        metric: function of the per-item arrays returning a float (``NaN`` = undefined).
        arrays: per-item predictions / targets (same first dimension).
        groups: per-item group ids; whole groups are resampled (None: single items).
        n_resamples, confidence, seed: see :class:`BootstrapConfig`.
    """
    point = metric(*arrays)
    reps = bootstrap_replicates(metric, *arrays, groups=groups, n_resamples=n_resamples, seed=seed)
    low, high = percentile_interval(reps, confidence)
    return float(point), low, high


# ============================================================================ classification metrics
_MULTILABEL_METRICS = ("mAP_macro", "mAP_micro", "mAP_samples", "F1_macro", "F1_micro", "hamming_loss")
_SINGLE_LABEL_METRICS = ("OA", "mAP_macro")


def _weighted_mean(w: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``Σ w_n v_n / Σ w_n`` per row of ``w`` (NaN where the row weights nothing)."""
    den = w.sum(1)
    return torch.where(den > 0, (w @ values) / den.clamp_min(1e-300), torch.full_like(den, math.nan))


def _f1(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor) -> torch.Tensor:
    """``2TP/(2TP + FP + FN)``, 0 where the denominator is 0 (sklearn's ``zero_division=0``)."""
    den = 2 * tp + fp + fn
    return torch.where(den > 0, 2 * tp / den.clamp_min(1e-300), torch.zeros_like(den))


class _ClassificationResampler:
    """Prepared metrics of one test set (rankings, per-item values), evaluated for count blocks."""

    def __init__(self, scores: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None, *,
                 threshold: float = 0.0, probabilities: bool = False):
        s = torch.as_tensor(scores).detach().double().cpu()
        y = torch.as_tensor(targets).detach().cpu()
        self.n = s.shape[0]
        self.multilabel = y.ndim == 2
        if self.multilabel:
            t = (y > 0).to(torch.int64)
            self.macro = WeightedAP(s, t)
            self.micro = WeightedAP(s, t, flatten=True)
            item_ap = average_precision(s.T, t.T) if self.n else torch.zeros(0, dtype=torch.float64)
            self.item_ok = ~torch.isnan(item_ap)
            self.item_ap = item_ap[self.item_ok]
            pred = (s > threshold).double()
            tf = t.double()
            self.tp_i, self.fp_i, self.fn_i = pred * tf, pred * (1 - tf), (1 - pred) * tf
            self.wrong = (pred != tf).double().mean(1) if self.n else torch.zeros(0, dtype=torch.float64)
        else:
            c = num_classes if num_classes is not None else s.shape[1]
            one_hot = F.one_hot(y.long(), c).to(torch.int64)
            probs = s if probabilities else s.softmax(1)
            self.macro = WeightedAP(probs, one_hot)
            self.correct = (s.argmax(1) == y.long()).double()

    def __call__(self, counts: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        w = torch.as_tensor(np.asarray(counts)).double()
        if w.ndim != 2 or w.shape[1] != self.n:
            raise ValueError(f"counts must be (B, {self.n}), got {tuple(w.shape)}")
        out: dict[str, torch.Tensor] = {}
        if self.multilabel:
            out["mAP_macro"] = torch.nanmean(self.macro(w), dim=1)
            out["mAP_micro"] = self.micro(w)
            out["mAP_samples"] = _weighted_mean(w[:, self.item_ok], self.item_ap)
            tp, fp, fn = w @ self.tp_i, w @ self.fp_i, w @ self.fn_i
            out["F1_macro"] = _f1(tp, fp, fn).mean(1)
            out["F1_micro"] = _f1(tp.sum(1), fp.sum(1), fn.sum(1))
            out["hamming_loss"] = _weighted_mean(w, self.wrong)
        else:
            out["OA"] = _weighted_mean(w, self.correct)
            out["mAP_macro"] = torch.nanmean(self.macro(w), dim=1)
        return out


def classification_replicates(scores: torch.Tensor, targets: torch.Tensor, counts: np.ndarray | torch.Tensor,
                              num_classes: int | None = None, *, threshold: float = 0.0,
                              probabilities: bool = False) -> dict[str, torch.Tensor]:
    """Metrics of :func:`~train.evaluate.probe.classification_metrics` on weighted copies of a test set.

    ``counts`` ``(B, N)``: how often each item occurs in each copy (:func:`resample_counts`).
    Same conventions as ``classification_metrics`` (``threshold`` on multi-label scores,
    ``probabilities`` for single-label scores). Multi-label: ``mAP_macro`` (classes without a
    drawn positive dropped), ``mAP_micro``, ``mAP_samples``, ``F1_macro``, ``F1_micro`` (0 where
    undefined, as sklearn's ``zero_division=0``), ``hamming_loss``; single-label: ``OA``,
    ``mAP_macro``. Returns ``{metric: (B,) float64}``.
    """
    return _ClassificationResampler(scores, targets, num_classes, threshold=threshold,
                                    probabilities=probabilities)(counts)


def classification_intervals(scores: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None, *,
                             threshold: float = 0.0, probabilities: bool = False, groups: Any = None,
                             config: BootstrapConfig | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Percentile intervals of the classification metrics of one test set (module docstring).

    Returns ``{"method", "n_resamples", "confidence", "seed", "resampled": "items" | "groups",
    "n_units", "metrics": {name: {"point", "low", "high", "n_resamples", "n_valid"}}}``; ``point``
    is the metric of the whole test set (all counts 1).
    """
    cfg = BootstrapConfig.coerce(config) or BootstrapConfig()
    s = torch.as_tensor(scores).detach().cpu()
    n = s.shape[0]
    _, n_units = group_codes(groups, n)
    resampler = _ClassificationResampler(s, targets, num_classes, threshold=threshold, probabilities=probabilities)
    point = {k: float(v[0]) for k, v in resampler(np.ones((1, n), np.int32)).items()}
    reps: dict[str, list[torch.Tensor]] = {k: [] for k in point}
    for block in resample_counts(n, groups, cfg.n_resamples, cfg.seed):
        for k, v in resampler(block).items():
            reps[k].append(v)
    metrics = {}
    for k, chunks in reps.items():
        r = torch.cat(chunks).numpy()
        low, high = percentile_interval(r, cfg.confidence)
        metrics[k] = {"point": point[k], "low": low, "high": high, "n_resamples": cfg.n_resamples,
                      "n_valid": int(np.isfinite(r).sum())}
    return {"method": METHOD, "n_resamples": cfg.n_resamples, "confidence": cfg.confidence, "seed": cfg.seed,
            "resampled": "items" if groups is None else "groups", "n_units": n_units, "metrics": metrics}
