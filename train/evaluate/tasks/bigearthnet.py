"""BigEarthNet v1 and v2 (reBEN) as downstream tasks.

Conventions (documented choices)
--------------------------------
Exclusion lists (BigEarthNet v1)
    With ``exclude_cloud_snow=True`` the official lists ``patches_with_cloud_and_shadow.csv.bz2``
    and ``patches_with_seasonal_snow.csv.bz2`` (one S2 patch name per line, default location
    ``<root>/lists/``) are applied. S1 patches are excluded through the S2 patch named in their
    JSON (``corresponding_s2_patch``).

reBEN labels (BigEarthNet v2)
    From ``<root>/metadata.parquet`` when it exists (column ``labels``: 19-class names; also
    ``split``, ``s1_name`` and the ``contains_seasonal_snow`` / ``contains_cloud_or_shadow``
    flags; the companion ``metadata_for_patches_with_snow_cloud_or_shadow.parquet`` is read for
    the excluded patches when ``exclude_cloud_snow=False``). Otherwise, and always for
    ``nomenclature=43``, from the pixel reference map
    ``Reference_Maps/<tile-product>/<patch>/<patch>_reference_map.tif``: a class is present when at
    least ``min_pixels`` (default 1) pixels carry one of its CLC codes; 0 is nodata and codes
    outside :data:`CLC_TABLE` are ignored. Without metadata an S1 patch has no label source
    (its S2 partner is unknown).

The 19/43-class nomenclature is described in :mod:`train.evaluate.tasks.nomenclature`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from pipeline.bands import S2_L2A_BANDS
from train.evaluate.tasks.bands import _read_band, assemble_bands, missing_band_fill
from train.evaluate.tasks.base import EvalTask, _list_dirs, read_id_list
from train.evaluate.tasks.nomenclature import (
    BEN19_LABELS,
    _nomenclature_classes,
    ben_labels,
    multi_hot,
    reference_map_labels,
)

log = logging.getLogger(__name__)

def _ben_file_band(band: str) -> str:
    """Canonical band name → BigEarthNet file suffix (``B1`` → ``B01``, ``B8A`` stays)."""
    return band if band == "B8A" else f"B{int(band[1:]):02d}"


class _BigEarthNetTask(EvalTask):
    """What BigEarthNet v1 and v2 share: nomenclature, size and ``B10`` fill set-up, band reading.

    Items must have ``id`` (the patch name) and ``folder`` (holding ``<id>_<band>.tif``).
    """

    #: Data set and version, as reports name it (:meth:`describe`).
    version: ClassVar[str] = ""

    def __init__(self, root: str | os.PathLike, modality: str, nomenclature: int, size: int,
                 missing_fill: str | float, fraction: float, fraction_seed: int):
        super().__init__(modality, fraction, fraction_seed)
        self.root = Path(root)
        self.classes = _nomenclature_classes(nomenclature)
        self.nomenclature = nomenclature
        self.size = size
        self.fill = missing_band_fill(missing_fill)
        self.exclude_cloud_snow = False

    def describe(self) -> dict[str, Any]:
        """What a report needs to make the numbers comparable: version, bands and units, labels.

        ``{"dataset", "modality", "bands", "band_convention", "labels", "cloud_snow_excluded"}``; the
        input statistics are the evaluation's choice (its normaliser), not the reader's.
        """
        if self.modality == "s1_grd":
            conv = "Sentinel-1 GRD VV, VH backscatter in dB (as distributed)"
        else:
            conv = ("Sentinel-2 L2A surface reflectance as distributed (DN = reflectance × 10000; 12 bands, "
                    "no B10)")
            if "B10" in self.bands:
                conv += (f"; 13-band L1C layout: B10 inserted as the constant {self.fill['B10']:g} DN, the "
                         "other bands stay L2A")
        conv += (f"; every band at {self.size} × {self.size} px (bilinear on pixel centres, antialiased when "
                 "shrinking; bands already at that size unchanged)")
        return {"dataset": self.version, "modality": self.modality, "bands": list(self.bands),
                "band_convention": conv,
                "labels": f"BigEarthNet-{self.nomenclature} nomenclature ({self.num_classes} classes)",
                "cloud_snow_excluded": self.exclude_cloud_snow}

    def _item_id(self, item: Any) -> str:
        return item.id

    def _load_image(self, item: Any) -> np.ndarray:
        if self.modality == "s1_grd":
            arrays = {b: _read_band(item.folder / f"{item.id}_{b}.tif") for b in ("VV", "VH")}
        else:
            arrays = {b: _read_band(item.folder / f"{item.id}_{_ben_file_band(b)}.tif")
                      for b in self.bands if b in S2_L2A_BANDS}
        return assemble_bands(arrays, self.bands, self.fill, self.size)


# ============================================================================ BigEarthNet v1
@dataclass(frozen=True)
class _BenItem:
    id: str
    folder: Path


class BigEarthNetV1(_BigEarthNetTask):
    """BigEarthNet v1.0 (S2 L2A patches and BigEarthNet-MM S1 patches) as a multi-label task.

    Layout under ``root``: ``BigEarthNet-v1.0/<patch>/<patch>_B01..B12,B8A.tif`` plus
    ``<patch>_labels_metadata.json`` (``labels``: CORINE names), ``BigEarthNet-S1-v1.0/<patch>/
    <patch>_{VV,VH}.tif`` plus the JSON, and ``lists/`` with the official exclusion lists.

    Args:
        root: Folder holding the two archive folders (and ``lists/``).
        modality: ``"s2_l2a"`` (12 bands), ``"s2_l1c"`` (13 bands, ``B10`` filled) or ``"s1_grd"``.
        split_ids: Patch names to keep (iterable, or a CSV/text file such as the official split CSVs).
        exclude_cloud_snow: Drop the patches of the official cloud/shadow and seasonal-snow lists.
        nomenclature: 19 (official new nomenclature) or 43 (original CORINE labels).
        size: Output side in pixels (120 = native 10 m grid).
        missing_fill: ``"mean"``, ``"zero"`` or a number: value of ``B10`` for ``s2_l1c``.
        exclusion_lists: Paths of the exclusion lists (default ``<root>/lists/*.csv.bz2``).
        fraction, fraction_seed: Keep a seeded fraction of the patches (module docstring).
    """

    task_name = "bigearthnet_v1"
    version = "BigEarthNet v1.0 (Sumbul et al., IGARSS 2019; S1 patches of BigEarthNet-MM, Sumbul et al. 2021)"
    S2_DIR = "BigEarthNet-v1.0"
    S1_DIR = "BigEarthNet-S1-v1.0"
    EXCLUSION_LISTS = ("patches_with_cloud_and_shadow.csv.bz2", "patches_with_seasonal_snow.csv.bz2")

    def __init__(self, root: str | os.PathLike, modality: str = "s2_l2a",
                 split_ids: str | os.PathLike | Iterable[str] | None = None, exclude_cloud_snow: bool = True,
                 nomenclature: int = 19, size: int = 120, missing_fill: str | float = "mean",
                 exclusion_lists: Sequence[str | os.PathLike] | None = None,
                 fraction: float = 1.0, fraction_seed: int = 0):
        super().__init__(root, modality, nomenclature, size, missing_fill, fraction, fraction_seed)
        base = self.root / (self.S1_DIR if modality == "s1_grd" else self.S2_DIR)
        if not base.is_dir():
            raise FileNotFoundError(f"{base} not found (BigEarthNet v1 layout expected under {self.root})")
        names = _list_dirs(base)
        wanted = read_id_list(split_ids)
        if wanted is not None:
            names = [n for n in names if n in wanted]
        self.excluded: list[str] = []
        self.exclude_cloud_snow = exclude_cloud_snow
        if exclude_cloud_snow:
            lists = exclusion_lists or [self.root / "lists" / f for f in self.EXCLUSION_LISTS]
            missing = [str(p) for p in lists if not Path(p).is_file()]
            if missing:
                raise FileNotFoundError(f"exclusion list(s) not found: {missing}; pass exclusion_lists= "
                                        "or exclude_cloud_snow=False")
            bad: frozenset[str] = frozenset().union(*(read_id_list(p) for p in lists))  # type: ignore[arg-type]
            keep = []
            for n in names:
                s2_name = n if modality != "s1_grd" else self._s1_partner(base / n)
                (self.excluded if s2_name in bad else keep).append(n)
            names = keep
        self._set_items([_BenItem(n, base / n) for n in names])

    @staticmethod
    def _metadata(folder: Path) -> dict:
        with open(folder / f"{folder.name}_labels_metadata.json") as fh:
            return json.load(fh)

    def _s1_partner(self, folder: Path) -> str:
        meta = self._metadata(folder)
        if "corresponding_s2_patch" not in meta:
            raise ValueError(f"{folder}: JSON has no corresponding_s2_patch; cannot apply the exclusion lists")
        return meta["corresponding_s2_patch"]

    def corine_labels(self, index: int) -> list[str]:
        """The original CORINE label names of one patch (its JSON ``labels``)."""
        return list(self._metadata(self._items[index].folder)["labels"])

    def _label_of(self, item: _BenItem) -> torch.Tensor:
        return torch.from_numpy(ben_labels(self._metadata(item.folder)["labels"], self.nomenclature))


# ============================================================================ BigEarthNet v2 (reBEN)
@dataclass(frozen=True)
class _RebenItem:
    id: str
    folder: Path
    names: tuple[str, ...] | None  # 19-class names from metadata.parquet
    ref_map: Path | None


def _reben_s2_folder(root: Path, patch: str) -> Path:
    return root / "BigEarthNet-S2" / patch.rsplit("_", 2)[0] / patch


def _reben_s1_folder(root: Path, patch: str) -> Path:
    return root / "BigEarthNet-S1" / patch.rsplit("_", 3)[0] / patch


def _reben_ref_map(root: Path, s2_patch: str) -> Path:
    return root / "Reference_Maps" / s2_patch.rsplit("_", 2)[0] / s2_patch / f"{s2_patch}_reference_map.tif"


class BigEarthNetV2(_BigEarthNetTask):
    """reBEN (BigEarthNet v2.0): ``BigEarthNet-S2/<tile-product>/<patch>/<patch>_Bxx.tif``,
    ``BigEarthNet-S1/<product>/<patch>/<patch>_{VV,VH}.tif``, ``Reference_Maps/...`` and
    (normally) ``metadata.parquet``. Labels: module docstring.

    Args:
        root: Folder holding the reBEN folders and parquet files.
        modality, size, missing_fill, nomenclature, fraction, fraction_seed: as :class:`BigEarthNetV1`.
        split: ``"train"``, ``"validation"`` or ``"test"`` (needs the metadata); None = all.
        split_ids: Patch names to keep (S2 names, or S1 names for ``s1_grd``).
        exclude_cloud_snow: Leave out patches flagged with seasonal snow or cloud/shadow (needs the
            metadata; without it nothing can be excluded).
        metadata: ``"auto"`` (``<root>/metadata.parquet`` if present), a path, or None (ignore it).
        require_labels: Drop patches without a label source (True, default) or keep them with an
            all-zero label vector (False; e.g. for embedding extraction or layout checks).
        min_pixels: Reference-map pixels needed for a class to be present.
    """

    task_name = "bigearthnet_v2"
    version = "reBEN, BigEarthNet v2.0 (Clasen et al. 2024)"
    SNOW_CLOUD_METADATA = "metadata_for_patches_with_snow_cloud_or_shadow.parquet"

    def __init__(self, root: str | os.PathLike, modality: str = "s2_l2a", split: str | None = None,
                 split_ids: str | os.PathLike | Iterable[str] | None = None, exclude_cloud_snow: bool = True,
                 nomenclature: int = 19, size: int = 120, missing_fill: str | float = "mean",
                 metadata: str | os.PathLike | None = "auto", require_labels: bool = True, min_pixels: int = 1,
                 fraction: float = 1.0, fraction_seed: int = 0):
        super().__init__(root, modality, nomenclature, size, missing_fill, fraction, fraction_seed)
        self.min_pixels = min_pixels
        self.exclude_cloud_snow = exclude_cloud_snow
        table = self._read_metadata(metadata, exclude_cloud_snow)
        if split is not None and table is None:
            raise ValueError("split= needs reBEN's metadata.parquet (it holds the official splits)")
        items = self._items_from_table(table, split) if table is not None else self._items_from_layout()
        wanted = read_id_list(split_ids)
        if wanted is not None:
            items = [it for it in items if it.id in wanted]
        self.n_unlabelled = sum(1 for it in items if not self._has_label(it))
        if require_labels and self.n_unlabelled:
            log.warning("%s: %d patches without a label source left out", self.root, self.n_unlabelled)
            if self.n_unlabelled == len(items):
                raise ValueError(f"{self.root}: no patch has labels (no metadata.parquet and no reference maps); "
                                 "pass require_labels=False to read them unlabelled")
            items = [it for it in items if self._has_label(it)]
        self._set_items(items)

    def _read_metadata(self, metadata: str | os.PathLike | None, exclude_cloud_snow: bool):
        if metadata is None:
            return None
        path = self.root / "metadata.parquet" if metadata == "auto" else Path(metadata)
        if not path.is_file():
            if metadata != "auto":
                raise FileNotFoundError(path)
            return None
        import pandas as pd

        tables = [pd.read_parquet(path)]
        extra = path.parent / self.SNOW_CLOUD_METADATA
        if not exclude_cloud_snow and extra.is_file():
            tables.append(pd.read_parquet(extra))
        table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
        if exclude_cloud_snow:
            for flag in ("contains_seasonal_snow", "contains_cloud_or_shadow"):
                if flag in table.columns:
                    table = table[~table[flag].astype(bool)]
        return table

    def _items_from_table(self, table, split: str | None) -> list[_RebenItem]:
        if split is not None:
            table = table[table["split"] == split]
        items = []
        missing = 0
        for row in table.itertuples(index=False):
            s2 = str(row.patch_id)
            if self.modality == "s1_grd":
                pid, folder = str(row.s1_name), _reben_s1_folder(self.root, str(row.s1_name))
            else:
                pid, folder = s2, _reben_s2_folder(self.root, s2)
            if not folder.is_dir():
                missing += 1
                continue
            ref = _reben_ref_map(self.root, s2)
            items.append(_RebenItem(pid, folder, tuple(row.labels), ref if ref.is_file() else None))
        if missing:
            log.warning("%s: %d metadata rows have no patch folder; left out", self.root, missing)
        return sorted(items, key=lambda it: it.id)

    def _items_from_layout(self) -> list[_RebenItem]:
        sub = "BigEarthNet-S1" if self.modality == "s1_grd" else "BigEarthNet-S2"
        base = self.root / sub
        if not base.is_dir():
            raise FileNotFoundError(f"{base} not found (reBEN layout expected under {self.root})")
        items = []
        for product in _list_dirs(base):
            for patch in _list_dirs(base / product):
                ref = None if self.modality == "s1_grd" else _reben_ref_map(self.root, patch)
                items.append(_RebenItem(patch, base / product / patch, None,
                                        ref if ref is not None and ref.is_file() else None))
        return sorted(items, key=lambda it: it.id)

    def _has_label(self, item: _RebenItem) -> bool:
        return item.ref_map is not None or (item.names is not None and self.nomenclature == 19)

    def _label_of(self, item: _RebenItem) -> torch.Tensor:
        if item.names is not None and self.nomenclature == 19:
            vec = multi_hot(item.names, BEN19_LABELS)
        elif item.ref_map is not None:
            vec = reference_map_labels(item.ref_map, self.nomenclature, self.min_pixels)
        else:
            vec = np.zeros(self.num_classes, np.float32)
        return torch.from_numpy(vec)
