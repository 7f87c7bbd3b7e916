"""Downstream evaluation: classification and multi-label retrieval metrics."""

from train.evaluate.metrics import (
    RETRIEVAL_METRICS,
    average_precision,
    hamming_loss,
    imbriaco_split,
    mean_average_precision,
    overall_accuracy,
    retrieval_metrics,
    retrieval_metrics_per_query,
)

__all__ = [
    "RETRIEVAL_METRICS",
    "average_precision",
    "hamming_loss",
    "imbriaco_split",
    "mean_average_precision",
    "overall_accuracy",
    "retrieval_metrics",
    "retrieval_metrics_per_query",
]
