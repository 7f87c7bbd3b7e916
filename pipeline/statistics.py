"""Per-band statistics of an archive's modality (for normalisation), with numpy and zarr only.

No torch here: the curation side (``softcon stats``) computes statistics without the training stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.store import STATUS_DONE, open_group

__all__ = ["compute_archive_statistics"]


def _nodata_mask(block: np.ndarray) -> np.ndarray:
    """True where a value is nodata: 0 for integer (S2 DN) arrays, non-finite for float (S1 dB)."""
    if block.dtype.kind == "f":
        return ~np.isfinite(block)
    return block == 0


def compute_archive_statistics(store: str, modality: str, max_patches: int | None = None,
                               storage_options: dict | None = None, bands: Sequence[str] | None = None,
                               return_counts: bool = False):
    """Per-band mean and (population) std over the done patches of an archive, over valid pixels only.

    Streams one patch at a time (its season chunks), combining per-chunk counts, means and sums of
    squared deviations with Chan's parallel update in float64, so memory stays at one patch and the
    result does not suffer from cancellation. ``max_patches`` limits the work to that many done
    patches, spread evenly over the archive (deterministic). Nodata, left out of every sum and count:
    0 DN for S2 (integer arrays), NaN (any non-finite value) for S1 and any float modality; the result
    equals ``numpy.nanmean`` / ``numpy.nanstd`` over the float modality's pixels.

    Returns ``(mean, std)`` float64 arrays in the order of ``bands`` (default: the archive's bands of
    the modality), plus the per-band valid pixel counts when ``return_counts``.
    """
    group = open_group(store, "r", storage_options)
    if modality not in group:
        raise KeyError(f"{store}: no {modality} in the archive")
    arr = group[modality]
    archive_bands = list(group.attrs["band_names"][modality])
    bands = archive_bands if bands is None else list(bands)
    band_idx = np.array([archive_bands.index(b) for b in bands])
    done = np.flatnonzero(group["status"][:] == STATUS_DONE)
    if max_patches is not None and max_patches < len(done):
        if max_patches <= 0:
            raise ValueError("max_patches must be positive")
        done = done[np.unique(np.linspace(0, len(done) - 1, max_patches).round().astype(int))]
    C = len(bands)
    count = np.zeros(C, np.float64)
    mean = np.zeros(C, np.float64)
    m2 = np.zeros(C, np.float64)
    for p in done:
        patch = arr[int(p)]  # (S, C_all, H, W): the patch's season chunks
        for block in patch:
            block = block[band_idx].reshape(C, -1)
            valid = ~_nodata_mask(block)
            n_b = valid.sum(axis=1).astype(np.float64)
            x = np.where(valid, block, 0).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_b = np.where(n_b > 0, x.sum(axis=1) / n_b, 0.0)
            dev = np.where(valid, x - mean_b[:, None], 0.0)
            m2_b = (dev * dev).sum(axis=1)
            total = count + n_b
            delta = mean_b - mean
            with np.errstate(invalid="ignore", divide="ignore"):
                w = np.where(total > 0, n_b / total, 0.0)
                cross = np.where(total > 0, delta * delta * count * n_b / total, 0.0)
            mean = mean + delta * w
            m2 = m2 + m2_b + cross
            count = total
    if (count == 0).any():
        empty = [b for b, n in zip(bands, count) if n == 0]
        raise ValueError(f"{store}: no valid {modality} pixels for band(s) {empty} in the done patches")
    std = np.sqrt(m2 / count)
    return (mean, std, count.astype(np.int64)) if return_counts else (mean, std)
