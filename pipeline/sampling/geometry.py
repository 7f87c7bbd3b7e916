"""Sphere and UTM geometry of the sampler: unit vectors, chords, great-circle distances, metric
offsets in a local tangent frame, UTM zones and projections (R = 6371 km, see :mod:`.sampler`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pyproj

__all__ = ["EARTH_RADIUS_KM", "KM_PER_DEGREE", "chord_for_distance", "great_circle_km", "lonlat_to_unit",
           "offset_lonlat", "project_to_utm", "utm_epsg_array"]

EARTH_RADIUS_KM = 6371.0
KM_PER_DEGREE = 2.0 * math.pi * EARTH_RADIUS_KM / 360.0  # ≈ 111.19 km, as in SSL4EO-S12
_MIN_COS_LAT = math.cos(math.radians(89.9))


def lonlat_to_unit(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Unit vectors (n, 3) on the sphere for lon/lat in degrees."""
    lam = np.radians(lon)
    phi = np.radians(lat)
    cphi = np.cos(phi)
    return np.column_stack((cphi * np.cos(lam), cphi * np.sin(lam), np.sin(phi)))


def chord_for_distance(distance_km: float) -> float:
    """Unit-sphere chord length equivalent to a great-circle distance (km, R = 6371 km)."""
    return 2.0 * math.sin(min(distance_km / (2.0 * EARTH_RADIUS_KM), math.pi / 2.0))


def great_circle_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Haversine distance in km (R = 6371 km); broadcasts."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dphi = p2 - p1
    dlam = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlam / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def offset_lonlat(
    lon0: np.ndarray, lat0: np.ndarray, east_km: np.ndarray, north_km: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Apply east/north offsets (km) in each origin's local tangent frame; fold poles, wrap lon."""
    coslat = np.maximum(np.cos(np.radians(lat0)), _MIN_COS_LAT)
    lat = lat0 + north_km / KM_PER_DEGREE
    lon = lon0 + east_km / (KM_PER_DEGREE * coslat)
    # Fold latitudes that went past a pole: t ∈ [0, 360) walks pole-to-pole and back.
    t = np.mod(lat + 90.0, 360.0)
    over = t > 180.0
    lat = np.where(over, 270.0 - t, t - 90.0)
    lon = np.where(over, lon + 180.0, lon)
    lon = np.mod(lon + 180.0, 360.0) - 180.0
    return lon, lat


def utm_epsg_array(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Vectorised :func:`pipeline.locations.utm_epsg` (same rule, same results)."""
    zone = np.mod(np.floor_divide(np.asarray(lon, dtype=np.float64) + 180.0, 6.0), 60).astype(np.int64) + 1
    return np.where(np.asarray(lat) >= 0, 32600, 32700) + zone


@functools.lru_cache(maxsize=512)
def _transformer(src: int, dst: int) -> pyproj.Transformer:
    return pyproj.Transformer.from_crs(f"EPSG:{src}", f"EPSG:{dst}", always_xy=True)


def project_to_utm(lon: np.ndarray, lat: np.ndarray, epsg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project lon/lat into each point's own CRS, one pyproj call per distinct EPSG code."""
    x = np.empty(len(lon), dtype=np.float64)
    y = np.empty(len(lon), dtype=np.float64)
    for code in np.unique(epsg):
        sel = epsg == code
        x[sel], y[sel] = _transformer(4326, int(code)).transform(lon[sel], lat[sel])
    return x, y
