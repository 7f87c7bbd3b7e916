"""Label statistics researchers look at before training on SSL4EO-S12-ML-style labels (numpy only).

Every function takes plain arrays (those of :class:`pipeline.figures.label_data.LabelTable`), so they
are easy to test and reuse. Notation: ``P`` locations, ``S`` seasons, ``K`` classes; an *image* is one
(location, season); an image is *labelled* when at least one class is present in its multi-hot vector.

* :func:`cooccurrence` (:func:`cooccurrence_from_counts`) — counts ``C[i, j]`` of labelled images with classes i
  and j both present,
  conditional ``P(j | i) = C[i, j] / C[i, i]`` and **lift** ``C[i, j] · N / (C[i, i] · C[j, j])`` with
  ``N`` labelled images, i.e. ``P(i, j) / (P(i) P(j))``; ``PMI = log2(lift)`` (Church & Hanks 1990,
  "Word association norms, mutual information, and lexicography"). Lift makes rare pairs visible:
  a pair of rare classes that always occur together has a large lift, however small its count.
* :func:`season_changes` — how labels change across the seasons of one location, in chronological
  order: a transition matrix of the **dominant** class (largest fraction) between consecutive labelled
  seasons, per-class gains and losses, and the share of locations whose label set changes.
* :func:`latitude_bands` — labelled images and class frequency per latitude band.
* :func:`threshold_sweep` — class frequency and labels per image if the presence threshold were
  another value (``multi_hot = fraction > t``, :mod:`pipeline.labels`), from the stored fractions.
* :func:`agreement` — per-class precision and recall of one multi-hot set against a reference set.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _ratio(num: Any, den: Any) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.broadcast_to(np.asarray(den, dtype=np.float64), num.shape)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def labelled_rows(multi_hot: np.ndarray) -> np.ndarray:
    """``(N, K)`` int64 multi-hot rows of the labelled images of a ``(..., K)`` array."""
    flat = np.asarray(multi_hot).reshape(-1, np.shape(multi_hot)[-1]).astype(np.int64)
    return flat[flat.any(axis=1)]


def class_counts(multi_hot: np.ndarray) -> dict[str, Any]:
    """Images per class and the labels-per-image histogram.

    Returns ``counts`` (K,) labelled images where each class is present, ``frequency`` (K,) their share
    of the labelled images, ``n_labelled``, ``n_images`` (labelled or not) and ``labels_per_image``
    (K + 1,) images with exactly k classes present (k = 0: unlabelled).
    """
    mh = np.asarray(multi_hot).reshape(-1, np.shape(multi_hot)[-1]).astype(np.int64)
    k = mh.shape[1]
    rows = mh[mh.any(axis=1)]
    counts = rows.sum(axis=0)
    return {"counts": counts, "frequency": _ratio(counts, len(rows)), "n_labelled": int(len(rows)),
            "n_images": int(len(mh)), "labels_per_image": np.bincount(mh.sum(axis=1), minlength=k + 1)}


def cooccurrence(multi_hot: np.ndarray) -> dict[str, Any]:
    """Co-occurrence counts, conditional probabilities, lift and PMI (module docstring).

    Returns ``counts`` (K, K) int, ``conditional`` (K, K) ``P(column | row)``, ``lift`` (K, K) and
    ``pmi`` (K, K) in bits; entries with a zero denominator are NaN, PMI of a pair never seen together
    is ``-inf``. ``n_labelled`` is N.
    """
    rows = labelled_rows(multi_hot)
    return cooccurrence_from_counts(rows.T @ rows, len(rows))


def cooccurrence_from_counts(counts: np.ndarray, n_labelled: int) -> dict[str, Any]:
    """:func:`cooccurrence` from the counts ``C`` (K, K) and ``N`` alone (e.g. those of
    :func:`pipeline.labels.summary_statistics`).
    """
    c = np.asarray(counts)
    n = int(n_labelled)
    diag = np.diag(c).astype(np.float64)
    lift = _ratio(c * float(n), np.outer(diag, diag))
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log2(lift)  # log2(0) = -inf (never together), NaN stays NaN
    return {"counts": c, "conditional": _ratio(c, diag[:, None]), "lift": lift, "pmi": pmi, "n_labelled": n}


def fraction_distributions(fraction: np.ndarray, multi_hot: np.ndarray) -> list[np.ndarray]:
    """Per class, the label fractions of the images where the class is present (one array per class)."""
    k = np.shape(fraction)[-1]
    frac = np.asarray(fraction, dtype=np.float64).reshape(-1, k)
    mh = np.asarray(multi_hot).reshape(-1, k).astype(bool)
    return [frac[mh[:, j], j] for j in range(k)]


def season_changes(multi_hot: np.ndarray, fraction: np.ndarray, season_order: np.ndarray) -> dict[str, Any]:
    """How the labels of each location change across its seasons, in chronological ``season_order``.

    Consecutive pairs are taken between the labelled seasons of a location in date order (unlabelled
    seasons are skipped, not counted as a change). Returns:

    ``dominant_transitions`` (K, K)
        Counts of (dominant class in one labelled season → in the next labelled season).
    ``dominant_transition_rate`` (K, K)
        The same, row-normalised: P(next dominant = column | dominant = row).
    ``gains`` / ``losses`` / ``kept`` (K,)
        Consecutive pairs where the class appears / disappears / stays present.
    ``always_present`` (K,)
        Among locations with the class in at least one labelled season (and at least two labelled
        seasons), the share that have it in every labelled season.
    ``changing_share``
        Share of locations with at least two labelled seasons whose label set is not the same in all of them.
    ``n_locations`` (with >= 2 labelled seasons) and ``n_pairs`` (consecutive pairs).
    """
    mh = np.asarray(multi_hot)[:, season_order].astype(bool)
    frac = np.asarray(fraction, dtype=np.float64)[:, season_order]
    k = mh.shape[-1]
    trans = np.zeros((k, k), dtype=np.int64)
    gains, losses, kept = (np.zeros(k, dtype=np.int64) for _ in range(3))
    ever, every = np.zeros(k, dtype=np.int64), np.zeros(k, dtype=np.int64)
    n_loc = n_change = n_pairs = 0
    for p in range(mh.shape[0]):
        seasons = np.flatnonzero(mh[p].any(axis=1))
        if seasons.size < 2:
            continue
        n_loc += 1
        sets = mh[p, seasons]  # (L, K)
        n_change += int((sets != sets[0]).any())
        ever += sets.any(axis=0)
        every += sets.all(axis=0)
        dom = frac[p, seasons].argmax(axis=1)
        np.add.at(trans, (dom[:-1], dom[1:]), 1)
        a, b = sets[:-1], sets[1:]
        gains += (~a & b).sum(axis=0)
        losses += (a & ~b).sum(axis=0)
        kept += (a & b).sum(axis=0)
        n_pairs += len(seasons) - 1
    return {"dominant_transitions": trans, "dominant_transition_rate": _ratio(trans, trans.sum(axis=1, keepdims=True)),
            "gains": gains, "losses": losses, "kept": kept, "always_present": _ratio(every, ever),
            "changing_share": float(_ratio(n_change, n_loc)), "n_locations": n_loc, "n_pairs": n_pairs}


def latitude_bands(lat: np.ndarray, multi_hot: np.ndarray, width_deg: float = 15.0) -> dict[str, Any]:
    """Labelled images and class frequency per latitude band of ``width_deg`` degrees (−90…90).

    Returns ``edges`` (B + 1,), ``n_locations`` (B,), ``n_labelled`` (B,) labelled images and
    ``frequency`` (B, K) share of the band's labelled images where each class is present (NaN rows for
    bands without one). Bands are kept even when empty, so coverage gaps show.
    """
    if width_deg <= 0:
        raise ValueError(f"width_deg must be > 0, got {width_deg}")
    edges = np.arange(-90.0, 90.0 + width_deg / 2, width_deg)
    edges[-1] = max(edges[-1], 90.0)
    band = np.clip(np.digitize(np.asarray(lat, dtype=np.float64), edges) - 1, 0, len(edges) - 2)
    mh = np.asarray(multi_hot).astype(np.int64)
    k = mh.shape[-1]
    nb = len(edges) - 1
    n_loc = np.bincount(band, minlength=nb)
    labelled = mh.any(axis=-1)  # (P, S)
    n_lab = np.bincount(band, weights=labelled.sum(axis=1), minlength=nb).astype(np.int64)
    counts = np.zeros((nb, k), dtype=np.int64)
    np.add.at(counts, band, (mh * labelled[..., None]).sum(axis=1))
    return {"edges": edges, "n_locations": n_loc, "n_labelled": n_lab, "frequency": _ratio(counts, n_lab[:, None])}


def threshold_sweep(fraction: np.ndarray, thresholds: np.ndarray | list[float]) -> dict[str, Any]:
    """Class frequency and mean labels per image for each presence threshold ``t`` (``present: f > t``).

    Only images with label fractions (the stored rows that are not all zero, i.e. enough valid pixels)
    count; their number does not depend on ``t`` as long as ``t < 1/K``. Fractions are the stored
    float32 values, so an image whose fraction equals a threshold to float32 precision may fall on the
    other side than :func:`pipeline.labels.label_vectors` (which compares in float64).

    Returns ``thresholds`` (T,), ``frequency`` (T, K), ``mean_labels`` (T,) mean classes per image,
    ``unlabelled`` (T,) images left with no class, and ``n_images``.
    """
    t = np.asarray(thresholds, dtype=np.float64)
    k = np.shape(fraction)[-1]
    frac = np.asarray(fraction, dtype=np.float64).reshape(-1, k)
    frac = frac[(frac > 0).any(axis=1)]
    present = frac[None, :, :] > t[:, None, None]  # (T, N, K)
    n = len(frac)
    return {"thresholds": t, "frequency": _ratio(present.sum(axis=1), n),
            "mean_labels": _ratio(present.sum(axis=(1, 2)), n), "unlabelled": (~present.any(axis=2)).sum(axis=1),
            "n_images": n}


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Per-class agreement of ``other`` with ``reference`` multi-hot rows ``(N, K)``.

    ``precision = TP / (TP + FP)`` (of the classes ``other`` marks present, the share the reference
    has too), ``recall = TP / (TP + FN)``, ``f1``; NaN when undefined. Also ``tp``, ``fp``, ``fn``,
    ``exact`` (share of rows whose whole vectors are equal) and ``n``.
    """
    ref = np.asarray(reference).astype(bool)
    oth = np.asarray(other).astype(bool)
    if ref.shape != oth.shape:
        raise ValueError(f"shapes differ: {ref.shape} vs {oth.shape}")
    tp = (ref & oth).sum(axis=0)
    fp = (~ref & oth).sum(axis=0)
    fn = (ref & ~oth).sum(axis=0)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall,
            "f1": _ratio(2 * precision * recall, precision + recall),
            "exact": float(_ratio((ref == oth).all(axis=1).sum(), len(ref))), "n": int(len(ref))}
