"""Which patches of an archive belong to the named splits (numpy and zarr only, no torch).

Shared by pretraining (:class:`train.data.ArchiveDataset`, ``PretrainConfig.splits``) and the archive
statistics (:func:`pipeline.statistics.compute_archive_statistics`, ``softcon stats --split``), so both
read the same names with the same meaning: a list of names of :data:`SPLIT_NAMES` (the ``split``
variable written by ``softcon split``, :mod:`pipeline.split`), or :data:`ALL_SPLITS` for every patch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline.errors import BadInput
from pipeline.split import SPLIT_CODES, read_split

__all__ = ["ALL_SPLITS", "SPLIT_NAMES", "check_split_names", "select_split_patches"]

#: Split names of the archive's ``split`` variable (:data:`pipeline.split.SPLIT_CODES`).
SPLIT_NAMES = tuple(SPLIT_CODES)
#: ``splits`` value that selects every done patch, with or without a split in the archive.
ALL_SPLITS = "all"


def check_split_names(splits: Sequence[str] | str) -> list[str] | str:
    """Validate a ``splits`` value.

    Args:
        splits: ``"all"``, one split name, or a sequence of split names.

    Returns:
        ``"all"`` or the list of names.

    Raises:
        BadInput: the list is empty, names an unknown split or names one twice.
    """
    if isinstance(splits, str):
        if splits == ALL_SPLITS:
            return ALL_SPLITS
        splits = [splits]
    names = list(splits)
    if not names:
        raise BadInput(f"splits: empty; name the splits to use ({', '.join(SPLIT_NAMES)}) "
                       f"or '{ALL_SPLITS}' for every done patch")
    unknown = [n for n in names if n not in SPLIT_NAMES]
    if unknown:
        raise BadInput(f"splits: unknown split(s) {unknown}; valid: {list(SPLIT_NAMES)} or '{ALL_SPLITS}'")
    if len(set(names)) != len(names):
        raise BadInput(f"splits: {names} names a split twice")
    return names


def select_split_patches(store: str, splits: Sequence[str] | str, storage_options: dict | None = None
                         ) -> tuple[np.ndarray | None, dict | None]:
    """The patches of the archive's ``splits`` (e.g. ``["train"]``) and the archive's split record.

    Args:
        store: Archive path or fsspec URL.
        splits: Split names, or ``"all"`` (see :func:`check_split_names`).
        storage_options: fsspec options for a remote ``store``.

    Returns:
        ``(indices, record)``: the sorted int64 indices of every patch whose split code is one of
        ``splits``, whatever its status (intersect with the done patches yourself), and the split
        record. ``splits="all"``: indices ``None`` (no restriction) and the record if the archive
        has one, else ``None``.

    Raises:
        BadInput: invalid ``splits``, or splits are named and the archive has no split (the
            message names the archive and the command that writes one).
    """
    names = check_split_names(splits)
    found = read_split(str(store), storage_options)
    if names == ALL_SPLITS:
        return None, (None if found is None else found[1])
    if found is None:
        raise BadInput(f"{store}: the archive has no train/val/test split; create one with "
                       f"`softcon split {store}` or use splits '{ALL_SPLITS}' for every done patch "
                       f"(`splits: {ALL_SPLITS}` in a training config, `--split {ALL_SPLITS}` for softcon stats)")
    codes, record = found
    wanted = np.array([SPLIT_CODES[n] for n in names], dtype=np.asarray(codes).dtype)
    return np.flatnonzero(np.isin(np.asarray(codes), wanted)).astype(np.int64), record
