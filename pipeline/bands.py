"""Band, class and palette constants shared by every stage (manifest → pipeline → archive → train).

Canonical orders follow SSL4EO-S12 (Wang et al., arXiv:2211.07044; the dataset code of
github.com/zhu-xlab/SSL4EO-S12): B8A sits directly after B8.
"""

from __future__ import annotations

S2_L1C_BANDS: tuple[str, ...] = (
    "B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12",
)
S2_L2A_BANDS: tuple[str, ...] = tuple(b for b in S2_L1C_BANDS if b != "B10")
S1_GRD_BANDS: tuple[str, ...] = ("VV", "VH")

#: Native ground sampling distance (m) of each Sentinel-2 band.
S2_NATIVE_RESOLUTION_M: dict[str, int] = {
    "B1": 60, "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20,
    "B8": 10, "B8A": 20, "B9": 60, "B10": 60, "B11": 20, "B12": 20,
}

#: Modality name → canonical band order. These names are used as archive variable names.
MODALITY_BANDS: dict[str, tuple[str, ...]] = {
    "s2_l1c": S2_L1C_BANDS,
    "s2_l2a": S2_L2A_BANDS,
    "s1_grd": S1_GRD_BANDS,
}
#: Archive dtype of each modality: S2 as uint16 DN (reflectance × 10000), S1 as float32 dB.
MODALITY_DTYPES: dict[str, str] = {"s2_l1c": "uint16", "s2_l2a": "uint16", "s1_grd": "float32"}

#: Dynamic World V1 ``label`` classes in DW index order (0..8).
DW_CLASSES: tuple[str, ...] = (
    "water", "trees", "grass", "flooded_vegetation", "crops",
    "shrub_and_scrub", "built", "bare", "snow_and_ice",
)
#: Dynamic World palette, same order as :data:`DW_CLASSES` (hex colours for ids 4–8 are UNVERIFIED).
DW_PALETTE: tuple[str, ...] = (
    "#419bdf", "#397d49", "#88b053", "#7a87c6", "#e49635",
    "#dfc35a", "#c4281b", "#a59b8f", "#b39fe1",
)
#: Label-map value for pixels without a label (clouds, shadows, outside the product).
LABEL_NODATA: int = 255
