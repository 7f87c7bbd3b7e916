"""What the Earth Engine source asks: collection filters, image selection, pixel and label images.

* **Selection** (one ``computeValue`` per modality, the "image metadata" call). Sentinel-2 L1C
  ``COPERNICUS/S2`` and L2A ``COPERNICUS/S2_SR`` (``*_HARMONIZED`` when ``options.harmonized``), each
  ``filterBounds(footprint)`` · ``filterDate(window.start, window.end)`` ·
  ``CLOUDY_PIXEL_PERCENTAGE < max``; Sentinel-1 ``COPERNICUS/S1_GRD`` with ``instrumentMode == "IW"`` and
  ``transmitterReceiverPolarisation`` containing both VV and VH (no orbit filter, as the SSL4EO-S12
  download scripts, github.com/zhu-xlab/SSL4EO-S12). The three modalities are searched independently.
  In each, the collection is sorted by ``system:time_start`` descending and the first (most recent)
  image is kept (:func:`most_recent`); the call returns the collection size and that image's
  ``system:index``, ``system:time_start`` and cloud % (S2) or orbit pass (S1), parsed by
  :func:`parse_selection`. Property names are those of the Earth Engine data catalog pages of
  COPERNICUS/S2_HARMONIZED, COPERNICUS/S2_SR_HARMONIZED and COPERNICUS/S1_GRD.
* **Pixels** of the selected *asset* (``<collection>/<system:index>``), so that the pixels are those of
  the image whose id was recorded, even if new scenes are ingested between the two calls
  (:func:`pixel_image`). Bands whose native resolution differs from the grid's (S2 20 m and 60 m bands
  at a 10 m grid) are ``.resample("bilinear")`` (or ``"bicubic"``; none for ``"nearest"``); bands at the
  grid resolution keep Earth Engine's default nearest-neighbour lookup, so their DN are unchanged when
  the grid is aligned with the tile. Our choice: the SSL4EO-S12 data loaders resize every band to
  264 × 264 at load time with bilinear interpolation (Wang et al. 2022, arXiv:2211.07044, and
  github.com/zhu-xlab/SSL4EO-S12); resampling on the server gives the same kind of interpolation, in
  the UTM grid. Masked pixels (outside the scene, S1 border noise, …) are unmasked to a no-data value
  and bands cast to the archive dtypes (S2 ``uint16`` DN, S1 ``float32`` dB, as served by
  ``COPERNICUS/S1_GRD``). S2 no-data is 0 (SSL4EO-S12 nodata; real DN are ≥ 1). S1 no-data must be NaN
  in the archive, but the request cannot carry NaN and 0 dB is a real backscatter value, so S1 is
  unmasked to the sentinel :data:`S1_NODATA_DB` (−9999 dB) and :func:`s1_nodata_to_nan` turns every
  value below :data:`S1_FLOOR_DB` (−500 dB), the sentinel included, and every non-finite value into
  NaN. No backscatter can be there: ``10·log10`` of the smallest positive float32 is about −458 dB. The
  unmask is the last operation before the cast, after any resampling, so the sentinel is never
  interpolated.
* **Labels**: ``GOOGLE/DYNAMICWORLD/V1`` filtered by ``system:index`` equal to the selected L1C image's
  index (the catalog page documents that DW images are named after their L1C source),
  ``select("label")``. A count call (:func:`dw_info`) checks whether it exists; when it does not (or no
  L1C image passed the filter), the per-pixel mode of ``label`` over the DW images of the window is
  used instead (:func:`dw_label_image`, method ``"mode"``). Unlabelled pixels are ``LABEL_NODATA``.
* **Label probabilities** (when the manifest's ``labels.dw_probabilities`` is on): the 9 per-class
  probability bands of the same DW image (:data:`DW_PROBABILITY_BANDS`, named as the classes, in
  class order; Brown et al. 2022, "Dynamic World, Near real-time global 10 m land use land cover
  mapping", Scientific Data 9, 251, and the catalog page of GOOGLE/DYNAMICWORLD/V1), on the same grid
  (:func:`dw_probability_image`); for method ``"mode"`` their per-pixel mean over the window's DW images
  (our choice: the soft counterpart of the mode). Masked pixels are unmasked to
  :data:`DW_PROBABILITY_NODATA` (−1, no probability is negative) and left out of the patch's mean.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import ee
import numpy as np

from pipeline.bands import DW_CLASSES, LABEL_NODATA, MODALITY_DTYPES, S2_NATIVE_RESOLUTION_M
from pipeline.grid import PatchGrid
from pipeline.seasons import SeasonWindow
from pipeline.sources.base import CorruptData
from pipeline.sources.earthengine.transport import clip

DYNAMIC_WORLD = "GOOGLE/DYNAMICWORLD/V1"
S1_GRD = "COPERNICUS/S1_GRD"
S1_NATIVE_RESOLUTION_M = 10
#: Value S1 masked pixels are unmasked to on the server (our choice; turned into NaN on decoding).
S1_NODATA_DB = -9999.0
#: S1 values below this (dB) are no-data: no float32 linear backscatter is below ≈ −458 dB.
S1_FLOOR_DB = -500.0
#: Value masked pixels are unmasked to, per modality (S2: SSL4EO-S12's 0 DN).
NODATA_VALUE = {"s2_l1c": 0, "s2_l2a": 0, "s1_grd": S1_NODATA_DB}

#: Dynamic World's per-class probability bands, in class (``label``) order.
DW_PROBABILITY_BANDS: tuple[str, ...] = DW_CLASSES
#: Value masked probability pixels are unmasked to (our choice; no probability is negative).
DW_PROBABILITY_NODATA = -1.0

#: Earth Engine resampling per ``resampling`` option (None: default nearest-neighbour lookup).
EE_RESAMPLING = {"nearest": None, "bilinear": "bilinear", "cubic": "bicubic"}


def s2_collection_id(level: str, harmonized: bool = False) -> str:
    """Collection of Sentinel-2 ``level`` ("l1c" or "l2a"); the non-harmonised ones match SSL4EO-S12."""
    base = {"l1c": "COPERNICUS/S2", "l2a": "COPERNICUS/S2_SR"}[level]
    return base + "_HARMONIZED" if harmonized else base


def collection_id(modality: str, harmonized: bool = False) -> str:
    """Earth Engine collection serving ``modality`` ("s2_l1c", "s2_l2a", "s1_grd")."""
    if modality == "s1_grd":
        return S1_GRD
    return s2_collection_id(modality[3:], harmonized)


def footprint(grid: PatchGrid) -> ee.Geometry:
    """The patch as a planar rectangle in its UTM CRS."""
    west, south, east, north = grid.bounds
    return ee.Geometry.Rectangle([west, south, east, north], grid.crs, False)


def s2_collection(level: str, grid: PatchGrid, window: SeasonWindow, max_cloudy_pixel_percentage: float,
                  harmonized: bool = False) -> ee.ImageCollection:
    """Sentinel-2 images over the patch in the window with ``CLOUDY_PIXEL_PERCENTAGE < max``."""
    return (ee.ImageCollection(s2_collection_id(level, harmonized))
            .filterBounds(footprint(grid))
            .filterDate(window.start.isoformat(), window.end.isoformat())
            .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", float(max_cloudy_pixel_percentage))))


def s1_collection(grid: PatchGrid, window: SeasonWindow) -> ee.ImageCollection:
    """Sentinel-1 GRD IW images with both VV and VH over the patch in the window."""
    return (ee.ImageCollection(S1_GRD)
            .filterBounds(footprint(grid))
            .filterDate(window.start.isoformat(), window.end.isoformat())
            .filter(ee.Filter.eq("instrumentMode", "IW"))
            .filter(ee.Filter.listContains("transmitterReceiverPolarisation", "VV"))
            .filter(ee.Filter.listContains("transmitterReceiverPolarisation", "VH")))


def modality_collection(modality: str, grid: PatchGrid, window: SeasonWindow,
                        max_cloudy_pixel_percentage: float, harmonized: bool = False) -> ee.ImageCollection:
    if modality == "s1_grd":
        return s1_collection(grid, window)
    return s2_collection(modality[3:], grid, window, max_cloudy_pixel_percentage, harmonized)


def most_recent(collection: ee.ImageCollection) -> ee.ImageCollection:
    """The most recent image as a 0- or 1-image collection: sort by ``system:time_start`` descending, first.

    ``limit(1)`` after the sort is ``first()`` that stays well defined on an empty window (an empty
    collection instead of a null image, on which any property lookup fails).
    """
    return collection.sort("system:time_start", False).limit(1)


def selection_info(collection: ee.ImageCollection, properties: tuple[str, ...] = ()) -> ee.Dictionary:
    """One value describing the selection: collection size and the most recent image's properties.

    Every entry but ``count`` is a list holding the value for the most recent image (empty when the
    collection is empty, so that the call never fails on an empty window). ``properties`` adds lists
    for extra properties (an image lacking the property gives an empty list).
    """
    latest = most_recent(collection)
    info = {
        "count": collection.size(),
        "ids": latest.aggregate_array("system:index"),
        "times": latest.aggregate_array("system:time_start"),
    }
    for prop in properties:
        info[prop] = latest.aggregate_array(prop)
    return ee.Dictionary(info)


def native_resolution(modality: str, band: str) -> float:
    if modality == "s1_grd":
        return S1_NATIVE_RESOLUTION_M
    return S2_NATIVE_RESOLUTION_M[band]


def pixel_image(modality: str, image_index: str, bands: tuple[str, ...], grid_resolution: float,
                resampling: str = "bilinear", harmonized: bool = False, nodata: float | None = None) -> ee.Image:
    """The selected asset's ``bands`` (canonical order), resampled, unmasked to ``nodata`` (default the
    modality's :data:`NODATA_VALUE`: 0 for S2, the :data:`S1_NODATA_DB` sentinel for S1), cast to the
    archive dtype.
    """
    if resampling not in EE_RESAMPLING:
        raise ValueError(f"resampling must be one of {sorted(EE_RESAMPLING)}, got {resampling!r}")
    image = ee.Image(f"{collection_id(modality, harmonized)}/{image_index}")
    method = EE_RESAMPLING[resampling]
    same = [b for b in bands if native_resolution(modality, b) == grid_resolution]
    other = [b for b in bands if native_resolution(modality, b) != grid_resolution]
    if method is None or not other:
        out = image.select(list(bands))
    elif not same:
        out = image.select(list(bands)).resample(method)
    else:
        out = image.select(same).addBands(image.select(other).resample(method)).select(list(bands))
    out = out.unmask(NODATA_VALUE[modality] if nodata is None else nodata, False)
    return out.toUint16() if MODALITY_DTYPES[modality] == "uint16" else out.toFloat()


def s1_nodata_to_nan(data: np.ndarray, floor_db: float = S1_FLOOR_DB) -> np.ndarray:
    """S1 dB pixels as served for :func:`pixel_image` → the archive's convention, in place: NaN for every
    no-data pixel (the :data:`S1_NODATA_DB` sentinel, anything below ``floor_db``, non-finite values);
    valid values unchanged. Returns ``data``.
    """
    with np.errstate(invalid="ignore"):
        data[~np.isfinite(data) | (data < floor_db)] = np.nan
    return data


def dw_collection(grid: PatchGrid, window: SeasonWindow) -> ee.ImageCollection:
    """Dynamic World images over the patch in the window."""
    return (ee.ImageCollection(DYNAMIC_WORLD)
            .filterBounds(footprint(grid))
            .filterDate(window.start.isoformat(), window.end.isoformat()))


def dw_matched(l1c_index: str) -> ee.ImageCollection:
    """The Dynamic World image named like the L1C image (zero or one image)."""
    return ee.ImageCollection(DYNAMIC_WORLD).filter(ee.Filter.eq("system:index", l1c_index))


def dw_info(l1c_index: str | None, grid: PatchGrid, window: SeasonWindow) -> ee.Dictionary:
    """Counts deciding the label method: ``matched`` (DW images named like the L1C one) and ``window``."""
    info: dict[str, Any] = {"window": dw_collection(grid, window).size()}
    if l1c_index is not None:
        info["matched"] = dw_matched(l1c_index).size()
    return ee.Dictionary(info)


def _dw_bands(method: str, l1c_index: str | None, grid: PatchGrid, window: SeasonWindow,
              bands: str | list[str]) -> ee.Image | ee.ImageCollection:
    """``bands`` of the matched DW image (an image), or of every DW image of the window (a collection)."""
    if method == "matched":
        if l1c_index is None:
            raise ValueError("the matched label needs the L1C system:index")
        return ee.Image(dw_matched(l1c_index).first()).select(bands)
    if method == "mode":
        return dw_collection(grid, window).select(bands)
    raise ValueError(f"unknown label method {method!r}")


def dw_label_image(method: str, l1c_index: str | None, grid: PatchGrid, window: SeasonWindow) -> ee.Image:
    """``label`` of the matched DW image, or its per-pixel mode over the window; nodata → LABEL_NODATA."""
    label = _dw_bands(method, l1c_index, grid, window, "label")
    if method == "mode":
        label = label.mode().rename(["label"])
    return label.unmask(LABEL_NODATA, False).toUint8()


def dw_probability_image(method: str, l1c_index: str | None, grid: PatchGrid, window: SeasonWindow) -> ee.Image:
    """The 9 probability bands of the image :func:`dw_label_image` labels from (matched), or their per-pixel
    mean over the window (mode); masked → :data:`DW_PROBABILITY_NODATA`, float32.
    """
    bands = list(DW_PROBABILITY_BANDS)
    probability = _dw_bands(method, l1c_index, grid, window, bands)
    if method == "mode":
        probability = probability.mean().rename(bands)
    return probability.unmask(DW_PROBABILITY_NODATA, False).toFloat()



@dataclass(frozen=True)
class Selected:
    """The most recent image of one modality's collection (``image_index`` None when it is empty)."""

    image_index: str | None  # None when the collection is empty
    count: int
    acquired: dt.date | None
    cloud_pct: float
    orbit_pass: str | None



