"""Training data from the Zarr archive: normalisation, a torch data set, its loader and the split record.

One job per module; every name is re-exported here, so ``from train.data import …`` is the stable
import path:

* :mod:`~train.data.normalization`: :class:`Normalizer` (SoftCon scaling or z-score), the published
  SSL4EO-S12 statistics (:func:`published_statistics`) and statistics files
  (:func:`save_statistics`, :func:`load_statistics`).
* :mod:`pipeline.statistics`: :func:`compute_archive_statistics` (numpy and zarr only).
* :mod:`~train.data.dataset`: :class:`ArchiveDataset` over the (patch, season) items of the done
  patches, per-item generators (:func:`item_seed`, :func:`item_generator`), :func:`collate_items`.
* :mod:`~train.data.loader`: :class:`EpochSampler`, :class:`EpochDataLoader`,
  :func:`build_dataloader`.
* :mod:`~train.data.splits`: :func:`select_split_patches` and the training-data record
  (:func:`training_data_json`, :func:`write_training_data`).
"""

from __future__ import annotations

from pipeline.statistics import compute_archive_statistics
from train.data.dataset import (
    NAME_KEYS,
    ArchiveDataset,
    ViewTransform,
    collate_items,
    item_generator,
    item_seed,
)
from train.data.loader import EpochDataLoader, EpochSampler, build_dataloader
from train.data.normalization import (
    PUBLISHED_STATISTICS,
    STATS_FORMAT,
    Normalizer,
    load_statistics,
    published_statistics,
    save_statistics,
)
from train.data.splits import (
    ALL_SPLITS,
    SPLIT_NAMES,
    TRAINING_DATA_FILE,
    select_split_patches,
    training_data_json,
    write_training_data,
)

__all__ = [
    "PUBLISHED_STATISTICS",
    "STATS_FORMAT",
    "published_statistics",
    "Normalizer",
    "compute_archive_statistics",
    "save_statistics",
    "load_statistics",
    "item_seed",
    "item_generator",
    "ArchiveDataset",
    "ViewTransform",
    "SPLIT_NAMES",
    "ALL_SPLITS",
    "select_split_patches",
    "TRAINING_DATA_FILE",
    "training_data_json",
    "write_training_data",
    "EpochSampler",
    "EpochDataLoader",
    "build_dataloader",
    "collate_items",
    "NAME_KEYS",
]
