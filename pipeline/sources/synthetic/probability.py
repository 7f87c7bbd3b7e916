"""Dynamic World class probabilities of the synthetic world, calibrated to its label noise.

Dynamic World publishes, beside its ``label`` band (the most likely class), one probability band
per class (Brown et al. 2022, "Dynamic World, Near real-time global 10 m land use land cover
mapping", Scientific Data 9, 251; bands ``water`` … ``snow_and_ice`` of GOOGLE/DYNAMICWORLD/V1 in the
Earth Engine data catalog). The synthetic label map is the season's true cover with label noise
(:func:`pipeline.sources.synthetic.rendering.dw_labels`): a pixel with at least one differing
4-neighbour (a class-boundary pixel) is flipped with probability ``r = label_noise`` to the class of
one of its neighbours: starting from a uniformly drawn direction (up, down, left, right in turn,
cyclically), the first neighbour of another class. Interior pixels are never flipped.

Our model (no randomness of its own): the probability of class ``k`` at a pixel is the probability
that this labeller gives it label ``k``, i.e. the posterior of the noisy label given the true cover::

    p[k] = (1 − r_i)·[k = c_i] + r_i · Σ_d [nbr_d = k] · w_d

with ``c_i`` the true class, ``r_i = label_noise`` on boundary pixels and 0 inside, and ``w_d`` the
chance that the cyclic search picks direction ``d``: ``(1 + g_d)/4`` for a differing neighbour,
where ``g_d`` counts the consecutive same-class directions just before ``d`` in the search order,
and 0 otherwise (the ``w_d`` of a pixel sum to 1). The probabilities are calibrated by construction:
averaged over the noise draws, the label map's class fractions equal the mean probability. For
``label_noise < 0.5`` the most probable class is the true class, so the argmax agrees with the label
map wherever the label is not noise. Real Dynamic World probabilities are softer (a network's
softmax); here interior pixels are certain, because the synthetic labeller never errs there.

The patch's value (:func:`mean_probability`) is the mean over the valid (not clouded) label pixels,
zeros when none is valid, as for every source (:mod:`pipeline.reference`).
"""

from __future__ import annotations

import numpy as np

from pipeline.bands import DW_CLASSES, LABEL_NODATA
from pipeline.reference import mean_class_probability
from pipeline.sources.synthetic.rendering import label_neighbours

__all__ = ["mean_probability", "probability_map"]


def _direction_weights(diff: np.ndarray) -> np.ndarray:
    """``w_d`` of the module docstring: (4, N) chance that the flip takes the neighbour in direction ``d``."""
    weights = np.zeros(diff.shape, dtype=np.float64)
    for d in range(4):
        same_before = np.ones(diff.shape[1], dtype=bool)
        starts = np.ones(diff.shape[1], dtype=np.float64)  # the search may start at d itself
        for j in range(1, 4):
            same_before &= ~diff[(d - j) % 4]
            starts += same_before
        weights[d] = np.where(diff[d], starts / 4.0, 0.0)
    return weights


def probability_map(label_noise: float, lc: np.ndarray, n_classes: int = len(DW_CLASSES)) -> np.ndarray:
    """The per-pixel class probabilities of the synthetic Dynamic World label (module docstring).

    Args:
        label_noise: The source's ``label_noise`` (flip probability of a class-boundary pixel).
        lc: The (H, W) true land cover of the season.
        n_classes: The number of classes.

    Returns:
        (n_classes, H, W) float64 probabilities, summing to 1 at every pixel.
    """
    h, w = lc.shape
    n = h * w
    probs = np.zeros((n_classes, n), dtype=np.float64)
    idx = np.arange(n)
    nbrs, diff = label_neighbours(lc)
    noise = np.where(diff.any(axis=0), float(label_noise), 0.0)
    probs[lc.ravel(), idx] = 1.0 - noise
    weights = _direction_weights(diff)
    for d in range(4):
        probs[nbrs[d], idx] += noise * weights[d]  # one (class, pixel) pair per pixel: no repeated index
    return probs.reshape(n_classes, h, w)


def mean_probability(label_noise: float, lc: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The patch's mean class probability over its valid label pixels.

    Args:
        label_noise: The source's ``label_noise``.
        lc: The (H, W) true land cover of the season.
        label: The (H, W) label map; ``LABEL_NODATA`` pixels (clouds) are left out.

    Returns:
        (9,) float64, zeros when no pixel is valid.
    """
    if not (label != LABEL_NODATA).any():
        return np.zeros(len(DW_CLASSES))
    return mean_class_probability(probability_map(label_noise, lc), label)
