"""The torch data set over the (patch, season) items of a Zarr archive, its per-item randomness and collate.

Items are ``(patch, season)`` pairs of the patches whose ``status`` is done (optionally restricted to
``indices`` and to the archive's ``splits``, :mod:`train.data.splits`), in patch-then-season order.
Each item reads only the chunks it needs (``arr[p, s]`` is one chunk), converts to float32,
normalises, then applies the view transforms. Item dicts hold tensors, ints and the band names;
:func:`collate_items` (the collate of :func:`train.data.loader.build_dataloader`) batches them,
keeping the band names once per batch:

========================  ==================================================================
``image``                 (C, H, W) float32 — ``view_mode="single"``
``view1``, ``view2``      (C, H, W) float32 — two-view modes
``label_fraction``        (9,) float32 of the season of view 1 (``image`` in single mode)
``multi_hot``             (9,) float32 of the season of view 1
``dw_probability``        (9,) float32 mean Dynamic World class probability of the season of view 1
                          (only with ``labels="dw_probability"``; :mod:`pipeline.reference`)
``location``              int, patch index in the archive
``season``                int, season of view 1 / the image
``season2``               int, season of view 2 (``seasonal`` only)
``index``                 int, item index in the data set
``bands``                 tuple of the band names of view 1 / the image (``band_names``)
``bands2``                tuple of the band names of view 2 (``cross_modal`` only)
========================  ==================================================================

View modes: ``same_season`` (two augmentations of one image), ``seasonal`` (view 2 from another
season of the same location, drawn uniformly among the other seasons with the item's generator:
SeCo / SSL4EO-S12 ``season=augment`` positives), ``cross_modal`` (view 1 = ``modality``, view 2 =
``modality2`` of the same location and season), ``single`` (one view, e.g. for evaluation).

The zarr group is opened lazily, once per process (re-opened after a fork; never pickled), so the
data set works with any number of DataLoader workers and with local paths or fsspec URLs.

Randomness: each item draws everything (the other season, every augmentation) from its own
:class:`torch.Generator`, seeded from ``(seed, epoch, index)`` (:func:`item_seed`). The result of
``ds[i]`` is thus a pure function of (archive, seed, epoch, i): independent of workers, batch
composition and order, so a run resumed at epoch e sees exactly the augmentations of an
uninterrupted one. :meth:`ArchiveDataset.set_epoch` sets the epoch; ``ds[(i, epoch)]`` names it
per index (what :class:`~train.data.loader.EpochSampler` yields).

Label vectors: ``labels`` names the one a label-aware loss takes (:data:`LABEL_KEYS` maps it to the
item key, :attr:`ArchiveDataset.label_key`): ``multi_hot`` (default), ``fraction`` or
``dw_probability`` (the archive's optional mean Dynamic World class probabilities, written when the
manifest's ``labels.dw_probabilities`` is on; an archive without them is a :class:`BadInput`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from pipeline.archive import Archive
from pipeline.errors import BadInput
from pipeline.reference import DW_PROBABILITY
from pipeline.split_selection import ALL_SPLITS, check_split_names, select_split_patches
from pipeline.store import ArchiveLayout
from train.data.normalization import Normalizer


def item_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed that is a pure function of (seed, epoch, index) (numpy SeedSequence mixing)."""
    words = np.random.SeedSequence([int(seed) % (1 << 64), int(epoch) % (1 << 64), int(index) % (1 << 64)])
    lo, hi = words.generate_state(2, np.uint32)
    return (int(hi) << 32 | int(lo)) & ((1 << 63) - 1)


#: The item key of each label vector a run can train on (``loss.labels`` of the training config).
LABEL_KEYS = {"multi_hot": "multi_hot", "fraction": "label_fraction", DW_PROBABILITY: DW_PROBABILITY}


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(item_seed(seed, epoch, index))
    return g


ViewTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def _identity(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return x


class ArchiveDataset(Dataset):
    """Torch data set over the (patch, season) items of the done patches of a Zarr archive.

    Parameters
    ----------
    store: archive path or fsspec URL (``file://…``, ``s3://…``); ``storage_options`` for fsspec.
    modality: image variable of view 1 / the image (``s2_l1c``, ``s2_l2a``, ``s1_grd``).
    view_mode: ``same_season`` | ``seasonal`` | ``cross_modal`` | ``single`` (module docstring).
    transforms: ``t(x, g)`` applied after normalisation, or a pair ``(t_view1, t_view2)`` (e.g. the
        two MoCo v3 presets). ``None``: no augmentation.
    transforms2: transforms of view 2 in ``cross_modal`` mode (default: those of view 2 above).
    normalizer: a :class:`Normalizer` (subset by band name when it has names), ``None`` for the
        published statistics (set A) of the selected bands, ``False`` for raw float32 values.
    modality2, bands2, normalizer2: the same for the second modality of ``cross_modal``.
    bands: subset of the modality's band names (order kept as given); default all.
    indices: patch indices to use; intersected with the done patches.
    splits: names of the archive's splits to use (e.g. ``["train"]``), intersected with the done
        patches (and ``indices``); ``"all"``: every done patch, recorded as such; ``None``: the
        split is not read. :class:`BadInput` when splits are named and the archive has none.
    seed: base seed of the per-item generators.
    labels: the label vector a label-aware loss takes, a key of :data:`LABEL_KEYS`; ``dw_probability``
        adds that vector to every item (:class:`BadInput` when the archive has none).
    """

    VIEW_MODES = ("same_season", "seasonal", "cross_modal", "single")

    def __init__(self, store: str, modality: str = "s2_l1c", view_mode: str = "same_season",
                 transforms: ViewTransform | tuple[ViewTransform, ViewTransform] | None = None,
                 transforms2: ViewTransform | None = None, normalizer: Normalizer | None | bool = None,
                 storage_options: dict | None = None, indices: Sequence[int] | np.ndarray | None = None,
                 seed: int = 0, modality2: str = "s1_grd", bands: Sequence[str] | None = None,
                 bands2: Sequence[str] | None = None, normalizer2: Normalizer | None | bool = None,
                 splits: Sequence[str] | str | None = None, labels: str = "multi_hot"):
        if view_mode not in self.VIEW_MODES:
            raise ValueError(f"view_mode must be one of {self.VIEW_MODES}, got {view_mode!r}")
        if labels not in LABEL_KEYS:
            raise ValueError(f"labels must be one of {list(LABEL_KEYS)}, got {labels!r}")
        self.labels, self.label_key = labels, LABEL_KEYS[labels]
        self.archive = Archive.of(store, storage_options)
        self.store, self.storage_options = self.archive.path, self.archive.storage_options
        self.modality, self.view_mode, self.seed, self.epoch = modality, view_mode, int(seed), 0
        self.modality2 = modality2 if view_mode == "cross_modal" else None

        group = self.archive.open()
        if labels == DW_PROBABILITY and DW_PROBABILITY not in group:
            raise BadInput(f"{self.store}: the archive has no {DW_PROBABILITY} (mean Dynamic World class "
                           "probabilities); curate it with labels.dw_probabilities: true in the manifest, or "
                           "train with loss.labels: multi_hot")
        self.n_seasons = ArchiveLayout.from_attrs(group.attrs).n_seasons
        self.band_names, self._band_idx = self._select_bands(group, modality, bands)
        self.normalizer = self._pick_normalizer(normalizer, modality, self.band_names)
        if self.modality2 is not None:
            self.band_names2, self._band_idx2 = self._select_bands(group, self.modality2, bands2)
            self.normalizer2 = self._pick_normalizer(normalizer2, self.modality2, self.band_names2)
        else:
            self.band_names2, self._band_idx2, self.normalizer2 = None, None, None
        if view_mode == "seasonal" and self.n_seasons < 2:
            raise ValueError("seasonal views need an archive with at least two seasons")

        done = self.archive.done_patches()
        if indices is not None:
            done = np.intersect1d(done, np.asarray(indices, dtype=np.int64))
        self.splits: list[str] | str | None = None
        self.split_record: dict | None = None
        if splits is not None:
            self.splits = check_split_names(splits)
            in_splits, self.split_record = select_split_patches(self.store, self.splits, storage_options)
            if in_splits is not None:
                done = np.intersect1d(done, in_splits)
        self.patches = done.astype(np.int64)
        S = self.n_seasons
        self.items = np.stack([np.repeat(self.patches, S), np.tile(np.arange(S), len(self.patches))], axis=1)

        if isinstance(transforms, (tuple, list)):
            if len(transforms) != 2:
                raise ValueError("transforms must be one callable or a pair (view1, view2)")
            self.transforms1, self.transforms2 = (_identity if t is None else t for t in transforms)
        else:
            self.transforms1 = self.transforms2 = _identity if transforms is None else transforms
        if view_mode == "cross_modal" and transforms2 is not None:
            self.transforms2 = transforms2

        self._arrays: dict[str, Any] | None = None  # opened lazily, once per process
        self._pid: int | None = None
        self._label_cache: dict[int, tuple[np.ndarray, ...]] = {}

    def training_data(self) -> dict[str, Any]:
        """What this data set trains on, as a pretraining run records it (``training_data.json``):
        the archive, its manifest hash, the splits (``"all"`` when not restricted by split), the
        archive's split record (or ``None``), and the ``patch_id`` of each patch, in index order.
        """
        ids = self.archive.patch_ids()
        return {"archive": self.store, "archive_manifest_hash": self.archive.manifest_hash,
                "splits": ALL_SPLITS if self.splits is None else self.splits,
                "split_record": self.split_record, "n_patches": len(self.patches),
                "patch_ids": [str(ids[p]) for p in self.patches]}

    # -- construction helpers
    @staticmethod
    def _select_bands(group, modality: str, bands: Sequence[str] | None) -> tuple[list[str], np.ndarray | None]:
        if modality not in group:
            raise KeyError(f"the archive has no {modality} variable")
        archive_bands = list(group.attrs["band_names"][modality])
        if bands is None:
            return archive_bands, None
        missing = [b for b in bands if b not in archive_bands]
        if missing:
            raise KeyError(f"{modality}: band(s) {missing} not in the archive ({archive_bands})")
        idx = np.array([archive_bands.index(b) for b in bands])
        return list(bands), (None if list(bands) == archive_bands else idx)

    @staticmethod
    def _pick_normalizer(normalizer, modality: str, bands: list[str]) -> Normalizer | None:
        if normalizer is False:
            return None
        if normalizer is None or normalizer is True:
            return Normalizer.published(modality, bands)
        if normalizer.bands is not None and list(normalizer.bands) != bands:
            return normalizer.subset(bands)
        if len(normalizer) != len(bands):
            raise ValueError(f"normaliser has {len(normalizer)} channels, {modality} selection {len(bands)}")
        return normalizer

    # -- process-local zarr handles
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arrays"], state["_pid"], state["_label_cache"] = None, None, {}  # never pickle open handles
        return state

    def _open(self) -> dict[str, Any]:
        if self._arrays is None or self._pid != os.getpid():
            self._label_cache = {}
            group = self.archive.open()
            names = [self.modality, "label_fraction", "multi_hot"]
            if self.labels == DW_PROBABILITY:
                names.append(DW_PROBABILITY)
            if self.modality2 is not None:
                names.append(self.modality2)
            self._arrays = {n: group[n] for n in names}
            self._pid = os.getpid()
        return self._arrays

    def _labels(self, arrays, p: int, s: int) -> tuple[np.ndarray, ...]:
        """Label vectors of (p, s): fraction, multi-hot (and the DW probability when asked for). The small
        label arrays are read one whole chunk (a shard's patches) at a time and kept for the life of the
        process (9 float32 + 9 uint8, + 9 float32, per patch-season).
        """
        names = ["label_fraction", "multi_hot"] + ([DW_PROBABILITY] if self.labels == DW_PROBABILITY else [])
        step = int(arrays["label_fraction"].chunks[0])
        start = p - p % step
        block = self._label_cache.get(start)
        if block is None:
            block = tuple(np.asarray(arrays[n][start:start + step], np.float32) for n in names)
            self._label_cache[start] = block
        return tuple(b[p - start, s] for b in block)

    # -- torch API
    def set_epoch(self, epoch: int) -> None:
        """Epoch used for the per-item generators of indices given without an epoch."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _read(self, arrays, modality: str, band_idx, normalizer, p: int, s: int) -> torch.Tensor:
        raw = arrays[modality][p, s]  # one chunk: (C_all, H, W)
        if band_idx is not None:
            raw = raw[band_idx]
        x = torch.from_numpy(np.array(raw, dtype=np.float32))  # a fresh float32 copy, scaled in place
        if normalizer is None:
            return x
        return normalizer.apply_(x, check_nan=raw.dtype.kind == "f")

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), self.epoch)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        p, s = (int(v) for v in self.items[index])
        arrays = self._open()
        g = item_generator(self.seed, epoch, index)
        out: dict[str, Any] = {}
        x1 = self._read(arrays, self.modality, self._band_idx, self.normalizer, p, s)
        if self.view_mode == "single":
            out["image"] = self.transforms1(x1, g)
        else:
            if self.view_mode == "seasonal":
                # another season of the same location, uniformly among the S − 1 others
                s2 = int(torch.randint(0, self.n_seasons - 1, (), generator=g))
                s2 += s2 >= s
                x2 = self._read(arrays, self.modality, self._band_idx, self.normalizer, p, s2)
            elif self.view_mode == "cross_modal":
                x2 = self._read(arrays, self.modality2, self._band_idx2, self.normalizer2, p, s)
            else:
                x2 = x1
            out["view1"] = self.transforms1(x1, g)
            out["view2"] = self.transforms2(x2, g)
        fraction, multi_hot, *probability = self._labels(arrays, p, s)
        out["label_fraction"], out["multi_hot"] = torch.from_numpy(fraction.copy()), torch.from_numpy(multi_hot.copy())
        if probability:
            out[DW_PROBABILITY] = torch.from_numpy(probability[0].copy())
        out["location"], out["season"], out["index"] = p, s, index
        out["bands"] = tuple(self.band_names)
        if self.view_mode == "seasonal":
            out["season2"] = s2
        elif self.view_mode == "cross_modal":
            out["bands2"] = tuple(self.band_names2)
        return out

    def __repr__(self) -> str:
        return (f"ArchiveDataset({self.store!r}, modality={self.modality!r}, view_mode={self.view_mode!r}, "
                f"items={len(self)}, patches={len(self.patches)}, bands={len(self.band_names)})")


NAME_KEYS = ("bands", "bands2")


def collate_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of item dicts, except the band-name keys (:data:`NAME_KEYS`): a batch holds
    them once, as a list of names (the items of one data set share them).
    """
    names = {k: list(items[0][k]) for k in NAME_KEYS if k in items[0]}
    batch = default_collate([{k: v for k, v in item.items() if k not in names} for item in items])
    batch.update(names)
    return batch
