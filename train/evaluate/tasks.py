"""Downstream evaluation tasks: BigEarthNet v1 / v2 (reBEN), EuroSAT and the curated archive itself.

Every task is a ``torch.utils.data.Dataset`` whose items are dicts::

    {"image": float32 tensor (C, H, W), "label": ..., "id": str}

``image`` holds the bands of the requested ``modality`` in the canonical order of
:mod:`pipeline.bands` (L1C ``B1..B8, B8A, B9, B10, B11, B12``; L2A the same without ``B10``;
S1 ``VV, VH``) and in the data's own units: S2 digital numbers (reflectance × 10000) and S1
backscatter in dB. Nothing is normalised here: normalisation belongs to the backbone's weights.
``label`` is a float32 multi-hot vector for multi-label tasks (BigEarthNet, ``ArchiveTask`` with
``target="multi_hot"``) and a Python ``int`` class index for single-label tasks (EuroSAT,
``ArchiveTask`` with ``target="dominant"``), so the default collate gives a ``LongTensor``.

Conventions (documented choices)
--------------------------------
Resampling
    Bands whose grid differs from ``size × size`` (BigEarthNet 20 m bands are 60 × 60, 60 m bands
    20 × 20) are resampled with **bilinear interpolation on pixel centres** (half-pixel
    convention, edges clamped): ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)``, in float32, without rounding. This is what GDAL's bilinear and
    ``cv2.resize(INTER_LINEAR)`` compute (GDAL then rounds to the source integer type; we keep
    the fraction). When shrinking (``size`` smaller than the band), the antialiased variant
    (``antialias=True``) is used so that every source pixel contributes. Bands already at
    ``size × size`` are returned exactly as stored.

Missing bands
    BigEarthNet (v1 and v2) is Sentinel-2 **L2A**: it has no ``B10`` (cirrus). When the backbone
    expects ``s2_l1c`` (13 bands), ``B10`` is inserted at its canonical index (10) as a constant so
    that every other channel lines up with the pretraining order. ``missing_fill="mean"``
    (default) uses :data:`L1C_B10_MEAN_DN` = 22.1 DN, the SSL4EO-S12 L1C ``B10`` mean (50k-patch
    statistics published with SSL4EO-S12), so after the backbone's mean/std normalisation the
    channel is ~0, the in-distribution "no information" value; ``missing_fill="zero"`` inserts 0
    DN; a number inserts that value. The other S2 values stay L2A surface reflectance: the
    13-band layout is a compatibility layout, not an L1C product. The reverse case (an L1C source
    such as EuroSAT read as ``s2_l2a``) drops ``B10``. Any other missing band is an error.

BigEarthNet nomenclature
    :data:`CLC_TABLE` lists the 43 CORINE level-3 classes used by BigEarthNet v1 (all CLC
    level-3 classes except 335 "Glaciers and perpetual snow"), with their CLC code and their
    class in the 19-class nomenclature of Sumbul et al., "BigEarthNet Deep Learning Models with a
    New Class-Nomenclature for Remote Sensing Image Understanding" (2020). Following that
    nomenclature, 11 classes have no 19-class equivalent and are **dropped** from the labels:
    122 road/rail networks, 123 port areas, 124 airports, 131 mineral extraction sites,
    132 dump sites, 133 construction sites, 141 green urban areas, 142 sport and leisure
    facilities, 332 bare rock, 334 burnt areas and 423 intertidal flats. A patch whose labels
    are all dropped gets an all-zero vector (the official 19-class split lists leave such
    patches out). An unknown label name raises ``ValueError`` rather than being dropped.

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

Subsets
    ``fraction`` (every task) keeps ``round(fraction × n)`` items (at least one), chosen by
    ``numpy.random.default_rng(fraction_seed)`` and returned in their original order; the same
    rule as :func:`subsample`. Use it on the training split for "BigEarthNet-10 %"-style runs.
"""

from __future__ import annotations

import bz2
import functools
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from pipeline.bands import DW_CLASSES, MODALITY_BANDS, S2_L2A_BANDS

log = logging.getLogger(__name__)

