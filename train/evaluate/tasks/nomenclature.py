"""Label nomenclatures of the downstream data sets: BigEarthNet (CORINE 43 and 19 classes) and EuroSAT.

Conventions (documented choices)
--------------------------------
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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import rasterio

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
