"""Crosswalks from other land-cover legends to the Dynamic World ``label`` classes.

They let real land-cover maps stand in for Dynamic World in tests and local runs: a source map is
turned into a DW label map with :func:`apply_crosswalk`, then into label vectors with
:func:`pipeline.labels.label_vectors`.

Each crosswalk is a CSV file in ``pipeline/data/crosswalk_<name>.csv``, read with
:mod:`importlib.resources`. Its columns are:

``source_code``
    Integer code in the source map (0–255).
``source_name``
    The source legend's name for the code.
``dw_index``
    Dynamic World class index 0–8 (order of :data:`pipeline.bands.DW_CLASSES`), or 255
    (:data:`~pipeline.bands.LABEL_NODATA`) for the source's nodata code.
``dw_class``
    The DW class name for ``dw_index`` (``nodata`` for 255). It is checked against ``dw_index``.
``note``
    Why an ambiguous mapping was chosen; empty where the mapping is direct.

Available crosswalks (:data:`CROSSWALKS`):

* ``eolearn_lulc``: the eo-learn Slovenia test-patch LULC legend (0 no data, 1 cultivated land,
  2 forest, …, 10 snow and ice). *tundra* has no DW equivalent; **our choice** is ``grass``
  (mostly low herbaceous cover; ``shrub_and_scrub`` was the alternative).
* ``esa_worldcover``: ESA WorldCover 10 m codes 10, 20, …, 100 as suggested in the shared-data
  provenance notes. *Moss and lichen* (100) is **our choice** ``grass`` (vegetated, not bare);
  *mangroves* (95) go with ``flooded_vegetation``.
* ``io_lulc_annual_v02``: Impact Observatory / Esri 10 m Annual Land Use Land Cover, 9-class legend
  (Planetary Computer collection ``io-lulc-annual-v02``,
  planetarycomputer.microsoft.com/dataset/io-lulc-annual-v02; class values as listed at
  docs.planet.com/data/public-data/other-datasets/impact-observatory-lulc-map: 1 water, 2 trees,
  4 flooded vegetation, 5 crops, 7 built area, 8 bare ground, 9 snow/ice, 10 clouds, 11 rangeland;
  0 no data; model: Karra et al. 2021, "Global land use/land cover with Sentinel-2 and deep
  learning", IGARSS 2021). *Clouds* (10) become no label, like no data. *Rangeland* (11) takes the
  place of the grass (3) and scrub/shrub (6) codes of the earlier 10-class legend, so it covers both
  DW ``grass`` and ``shrub_and_scrub``; **our choice** is ``grass`` (open grazing land). This
  crosswalk therefore cannot produce ``shrub_and_scrub`` (:data:`UNREACHABLE_CLASSES`). Another
  reading of rangeland is another crosswalk: a CSV in ``pipeline/data``, named in :data:`CROSSWALKS`, chosen with
  ``source.stac.landcover_crosswalk``.

These crosswalks are ours, not published by any of the sources or by SSL4EO-S12-ML. In every LUT,
codes without a row and the source's nodata code map to 255.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from pipeline.bands import DW_CLASSES, LABEL_NODATA

#: Names accepted by :func:`load_crosswalk`, :func:`crosswalk_lut` and :func:`apply_crosswalk`.
CROSSWALKS: tuple[str, ...] = ("eolearn_lulc", "esa_worldcover", "io_lulc_annual_v02")
#: DW classes a crosswalk cannot produce because its legend has no class for them (absent: it reaches all 9).
UNREACHABLE_CLASSES: dict[str, tuple[str, ...]] = {"io_lulc_annual_v02": ("shrub_and_scrub",)}

_COLUMNS = ("source_code", "source_name", "dw_index", "dw_class", "note")
_NODATA_NAME = "nodata"


@dataclass(frozen=True)
class CrosswalkRow:
    """One row of a crosswalk CSV."""

    source_code: int
    source_name: str
    dw_index: int  # 0..8, or LABEL_NODATA for the source's nodata code
    dw_class: str  # DW class name, or "nodata"
    note: str


def _check_name(name: str) -> None:
    if name not in CROSSWALKS:
        raise KeyError(f"unknown crosswalk {name!r}; available: {list(CROSSWALKS)}")


@lru_cache(maxsize=None)
def crosswalk_rows(name: str) -> tuple[CrosswalkRow, ...]:
    """All rows of crosswalk ``name`` as stored in its CSV, validated (nodata rows included)."""
    _check_name(name)
    fname = f"crosswalk_{name}.csv"
    text = resources.files("pipeline").joinpath("data", fname).read_text(encoding="utf-8")
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != _COLUMNS:
        raise ValueError(f"{fname}: columns must be {list(_COLUMNS)}, got {reader.fieldnames}")
    rows: list[CrosswalkRow] = []
    seen: set[int] = set()
    for line_no, rec in enumerate(reader, start=2):
        where = f"{fname} line {line_no}"
        try:
            code = int(rec["source_code"])
            dw = int(rec["dw_index"])
        except (TypeError, ValueError):
            raise ValueError(f"{where}: source_code and dw_index must be integers") from None
        if not 0 <= code <= 255:
            raise ValueError(f"{where}: source_code {code} outside 0..255")
        if code in seen:
            raise ValueError(f"{where}: duplicate source_code {code}")
        seen.add(code)
        dw_class = (rec["dw_class"] or "").strip()
        if dw == LABEL_NODATA:
            expected = _NODATA_NAME
        elif 0 <= dw < len(DW_CLASSES):
            expected = DW_CLASSES[dw]
        else:
            raise ValueError(f"{where}: dw_index {dw} is neither 0..{len(DW_CLASSES) - 1} nor {LABEL_NODATA}")
        if dw_class != expected:
            raise ValueError(f"{where}: dw_class {dw_class!r} does not match dw_index {dw} ({expected!r})")
        rows.append(CrosswalkRow(code, (rec["source_name"] or "").strip(), dw, dw_class,
                                 (rec["note"] or "").strip()))
    return tuple(rows)


def load_crosswalk(name: str) -> dict[int, int]:
    """Source code → DW class index (0–8) for every mapped code of crosswalk ``name``.

    The source's nodata code is not in the dict (it maps to :data:`LABEL_NODATA` in the LUT).
    """
    return {r.source_code: r.dw_index for r in crosswalk_rows(name) if r.dw_index != LABEL_NODATA}


def crosswalk_lut(name: str) -> np.ndarray:
    """A 256-entry uint8 look-up table: ``lut[source_code]`` = DW index, 255 where unmapped/nodata."""
    lut = np.full(256, LABEL_NODATA, dtype=np.uint8)
    for code, dw in load_crosswalk(name).items():
        lut[code] = dw
    return lut


def apply_crosswalk(array: np.ndarray, name: str) -> np.ndarray:
    """Turn a source land-cover map (any shape, integer dtype) into a DW label map (uint8).

    Values outside 0..255 (possible in uint16/int sources) are unmapped and become 255.
    """
    a = np.asarray(array)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"land-cover codes must be integers, got dtype {a.dtype}")
    lut = crosswalk_lut(name)
    if a.dtype == np.uint8:
        return lut[a]
    out = np.full(a.shape, LABEL_NODATA, dtype=np.uint8)
    in_range = (a >= 0) & (a <= 255)
    out[in_range] = lut[a[in_range].astype(np.intp)]
    return out