# ============================================================================ nomenclature
#: (CLC level-3 code, BigEarthNet-43 label, BigEarthNet-19 label or None when dropped), in CLC code order.
CLC_TABLE: tuple[tuple[int, str, str | None], ...] = (
    (111, "Continuous urban fabric", "Urban fabric"),
    (112, "Discontinuous urban fabric", "Urban fabric"),
    (121, "Industrial or commercial units", "Industrial or commercial units"),
    (122, "Road and rail networks and associated land", None),
    (123, "Port areas", None),
    (124, "Airports", None),
    (131, "Mineral extraction sites", None),
    (132, "Dump sites", None),
    (133, "Construction sites", None),
    (141, "Green urban areas", None),
    (142, "Sport and leisure facilities", None),
    (211, "Non-irrigated arable land", "Arable land"),
    (212, "Permanently irrigated land", "Arable land"),
    (213, "Rice fields", "Arable land"),
    (221, "Vineyards", "Permanent crops"),
    (222, "Fruit trees and berry plantations", "Permanent crops"),
    (223, "Olive groves", "Permanent crops"),
    (231, "Pastures", "Pastures"),
    (241, "Annual crops associated with permanent crops", "Permanent crops"),
    (242, "Complex cultivation patterns", "Complex cultivation patterns"),
    (243, "Land principally occupied by agriculture, with significant areas of natural vegetation",
     "Land principally occupied by agriculture, with significant areas of natural vegetation"),
    (244, "Agro-forestry areas", "Agro-forestry areas"),
    (311, "Broad-leaved forest", "Broad-leaved forest"),
    (312, "Coniferous forest", "Coniferous forest"),
    (313, "Mixed forest", "Mixed forest"),
    (321, "Natural grassland", "Natural grassland and sparsely vegetated areas"),
    (322, "Moors and heathland", "Moors, heathland and sclerophyllous vegetation"),
    (323, "Sclerophyllous vegetation", "Moors, heathland and sclerophyllous vegetation"),
    (324, "Transitional woodland/shrub", "Transitional woodland, shrub"),
    (331, "Beaches, dunes, sands", "Beaches, dunes, sands"),
    (332, "Bare rock", None),
    (333, "Sparsely vegetated areas", "Natural grassland and sparsely vegetated areas"),
    (334, "Burnt areas", None),
    (411, "Inland marshes", "Inland wetlands"),
    (412, "Peatbogs", "Inland wetlands"),
    (421, "Salt marshes", "Coastal wetlands"),
    (422, "Salines", "Coastal wetlands"),
    (423, "Intertidal flats", None),
    (511, "Water courses", "Inland waters"),
    (512, "Water bodies", "Inland waters"),
    (521, "Coastal lagoons", "Marine waters"),
    (522, "Estuaries", "Marine waters"),
    (523, "Sea and ocean", "Marine waters"),
)

#: The 43 BigEarthNet v1 labels, in CLC code order (index = position in a 43-class multi-hot).
BEN43_LABELS: tuple[str, ...] = tuple(name for _, name, _ in CLC_TABLE)
#: The 19 classes of the BigEarthNet-19 nomenclature, in their official order.
BEN19_LABELS: tuple[str, ...] = (
    "Urban fabric",
    "Industrial or commercial units",
    "Arable land",
    "Permanent crops",
    "Pastures",
    "Complex cultivation patterns",
    "Land principally occupied by agriculture, with significant areas of natural vegetation",
    "Agro-forestry areas",
    "Broad-leaved forest",
    "Coniferous forest",
    "Mixed forest",
    "Natural grassland and sparsely vegetated areas",
    "Moors, heathland and sclerophyllous vegetation",
    "Transitional woodland, shrub",
    "Beaches, dunes, sands",
    "Inland wetlands",
    "Coastal wetlands",
    "Inland waters",
    "Marine waters",
)
BEN43_TO_BEN19: dict[str, str | None] = {name: new for _, name, new in CLC_TABLE}
CLC_CODE_TO_BEN43: dict[int, str] = {code: name for code, name, _ in CLC_TABLE}
CLC_CODE_TO_BEN19: dict[int, str | None] = {code: new for code, _, new in CLC_TABLE}

#: The 10 EuroSAT classes, sorted (label index = position).
EUROSAT_CLASSES: tuple[str, ...] = (
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial",
    "Pasture", "PermanentCrop", "Residential", "River", "SeaLake",
)
#: Band order inside the EuroSAT MS GeoTIFFs (B8A last).
EUROSAT_FILE_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B9", "B10", "B11", "B12", "B8A",
)

