"""Per-image multi-label vectors from Dynamic World label maps (the SSL4EO-S12-ML curation step).

For one label map ``L`` (a ``(y, x)`` array of DW class indices 0..K-1, K = 9, and ``nodata`` = 255
for clouds, shadows and pixels outside the product) with ``H * W`` pixels::

    c_k      = #{pixels p : L[p] == k}                  for k = 0..K-1
    n_valid  = sum_k c_k                                 (pixels that are not nodata)
    labelled = n_valid > 0  and  n_valid / (H * W) >= min_valid_fraction
    f_k      = c_k / n_valid   if labelled, else 0       -> label_fraction
    m_k      = 1 if f_k > presence_threshold, else 0     -> multi_hot

* ``label_fraction`` (float32, ``f``): share of the *valid* pixels in each class; sums to 1 for a
  labelled row and is all 0 for an unlabelled one.
* ``multi_hot`` (uint8, ``m``): a class is present when its fraction is strictly greater than the
  threshold. The comparison is done in float64 (``c_k / n_valid``) before ``f`` is rounded to
  float32.
* **Unlabelled rows** (fewer than ``min_valid_fraction`` of the pixels are valid, or none at all) get
  an all-zero fraction vector and an all-zero multi-hot. In the SSL4EO-S12-ML JSON this is the
  empty class list ("no label for this image").

Thresholds are **our documented choice**, not the published one: in SSL4EO-S12-ML a class is
taken to be present when its pixel count or fraction passes a threshold, but the rule and its value
are not published with the labels (github.com/zhu-xlab/softcon), so this is our choice. The defaults
(``presence_threshold = 0.01``, i.e. a class must cover more than 1 % of the valid pixels, and
``min_valid_fraction = 0.1``) come from :class:`pipeline.manifest.LabelsConfig`, where they are explained.

Computation: :func:`label_vectors` works on any leading dims. For up to 32 classes (Dynamic World
has 9) it counts each map by one comparison per class, the map staying in cache; for more, with one
``np.bincount`` over the whole batch (bin ``map_index * (K + 1) + class``, nodata in slot ``K``).
:func:`label_vectors_dask` applies it per chunk with ``map_blocks`` (chunks hold whole maps).
:func:`pipeline.labels.archive.compute_archive_labels` streams it over a Zarr archive, and
:mod:`pipeline.labels.summary` reduces the stored vectors.
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

from pipeline.bands import DW_CLASSES, LABEL_NODATA

__all__ = ["label_vectors", "label_vectors_dask"]


def _check_params(n_classes: int, nodata: int, presence_threshold: float, min_valid_fraction: float) -> None:
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    if 0 <= nodata < n_classes:
        raise ValueError(f"nodata value {nodata} collides with class indices 0..{n_classes - 1}")
    if not 0 <= presence_threshold < 1:
        raise ValueError(f"presence_threshold must be in [0, 1), got {presence_threshold}")
    if not 0 <= min_valid_fraction <= 1:
        raise ValueError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")


def _check_maps(maps: Any) -> Any:
    """``maps`` (numpy or Dask) if it is a stack ``(..., y, x)`` of integer label maps; else raise."""
    if maps.ndim < 2:
        raise ValueError(f"label maps need at least 2 dims (..., y, x), got shape {maps.shape}")
    if not np.issubdtype(maps.dtype, np.integer):
        raise TypeError(f"label maps must have an integer dtype, got {maps.dtype}")
    return maps


def label_vectors(
    label_maps: np.ndarray,
    n_classes: int = len(DW_CLASSES),
    nodata: int = LABEL_NODATA,
    presence_threshold: float = 0.01,
    min_valid_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Class fractions and multi-hot vectors of a batch of label maps.

    ``label_maps`` has shape ``(..., y, x)`` with any leading dims (e.g. ``(patch, season, y, x)``)
    and an integer dtype (uint8 in the archive). Returns ``(fractions, multi_hot)`` of shape
    ``(..., n_classes)``, float32 and uint8 (formulas in the module docstring).

    Raises ``ValueError`` naming the offending value(s) when a pixel is neither a class index
    ``0..n_classes-1`` nor ``nodata``, and ``TypeError`` for non-integer input.
    """
    _check_params(n_classes, nodata, presence_threshold, min_valid_fraction)
    a = _check_maps(np.asarray(label_maps))
    lead = a.shape[:-2]
    n_maps = math.prod(lead)
    n_pix = a.shape[-2] * a.shape[-1]

    if n_classes <= _FEW_CLASSES:
        class_counts = _few_class_counts(a.reshape(n_maps, n_pix), n_classes, nodata)
    else:
        class_counts = _general_class_counts(a.reshape(n_maps, n_pix), n_classes, nodata)
    n_valid = class_counts.sum(axis=1)
    labelled = (n_valid > 0) & (n_valid >= min_valid_fraction * n_pix)
    frac64 = np.zeros(class_counts.shape, dtype=np.float64)
    np.divide(class_counts, n_valid[:, None], out=frac64, where=labelled[:, None])
    multi_hot = (frac64 > presence_threshold).astype(np.uint8)  # unlabelled rows: frac64 == 0
    fractions = frac64.astype(np.float32)
    return fractions.reshape(*lead, n_classes), multi_hot.reshape(*lead, n_classes)


