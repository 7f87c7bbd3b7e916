"""Per-band statistics of an archive's modality (for normalisation), with numpy and zarr only.

No torch here: the curation side (``softcon stats``) computes statistics without the training stack.
By default only the archive's train split is used (``splits=("train",)``, the names and meaning of
``PretrainConfig.splits``, :mod:`pipeline.split_selection`), so the normalisation of a pretraining run
never looks at validation or test patches; ``splits="all"`` uses every done patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.archive import Archive
from pipeline.progress import progress_bar
from pipeline.split_selection import check_split_names, select_split_patches
from pipeline.store import STATUS_DONE

__all__ = ["DEFAULT_SPLITS", "ArchiveStatistics", "archive_statistics", "compute_archive_statistics"]

#: Splits the statistics are computed on unless told otherwise.
DEFAULT_SPLITS: tuple[str, ...] = ("train",)


@dataclass(frozen=True)
class ArchiveStatistics:
    """Per-band statistics of one modality and the patches they were computed on.

    Attributes:
        archive: Archive path or URL.
        modality: Image variable (``s2_l1c``, ``s2_l2a``, ``s1_grd``).
        bands: Band names, in the order of the arrays.
        mean: Per-band mean (float64) over valid pixels.
        std: Per-band population standard deviation (float64) over valid pixels.
        counts: Per-band number of valid pixels (int64).
        splits: The split names used, or ``"all"``.
        split_record: The archive's split record (:func:`pipeline.split.read_split`), or ``None``
            when the archive has no split (only possible with ``splits="all"``).
        n_patches: Number of patches read.
        max_patches: The ``max_patches`` limit asked for, or ``None``.
    """

    archive: str
    modality: str
    bands: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    counts: np.ndarray
    splits: list[str] | str
    split_record: dict[str, Any] | None
    n_patches: int
    max_patches: int | None = None

    def metadata(self) -> dict[str, Any]:
        """JSON-ready provenance to store next to the numbers (``save_statistics(..., **metadata)``).

        Returns:
            ``archive``, ``splits``, ``split_hash`` (``None`` without a split record),
            ``split_record``, ``n_patches``, ``max_patches`` and ``pixel_counts``.
        """
        record = self.split_record
        return {
            "archive": self.archive,
            "splits": self.splits if isinstance(self.splits, str) else list(self.splits),
            "split_hash": None if record is None else record.get("hash"),
            "split_record": record,
            "n_patches": self.n_patches,
            "max_patches": self.max_patches,
            "pixel_counts": [int(n) for n in self.counts],
        }


def _nodata_mask(block: np.ndarray) -> np.ndarray:
    """True where a value is nodata: 0 for integer (S2 DN) arrays, non-finite for float (S1 dB)."""
    if block.dtype.kind == "f":
        return ~np.isfinite(block)
    return block == 0


def _selected_patches(group: Any, store: str, splits: list[str] | str, max_patches: int | None,
                      storage_options: dict | None) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Done patches of ``splits`` (thinned evenly to ``max_patches``) and the split record."""
    done = np.flatnonzero(group["status"][:] == STATUS_DONE)
    in_splits, record = select_split_patches(store, splits, storage_options)
    if in_splits is not None:
        done = np.intersect1d(done, in_splits)
    if max_patches is not None and max_patches < len(done):
        if max_patches <= 0:
            raise ValueError("max_patches must be positive")
        done = done[np.unique(np.linspace(0, len(done) - 1, max_patches).round().astype(int))]
    return done, record