def no_image_message(name: str, harmonized: bool, max_cloud: float, where: str) -> str:
    col = collection_id(name, harmonized)
    if name == "s1_grd":
        return f"earthengine: no {col} IW image with VV+VH intersecting {where}"
    return f"earthengine: no {col} image with CLOUDY_PIXEL_PERCENTAGE < {max_cloud:g}% intersecting {where}"


def as_count(value: Any, context: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise CorruptData(f"{context}: expected an image count, got {value!r}")
    return int(value)


def parse_selection(info: Any, extra_prop: str, context: str) -> Selected:
    if not isinstance(info, dict):
        raise CorruptData(f"{context}: expected a dictionary, got {type(info).__name__}")
    count = as_count(info.get("count"), context)
    ids, times, extras = info.get("ids"), info.get("times"), info.get(extra_prop, [])
    if not isinstance(ids, list) or not isinstance(times, list) or not isinstance(extras, list):
        raise CorruptData(f"{context}: malformed image metadata {clip(repr(info), 200)}")
    if count == 0 or not ids:
        if count != 0 or ids:
            raise CorruptData(f"{context}: inconsistent image metadata {clip(repr(info), 200)}")
        return Selected(None, 0, None, float("nan"), None)
    if len(ids) != 1 or len(times) != 1 or not isinstance(ids[0], str) or not ids[0]:
        raise CorruptData(f"{context}: malformed image metadata {clip(repr(info), 200)}")
    try:
        acquired = dt.datetime.fromtimestamp(float(times[0]) / 1000.0, tz=dt.timezone.utc).date()
    except (TypeError, ValueError, OverflowError, OSError):
        raise CorruptData(f"{context}: bad system:time_start {times[0]!r}") from None
    cloud, orbit = float("nan"), None
    if extra_prop == "CLOUDY_PIXEL_PERCENTAGE" and extras:
        if not isinstance(extras[0], (int, float)) or isinstance(extras[0], bool):
            raise CorruptData(f"{context}: bad CLOUDY_PIXEL_PERCENTAGE {extras[0]!r}")
        cloud = float(extras[0])
    elif extras and isinstance(extras[0], str):
        orbit = extras[0]
    return Selected(ids[0], count, acquired, cloud, orbit)
