"""The curated archive itself as a downstream task, on its own train/val/test split."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pipeline.archive import Archive
from pipeline.bands import DW_CLASSES
from pipeline.reference import REFERENCE, product_classes, product_variables
from pipeline.store import STATUS_DONE, ArchiveLayout
from train.evaluate.tasks.bands import assemble_bands, missing_band_fill
from train.evaluate.tasks.base import EvalTask


def archive_split(store: str | os.PathLike | Archive, storage_options: dict | None = None) -> tuple[np.ndarray, dict]:
    """The archive's per-patch split codes (``pipeline.split.SPLIT_CODES``) and its split record.

    Raises :class:`~pipeline.store_target.ArchiveError` (bad input) naming the archive and the command that
    writes a split (``softcon split STORE``) when the archive has none.
    """
    return Archive.of(store, storage_options).require_split()


def archive_split_patch_ids(store: str | os.PathLike | Archive, name: str,
                            storage_options: dict | None = None) -> list[str]:
    """``patch_id`` of every patch (location) in split ``name`` of the archive, whatever its status or labels."""
    archive = Archive.of(store, storage_options)
    ids = archive.patch_ids()
    return [ids[i] for i in archive.split_patches(name)]


#: What an :class:`ArchiveTask` item's label is (see the class docstring).
TARGETS = ("multi_hot", "dominant", "reference")


class ArchiveTask(EvalTask):
    """The curated Zarr archive (:mod:`pipeline.store`) as a downstream task.

    Items are (location, season) pairs of **done** locations whose season is **labelled**
    (``multi_hot`` not all zero, the same rule as :func:`pipeline.store.summarize`).

    Split: the **archive's own split** (variable ``split`` written by :mod:`pipeline.split`, by
    sampling city or by grid cell): ``split="train"`` (probes and kNN are fitted on it), ``"val"``
    (hyper-parameter selection) or ``"test"`` (scores). The split is per location, so all seasons
    of a location are on the same side, and it is the same split a pretraining run records, which is
    what lets evaluation detect a checkpoint trained on test patches. An archive without a split
    raises :class:`~pipeline.errors.BadInput` (write one with ``softcon split STORE``). A split may be
    empty (e.g. ``val`` of a tiny archive); callers that need items check ``len``.

    ``groups`` (one int per item): the location (patch) index, for resampling by location.

    ``target="multi_hot"`` gives the Dynamic World presence vector (float32, 9 classes);
    ``target="dominant"`` the class with the largest ``label_fraction`` (first on ties) as an int;
    ``target="reference"`` the presence vector of the archive's reference land-cover product
    (``reference_multi_hot``, :mod:`pipeline.reference`; the synthetic source's 19 CORINE-like
    classes, a nomenclature pretraining never sees), on the same items as ``multi_hot`` (so both
    targets score the same images). An archive without that product raises
    :class:`~pipeline.errors.BadInput`.
    ``modality`` is read from the archive; ``s2_l1c`` falls back to ``s2_l2a`` with ``B10`` filled
    (``missing_fill``) and ``s2_l2a`` to ``s2_l1c`` without ``B10`` when only the other is stored.
    Ids are ``<patch_id>_s<season>``.
    """

    task_name = "archive"
    classes = DW_CLASSES

    def __init__(self, store: str | os.PathLike, modality: str = "s2_l1c", split: str = "train",
                 target: str = "multi_hot", missing_fill: str | float = "mean",
                 storage_options: dict | None = None, fraction: float = 1.0, fraction_seed: int = 0):
        super().__init__(modality, fraction, fraction_seed)
        from pipeline.split import SPLIT_CODES

        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {sorted(SPLIT_CODES, key=SPLIT_CODES.get)}, got {split!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        self.archive = Archive.of(store, storage_options)
        self.store, self.storage_options = self.archive.path, self.archive.storage_options
        self.split, self.target = split, target
        self.multilabel = target != "dominant"
        self.fill = missing_band_fill(missing_fill)
        codes, record = self.archive.require_split()
        #: The archive's split record (``pipeline.split``); its hash is part of the feature-cache key.
        self.split_record = {k: record.get(k) for k in ("version", "by", "val", "test", "seed", "grid_km", "hash")}
        group = self.archive.open()
        layout = ArchiveLayout.from_attrs(group.attrs)
        self.manifest_hash = group.attrs.get("manifest_hash")
        self.classes = layout.classes
        self.source = self._source_modality(modality, layout.modalities)
        self.source_bands = layout.modalities[self.source]
        self.size = layout.size
        status = group["status"][:]
        self.patch_ids = [str(x) for x in group["patch_id"][:]]
        self._multi_hot = np.asarray(group["multi_hot"][:])
        self._fraction = np.asarray(group["label_fraction"][:])
        labelled = self._multi_hot.any(axis=-1) & (status == STATUS_DONE)[:, None]  # (P, S)
        if target == "reference":
            self.classes, self._multi_hot = self._reference(group)
            labelled &= self._multi_hot.any(axis=-1)
        #: Patch (location) indices of this split with at least one labelled season, sorted.
        self.locations = np.flatnonzero(labelled.any(axis=1) & (codes == SPLIT_CODES[split]))
        items = [(int(p), int(s)) for p in self.locations for s in np.flatnonzero(labelled[p])]
        self._set_items(items)
        self._array = None

    def _reference(self, group) -> tuple[tuple[str, ...], np.ndarray]:
        """The reference product's class names and multi-hot array (BadInput when the archive has none)."""
        from pipeline.errors import BadInput

        classes = product_classes(group, REFERENCE)
        if classes is None:
            raise BadInput(f"{self.store}: the archive has no reference land-cover product (reference_multi_hot); "
                           "only archives curated from the synthetic source carry one")
        return classes, np.asarray(group[product_variables(REFERENCE)[1]][:])

    @property
    def groups(self) -> np.ndarray:
        """Location (patch) index of every item: the seasons of one location form one group."""
        return np.asarray([p for p, _ in self._items], dtype=np.int64)

    @staticmethod
    def _source_modality(modality: str, stored: Mapping[str, Sequence[str]]) -> str:
        if modality in stored:
            return modality
        if modality == "s2_l1c" and "s2_l2a" in stored:
            return "s2_l2a"
        if modality == "s2_l2a" and "s2_l1c" in stored:
            return "s2_l1c"
        raise ValueError(f"modality {modality!r} is not in the archive (it holds {sorted(stored)})")

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_array"] = None  # reopened lazily in each DataLoader worker
        return state

    def _image_array(self):
        if self._array is None:
            self._array = self.archive.open()[self.source]
        return self._array

    def _item_id(self, item: tuple[int, int]) -> str:
        return f"{self.patch_ids[item[0]]}_s{item[1]}"

    def _label_of(self, item: tuple[int, int]) -> torch.Tensor | int:
        p, s = item
        if self.target == "dominant":
            return int(np.argmax(self._fraction[p, s]))
        return torch.from_numpy(self._multi_hot[p, s].astype(np.float32))

    def _load_image(self, item: tuple[int, int]) -> np.ndarray:
        p, s = item
        data = np.asarray(self._image_array()[p, s])
        arrays = dict(zip(self.source_bands, data))
        return assemble_bands(arrays, self.bands, self.fill, self.size)
