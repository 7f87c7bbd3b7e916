"""Shared building blocks for every loss in :mod:`train.losses` (this module re-exports them).

All contrastive losses of this package are written as one shared step (logits between anchors
and keys, a non-negative target matrix, a soft-target cross-entropy) with common numerics: both are
described in :mod:`train.losses.logits`.

Distributed convention (used by every loss that takes ``gather_distributed``):

* keys (embeddings) are all-gathered with :func:`gather_with_grad`, whose
  backward *sums* the incoming gradients over ranks and returns each rank its
  own slice; labels are all-gathered without gradient;
* anchors stay local; :func:`rank_offset` gives the position of this rank's
  first sample in the gathered tensor, so positives/self-pairs index correctly;
* the per-rank loss is ``sum_{local valid anchors} loss_i * W / N_valid_global``
  (:func:`mean_over_valid`), so the *mean of the rank losses* equals the
  single-process loss on the concatenated batch, and DDP's gradient averaging
  yields exactly the gradient of that single-process loss.  On each rank the
  gradient w.r.t. its local embeddings is ``W`` times the single-process one.

Where they live:

* :mod:`train.losses.logits` — numerics, :func:`masked_logits`, :func:`soft_target_nll`,
  :func:`mean_over_valid`;
* :mod:`train.losses.distributed` — :func:`gather_with_grad`, :func:`gather_no_grad`,
  :func:`rank_offset`;
* :mod:`train.losses.labels` — label matrices, similarities and positive masks;
* :mod:`train.losses.views` — :class:`MultiViewRows` / :func:`flatten_views`.
"""

from train.losses.distributed import (
    dist_world_size,
    gather_no_grad,
    gather_with_grad,
    is_distributed,
    rank_offset,
)
from train.losses.labels import (
    LabelSimilarity,
    PositiveRule,
    binarize_labels,
    check_positive_rule,
    is_labelled,
    label_cosine,
    label_intersection,
    label_jaccard,
    label_positive_mask,
    label_similarity,
    to_label_matrix,
)
from train.losses.logits import (
    NEG_LOGIT,
    check_positive,
    compute_dtype,
    cosine_matrix,
    fp32,
    fp32_forward,
    masked_logits,
    mean_over_valid,
    self_mask,
    soft_target_nll,
)
from train.losses.views import MultiViewRows, flatten_views

__all__ = [
    "NEG_LOGIT",
    "LabelSimilarity",
    "MultiViewRows",
    "PositiveRule",
    "binarize_labels",
    "check_positive",
    "check_positive_rule",
    "compute_dtype",
    "cosine_matrix",
    "dist_world_size",
    "flatten_views",
    "fp32",
    "fp32_forward",
    "gather_no_grad",
    "gather_with_grad",
    "is_distributed",
    "is_labelled",
    "label_cosine",
    "label_intersection",
    "label_jaccard",
    "label_positive_mask",
    "label_similarity",
    "masked_logits",
    "mean_over_valid",
    "rank_offset",
    "self_mask",
    "soft_target_nll",
    "to_label_matrix",
]
