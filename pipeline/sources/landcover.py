"""Land-cover maps as a stand-in label source: any categorical GeoTIFF warped onto a target grid.

Dynamic World label rasters are not available offline, so local runs and tests can take their label
maps from another land-cover product (ESA WorldCover, the eo-learn Slovenia LULC map, …). A
:class:`LandCoverLabels` warps the map onto the patch grid with :func:`rasterio.warp.reproject`
(``nearest`` or ``mode``; categorical codes must never be interpolated) and turns the codes into
Dynamic World classes with a crosswalk from :mod:`pipeline.crosswalks`.

Order of operations (our choice): the **source codes** are warped first, then crosswalked. Warping
codes keeps ``mode`` meaningful for the source legend (two source codes that map to the same DW
class are counted separately, as the source's own majority would be) and lets GDAL skip the
source's nodata pixels.

Pixels outside the map, and pixels whose source value is the map's nodata or a code without a
crosswalk row, become :data:`~pipeline.bands.LABEL_NODATA` (255).

Targets are either a :class:`~pipeline.grid.PatchGrid` (UTM patch grid) or a :class:`RasterGrid`
(any CRS / affine / shape, e.g. a native EPSG:4326 SSL4EO-S12 patch footprint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.warp import Resampling, reproject, transform_bounds
from rasterio.windows import Window
from rasterio.windows import from_bounds as window_from_bounds

from pipeline.bands import DW_CLASSES, LABEL_NODATA
from pipeline.crosswalks import CROSSWALKS, apply_crosswalk
from pipeline.grid import PatchGrid
from pipeline.sources.base import CorruptData, InvalidGeometry, LabelMap

#: Accepted ``resampling`` values of :class:`LandCoverLabels`.
LANDCOVER_RESAMPLING: dict[str, Resampling] = {"nearest": Resampling.nearest, "mode": Resampling.mode}

#: Value used inside the warp for "no source pixel here" (codes are warped as int32).
_WARP_NODATA = -1
#: Extra source pixels read around the target footprint, so edge pixels have full support.
_MARGIN_PX = 2


@dataclass(frozen=True)
class RasterGrid:
    """A target raster grid: CRS, affine transform (GDAL order a, b, c, d, e, f) and (height, width)."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    shape: tuple[int, int]

    @classmethod
    def from_patch_grid(cls, grid: PatchGrid) -> "RasterGrid":
        return cls(crs=grid.crs, transform=tuple(grid.transform), shape=(grid.size, grid.size))

    @classmethod
    def from_bounds(cls, crs: str, bounds: tuple[float, float, float, float], shape: tuple[int, int]) -> "RasterGrid":
        """The grid of ``shape`` (height, width) pixels exactly covering ``bounds`` (west, south, east, north)."""
        h, w = int(shape[0]), int(shape[1])
        west, south, east, north = (float(v) for v in bounds)
        if h <= 0 or w <= 0 or not (east > west and north > south):
            raise InvalidGeometry(f"empty target grid: bounds {bounds}, shape {shape}")
        return cls(crs=crs, transform=((east - west) / w, 0.0, west, 0.0, -(north - south) / h, north), shape=(h, w))

    @property
    def affine(self) -> Affine:
        a, b, c, d, e, f = self.transform
        return Affine(a, b, c, d, e, f)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the grid in its CRS (any rotation-free affine)."""
        h, w = self.shape
        t = self.affine
        xs = [t.c, t.c + t.a * w + t.b * h, t.c + t.a * w, t.c + t.b * h]
        ys = [t.f, t.f + t.d * w + t.e * h, t.f + t.d * w, t.f + t.e * h]
        return (min(xs), min(ys), max(xs), max(ys))


def detect_crosswalk(path: str | Path) -> str | None:
    """Guess the crosswalk of a land-cover GeoTIFF from its tags (then its file name).

    ``esa_worldcover`` for ESA WorldCover maps, ``eolearn_lulc`` for the eo-learn LULC legend,
    ``None`` (codes already are DW classes 0–8) otherwise.
    """
    path = Path(path)
    try:
        with rasterio.open(path) as src:
            tags = {k.lower(): str(v).lower() for k, v in src.tags().items()}
    except RasterioError as err:
        raise CorruptData(f"cannot open land-cover map {path}: {err}") from None
    text = " ".join(tags.values())
    if "worldcover" in text or "worldcover" in path.name.lower():
        return "esa_worldcover"
    legend = tags.get("legend", "")
    if "cultivated land" in legend and "artificial surface" in legend:
        return "eolearn_lulc"
    if "lulc" in path.name.lower() and "eolearn" in str(path).lower():
        return "eolearn_lulc"
    return None


class LandCoverLabels:
    """Label maps from a land-cover GeoTIFF (band 1, integer codes) warped onto a target grid.

    ``crosswalk`` names a crosswalk of :data:`pipeline.crosswalks.CROSSWALKS`, ``None`` when the map
    already holds DW class indices (0–8; anything else → 255), or ``"auto"`` to pick one with
    :func:`detect_crosswalk`. The file is opened on each call, so an instance can be shared across
    threads and pickled to worker processes.
    """

    def __init__(self, path: str | Path, crosswalk: str | None = "auto", resampling: str = "nearest"):
        self.path = Path(path)
        if resampling not in LANDCOVER_RESAMPLING:
            raise ValueError(f"land-cover resampling must be one of {sorted(LANDCOVER_RESAMPLING)}, got {resampling!r}")
        if not self.path.is_file():
            raise FileNotFoundError(f"land-cover map not found: {self.path}")
        if crosswalk == "auto":
            crosswalk = detect_crosswalk(self.path)
        if crosswalk is not None and crosswalk not in CROSSWALKS:
            raise ValueError(f"unknown crosswalk {crosswalk!r}; available: {list(CROSSWALKS)} or None")
        try:
            with rasterio.open(self.path) as src:
                dtype = np.dtype(src.dtypes[0])
        except RasterioError as err:
            raise CorruptData(f"cannot open land-cover map {self.path}: {err}") from None
        if not np.issubdtype(dtype, np.integer):
            raise ValueError(f"{self.path}: land-cover codes must be integers, band 1 is {dtype}")
        self.crosswalk = crosswalk
        self.resampling = resampling

    @property
    def method(self) -> str:
        return f"landcover:{self.path.name}"

    def describe(self) -> dict[str, object]:
        return {"path": str(self.path), "crosswalk": self.crosswalk, "resampling": self.resampling}

    def __repr__(self) -> str:
        return f"LandCoverLabels({str(self.path)!r}, crosswalk={self.crosswalk!r}, resampling={self.resampling!r})"

    # ------------------------------------------------------------------ warping
    def warp_codes(self, grid: PatchGrid | RasterGrid) -> np.ndarray:
        """Source codes on the target grid as int32; ``-1`` where no valid source pixel lands."""
        target = RasterGrid.from_patch_grid(grid) if isinstance(grid, PatchGrid) else grid
        h, w = target.shape
        out = np.full((h, w), _WARP_NODATA, dtype=np.int32)
        try:
            with rasterio.open(self.path) as src:
                window = self._source_window(src, target)
                if window is None:
                    return out  # the footprint does not touch the map
                codes = src.read(1, window=window)
                t = src.transform
                col0, row0 = window.col_off, window.row_off
                src_transform = Affine(t.a, t.b, t.c + t.a * col0 + t.b * row0,
                                       t.d, t.e, t.f + t.d * col0 + t.e * row0)
                src_crs = src.crs
                src_nodata = src.nodata
        except RasterioError as err:
            raise CorruptData(f"cannot read land-cover map {self.path}: {err}") from None
        codes = codes.astype(np.int32, copy=False)
        if src_nodata is not None and not np.isnan(src_nodata):
            nodata = int(src_nodata)
            # GDAL masks nodata pixels; mark them -1 as well so both warp paths agree.
            codes = np.where(codes == nodata, _WARP_NODATA, codes)
        try:
            reproject(
                source=codes, destination=out,
                src_transform=src_transform, src_crs=src_crs, src_nodata=_WARP_NODATA,
                dst_transform=target.affine, dst_crs=target.crs, dst_nodata=_WARP_NODATA,
                resampling=LANDCOVER_RESAMPLING[self.resampling],
            )
        except rasterio.errors.CRSError as err:
            raise InvalidGeometry(f"cannot warp {self.path.name} onto {target.crs}: {err}") from None
        return out

    def _source_window(self, src: rasterio.io.DatasetReader, target: RasterGrid) -> Window | None:
        """The source window (clipped to the dataset, with a small margin) covering the target footprint."""
        if src.crs is None:
            raise CorruptData(f"land-cover map {self.path} has no CRS")
        try:
            west, south, east, north = transform_bounds(target.crs, src.crs, *target.bounds, densify_pts=21)
        except rasterio.errors.CRSError as err:
            raise InvalidGeometry(f"invalid target CRS {target.crs!r}: {err}") from None
        if not all(np.isfinite([west, south, east, north])):
            raise InvalidGeometry(f"target footprint {target.bounds} in {target.crs} cannot be expressed in {src.crs}")
        t = src.transform
        if t.b == 0 and t.d == 0:  # north-up (the usual case): pixel edges straight from the coefficients
            cols = sorted(((west - t.c) / t.a, (east - t.c) / t.a))
            rows = sorted(((north - t.f) / t.e, (south - t.f) / t.e))
        else:
            win = window_from_bounds(west, south, east, north, transform=t)
            cols = [win.col_off, win.col_off + win.width]
            rows = [win.row_off, win.row_off + win.height]
        col0 = int(np.floor(cols[0])) - _MARGIN_PX
        row0 = int(np.floor(rows[0])) - _MARGIN_PX
        col1 = int(np.ceil(cols[1])) + _MARGIN_PX
        row1 = int(np.ceil(rows[1])) + _MARGIN_PX
        col0, row0 = max(col0, 0), max(row0, 0)
        col1, row1 = min(col1, src.width), min(row1, src.height)
        if col1 <= col0 or row1 <= row0:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)

    def label_map(self, grid: PatchGrid | RasterGrid) -> LabelMap:
        """The DW label map (uint8, 255 = no label) of ``grid``."""
        codes = self.warp_codes(grid)
        if self.crosswalk is None:
            valid = (codes >= 0) & (codes < len(DW_CLASSES))
            data = np.where(valid, codes, LABEL_NODATA).astype(np.uint8)
        else:
            data = apply_crosswalk(codes, self.crosswalk)  # -1 and unmapped codes → 255
        return LabelMap(data=data, image_id=self.path.stem, method=self.method)