def _bad_values_error(values: np.ndarray, n_classes: int, nodata: int) -> ValueError:
    shown = ", ".join(str(v) for v in values[:10]) + (", …" if values.size > 10 else "")
    return ValueError(f"label value(s) {shown} outside the class indices 0..{n_classes - 1} "
                      f"and not the nodata value {nodata}")


_FEW_CLASSES = 32  # up to this many classes, counting by comparison beats np.bincount


def _few_class_counts(maps: np.ndarray, n_classes: int, nodata: int) -> np.ndarray:
    """Per-map class counts of ``maps`` ``(n, pixels)`` by one comparison per class and map.

    Each map stays in cache while its ``n_classes + 1`` comparisons run, with no widening of the
    pixels to 64-bit indices as ``np.bincount`` needs: 1.5–2.7× faster than a bincount per map
    for Dynamic World's 9 classes (benchmarks/bench_curation.py). Pixels that are neither a class
    nor ``nodata`` show up as a shortfall of the counts and are then named.
    """
    n, n_pix = maps.shape
    counts = np.empty((n, n_classes), dtype=np.int64)
    for i in range(n):
        m = maps[i]
        for c in range(n_classes):
            counts[i, c] = np.count_nonzero(m == c)
        if int(counts[i].sum()) + np.count_nonzero(m == nodata) != n_pix:
            values = np.unique(m)
            bad = values[((values < 0) | (values >= n_classes)) & (values != nodata)]
            raise _bad_values_error(bad, n_classes, nodata)
    return counts


def _general_class_counts(maps: np.ndarray, n_classes: int, nodata: int) -> np.ndarray:
    """Per-map class counts for any integer dtype: offsets per map, one bincount over the batch."""
    n_maps = maps.shape[0]
    n_slots = n_classes + 1  # classes 0..K-1, then nodata in slot K
    codes = maps.astype(np.intp)  # always a fresh copy, modified in place below
    is_nodata = codes == nodata
    bad = ~is_nodata & ((codes < 0) | (codes >= n_classes))
    if bad.any():
        raise _bad_values_error(np.unique(codes[bad]), n_classes, nodata)
    codes[is_nodata] = n_classes
    codes += (np.arange(n_maps, dtype=np.intp) * n_slots)[:, None]
    counts = np.bincount(codes.ravel(), minlength=n_maps * n_slots).reshape(n_maps, n_slots)
    return counts[:, :n_classes]


# --------------------------------------------------------------------------- dask
def _vectors_block(block: np.ndarray, n_classes: int, nodata: int,
                   presence_threshold: float, min_valid_fraction: float) -> np.ndarray:
    frac, mh = label_vectors(block, n_classes, nodata, presence_threshold, min_valid_fraction)
    return np.concatenate([frac, mh.astype(np.float32)], axis=-1)


def label_vectors_dask(
    dw_label: da.Array,
    n_classes: int = len(DW_CLASSES),
    nodata: int = LABEL_NODATA,
    presence_threshold: float = 0.01,
    min_valid_fraction: float = 0.1,
) -> tuple[da.Array, da.Array]:
    """Lazy :func:`label_vectors` over a Dask array ``(..., y, x)``, one task per chunk.

    Chunks must hold whole maps; ``y``/``x`` are rechunked to a single chunk when they are not.
    The outputs ``(..., n_classes)`` (float32 fractions, uint8 multi-hot) keep the input chunking
    along the leading dims, with the class axis in one chunk. Each chunk is counted once: the
    block function returns fractions and multi-hot side by side and the two are sliced apart.
    """
    _check_params(n_classes, nodata, presence_threshold, min_valid_fraction)
    x = _check_maps(dw_label if isinstance(dw_label, da.Array) else da.asarray(dw_label))
    nd = x.ndim
    if len(x.chunks[-1]) != 1 or len(x.chunks[-2]) != 1:
        x = x.rechunk({nd - 2: -1, nd - 1: -1})
    # The x axis is dropped and the (single-chunk) y axis becomes the 2K-long value axis.
    both = x.map_blocks(
        _vectors_block,
        n_classes, nodata, presence_threshold, min_valid_fraction,
        drop_axis=nd - 1,
        chunks=x.chunks[:-2] + ((2 * n_classes,),),
        dtype=np.float32,
        meta=np.empty((0,) * (nd - 1), dtype=np.float32),
    )
    fractions = both[..., :n_classes]
    multi_hot = both[..., n_classes:].astype(np.uint8)
    return fractions, multi_hot