#: SSL4EO-S12 (v1.0) Sentinel-2 L1C mean of B10 in DN, from the dataset's published 50k-patch
#: statistics (22.10). Fill value of the missing B10 channel with ``missing_fill="mean"``.
L1C_B10_MEAN_DN: float = 22.1

_check = sorted({v for v in BEN43_TO_BEN19.values() if v is not None})
assert len(CLC_TABLE) == 43 and len(BEN19_LABELS) == 19 and _check == sorted(BEN19_LABELS)
del _check


def ben43_to_ben19(labels: Iterable[str]) -> list[str]:
    """Map BigEarthNet-43 (CORINE) label names to 19-class names, in 19-class order; drops unmapped ones."""
    out = set()
    for name in labels:
        if name not in BEN43_TO_BEN19:
            raise ValueError(f"unknown BigEarthNet-43 label {name!r}")
        new = BEN43_TO_BEN19[name]
        if new is not None:
            out.add(new)
    return [c for c in BEN19_LABELS if c in out]


def multi_hot(names: Iterable[str], classes: Sequence[str]) -> np.ndarray:
    """float32 presence vector over ``classes``; an unknown name raises ``ValueError``."""
    index = {c: i for i, c in enumerate(classes)}
    vec = np.zeros(len(classes), np.float32)
    for name in names:
        if name not in index:
            raise ValueError(f"unknown class {name!r} (expected one of {len(classes)} classes)")
        vec[index[name]] = 1.0
    return vec


def _nomenclature_classes(nomenclature: int) -> tuple[str, ...]:
    if nomenclature == 19:
        return BEN19_LABELS
    if nomenclature == 43:
        return BEN43_LABELS
    raise ValueError(f"nomenclature must be 19 or 43, got {nomenclature!r}")


def ben_labels(corine_labels: Iterable[str], nomenclature: int = 19) -> np.ndarray:
    """Multi-hot of BigEarthNet-43 label names in the 19- or 43-class nomenclature."""
    labels = list(corine_labels)
    if nomenclature == 19:
        return multi_hot(ben43_to_ben19(labels), BEN19_LABELS)
    return multi_hot(labels, _nomenclature_classes(nomenclature))


def reference_map_labels(ref_map: str | os.PathLike | np.ndarray, nomenclature: int = 19,
                         min_pixels: int = 1) -> np.ndarray:
    """Multi-hot of a reBEN pixel reference map (CLC level-3 codes; 0 = nodata; other codes ignored)."""
    if isinstance(ref_map, np.ndarray):
        codes = ref_map
    else:
        with rasterio.open(ref_map) as src:
            codes = src.read(1)
    values, counts = np.unique(codes, return_counts=True)
    present = [int(v) for v, n in zip(values, counts) if n >= min_pixels and int(v) in CLC_CODE_TO_BEN43]
    if nomenclature == 19:
        names = {CLC_CODE_TO_BEN19[c] for c in present} - {None}
        return multi_hot(names, BEN19_LABELS)
    return multi_hot((CLC_CODE_TO_BEN43[c] for c in present), _nomenclature_classes(nomenclature))


# ============================================================================ bands and pixels
def missing_band_fill(missing_fill: str | float) -> dict[str, float]:
    """Constant used for each band a source may lack (only ``B10``; see the module docstring)."""
    if missing_fill == "mean":
        return {"B10": L1C_B10_MEAN_DN}
    if missing_fill == "zero":
        return {"B10": 0.0}
    if isinstance(missing_fill, (int, float)) and not isinstance(missing_fill, bool):
        return {"B10": float(missing_fill)}
    raise ValueError(f"missing_fill must be 'mean', 'zero' or a number, got {missing_fill!r}")


def resample_bilinear(band: np.ndarray, size: int) -> np.ndarray:
    """One band to ``size × size``: bilinear on pixel centres (antialiased when shrinking), float32."""
    arr = np.asarray(band, dtype=np.float32)
    if arr.shape == (size, size):
        return arr
    t = torch.from_numpy(np.ascontiguousarray(arr))[None, None]
    shrink = size < arr.shape[0] or size < arr.shape[1]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out[0, 0].numpy()


