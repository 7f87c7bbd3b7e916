"""The locations table: :func:`locations_to_geodataframe` and its GeoParquet file.

The GeoParquet file (:func:`write_locations`) has one row per location with ``patch_id``,
``index``, ``lon``, ``lat``, ``epsg``, ``x``, ``y``, ``city``, ``footprint_wkt_utm`` (the patch
square in the UTM CRS, exactly :meth:`pipeline.grid.PatchGrid.for_location`'s bounds) and a
``geometry`` holding that square in EPSG:4326.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from pipeline.grid import snap_corner
from pipeline.locations import Location
from pipeline.manifest import PatchConfig
from pipeline.sampling.geometry import _transformer

__all__ = ["LOCATION_COLUMNS", "locations_to_geodataframe", "read_locations", "write_locations"]

LOCATION_COLUMNS = ("patch_id", "source_id", "index", "lon", "lat", "epsg", "x", "y", "city", "footprint_wkt_utm")


def _footprint_bounds(x: np.ndarray, y: np.ndarray, patch: PatchConfig) -> tuple[np.ndarray, ...]:
    """(west, south, east, north) exactly as ``PatchGrid.for_location(...).bounds`` (same snapping rule)."""
    extent = patch.size_px * float(patch.resolution_m)
    x0, y0 = snap_corner(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64),
                         patch.size_px, patch.resolution_m, patch.lattice_m)
    return x0, y0 - extent, x0 + extent, y0


def locations_to_geodataframe(locations: list[Location], patch: PatchConfig) -> gpd.GeoDataFrame:
    """One row per location; ``geometry`` is the patch square reprojected to EPSG:4326.

    Corner longitudes are unwrapped around the centre, so a square straddling the antimeridian
    stays small (its longitudes may then slightly exceed ±180°).
    """
    n = len(locations)
    index = np.fromiter((loc.index for loc in locations), dtype=np.int64, count=n)
    lon = np.fromiter((loc.lon for loc in locations), dtype=np.float64, count=n)
    lat = np.fromiter((loc.lat for loc in locations), dtype=np.float64, count=n)
    epsg = np.fromiter((loc.epsg for loc in locations), dtype=np.int64, count=n)
    x = np.fromiter((loc.x for loc in locations), dtype=np.float64, count=n)
    y = np.fromiter((loc.y for loc in locations), dtype=np.float64, count=n)
    city = [loc.city for loc in locations]
    source_id = [loc.source_id for loc in locations]

    west, south, east, north = _footprint_bounds(x, y, patch)
    wkt = shapely.to_wkt(shapely.box(west, south, east, north), rounding_precision=-1, trim=True)

    # Corners (counter-clockwise from south-west, closed) → lon/lat, one transform per zone.
    cx = np.stack([west, east, east, west, west], axis=1)
    cy = np.stack([south, south, north, north, south], axis=1)
    clon = np.empty_like(cx)
    clat = np.empty_like(cy)
    for code in np.unique(epsg):
        sel = epsg == code
        a, b = _transformer(int(code), 4326).transform(cx[sel].ravel(), cy[sel].ravel())
        clon[sel] = np.asarray(a).reshape(-1, 5)
        clat[sel] = np.asarray(b).reshape(-1, 5)
    clon = lon[:, None] + (np.mod(clon - lon[:, None] + 180.0, 360.0) - 180.0)
    polygons = shapely.polygons(np.stack([clon, clat], axis=2)) if n else np.array([], dtype=object)

    return gpd.GeoDataFrame(
        {
            "patch_id": pd.Series([loc.id for loc in locations], dtype=object),
            "source_id": pd.Series(source_id, dtype=object),
            "index": index,
            "lon": lon,
            "lat": lat,
            "epsg": epsg,
            "x": x,
            "y": y,
            "city": pd.Series(city, dtype=object),
            "footprint_wkt_utm": pd.Series(list(wkt), dtype=object),
        },
        geometry=gpd.GeoSeries(polygons, crs="EPSG:4326"),
    )


def write_locations(gdf: gpd.GeoDataFrame, path: str | Path) -> Path:
    """Write the locations table as GeoParquet (local path; parent directories are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gdf.to_parquet(path, index=False)
    return path


def read_locations(path: str | Path) -> list[Location]:
    """Read a file written by :func:`write_locations` back into ``Location`` objects (exact)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"locations file not found: {path}")
    df = pd.read_parquet(path, columns=["index", "lon", "lat", "epsg", "x", "y", "city", "source_id"])
    return [
        Location(index=int(i), lon=float(a), lat=float(b), epsg=int(e), x=float(xx), y=float(yy), city=str(c),
                 source_id=str(sid))
        for i, a, b, e, xx, yy, c, sid in zip(
            df["index"].tolist(),
            df["lon"].tolist(),
            df["lat"].tolist(),
            df["epsg"].tolist(),
            df["x"].tolist(),
            df["y"].tolist(),
            df["city"].fillna("").tolist(),
            df["source_id"].fillna("").tolist(),
        )
    ]
