"""Reading only the patch from a (Cloud-Optimized) GeoTIFF asset onto the patch grid, and error types.

**Reads.** Each asset is opened with rasterio (GDAL reads ``http(s)://`` hrefs through ``/vsicurl/``
with HTTP range requests, so only the tiles under the patch travel), the source window covering the
patch footprint (its corners and edges transformed into the asset's CRS, plus :data:`MARGIN_PX`
pixels of support for interpolation) is read, and :func:`rasterio.warp.reproject` warps that window
onto the patch grid (:class:`~pipeline.grid.PatchGrid`: UTM, north up). A Cloud-Optimized GeoTIFF
is tiled, so a window read costs a few range requests (cogeo.org). Resampling: an asset already in
the grid's CRS at the grid's pixel size is copied with ``nearest`` (its pixels are the grid's when
both sit on the Sentinel-2 60 m lattice, :mod:`pipeline.grid`); any other asset (20 m and 60 m
bands, another UTM zone, a lon/lat map) uses the manifest's ``patch.resampling`` (our rule, the
same split as the Earth Engine source). Pixels the asset does not cover are no-data.

**Units and no-data**, as the archive stores them (:data:`pipeline.bands.MODALITY_DTYPES`):

* Sentinel-2: ``uint16`` DN as served, 0 = no data (the asset's nodata, else 0, is the warp's
  source nodata). No harmonisation: from processing baseline 04.00 (products from 2022-01-25) ESA's
  DN carry a +1000 offset, as the Earth Engine source's non-harmonised collections do.
* Sentinel-1: ``float32`` backscatter in dB, NaN = no data. ``s1_units: linear`` (Planetary
  Computer's ``sentinel-1-rtc`` holds linear power; its dataset page) is converted with
  ``10·log10(x)`` *before* the warp, so interpolation happens in dB like Earth Engine's
  ``COPERNICUS/S1_GRD`` (stored in dB); the asset's nodata, non-finite values and ``x ≤ 0`` (no
  logarithm) become NaN and are the warp's nodata. Note that RTC is gamma0 with radiometric terrain
  flattening, whereas ``COPERNICUS/S1_GRD`` (and so SSL4EO-S12) is ortho-corrected sigma0: values
  differ on slopes.
* Land cover: integer codes warped with ``nearest`` or ``mode`` (never interpolated), the asset's
  nodata → −1 (outside), then turned into Dynamic World classes by a crosswalk of
  :mod:`pipeline.crosswalks` (−1 and unmapped codes → 255), as :mod:`pipeline.sources.landcover` does.

**Errors** (:func:`classify`): HTTP 429/5xx, timeouts and connection failures are transient
(retried by the source, then :class:`~pipeline.sources.base.TransientSourceError`); a missing asset
(404, no such file) is :class:`~pipeline.sources.base.NoImageFound`; 401/403 is a
:class:`~pipeline.sources.base.SourceError` naming the ``sign`` option; anything else rasterio
cannot decode is :class:`~pipeline.sources.base.CorruptData`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import urllib.error
from typing import Any, Callable

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from rasterio.windows import from_bounds as window_from_bounds

from pipeline.bands import LABEL_NODATA, MODALITY_DTYPES
from pipeline.crosswalks import apply_crosswalk
from pipeline.grid import PatchGrid
from pipeline.sources.base import (
    CorruptData,
    InvalidGeometry,
    NoImageFound,
    SourceError,
    TransientSourceError,
)
from pipeline.sources.requests import clip
from pipeline.store_target import is_local

#: Source pixels read around the patch footprint (support of bilinear and cubic kernels).
MARGIN_PX = 3
#: GDAL settings of every read: no directory listing next to a remote file, no GDAL-level HTTP
#: retries (the source retries), the request timeout set per source.
GDAL_OPTIONS = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MAX_RETRY": "0",
                "CPL_VSIL_CURL_USE_HEAD": "NO"}
#: Manifest ``patch.resampling`` / ``landcover_resampling`` names.
RESAMPLING = {"bilinear": Resampling.bilinear, "nearest": Resampling.nearest, "cubic": Resampling.cubic,
              "mode": Resampling.mode}
#: Code for "no land-cover pixel here" inside the warp.
CODE_NODATA = -1


def gdal_env(href: str, timeout_s: float = 60.0) -> Any:
    """:data:`GDAL_OPTIONS` for a remote href (a no-op context for a local file, which needs none)."""
    if is_local(href):
        return contextlib.nullcontext()
    return rasterio.Env(**GDAL_OPTIONS, GDAL_HTTP_TIMEOUT=str(max(1, math.ceil(timeout_s))))


def source_window(src: rasterio.io.DatasetReader, grid: PatchGrid) -> Window | None:
    """The asset's pixel window holding the patch footprint and :data:`MARGIN_PX`, clipped; None if disjoint."""
    if src.crs is None:
        raise CorruptData("the asset has no CRS")
    try:
        bounds = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
    except CRSError as err:
        raise InvalidGeometry(f"cannot express the patch ({grid.crs}) in {src.crs}: {err}") from None
    if not all(math.isfinite(v) for v in bounds):
        raise InvalidGeometry(f"the patch ({grid.crs}) cannot be expressed in {src.crs}")
    win = window_from_bounds(*bounds, transform=src.transform)
    col0 = max(math.floor(win.col_off) - MARGIN_PX, 0)
    row0 = max(math.floor(win.row_off) - MARGIN_PX, 0)
    col1 = min(math.ceil(win.col_off + win.width) + MARGIN_PX, src.width)
    row1 = min(math.ceil(win.row_off + win.height) + MARGIN_PX, src.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def same_lattice(src: rasterio.io.DatasetReader, grid: PatchGrid) -> bool:
    """The asset is in the grid's CRS with the grid's pixel size (north up): its pixels are copied."""
    t = src.transform
    return (src.crs is not None and src.crs.to_epsg() == grid.epsg and t.b == 0 and t.d == 0
            and math.isclose(t.a, grid.resolution, rel_tol=1e-9) and math.isclose(-t.e, grid.resolution, rel_tol=1e-9))


def lattice_window(src: rasterio.io.DatasetReader, grid: PatchGrid) -> Window | None:
    """The asset's window that *is* the patch (same CRS and pixel size, corner on a pixel corner, inside), or None."""
    if not same_lattice(src, grid):
        return None
    t = src.transform
    col, row = (grid.x0 - t.c) / t.a, (grid.y0 - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    col, row = round(col), round(row)
    if col < 0 or row < 0 or col + grid.size > src.width or row + grid.size > src.height:
        return None
    return Window(col, row, grid.size, grid.size)


def warp_asset(href: str, band: int, grid: PatchGrid, dtype: str, nodata: float,
               prepare: Callable[[np.ndarray, float | None], np.ndarray], resampling: str,
               copy_on_lattice: bool = True, timeout_s: float = 60.0, direct: bool = False) -> np.ndarray:
    """Band ``band`` of ``href`` on ``grid`` as ``dtype``; ``nodata`` where the asset has no valid pixel.

    An asset on the grid's lattice that holds the whole patch (:func:`lattice_window`) is read as the
    patch's window, pixel for pixel (what a ``nearest`` warp gives, without the warp); any other is
    read around the footprint and warped (module docstring). With ``direct`` and a file already of
    ``dtype`` (``prepare`` then only turns the asset's nodata into ``nodata``), a ``WarpedVRT`` warps
    straight from the file (the asset's nodata, else ``nodata``, as source nodata; GDAL reads the
    blocks it needs); otherwise the window is read, prepared and warped from memory with
    :func:`rasterio.warp.reproject`.

    Args:
        href: The asset (local path or URL).
        band: 1-based band index in the file.
        grid: The patch grid.
        dtype: Output dtype.
        nodata: Output (and warp) no-data value; ``prepare`` must mark invalid input pixels with it.
        prepare: ``(window values, asset nodata) → values of dtype`` (unit conversion, no-data marking).
        resampling: A key of :data:`RESAMPLING`.
        copy_on_lattice: Use ``nearest`` for an asset on the grid's lattice (:func:`same_lattice`).
        timeout_s: GDAL's HTTP timeout for a remote href.
        direct: ``prepare`` is the identity for a file of ``dtype`` apart from no-data (see above).

    Returns:
        The (size, size) array.
    """
    with gdal_env(href, timeout_s), rasterio.open(href) as src:
        if not 1 <= band <= src.count:
            raise CorruptData(f"{href}: band {band} requested, the file has {src.count}")
        exact = lattice_window(src, grid) if copy_on_lattice else None
        as_is = direct and np.dtype(src.dtypes[band - 1]) == np.dtype(dtype)
        if exact is not None:
            return prepare(src.read(band, window=exact), src.nodata)
        win = source_window(src, grid)
        if win is None:
            raise NoImageFound(f"{href} does not overlap the patch {grid.bounds} ({grid.crs})")
        method = Resampling.nearest if copy_on_lattice and same_lattice(src, grid) else RESAMPLING[resampling]
        if as_is:
            src_nodata = nodata if src.nodata is None else src.nodata
            with WarpedVRT(src, crs=grid.crs, transform=Affine(*grid.transform), width=grid.size,
                           height=grid.size, resampling=method, src_nodata=src_nodata, nodata=nodata) as vrt:
                return vrt.read(band)
        values = prepare(src.read(band, window=win), src.nodata)
        window_transform = src.transform @ Affine.translation(win.col_off, win.row_off)
        src_crs = src.crs
    out = np.full((grid.size, grid.size), nodata, dtype=dtype)
    reproject(source=values, destination=out, src_transform=window_transform, src_crs=src_crs,
              src_nodata=nodata, dst_transform=Affine(*grid.transform), dst_crs=grid.crs, dst_nodata=nodata,
              resampling=method)
    return out


# ----------------------------------------------------------------------------------------------- per modality
def prepare_s2(values: np.ndarray, src_nodata: float | None) -> np.ndarray:
    """S2 DN as uint16 with the asset's no-data as 0."""
    if values.dtype.kind not in "ui":
        raise CorruptData(f"expected integer DN for Sentinel-2, found {values.dtype}")
    out = values if values.dtype == np.uint16 else np.clip(values, 0, 65535).astype(np.uint16)
    if src_nodata is not None and not math.isnan(src_nodata) and src_nodata != 0:
        out[values == src_nodata] = 0
    return out


def s1_to_db(values: np.ndarray, src_nodata: float | None, linear: bool) -> np.ndarray:
    """S1 backscatter in dB (float32), NaN where no-data (see the module docstring)."""
    v = values.astype(np.float32)
    bad = ~np.isfinite(v)
    if src_nodata is not None and not math.isnan(src_nodata):
        bad |= values == src_nodata
    if linear:
        bad |= v <= 0
        with np.errstate(divide="ignore", invalid="ignore"):
            v = (10.0 * np.log10(v)).astype(np.float32)
    v[bad] = np.nan
    return v


def prepare_codes(values: np.ndarray, src_nodata: float | None) -> np.ndarray:
    """Land-cover codes as int32 with the asset's no-data as :data:`CODE_NODATA`."""
    if values.dtype.kind not in "ui":
        raise CorruptData(f"land-cover codes must be integers, found {values.dtype}")
    codes = values.astype(np.int32)
    if src_nodata is not None and not math.isnan(src_nodata):
        codes[values == src_nodata] = CODE_NODATA
    return codes


def read_band(modality: str, href: str, band: int, grid: PatchGrid, resampling: str,
              s1_linear: bool = True, timeout_s: float = 60.0) -> np.ndarray:
    """One band of ``modality`` on the grid in the archive's dtype and unit."""
    if modality == "s1_grd":
        return warp_asset(href, band, grid, MODALITY_DTYPES[modality], np.nan,
                          lambda v, nd: s1_to_db(v, nd, s1_linear), resampling, timeout_s=timeout_s)
    return warp_asset(href, band, grid, MODALITY_DTYPES[modality], 0, prepare_s2, resampling, timeout_s=timeout_s,
                      direct=True)


def read_land_cover(href: str, grid: PatchGrid, crosswalk: str | None, resampling: str,
                    timeout_s: float = 60.0) -> np.ndarray:
    """The land-cover map on the grid as Dynamic World classes (uint8, 255 = no label).

    ``crosswalk`` names a crosswalk of :mod:`pipeline.crosswalks`, or is None for codes that already
    are DW classes (0–8; anything else → 255).
    """
    codes = warp_asset(href, 1, grid, "int32", CODE_NODATA, prepare_codes, resampling, copy_on_lattice=False,
                       timeout_s=timeout_s)
    if crosswalk is None:
        return np.where((codes >= 0) & (codes < 9), codes, LABEL_NODATA).astype(np.uint8)
    return apply_crosswalk(codes, crosswalk)


# ----------------------------------------------------------------------------------------------- errors
_TRANSIENT_CODES = re.compile(r"(?:http (?:response )?(?:code|error|status)[: ]*|\b)(429|500|502|503|504)\b")
_TRANSIENT_WORDS = ("timed out", "timeout", "curl error", "connection", "temporarily", "try again",
                    "too many requests", "service unavailable", "could not resolve host", "reset by peer")
_MISSING_WORDS = ("404", "no such file", "does not exist")
_DENIED = re.compile(r"\b(401|403)\b|access denied|authorizationfailure|forbidden")


def _status_error(status: int | None, msg: str, context: str) -> SourceError | None:
    if status is None:
        return None
    if status == 429 or status >= 500:
        return TransientSourceError(f"{context}: HTTP {status}: {clip(msg, 200)}")
    if status in (401, 403):
        return SourceError(f"{context}: access refused (HTTP {status}); signed URLs needed? see source.stac.sign")
    if status == 404:
        return NoImageFound(f"{context}: not found (HTTP 404): {clip(msg, 200)}")
    return SourceError(f"{context}: the catalog refused the request (HTTP {status}): {clip(msg)}")


def classify(err: BaseException, context: str) -> SourceError | None:
    """The typed error for ``err`` (TransientSourceError when worth retrying); None for a programming error.

    ``context`` says what was asked (catalog, collection, item, asset) for the message.
    """
    if isinstance(err, SourceError):
        return err
    msg = str(err)
    low = msg.lower()
    status = getattr(err, "status_code", None) or getattr(err, "code", None)
    if isinstance(err, urllib.error.HTTPError) or type(err).__name__ == "APIError":
        typed = _status_error(status if isinstance(status, int) else None, msg, context)
        if typed is not None:
            return typed
    response = getattr(err, "response", None)  # requests.HTTPError
    if response is not None and isinstance(getattr(response, "status_code", None), int):
        return _status_error(response.status_code, msg, context)
    network = type(err).__module__.split(".")[0] in ("requests", "urllib3")
    if isinstance(err, (TimeoutError, ConnectionError, http.client.HTTPException, urllib.error.URLError)) or network:
        return TransientSourceError(f"{context}: {type(err).__name__}: {clip(msg, 200)}")
    if isinstance(err, (RasterioError, OSError)):
        if _TRANSIENT_CODES.search(low) or any(w in low for w in _TRANSIENT_WORDS):
            return TransientSourceError(f"{context}: {clip(msg, 200)}")
        if _DENIED.search(low):
            return SourceError(f"{context}: access refused ({clip(msg, 120)}); signed URLs needed? "
                               "see source.stac.sign")
        if any(w in low for w in _MISSING_WORDS):
            return NoImageFound(f"{context}: asset not found: {clip(msg, 200)}")
        return CorruptData(f"{context}: cannot read: {clip(msg, 200)}")
    if type(err).__module__.split(".")[0] in ("pystac", "pystac_client") or isinstance(err, json.JSONDecodeError):
        return CorruptData(f"{context}: {type(err).__name__}: {clip(msg, 200)}")
    return None
