"""Reading one band file of a local SSL4EO-S12 copy into the patch array: sizes, resampling, S1 no-data.

**Pixels.** The local reader returns each patch's *native* pixels resampled to ``grid.size`` ×
``grid.size`` (264 for the default manifest): there is **no reprojection to the UTM patch grid**,
since SSL4EO-S12 patches are already on their own grid (the centre crop of each band in lon/lat).
This is the dataset's own load-time convention: the SSL4EO-S12 data loaders resize every band to
264 × 264 (Wang et al. 2022, arXiv:2211.07044; github.com/zhu-xlab/SSL4EO-S12).
Each band is read with rasterio's ``out_shape=(grid.size, grid.size)`` and the manifest's
``patch.resampling`` (``Resampling.bilinear`` by default; ``nearest``/``cubic`` accepted), i.e.
GDAL's RasterIO resampling. That differs slightly from SSL4EO's OpenCV ``INTER_LINEAR_EXACT``
and from torchgeo (nearest). Bands already at ``grid.size`` are returned unchanged.
The native CRS and bounds are recorded in :attr:`SeasonSample.extra` (``<modality>_crs``,
``<modality>_bounds``: the finest band read; ``native_crs``/``native_bounds``: the footprint the
label map is warped onto).

**Band sizes.** Every band file must hold the patch at its native resolution: the patch extent
(``grid.size`` × ``grid.resolution`` metres, 2640 m for 264 px at 10 m) divided by the band's native
resolution (S2: 10/20/60 m per band, S1: 10 m), i.e. 264, 132 and 44 px for the SSL4EO grid, as the
real files are. When that quotient is not a whole number (our rule) either rounding, down or up, is
accepted. Any other height or width raises :class:`CorruptData` naming the file, the expected and
the found size; such a file is never resampled.

**Sentinel-1 no-data.** The archive stores NaN for S1 no-data. A pixel of an S1 band file is no-data
(→ NaN) when it equals the file's GeoTIFF nodata tag, when it is not finite (NaN, or −inf = linear 0
in dB) or when it is exactly 0.0: 0 is the value masked Earth Engine pixels get when unmasked (the
SSL4EO-S12 no-data value, as this project's Earth Engine source writes it), and a measured
backscatter of exactly 0.000… dB does not occur in GEE's continuous dB values (our choice). The real
sample has no nodata tag and no such pixels. Bands at ``grid.size`` are returned as read; others
are resampled by GDAL's warper with NaN as the source and destination nodata, so no-data never
leaks into neighbouring pixels.

"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.warp import reproject

from pipeline.bands import S2_NATIVE_RESOLUTION_M
from pipeline.grid import PatchGrid
from pipeline.sources.base import CorruptData

#: Accepted ``resampling`` values (the manifest's ``patch.resampling``).
RESAMPLING: dict[str, Resampling] = {
    "bilinear": Resampling.bilinear, "nearest": Resampling.nearest, "cubic": Resampling.cubic,
}
#: Native ground sampling distance (m) of the Sentinel-1 GRD bands in SSL4EO-S12.
S1_NATIVE_RESOLUTION_M: int = 10


def native_resolution_m(modality: str, band: str) -> int:
    """Native pixel size (m) of one band: S2 per band (10/20/60 m), S1 10 m."""
    if modality == "s1_grd":
        return S1_NATIVE_RESOLUTION_M
    return S2_NATIVE_RESOLUTION_M[band]


def expected_band_sizes(grid: PatchGrid, resolution_m: float) -> tuple[int, ...]:
    """Accepted pixel counts per side of a band of ``resolution_m`` covering the patch of ``grid``.

    The patch extent (``grid.size`` × ``grid.resolution``) over the band's resolution: one size when
    that is a whole number (264/132/44 px for the 264 px / 10 m grid), else the sizes rounded down
    and up (our rule: either rounding is accepted).
    """
    exact = grid.size * grid.resolution / resolution_m
    nearest = round(exact)
    if abs(exact - nearest) < 1e-6:
        return (int(nearest),)
    return (math.floor(exact), math.ceil(exact))


def s1_nodata_mask(values: np.ndarray, nodata: float | None) -> np.ndarray:
    """True where an S1 dB value is no-data: the file's nodata tag, not finite, or exactly 0.0.

    Rule (see the module docstring): NaN and −inf (linear 0) are not measurements; 0.0 is the value
    SSL4EO-S12 / Earth Engine write for masked pixels (our choice to treat it as no-data).
    """
    mask = ~np.isfinite(values)
    mask |= values == 0.0
    if nodata is not None and not math.isnan(nodata):
        mask |= values == nodata
    return mask



def read_band(path: Path, out: np.ndarray, modality: str, band: str, grid: PatchGrid,
              resampling: str = "bilinear") -> tuple[tuple[int, int], Any, tuple]:
    """Read one band into ``out`` (size × size, resampled); return its native shape, CRS and bounds.

    The file must have its native size for the patch (:func:`expected_band_sizes`), else
    CorruptData; S1 no-data becomes NaN (:func:`s1_nodata_mask`).

    Args:
        path: The band file.
        out: The patch array's slice for this band (its dtype is the archive dtype of ``modality``).
        modality: "s2_l1c", "s2_l2a" or "s1_grd".
        band: The band name.
        grid: The patch grid (its size and resolution give the expected native size).
        resampling: A key of :data:`RESAMPLING`, used when the native size differs from ``out``'s.

    Returns:
        The native (height, width), the file's CRS and its bounds (west, south, east, north).

    Raises:
        CorruptData: The file is missing, unreadable, of the wrong dtype kind or of the wrong size.
    """
    if not path.is_file():
        raise CorruptData(f"ssl4eo_local: missing band file {path}")
    size = out.shape[-1]
    expected = out.dtype
    resolution = native_resolution_m(modality, band)
    sizes = expected_band_sizes(grid, resolution)
    try:
        with rasterio.open(path) as src:
            dtype = np.dtype(src.dtypes[0])
            if expected.kind == "u" and dtype.kind not in "ui":
                raise CorruptData(f"ssl4eo_local: {path} holds {dtype}, expected integer DN for {modality}")
            if expected.kind == "f" and dtype.kind != "f":
                raise CorruptData(f"ssl4eo_local: {path} holds {dtype}, expected float dB for {modality}")
            native = (src.height, src.width)
            if native[0] not in sizes or native[1] not in sizes:
                wanted = " or ".join(f"{n}x{n}" for n in sizes)
                raise CorruptData(
                    f"ssl4eo_local: {path} has the wrong size: expected {wanted} px (a {resolution} m band over "
                    f"the {grid.size * grid.resolution:g} m patch), found {native[0]}x{native[1]} px")
            method = RESAMPLING[resampling] if native != (size, size) else Resampling.nearest
            if modality == "s1_grd":
                _read_s1(src, out, method)
            elif dtype == expected:  # straight into the patch array: no temporary, no copy
                src.read(1, out=out, resampling=method)
            else:
                arr = src.read(1, out_shape=(size, size), resampling=method)
                if expected.kind == "u":
                    arr = np.clip(arr, 0, np.iinfo(expected).max)
                out[...] = arr.astype(expected, copy=False)
            crs, bounds = src.crs, tuple(float(v) for v in src.bounds)
    except CorruptData:
        raise
    except (RasterioError, OSError, ValueError) as err:
        raise CorruptData(f"ssl4eo_local: cannot read {path}: {err}") from None
    return native, crs, bounds


def _read_s1(src: Any, out: np.ndarray, resampling: Resampling) -> None:
    """One S1 band of the open file ``src`` into ``out`` (float32 dB) with every no-data pixel NaN.

    At ``out``'s size the native pixels are copied; otherwise they are resampled by GDAL's warper with
    NaN as source and destination nodata, so that no-data pixels do not enter the interpolation.
    """
    values = src.read(1).astype(np.float32, copy=False)
    values[s1_nodata_mask(values, src.nodata)] = np.nan
    if values.shape == out.shape:
        out[...] = values
        return
    height, width = values.shape
    # Both grids in the file's pixel coordinates (they cover the same square); the CRS is a placeholder,
    # the same on both sides, so GDAL only rescales.
    src_transform = Affine.scale(1.0, 1.0)
    dst_transform = Affine.scale(width / out.shape[1], height / out.shape[0])
    out[...] = np.nan
    reproject(values, out, src_transform=src_transform, dst_transform=dst_transform,
              src_crs="EPSG:3857", dst_crs="EPSG:3857", src_nodata=np.nan, dst_nodata=np.nan,
              resampling=resampling)
