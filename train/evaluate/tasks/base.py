"""What every downstream task shares: the item contract, id lists, seeded subsets and item groups.

Every task is a ``torch.utils.data.Dataset`` whose items are dicts::

    {"image": float32 tensor (C, H, W), "label": ..., "id": str}

``image`` holds the bands of the task's ``modality`` (see :mod:`train.evaluate.tasks.bands`). ``label`` is a float32
multi-hot vector for multi-label tasks and a Python ``int`` class index for single-label tasks, so the default collate
gives a ``LongTensor``.

Conventions (documented choices)
--------------------------------
Subsets
    ``fraction`` (every task) keeps ``round(fraction × n)`` items (at least one), chosen by
    ``numpy.random.default_rng(fraction_seed)`` and returned in their original order; the same
    rule as :func:`subsample`. Use it on the training split for "BigEarthNet-10 %"-style runs.
"""

from __future__ import annotations

import bz2
import functools
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from pipeline.bands import MODALITY_BANDS


def _parse_name_lines(lines: Iterable[str]) -> frozenset[str]:
    names = set()
    for line in lines:
        for field in line.strip().split(","):
            field = field.strip().strip('"')
            if field:
                names.add(field)
    return frozenset(names)


@functools.lru_cache(maxsize=16)
def _read_name_file(path: str, mtime_ns: int) -> frozenset[str]:  # mtime in the key: an edited file is re-read
    opener = bz2.open if path.endswith(".bz2") else open
    with opener(path, "rt") as fh:
        return _parse_name_lines(fh)


def read_id_list(ids: str | os.PathLike | Iterable[str] | None) -> frozenset[str] | None:
    """Patch names from an iterable or a (optionally ``.bz2``) CSV/text file; every field of every line counts.

    So both the official one-column lists and ``s2_name,s1_name`` pair files work for either modality.
    """
    if ids is None:
        return None
    if isinstance(ids, (str, os.PathLike)):
        path = Path(ids).resolve()
        return _read_name_file(str(path), path.stat().st_mtime_ns)
    return frozenset(str(i) for i in ids)


def subsample_indices(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded subset of ``round(fraction × n)`` items (at least one when ``n > 0``)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0 or n == 0:
        return np.arange(n)
    k = min(n, max(1, int(math.floor(fraction * n + 0.5))))
    chosen = np.random.default_rng(seed).permutation(n)[:k]
    return np.sort(chosen)


def subsample(dataset: Dataset, fraction: float, seed: int = 0) -> Subset:
    """A deterministic ``fraction`` of ``dataset`` (e.g. 0.1 of a training split), as a ``Subset``."""
    return Subset(dataset, subsample_indices(len(dataset), fraction, seed).tolist())  # type: ignore[arg-type]


def item_groups(dataset: Dataset) -> np.ndarray:
    """The group of every item of ``dataset`` in its order (int64, ``len(dataset)``).

    An :class:`EvalTask` gives its :attr:`EvalTask.groups`; a ``Subset`` (possibly nested) the
    groups of the items it selects; any other data set one group per item (its index). Items
    sharing a group are correlated (the seasons of one archive location): resample and split them
    together (bootstrap by location, retrieval queries vs database).
    """
    if isinstance(dataset, Subset):
        return item_groups(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    groups = getattr(dataset, "groups", None)
    if groups is None:
        return np.arange(len(dataset), dtype=np.int64)  # type: ignore[arg-type]
    return np.asarray(groups, dtype=np.int64)


class EvalTask(Dataset):
    """Common part of the tasks: modality check, ``fraction`` subsetting, item → sample dict."""

    task_name: ClassVar[str] = ""
    classes: tuple[str, ...] = ()
    multilabel: bool = True
    allowed_modalities: ClassVar[tuple[str, ...]] = tuple(MODALITY_BANDS)

    def __init__(self, modality: str, fraction: float = 1.0, fraction_seed: int = 0):
        if modality not in self.allowed_modalities:
            raise ValueError(f"{type(self).__name__}: modality must be one of {self.allowed_modalities}, "
                             f"got {modality!r}")
        self.modality = modality
        self.fraction = fraction
        self.fraction_seed = fraction_seed
        self._items: list[Any] = []

    def _set_items(self, items: list[Any]) -> None:
        keep = subsample_indices(len(items), self.fraction, self.fraction_seed)
        self._items = [items[i] for i in keep]

    @property
    def bands(self) -> tuple[str, ...]:
        return MODALITY_BANDS[self.modality]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[str]:
        return [self._item_id(it) for it in self._items]

    @property
    def groups(self) -> np.ndarray:
        """One int64 group per item: items of a group are not independent (the seasons of one
        location). Default: every item is its own group (its index), for data sets of independent
        patches such as BigEarthNet and EuroSAT; :class:`ArchiveTask` groups by location.
        """
        return np.arange(len(self._items), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self._items[index]
        image = self._load_image(item)
        return {"image": torch.from_numpy(image), "label": self._label_of(item), "id": self._item_id(item)}

    def label(self, index: int) -> torch.Tensor | int:
        """The label of one item without reading its image (for label statistics and probes)."""
        return self._label_of(self._items[index])

    # subclasses implement these three
    def _item_id(self, item: Any) -> str:
        raise NotImplementedError

    def _load_image(self, item: Any) -> np.ndarray:
        raise NotImplementedError

    def _label_of(self, item: Any) -> torch.Tensor | int:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(modality={self.modality!r}, n={len(self)}, classes={self.num_classes})"


def _list_dirs(path: Path) -> list[str]:
    with os.scandir(path) as it:
        return sorted(e.name for e in it if e.is_dir())