def assemble_bands(arrays: Mapping[str, np.ndarray], bands: Sequence[str], fill: Mapping[str, float],
                   size: int) -> np.ndarray:
    """Stack ``arrays`` (band name → 2-D array) in the order ``bands`` at ``size × size``.

    A band absent from ``arrays`` but present in ``fill`` becomes that constant; any other absent
    band raises ``KeyError``. Bands of ``arrays`` not listed in ``bands`` are dropped.
    """
    out = np.empty((len(bands), size, size), np.float32)
    for i, b in enumerate(bands):
        if b in arrays:
            out[i] = resample_bilinear(arrays[b], size)
        elif b in fill:
            out[i] = fill[b]
        else:
            raise KeyError(f"band {b} is not available in this source and has no fill rule")
    return out


def _read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _ben_file_band(band: str) -> str:
    """Canonical band name → BigEarthNet file suffix (``B1`` → ``B01``, ``B8A`` stays)."""
    return band if band == "B8A" else f"B{int(band[1:]):02d}"


# ============================================================================ id lists and subsets
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


# ============================================================================ base class
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
        patches such as BigEarthNet and EuroSAT; :class:`ArchiveTask` groups by location."""
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


# ============================================================================ BigEarthNet (v1 and v2)
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


# ============================================================================ EuroSAT
_EUROSAT_NAME = re.compile(r"^([A-Za-z]+)_(\d+)$")


class EuroSAT(EvalTask):
    """EuroSAT MS: ``<root>/<Class>/<Class>_<n>.tif``, 13 bands in EuroSAT order (B8A last), 64 × 64.

    ``root`` may also be the folder that contains ``EuroSAT_MS``. The label is the index of the
    folder name in :data:`EUROSAT_CLASSES` (all 10 classes, sorted), so indices do not depend on
    which folders are present. ``split_ids`` takes file stems (``AnnualCrop_1``) or file names.
    """

    task_name = "eurosat"
    classes = EUROSAT_CLASSES
    multilabel = False
    allowed_modalities = ("s2_l1c", "s2_l2a")

    def __init__(self, root: str | os.PathLike, modality: str = "s2_l1c",
                 split_ids: str | os.PathLike | Iterable[str] | None = None, size: int = 64,
                 fraction: float = 1.0, fraction_seed: int = 0):
        super().__init__(modality, fraction, fraction_seed)
        root = Path(root)
        self.root = root / "EuroSAT_MS" if (root / "EuroSAT_MS").is_dir() else root
        self.size = size
        wanted = read_id_list(split_ids)
        if wanted is not None:
            wanted = frozenset(Path(w).stem for w in wanted)
        items = []
        for cls in _list_dirs(self.root):
            if cls not in EUROSAT_CLASSES:
                raise ValueError(f"{self.root / cls}: not a EuroSAT class folder (classes: {EUROSAT_CLASSES})")
            for f in (self.root / cls).glob("*.tif"):
                m = _EUROSAT_NAME.match(f.stem)
                if m is None or m.group(1) != cls:
                    raise ValueError(f"{f}: expected a file named {cls}_<n>.tif")
                if wanted is None or f.stem in wanted:
                    items.append((EUROSAT_CLASSES.index(cls), int(m.group(2)), f))
        if not items:
            raise FileNotFoundError(f"no EuroSAT GeoTIFFs under {self.root}")
        self._set_items(sorted(items))

    def _item_id(self, item) -> str:
        return item[2].stem

    def _label_of(self, item) -> int:
        return item[0]

    def _load_image(self, item) -> np.ndarray:
        with rasterio.open(item[2]) as src:
            data = src.read()
        if data.shape[0] != len(EUROSAT_FILE_BANDS):
            raise ValueError(f"{item[2]}: {data.shape[0]} bands, expected {len(EUROSAT_FILE_BANDS)}")
        arrays = dict(zip(EUROSAT_FILE_BANDS, data))
        return assemble_bands(arrays, self.bands, {}, self.size)


# ============================================================================ the curated archive
#: Exit hint of :class:`ArchiveTask` when an archive has no split.
SPLIT_COMMAND = "softcon split"


def archive_split(store: str | os.PathLike, storage_options: dict | None = None) -> tuple[np.ndarray, dict]:
    """The archive's per-patch split codes (``pipeline.split.SPLIT_CODES``) and its split record.

    Raises :class:`~pipeline.errors.BadInput` naming the archive and the command that writes a split
    (``softcon split STORE``) when the archive has none.
    """
    from pipeline.errors import BadInput
    from pipeline.split import read_split

    found = read_split(str(store), storage_options)
    if found is None:
        raise BadInput(f"{store}: the archive has no train/val/test split; write one with "
                       f"`{SPLIT_COMMAND} {store}`")
    codes, record = found
    return np.asarray(codes), dict(record)


def archive_split_patch_ids(store: str | os.PathLike, name: str, storage_options: dict | None = None) -> list[str]:
    """``patch_id`` of every patch (location) in split ``name`` of the archive, whatever its status or labels."""
    from pipeline.split import SPLIT_CODES
    from pipeline.store import open_group

    if name not in SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(SPLIT_CODES)}, got {name!r}")
    codes, _ = archive_split(store, storage_options)
    group = open_group(str(store), "r", storage_options)
    ids = np.asarray(group["patch_id"][:])
    return [str(x) for x in ids[codes == SPLIT_CODES[name]]]


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
    ``target="dominant"`` the class with the largest ``label_fraction`` (first on ties) as an int.
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
        from pipeline.store import STATUS_DONE, open_group

        if split not in SPLIT_CODES:
            raise ValueError(f"split must be one of {sorted(SPLIT_CODES, key=SPLIT_CODES.get)}, got {split!r}")
        if target not in ("multi_hot", "dominant"):
            raise ValueError(f"target must be 'multi_hot' or 'dominant', got {target!r}")
        self.store = str(store)
        self.storage_options = storage_options
        self.split, self.target = split, target
        self.multilabel = target == "multi_hot"
        self.fill = missing_band_fill(missing_fill)
        codes, record = archive_split(self.store, storage_options)
        #: The archive's split record (``pipeline.split``); its hash is part of the feature-cache key.
        self.split_record = {k: record.get(k) for k in ("version", "by", "val", "test", "seed", "grid_km", "hash")}
        group = open_group(self.store, "r", storage_options)
        self.manifest_hash = group.attrs.get("manifest_hash")
        self.classes = tuple(group.attrs.get("class_names", DW_CLASSES))
        stored = dict(group.attrs["band_names"])
        self.source = self._source_modality(modality, stored)
        self.source_bands = tuple(stored[self.source])
        self.size = int(group.attrs["layout"]["size"])
        status = group["status"][:]
        self.patch_ids = [str(x) for x in group["patch_id"][:]]
        self._multi_hot = np.asarray(group["multi_hot"][:])
        self._fraction = np.asarray(group["label_fraction"][:])
        labelled = self._multi_hot.any(axis=-1) & (status == STATUS_DONE)[:, None]  # (P, S)
        #: Patch (location) indices of this split with at least one labelled season, sorted.
        self.locations = np.flatnonzero(labelled.any(axis=1) & (codes == SPLIT_CODES[split]))
        items = [(int(p), int(s)) for p in self.locations for s in np.flatnonzero(labelled[p])]
        self._set_items(items)
        self._array = None

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
            from pipeline.store import open_group

            self._array = open_group(self.store, "r", self.storage_options)[self.source]
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


# ============================================================================ registry
#: Task name → class. ``build_task(name, **kwargs)`` passes the keyword arguments to the class.
TASKS: dict[str, type[EvalTask]] = {
    BigEarthNetV1.task_name: BigEarthNetV1,
    BigEarthNetV2.task_name: BigEarthNetV2,
    EuroSAT.task_name: EuroSAT,
    ArchiveTask.task_name: ArchiveTask,
}


def build_task(name: str, **kwargs: Any) -> EvalTask:
    """Instantiate a registered task by name (see :data:`TASKS`)."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; registered: {sorted(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = [
    "BEN19_LABELS",
    "BEN43_LABELS",
    "BEN43_TO_BEN19",
    "CLC_CODE_TO_BEN19",
    "CLC_TABLE",
    "EUROSAT_CLASSES",
    "EUROSAT_FILE_BANDS",
    "L1C_B10_MEAN_DN",
    "SPLIT_COMMAND",
    "TASKS",
    "ArchiveTask",
    "BigEarthNetV1",
    "BigEarthNetV2",
    "EuroSAT",
    "EvalTask",
    "archive_split",
    "archive_split_patch_ids",
    "assemble_bands",
    "ben43_to_ben19",
    "ben_labels",
    "build_task",
    "item_groups",
    "missing_band_fill",
    "multi_hot",
    "read_id_list",
    "reference_map_labels",
    "resample_bilinear",
    "subsample",
    "subsample_indices",
]
