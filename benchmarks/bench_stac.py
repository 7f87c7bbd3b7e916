"""STAC source throughput, as a ratio to bare rasterio windowed reads of the same COGs.

A static STAC catalog is generated in a temporary directory (pystac): ``--tiles`` tiles of 5280 m in
UTM 32N, each with one Sentinel-2 L2A item (12 single-band COGs at 10/20/60 m, 256 px blocks,
deflate) and one Sentinel-1 RTC item (VV, VH linear power COGs at 10 m); the assets are local files.
Each tile holds four 264 px × 10 m patches (2640 m). One *patch* is one (location, season) with all
12 L2A bands and both S1 bands on the patch grid.

* source: :meth:`pipeline.sources.stac.StacSource.fetch` (walks the catalog once, then per patch:
  filters and selects the items, reads every band window, warps it onto the grid, S1 → dB), no land
  cover, pacing out of the way (10^6 requests/s), ``read_threads`` 1 (sequential, like the baseline)
  and, on a second line, 4.
* baseline: for the same patches, with the asset hrefs known beforehand (outside the timing): each
  band opened with rasterio and read through a ``WarpedVRT`` onto the patch grid (nearest for 10 m
  bands, bilinear for 20/60 m), S1 converted with ``10·log10``.

Each side runs once to warm up (page cache, GDAL), then ``--repeats`` times; the best wall time of
each is kept, the two alternating. Goal: ratio ≥ 0.9.

Usage: ``.venv/bin/python benchmarks/bench_stac.py [--tiles 4] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import numpy as np
import pystac
import rasterio
import shapely
from rasterio.enums import Resampling
from rasterio.transform import Affine, from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds

from pipeline.bands import MODALITY_BANDS, S2_NATIVE_RESOLUTION_M
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.manifest import StacSourceOptions
from pipeline.seasons import SeasonWindow
from pipeline.sources.stac import StacSource

EPSG, TILE_M, SIZE = 32632, 5280.0, 264
L2A = MODALITY_BANDS["s2_l2a"]
WINDOW = SeasonWindow(season=0, reference=dt.date(2021, 6, 21), start=dt.date(2021, 6, 6), end=dt.date(2021, 7, 6))


def asset_key(band: str) -> str:
    return f"B{int(band[1:]):02d}" if band[1:].isdigit() else band


def write_cog(path: Path, data: np.ndarray, origin: tuple[float, float], res: float, nodata) -> str:
    profile = {"driver": "COG", "count": 1, "height": data.shape[0], "width": data.shape[1], "dtype": data.dtype,
               "crs": f"EPSG:{EPSG}", "transform": from_origin(origin[0], origin[1], res, res), "nodata": nodata,
               "blocksize": 256, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
    return str(path)


def build(root: Path, tiles: int) -> tuple[str, list[tuple[Location, PatchGrid, dict[str, str]]]]:
    """The catalog and, per patch, its location, grid and band → href map."""
    rng = np.random.default_rng(0)
    s2_items, s1_items, patches = [], [], []
    for t in range(tiles):
        origin = (399960.0 + t * TILE_M, 5600040.0)
        hrefs = {}
        for band in L2A:
            res = S2_NATIVE_RESOLUTION_M[band]
            n = int(TILE_M // res)
            data = rng.integers(1, 10000, (n, n), dtype=np.uint16)
            hrefs[band] = write_cog(root / f"t{t}_{asset_key(band)}.tif", data, origin, res, 0)
        for pol in ("VV", "VH"):
            n = int(TILE_M // 10)
            data = rng.uniform(1e-3, 0.3, (n, n)).astype(np.float32)
            hrefs[pol] = write_cog(root / f"t{t}_{pol.lower()}.tif", data, origin, 10, None)
        bounds = (origin[0], origin[1] - TILE_M, origin[0] + TILE_M, origin[1])
        geom = shapely.geometry.mapping(shapely.box(*transform_bounds(f"EPSG:{EPSG}", "EPSG:4326", *bounds,
                                                                       densify_pts=21)))
        bbox = list(shapely.geometry.shape(geom).bounds)
        s2 = pystac.Item(f"s2-t{t}", geom, bbox, dt.datetime(2021, 6, 20, 10, tzinfo=dt.timezone.utc),
                         {"eo:cloud_cover": 1.0, "proj:epsg": EPSG})
        s1 = pystac.Item(f"s1-t{t}", geom, bbox, dt.datetime(2021, 6, 18, 10, tzinfo=dt.timezone.utc),
                         {"sar:instrument_mode": "IW", "sar:polarizations": ["VV", "VH"]})
        for band in L2A:
            s2.add_asset(asset_key(band), pystac.Asset(hrefs[band], media_type=pystac.MediaType.COG))
        for pol in ("VV", "VH"):
            s1.add_asset(pol.lower(), pystac.Asset(hrefs[pol], media_type=pystac.MediaType.COG))
        s2_items.append(s2)
        s1_items.append(s1)
        for i in range(4):  # four 2640 m patches per tile
            x = origin[0] + (0.25 + 0.5 * (i % 2)) * TILE_M
            y = origin[1] - (0.25 + 0.5 * (i // 2)) * TILE_M
            lon, lat = warp_transform(f"EPSG:{EPSG}", "EPSG:4326", [x], [y])
            loc = Location(index=len(patches), lon=lon[0], lat=lat[0], epsg=EPSG, x=x, y=y)
            patches.append((loc, PatchGrid.for_location(loc, SIZE, 10.0), hrefs))
    cat = pystac.Catalog("bench", "STAC source benchmark")
    for cid, items in (("s2l2a", s2_items), ("s1rtc", s1_items)):
        col = pystac.Collection(cid, cid, pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]),
                                                         pystac.TemporalExtent([[None, None]])))
        col.add_items(items)
        cat.add_child(col)
    cat.normalize_hrefs(str(root / "catalog"))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog" / "catalog.json"), patches


def bare(patches) -> None:
    for _, grid, hrefs in patches:
        s2 = np.empty((len(L2A), SIZE, SIZE), np.uint16)
        s1 = np.empty((2, SIZE, SIZE), np.float32)
        for k, band in enumerate(L2A + ("VV", "VH")):
            method = Resampling.nearest if band in ("VV", "VH") or S2_NATIVE_RESOLUTION_M[band] == 10 \
                else Resampling.bilinear
            with rasterio.open(hrefs[band]) as src, WarpedVRT(
                    src, crs=grid.crs, transform=Affine(*grid.transform), width=SIZE, height=SIZE,
                    resampling=method) as vrt:
                if k < len(L2A):
                    s2[k] = vrt.read(1)
                else:
                    s1[k - len(L2A)] = 10 * np.log10(vrt.read(1))


def ours(source: StacSource, patches) -> None:
    mods = {"s2_l2a": L2A, "s1_grd": ("VV", "VH")}
    for loc, grid, _ in patches:
        source.fetch(loc, WINDOW, grid, mods)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        catalog, patches = build(Path(tmp), args.tiles)
        sources = {}
        for threads in (1, 4):
            opts = StacSourceOptions(catalog=catalog, requests_per_second=1e6, max_concurrent_requests=100,
                                     read_threads=threads,
                                     collections={"s2_l2a": "s2l2a", "s1_grd": "s1rtc", "landcover": None})
            sources[threads] = StacSource(opts, 20.0)
        runs = {"bare": lambda: bare(patches)}
        runs |= {f"stac{t}": (lambda s=s: ours(s, patches)) for t, s in sources.items()}
        best = {name: float("inf") for name in runs}
        for r in range(args.repeats + 1):
            for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                t0 = time.perf_counter()
                runs[name]()
                if r > 0:  # the first round warms up
                    best[name] = min(best[name], time.perf_counter() - t0)
        n = len(patches)
        print(f"{n} patches (12 L2A + 2 S1 bands, {SIZE} px), best of {args.repeats}")
        print(f"bare rasterio (WarpedVRT per band): {n / best['bare']:.2f} patches/s")
        for t in (1, 4):
            rate = n / best[f"stac{t}"]
            print(f"StacSource read_threads={t}: {rate:.2f} patches/s, ratio {rate / (n / best['bare']):.2f}"
                  + (" (goal ≥ 0.9)" if t == 1 else ""))


if __name__ == "__main__":
    main()
