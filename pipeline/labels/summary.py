"""Label statistics of an archive's done patches (:func:`summary_statistics`, reduced with Dask) and
their headline numbers (:func:`label_summary`).

A patch-season counts as *labelled* in the statistics and counts when at least one class is
present in its multi-hot vector. With any threshold below 1/K (the default included) every labelled
row has one, so this equals the ``min_valid_fraction`` rule.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np

from pipeline.archive import Archive
from pipeline.bands import DW_CLASSES, DW_PALETTE
from pipeline.labels.archive import _check_group_layout
from pipeline.store import STATUS_DONE

__all__ = ["label_summary", "summary_statistics"]


def summary_statistics(store: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Label statistics over the done patches of an archive, reduced with Dask (streaming).

    Returned keys (K = number of classes; "labelled" = at least one class present):

    ``classes``, ``palette``
        Class names and DW colours.
    ``n_patches_done``, ``n_patch_seasons``
        Done patches and their patch-seasons (done × seasons).
    ``n_labelled``
        Labelled patch-seasons.
    ``class_counts`` (K,)
        Labelled patch-seasons where each class is present.
    ``class_frequency`` (K,)
        ``class_counts / n_labelled``.
    ``mean_class_fraction`` (K,)
        Mean of ``label_fraction`` over the labelled patch-seasons.
    ``cooccurrence`` (K, K)
        ``C[i, j]`` = patch-seasons where classes i and j are both present (diagonal = class counts).
    ``cooccurrence_normalized`` (K, K)
        ``C[i, j] / C[i, i]`` = P(j present | i present); NaN rows for classes never present.
    ``labels_per_image`` (K + 1,)
        Number of done patch-seasons with exactly k classes present (k = 0 is unlabelled).
    ``mean_labels_per_labelled_image``
        Mean number of classes over the labelled patch-seasons.

    Ratios with a zero denominator are NaN.
    """
    group = Archive.of(store, storage_options).open("r")
    n_classes = _check_group_layout(group)
    status = np.asarray(group["status"][:])
    done = np.flatnonzero(status == STATUS_DONE)
    mh = da.from_zarr(group["multi_hot"])[done].astype(np.int64)  # (p, s, K)
    frac = da.from_zarr(group["label_fraction"])[done].astype(np.float64)

    n_lab_per = mh.sum(axis=-1)  # (p, s)
    labelled = n_lab_per > 0
    (n_labelled, class_counts, frac_sum, cooc, per_k) = dask.compute(
        labelled.sum(),
        mh.sum(axis=(0, 1)),
        da.where(labelled[..., None], frac, 0.0).sum(axis=(0, 1)),
        da.tensordot(mh, mh, axes=([0, 1], [0, 1])),
        (n_lab_per[..., None] == np.arange(n_classes + 1)).sum(axis=(0, 1)),
    )
    n_labelled = int(n_labelled)
    class_counts = np.asarray(class_counts, dtype=np.int64)
    cooc = np.asarray(cooc, dtype=np.int64)
    per_k = np.asarray(per_k, dtype=np.int64)

    def ratio(num: np.ndarray, den: np.ndarray | float) -> np.ndarray:
        num = np.asarray(num, dtype=np.float64)
        den = np.broadcast_to(np.asarray(den, dtype=np.float64), num.shape)
        out = np.full(num.shape, np.nan)
        np.divide(num, den, out=out, where=den > 0)
        return out

    diag = np.diag(cooc)
    return {
        "classes": list(DW_CLASSES)[:n_classes],
        "palette": list(DW_PALETTE)[:n_classes],
        "n_patches_done": int(done.size),
        "n_patch_seasons": int(done.size) * int(group["multi_hot"].shape[1]),
        "n_labelled": n_labelled,
        "class_counts": class_counts,
        "class_frequency": ratio(class_counts, n_labelled),
        "mean_class_fraction": ratio(np.asarray(frac_sum), n_labelled),
        "cooccurrence": cooc,
        "cooccurrence_normalized": ratio(cooc, diag[:, None]),
        "labels_per_image": per_k,
        "mean_labels_per_labelled_image": float(ratio(np.dot(np.arange(n_classes + 1), per_k), n_labelled)),
    }


def label_summary(stats: dict[str, Any]) -> dict[str, Any]:
    """Headline numbers of :func:`summary_statistics` for an archive summary (``softcon inspect``):
    ``labelled_images`` and ``class_frequency`` by class name (0.0 when nothing is labelled).
    """
    freq = np.nan_to_num(np.asarray(stats["class_frequency"], dtype=np.float64), nan=0.0)
    return {"labelled_images": int(stats["n_labelled"]),
            "class_frequency": {c: float(f) for c, f in zip(stats["classes"], freq)}}