def _add_patch(patch: np.ndarray, band_idx: np.ndarray, count: np.ndarray, mean: np.ndarray,
               m2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fold one patch's season blocks into the running (count, mean, M2) per band (Chan et al.'s update)."""
    C = len(band_idx)
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
    return count, mean, m2


def archive_statistics(store: str, modality: str, *, splits: Sequence[str] | str = DEFAULT_SPLITS,
                       max_patches: int | None = None, storage_options: dict | None = None,
                       bands: Sequence[str] | None = None, show_progress: bool = False) -> ArchiveStatistics:
    """Per-band mean and (population) std of ``modality`` over the done patches of ``splits``.

    Streams one patch at a time (its season chunks) and reads no other patch, combining per-chunk
    counts, means and sums of squared deviations with the pairwise update of Chan, Golub & LeVeque
    ("Updating formulae and a pairwise algorithm for computing sample variances", 1979) in float64,
    so memory stays at one patch and the result does not suffer from cancellation. Nodata, left out
    of every sum and count: 0 DN for S2 (integer arrays), NaN (any non-finite value) for S1 and any
    float modality; the result equals ``numpy.nanmean`` / ``numpy.nanstd`` over the float
    modality's pixels.

    Args:
        store: Archive path or fsspec URL.
        modality: Image variable of the archive.
        splits: Split names (default ``("train",)``) or ``"all"`` for every done patch.
        max_patches: Use at most this many of the selected patches, spread evenly (deterministic).
        storage_options: fsspec options for a remote ``store``.
        bands: Band subset and order (default: the archive's bands of the modality).
        show_progress: A progress bar (a terminal) instead of log lines every 30 s (:mod:`pipeline.progress`).

    Returns:
        The statistics and what they were computed on.

    Raises:
        BadInput: invalid ``splits``, or named splits on an archive without a split.
        KeyError: the archive has no ``modality``.
        ValueError: a band has no valid pixel in the selected patches, or ``max_patches <= 0``.
    """
    names = check_split_names(splits)
    group = Archive.of(store, storage_options).open()
    if modality not in group:
        raise KeyError(f"{store}: no {modality} in the archive")
    arr = group[modality]
    archive_bands = list(group.attrs["band_names"][modality])
    bands = archive_bands if bands is None else list(bands)
    band_idx = np.array([archive_bands.index(b) for b in bands])
    patches, record = _selected_patches(group, store, names, max_patches, storage_options)
    C = len(bands)
    count = np.zeros(C, np.float64)
    mean = np.zeros(C, np.float64)
    m2 = np.zeros(C, np.float64)
    with progress_bar(show_progress) as bar:
        task = bar.add_task(f"{modality} statistics", total=len(patches), status="")
        for p in patches:
            count, mean, m2 = _add_patch(arr[int(p)], band_idx, count, mean, m2)  # (S, C_all, H, W): its seasons
            bar.update(task, advance=1)
    if (count == 0).any():
        empty = [b for b, n in zip(bands, count) if n == 0]
        where = "the done patches" if names == "all" else f"the done patches of split(s) {', '.join(names)}"
        raise ValueError(f"{store}: no valid {modality} pixels for band(s) {empty} in {where}")
    return ArchiveStatistics(archive=str(store), modality=modality, bands=tuple(bands), mean=mean,
                             std=np.sqrt(m2 / count), counts=count.astype(np.int64), splits=names,
                             split_record=record, n_patches=len(patches), max_patches=max_patches)


def compute_archive_statistics(store: str, modality: str, max_patches: int | None = None,
                               storage_options: dict | None = None, bands: Sequence[str] | None = None,
                               return_counts: bool = False, splits: Sequence[str] | str = DEFAULT_SPLITS):
    """Per-band ``(mean, std)`` arrays of :func:`archive_statistics` (plus counts when asked).

    Args:
        store: Archive path or fsspec URL.
        modality: Image variable of the archive.
        max_patches: Use at most this many of the selected patches, spread evenly.
        storage_options: fsspec options for a remote ``store``.
        bands: Band subset and order (default: the archive's bands of the modality).
        return_counts: Also return the per-band valid pixel counts.
        splits: Split names (default ``("train",)``) or ``"all"`` for every done patch.

    Returns:
        ``(mean, std)`` float64 arrays in the order of ``bands``, or ``(mean, std, counts)``.
    """
    stats = archive_statistics(store, modality, splits=splits, max_patches=max_patches,
                               storage_options=storage_options, bands=bands)
    return (stats.mean, stats.std, stats.counts) if return_counts else (stats.mean, stats.std)
