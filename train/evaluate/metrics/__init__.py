"""Downstream evaluation metrics: classification mAP/F1 and multi-label retrieval.

Two families, both in torch and device-agnostic (they run where the inputs live):

* :mod:`.classification` — :func:`average_precision`, :func:`mean_average_precision`,
  :func:`overall_accuracy`, :func:`hamming_loss`, :class:`WeightedAP` /
  :func:`weighted_average_precision` (bootstrap resamples).
* :mod:`.retrieval` — :func:`retrieval_metrics`, :func:`retrieval_metrics_per_query`,
  :func:`imbriaco_split`; its docstring states the retrieval conventions (ties, K clipping, AP
  normalisers, NDCG gains, empty queries) to read before comparing numbers with another code base.
"""

from train.evaluate.metrics.classification import (
    WeightedAP,
    average_precision,
    hamming_loss,
    mean_average_precision,
    overall_accuracy,
    weighted_average_precision,
)
from train.evaluate.metrics.retrieval import (
    RETRIEVAL_METRICS,
    imbriaco_split,
    retrieval_metrics,
    retrieval_metrics_per_query,
)

__all__ = [
    "WeightedAP",
    "average_precision",
    "mean_average_precision",
    "weighted_average_precision",
    "overall_accuracy",
    "hamming_loss",
    "retrieval_metrics",
    "retrieval_metrics_per_query",
    "imbriaco_split",
    "RETRIEVAL_METRICS",
]

