"""The STAC source, offline: static catalogs written with pystac into tmp_path, assets as local COGs.

Two kinds of asset sets: COGs made from the real samples of ``../shared/data`` (BigEarthNet S2 L2A +
S1, the eo-learn S2 L1C stack with its LULC map, ESA WorldCover; skipped when absent) and one
synthetic set generated here, so that the source is covered without shared data. Values are checked
against direct rasterio reads of the same COGs (a WarpedVRT onto the grid, or the file's pixels).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely
from archive_helpers import curate_all
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.io import MemoryFile
from rasterio.shutil import copy as rio_copy
from rasterio.transform import Affine, from_origin
from rasterio.vrt import WarpedVRT
from rasterio.warp import reproject, transform_bounds
from rasterio.warp import transform as warp_transform

from pipeline.bands import LABEL_NODATA, MODALITY_BANDS
from pipeline.crosswalks import apply_crosswalk
from pipeline.errors import BadInput
from pipeline.grid import PatchGrid
from pipeline.locations import Location, utm_epsg
from pipeline.manifest import Manifest, ManifestError, StacSourceOptions, parse_manifest
from pipeline.preflight import preflight
from pipeline.sampling import sample_locations
from pipeline.seasons import SeasonWindow, location_shift_days, season_windows
from pipeline.sources import build_source
from pipeline.sources.base import NoImageFound, SourceError, TransientSourceError
from pipeline.sources.landcover import LandCoverLabels
from pipeline.sources.stac import StacSource, classify, reading
from pipeline.store import MODALITY_ORDER, STATUS_DONE, date_to_days

L2A = MODALITY_BANDS["s2_l2a"]
S2_RES = {"B1": 60, "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20, "B8": 10, "B8A": 20,
          "B9": 60, "B10": 60, "B11": 20, "B12": 20}


# --------------------------------------------------------------------------------------- writing helpers
def write_cog(path: Path, data: np.ndarray, crs: str, transform: Affine, nodata=None) -> str:
    """``data`` (bands, h, w) or (h, w) as a Cloud-Optimized GeoTIFF (GDAL's COG driver, 128 px tiles)."""
    data = data[None] if data.ndim == 2 else data
    profile = {"driver": "GTiff", "count": data.shape[0], "height": data.shape[1], "width": data.shape[2],
               "dtype": data.dtype, "crs": crs, "transform": transform, "nodata": nodata}
    with MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(data)
        with mem.open() as src:
            rio_copy(src, str(path), driver="COG", blocksize=128, compress="deflate")
    return str(path)


def footprint_wgs84(crs: str, bounds) -> dict:
    west, south, east, north = transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21)
    return shapely.geometry.mapping(shapely.box(west, south, east, north))


def make_item(item_id: str, when: dt.datetime, geometry: dict, assets: dict, **props) -> pystac.Item:
    """An item; ``assets`` maps key → href or (href, [band names]) of a multi-band file."""
    start, end = props.pop("start", None), props.pop("end", None)
    item = pystac.Item(item_id, geometry, list(shapely.geometry.shape(geometry).bounds),
                       None if start else when, props, start_datetime=start, end_datetime=end)
    for key, value in assets.items():
        href, names = value if isinstance(value, tuple) else (value, None)
        extra = {"eo:bands": [{"name": n} for n in names]} if names else {}
        item.add_asset(key, pystac.Asset(href, media_type=pystac.MediaType.COG, roles=["data"], extra_fields=extra))
    return item


def write_catalog(root: Path, collections: dict[str, list[pystac.Item]]) -> str:
    cat = pystac.Catalog("test-catalog", "offline STAC catalog for tests")
    for cid, items in collections.items():
        col = pystac.Collection(cid, cid, pystac.Extent(pystac.SpatialExtent([[-180, -90, 180, 90]]),
                                                         pystac.TemporalExtent([[None, None]])))
        col.add_items(items)
        cat.add_child(col)
    cat.normalize_hrefs(str(root))
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return str(root / "catalog.json")


def utc(y, m, d, h=10) -> dt.datetime:
    return dt.datetime(y, m, d, h, tzinfo=dt.timezone.utc)


def location_at(x: float, y: float, epsg: int, index: int = 0) -> Location:
    lon, lat = warp_transform(f"EPSG:{epsg}", "EPSG:4326", [x], [y])
    return Location(index=index, lon=lon[0], lat=lat[0], epsg=epsg, x=x, y=y)


def vrt_read(href: str, band: int, grid: PatchGrid, resampling: Resampling, nodata) -> np.ndarray:
    """Reference: the COG warped onto the grid by a WarpedVRT (GDAL reads only the blocks it needs)."""
    with rasterio.open(href) as src, WarpedVRT(src, crs=grid.crs, transform=Affine(*grid.transform),
                                               width=grid.size, height=grid.size, resampling=resampling,
                                               src_nodata=nodata, nodata=nodata) as vrt:
        return vrt.read(band)


def warp_read(href: str, band: int, grid: PatchGrid, resampling: Resampling, nodata) -> np.ndarray:
    """Reference: the whole band warped onto the grid with rasterio.warp.reproject."""
    with rasterio.open(href) as src:
        out = np.full((grid.size, grid.size), nodata, dtype=src.dtypes[band - 1])
        reproject(rasterio.band(src, band), out, src_nodata=nodata, dst_transform=Affine(*grid.transform),
                  dst_crs=grid.crs, dst_nodata=nodata, resampling=resampling)
    return out


def source_for(catalog: str, max_cloud: float = 20.0, **opts) -> StacSource:
    return StacSource(StacSourceOptions(catalog=catalog, **opts), max_cloud, sleep=lambda s: None)


# --------------------------------------------------------------------------------------- synthetic set
ORIGIN = (399960.0, 5600040.0)  # a multiple of 60 m, like a Sentinel-2 tile corner
EPSG = 32632
TILE_M = 1920.0


def smooth(rng, shape, lo, hi):
    coarse = rng.uniform(lo, hi, (shape[0] // 8 + 1, shape[1] // 8 + 1))
    return np.kron(coarse, np.ones((8, 8)))[: shape[0], : shape[1]] + rng.uniform(0, (hi - lo) / 20, shape)


def synthetic_s2(folder: Path, tag: str, seed: int, origin=ORIGIN, extent=TILE_M, epsg=EPSG) -> dict:
    rng = np.random.default_rng(seed)
    assets = {}
    for band in L2A:
        res = S2_RES[band]
        n = int(extent // res)
        data = smooth(rng, (n, n), 200, 6000).astype(np.uint16)
        data[0, :3] = 0  # a few no-data pixels
        name = f"B{int(band[1:]):02d}" if band[1:].isdigit() else band
        assets[name] = write_cog(folder / f"{tag}_{name}.tif", data, f"EPSG:{epsg}",
                                 from_origin(origin[0], origin[1], res, res), nodata=0)
    return assets


def synthetic_s1(folder: Path, tag: str, seed: int, origin=ORIGIN, extent=TILE_M, epsg=EPSG) -> dict:
    rng = np.random.default_rng(seed)
    n = int(extent // 10)
    assets = {}
    for pol in ("vv", "vh"):
        linear = (10 ** (smooth(rng, (n, n), -25, -5) / 10)).astype(np.float32)
        c = n // 2  # inside the patch at the tile's centre
        linear[c, c:c + 4] = 0.0  # no logarithm: no-data
        linear[c + 1, c:c + 4] = -32768.0  # the asset's nodata
        assets[pol] = write_cog(folder / f"{tag}_{pol}.tif", linear, f"EPSG:{epsg}",
                                from_origin(origin[0], origin[1], 10, 10), nodata=-32768.0)
    return assets


def synthetic_landcover(folder: Path, tag: str, seed: int, bounds_wgs84) -> str:
    """WorldCover-coded map in EPSG:4326 (≈ 10 m pixels) with some no-data (0) and unmapped (255) codes."""
    rng = np.random.default_rng(seed)
    west, south, east, north = bounds_wgs84
    res = 9e-5
    w, h = int(math.ceil((east - west) / res)), int(math.ceil((north - south) / res))
    codes = np.array([10, 20, 30, 40, 50, 60, 80, 90, 0, 255], dtype=np.uint8)
    data = codes[np.kron(rng.integers(0, len(codes), (h // 6 + 1, w // 6 + 1)), np.ones((6, 6), int))[:h, :w]]
    return write_cog(folder / f"{tag}_map.tif", data.astype(np.uint8), "EPSG:4326",
                     from_origin(west, north, res, res), nodata=0)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A static catalog over one synthetic tile: S2 L2A, S1 RTC and land cover items around June 2021."""
    root = tmp_path_factory.mktemp("stac_synthetic")
    bounds = (ORIGIN[0], ORIGIN[1] - TILE_M, ORIGIN[0] + TILE_M, ORIGIN[1])
    tile = footprint_wgs84(f"EPSG:{EPSG}", bounds)
    half = footprint_wgs84(f"EPSG:{EPSG}", (bounds[0], bounds[1], bounds[0] + 600, bounds[3]))  # misses the patch
    s2 = [  # (id, time, cloud, geometry)
        ("s2-0610", utc(2021, 6, 10), 5.0, tile), ("s2-0625-cloudy", utc(2021, 6, 25), 50.0, tile),
        ("s2-0628-partial", utc(2021, 6, 28), 1.0, half), ("s2-0706-end", utc(2021, 7, 6, 0), 0.0, tile),
        ("s2-0520-before", utc(2021, 5, 20), 0.0, tile),
    ]
    s2_items = [make_item(i, t, g, synthetic_s2(root, i, k), **{"eo:cloud_cover": c, "proj:epsg": EPSG})
                for k, (i, t, c, g) in enumerate(s2)]
    s1 = [("s1-0612", utc(2021, 6, 12), "IW"), ("s1-0620-ew", utc(2021, 6, 20), "EW")]
    s1_items = [make_item(i, t, tile, synthetic_s1(root, i, 10 + k), **{"sar:instrument_mode": m,
                                                                        "sar:polarizations": ["VV", "VH"]})
                for k, (i, t, m) in enumerate(s1)]
    wgs = shapely.geometry.shape(tile).bounds
    lc_items = [make_item(f"lc-{y}", utc(y, 1, 1, 0), tile, {"map": synthetic_landcover(root, f"lc{y}", y, wgs)},
                          start=utc(y, 1, 1, 0), end=utc(y, 12, 31, 23)) for y in (2020, 2021)]
    catalog = write_catalog(root / "catalog", {"s2l2a": s2_items, "s1rtc": s1_items, "lc": lc_items})
    x, y = ORIGIN[0] + TILE_M / 2, ORIGIN[1] - TILE_M / 2
    return {"catalog": catalog, "root": root, "location": location_at(x, y, EPSG),
            "grid": PatchGrid.for_location(location_at(x, y, EPSG), 32, 10.0),
            "items": {it.id: it for it in s2_items + s1_items + lc_items}}


JUNE = SeasonWindow(season=0, reference=dt.date(2021, 6, 21), start=dt.date(2021, 6, 6), end=dt.date(2021, 7, 6))
SYN_OPTS = {"collections": {"s2_l2a": "s2l2a", "s1_grd": "s1rtc", "landcover": "lc"},
            "landcover_crosswalk": "esa_worldcover"}


def href(item: pystac.Item, key: str) -> str:
    return item.assets[key].get_absolute_href()


def test_synthetic_selection_bands_and_values(synthetic):
    src = source_for(synthetic["catalog"], **SYN_OPTS)
    grid, items = synthetic["grid"], synthetic["items"]
    mods = {"s2_l2a": L2A, "s1_grd": ("VV", "VH")}
    sample = src.fetch(synthetic["location"], JUNE, grid, mods)
    s2, s1 = sample.images["s2_l2a"], sample.images["s1_grd"]
    # Most recent passing item: 06-25 is too cloudy, 06-28 does not cover the patch, 07-06 00:00 is past
    # the (exclusive) end, 05-20 before the start; the EW scene of 06-20 is skipped for the IW one.
    assert (s2.image_id, s2.acquired, s2.cloud_pct) == ("s2-0610", dt.date(2021, 6, 10), 5.0)
    assert (s1.image_id, s1.acquired) == ("s1-0612", dt.date(2021, 6, 12)) and math.isnan(s1.cloud_pct)
    assert sample.extra["s2_l2a_candidates"] == "1"
    assert s2.bands == L2A and s2.data.dtype == np.uint16 and s2.data.shape == (12, 32, 32)
    item = items["s2-0610"]
    for k, band in enumerate(L2A):  # canonical order, each band equal to a WarpedVRT read of its own COG
        key = f"B{int(band[1:]):02d}" if band[1:].isdigit() else band
        method = Resampling.nearest if S2_RES[band] == 10 else Resampling.bilinear
        np.testing.assert_array_equal(s2.data[k], warp_read(href(item, key), 1, grid, method, 0), err_msg=band)
    # 10 m bands on the lattice are the file's pixels.
    col, row = int((grid.x0 - ORIGIN[0]) / 10), int((ORIGIN[1] - grid.y0) / 10)
    with rasterio.open(href(item, "B02")) as f:
        np.testing.assert_array_equal(s2.data[1], f.read(1)[row:row + 32, col:col + 32])
    # S1: linear power → dB, nodata / zero → NaN.
    with rasterio.open(href(items["s1-0612"], "vv")) as f:
        lin = f.read(1)[row:row + 32, col:col + 32]
    expected = np.where(lin > 0, 10 * np.log10(np.where(lin > 0, lin, 1)), np.nan).astype(np.float32)
    np.testing.assert_array_equal(np.isnan(s1.data[0]), np.isnan(expected))
    np.testing.assert_allclose(s1.data[0], expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(s1.data).sum() == 2 * 8  # per band: 4 zero and 4 nodata pixels


def test_synthetic_cloud_filter_and_window(synthetic):
    grid, loc = synthetic["grid"], synthetic["location"]
    loose = source_for(synthetic["catalog"], max_cloud=60.0, **SYN_OPTS)
    assert loose.fetch(loc, JUNE, grid, {"s2_l2a": ("B4",)}).images["s2_l2a"].image_id == "s2-0625-cloudy"
    strict = source_for(synthetic["catalog"], max_cloud=5.0, **SYN_OPTS)  # eo:cloud_cover 5 is not < 5
    with pytest.raises(NoImageFound, match="eo:cloud_cover < 5"):
        strict.fetch(loc, JUNE, grid, {"s2_l2a": ("B4",)})
    july = SeasonWindow(season=0, reference=JUNE.reference, start=dt.date(2021, 7, 6), end=dt.date(2021, 7, 7))
    assert loose.fetch(loc, july, grid, {"s2_l2a": ("B4",)}).images["s2_l2a"].image_id == "s2-0706-end"
    far = Location(index=1, lon=0, lat=0, epsg=EPSG, x=ORIGIN[0] + 5000, y=ORIGIN[1] - 5000)  # off the tile
    with pytest.raises(NoImageFound, match="covering the patch"):
        loose.fetch(far, JUNE, PatchGrid.for_location(far, 32, 10.0), {"s2_l2a": ("B4",)})


def test_synthetic_land_cover_crosswalk_and_year(synthetic):
    grid, loc, items = synthetic["grid"], synthetic["location"], synthetic["items"]
    src = source_for(synthetic["catalog"], **SYN_OPTS)
    label = src.fetch(loc, JUNE, grid, {"s2_l2a": ("B4",)}).label
    assert (label.image_id, label.method) == ("lc-2021", "landcover:lc")
    lc_href = href(items["lc-2021"], "map")
    expected = apply_crosswalk(vrt_read(lc_href, 1, grid, Resampling.nearest, 0).astype(np.int32), "esa_worldcover")
    np.testing.assert_array_equal(label.data, expected)
    # The same as the land-cover source (pipeline.sources.landcover) reading the same file.
    np.testing.assert_array_equal(label.data, LandCoverLabels(lc_href, "esa_worldcover").label_map(grid).data)
    assert {0, LABEL_NODATA} <= set(np.unique(label.data).tolist())  # water (80) and 0/255 → no label
    w2020 = SeasonWindow(season=0, reference=dt.date(2020, 6, 21), start=dt.date(2020, 6, 6), end=dt.date(2020, 7, 6))
    s = source_for(synthetic["catalog"], **{**SYN_OPTS, "collections": {"s2_l2a": "s2l2a", "landcover": "lc"}})
    with pytest.raises(NoImageFound):  # no S2 in 2020 …
        s.fetch(loc, w2020, grid, {"s2_l2a": ("B4",)})
    assert s._label(grid_footprint(grid), grid, w2020, "", {}).image_id == "lc-2020"  # … but the 2020 map


def grid_footprint(grid):
    from pipeline.sources.stac import patch_footprint

    return patch_footprint(grid)


# --------------------------------------------------------------------------------------- retries and errors
def test_transient_errors_are_retried_then_typed(synthetic, monkeypatch):
    grid, loc = synthetic["grid"], synthetic["location"]
    real, calls = reading.warp_asset, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise RasterioIOError("HTTP response code: 503")
        return real(*args, **kwargs)

    monkeypatch.setattr(reading, "warp_asset", flaky)
    src = source_for(synthetic["catalog"], retries=2, read_threads=1, **SYN_OPTS)
    assert src.retries_requests is True
    src.fetch(loc, JUNE, grid, {"s2_l2a": ("B4",)})
    assert len(calls) == 2 + 1 + 1  # B4: two failures and a success; then the land cover
    monkeypatch.setattr(reading, "warp_asset", lambda *a, **k: (_ for _ in ()).throw(RasterioIOError("timed out")))
    with pytest.raises(TransientSourceError, match="still failing after 3 attempts"):
        src.fetch(loc, JUNE, grid, {"s2_l2a": ("B4",)})
    calls.clear()

    def missing(*args, **kwargs):
        calls.append(1)
        raise RasterioIOError("HTTP response code: 404")

    monkeypatch.setattr(reading, "warp_asset", missing)
    with pytest.raises(NoImageFound, match="404"):  # permanent: not retried
        src.fetch(loc, JUNE, grid, {"s2_l2a": ("B4",)})
    assert len(calls) == 1


def test_classify():
    import urllib.error

    assert isinstance(classify(RasterioIOError("CURL error: Could not resolve host"), "x"), TransientSourceError)
    assert isinstance(classify(RasterioIOError("/a/b.tif: No such file or directory"), "x"), NoImageFound)
    denied = classify(urllib.error.HTTPError("u", 403, "Forbidden", {}, None), "x")
    assert type(denied) is SourceError and "source.stac.sign" in str(denied)
    assert isinstance(classify(urllib.error.HTTPError("u", 502, "Bad Gateway", {}, None), "x"), TransientSourceError)
    assert classify(KeyError("bug"), "x") is None  # programming errors are not source errors


def strip_sign(item: pystac.Item) -> None:
    """A signing hook for the test: turns ``signme://`` hrefs into plain paths (in place)."""
    for asset in item.assets.values():
        asset.href = asset.href.removeprefix("signme://")


def test_sign_hook_is_applied(synthetic, tmp_path):
    item = synthetic["items"]["s2-0610"].clone()
    for asset in item.assets.values():
        asset.href = "signme://" + asset.get_absolute_href()
    catalog = write_catalog(tmp_path / "signed", {"s2l2a": [item]})
    opts = {"collections": {"s2_l2a": "s2l2a", "s1_grd": None, "landcover": None}}
    unsigned = source_for(catalog, **opts)
    with pytest.raises(SourceError):
        unsigned.fetch(synthetic["location"], JUNE, synthetic["grid"], {"s2_l2a": ("B4",)})
    signed = source_for(catalog, sign=f"{__name__}.strip_sign", **opts)
    got = signed.fetch(synthetic["location"], JUNE, synthetic["grid"], {"s2_l2a": ("B4",)})
    assert got.images["s2_l2a"].image_id == "s2-0610" and got.label is None


def test_api_search_arguments(synthetic, monkeypatch):
    """A STAC API is searched with the patch bbox, the window and (Query extension) the cloud filter."""
    import pystac_client

    items = list(pystac.read_file(synthetic["catalog"]).get_items(recursive=True))
    seen = []

    class FakeClient:
        def conforms_to(self, cls):
            return True

        def search(self, **kwargs):
            seen.append(kwargs)
            found = [i for i in items if i.collection_id in kwargs["collections"]]
            return type("Search", (), {"items": lambda self: iter(found)})()

    monkeypatch.setattr(pystac_client.Client, "open", classmethod(lambda cls, url, **kw: FakeClient()))
    src = source_for("https://stac.example/api", **SYN_OPTS)
    got = src.fetch(synthetic["location"], JUNE, synthetic["grid"], {"s2_l2a": ("B4",)})
    assert got.images["s2_l2a"].image_id == "s2-0610" and got.label.image_id == "lc-2021"
    s2_args, lc_args = seen
    assert s2_args["collections"] == ["s2l2a"] and s2_args["query"] == {"eo:cloud_cover": {"lt": 20.0}}
    assert s2_args["datetime"] == (dt.datetime(2021, 6, 6, tzinfo=dt.timezone.utc),
                                   dt.datetime(2021, 7, 6, tzinfo=dt.timezone.utc))
    west, south, east, north = s2_args["bbox"]
    loc = synthetic["location"]
    assert west < loc.lon < east and south < loc.lat < north and east - west < 0.01
    assert "datetime" not in lc_args and "query" not in lc_args


# --------------------------------------------------------------------------------------- options, preflight
@pytest.mark.parametrize("options, key", [
    ({"colections": {}}, "source.stac.colections: unknown key"),
    ({"landcover_crosswalk": "corine"}, "source.stac.landcover_crosswalk: unknown crosswalk 'corine'"),
    ({"sign": "not a name"}, "source.stac.sign: 'not a name' is not a dotted name"),
    ({"requests_per_second": 0}, "source.stac.requests_per_second: Input should be greater than 0"),
    ({"s1_units": "dB"}, "source.stac.s1_units: Input should be 'linear' or 'db'"),
])
def test_bad_options_are_one_line_bad_input(options, key):
    with pytest.raises(ManifestError) as err:
        parse_manifest({"source": {"kind": "stac", "stac": options}})
    assert isinstance(err.value, BadInput)
    assert len(err.value.problems) == 1 and err.value.problems[0].startswith(key), err.value.problems
    assert "\n" not in str(err.value)


def test_preflight_names_missing_modalities_catalog_and_hook(tmp_path):
    m = Manifest.model_validate({"source": {"kind": "stac", "stac": {"catalog": str(tmp_path / "none"),
                                                                      "sign": "no_such_pkg.sign"}},
                                 "store": {"path": str(tmp_path / "a.zarr")}})
    problems = preflight(m)
    assert problems[0].startswith("source.stac.collections.s2_l1c: the catalog has no collection for s2_l1c")
    assert "modalities.s2_l1c.enabled: false" in problems[0]
    assert any(p.startswith("source.stac.catalog: ") for p in problems)
    assert any(p.startswith("source.stac.sign: cannot import no_such_pkg.sign") for p in problems)
    ok = Manifest.model_validate({"source": {"kind": "stac"}, "modalities": {"s2_l1c": {"enabled": False}},
                                  "store": {"path": str(tmp_path / "b.zarr")}})
    assert preflight(ok) == []  # Planetary Computer defaults without L1C: nothing to fix, no request sent
    hashed = {"source": {"kind": "stac", "stac": {"requests_per_second": 3.0, "sign": "a.b"}}}
    assert Manifest.model_validate(hashed).content_hash() == Manifest.model_validate(
        {"source": {"kind": "stac", "stac": {}}}).content_hash()


# --------------------------------------------------------------------------------------- curation
def worldcover_map(root: Path, loc: Location, grid: PatchGrid, geom: dict) -> dict:
    """The assets of a location's WorldCover-coded land-cover item (:func:`synthetic_landcover`)."""
    return {"map": synthetic_landcover(root, f"loc{loc.index}", loc.index, shapely.geometry.shape(geom).bounds)}


def per_location_catalog(root: Path, manifest: Manifest, landcover=("lc", worldcover_map)) -> str:
    """Items for every sampled location and season: S2 L2A + S1 in the location's UTM zone, a land-cover map
    (``landcover``: its collection id and the function writing a location's map assets).
    """
    collection, write_map = landcover
    items = {"s2l2a": [], "s1rtc": [], collection: []}
    for loc in sample_locations(manifest.sampling, manifest.patch):
        grid = PatchGrid.for_location(loc, manifest.patch.size_px, manifest.patch.resolution_m)
        origin, extent = (grid.x0 - 120.0, grid.y0 + 120.0), grid.size * grid.resolution + 240.0
        geom = footprint_wgs84(grid.crs, (origin[0], origin[1] - extent, origin[0] + extent, origin[1]))
        shift = location_shift_days(manifest.sampling.seed, loc.index, manifest.seasons.max_shift_days)
        for w in season_windows(manifest.seasons.reference_dates, manifest.seasons.window_days, shift):
            tag = f"loc{loc.index}-s{w.season}"
            when = dt.datetime.combine(w.start + dt.timedelta(days=3), dt.time(10), dt.timezone.utc)
            items["s2l2a"].append(make_item(f"{tag}-s2", when, geom, synthetic_s2(root, tag, loc.index * 10 + w.season,
                                                                                    origin, extent, loc.epsg),
                                            **{"eo:cloud_cover": 3.0}))
            items["s1rtc"].append(make_item(f"{tag}-s1", when, geom, synthetic_s1(root, tag, loc.index + 50,
                                                                                  origin, extent, loc.epsg)))
        items[collection].append(make_item(f"loc{loc.index}-lc", utc(2021, 1, 1), geom,
                                           write_map(root, loc, grid, geom), start=utc(2021, 1, 1, 0),
                                           end=utc(2021, 12, 31, 23)))
    return write_catalog(root / "catalog", items)


def curation_manifest(tmp_path: Path, stac: dict, landcover=("lc", worldcover_map)) -> Manifest:
    """Two locations, two seasons of 2021, 16 px patches, S2 L2A + S1, over :func:`per_location_catalog`."""
    data = {"source": {"kind": "stac", "stac": {**stac, "catalog": "PLACEHOLDER"}},
            "sampling": {"n_locations": 2, "top_n_cities": 20, "seed": 7},
            "seasons": {"reference_dates": ["2021-03-20", "2021-06-21"]},
            "modalities": {"s2_l1c": {"enabled": False}},
            "patch": {"size_px": 16}, "store": {"path": str(tmp_path / "stac.zarr"), "patches_per_shard": 2}}
    data["source"]["stac"]["catalog"] = per_location_catalog(tmp_path, Manifest.model_validate(data), landcover)
    return Manifest.model_validate(data)


def test_curation_with_stac_source(tmp_path):
    m = curation_manifest(tmp_path, SYN_OPTS)
    assert preflight(m) == []
    g = curate_all(m)  # build_source(manifest) → StacSource
    assert g.attrs["source"]["name"] == "stac" and g.attrs["synthetic"] is False
    assert g["status"][:].tolist() == [STATUS_DONE, STATUS_DONE]
    src = build_source(m)
    locations = sample_locations(m.sampling, m.patch)
    s2, s1 = MODALITY_ORDER.index("s2_l2a"), MODALITY_ORDER.index("s1_grd")
    for p, loc in enumerate(locations):
        shift = location_shift_days(m.sampling.seed, loc.index, m.seasons.max_shift_days)
        for w in season_windows(m.seasons.reference_dates, m.seasons.window_days, shift):
            assert g["image_id"][p, w.season, s2] == f"loc{loc.index}-s{w.season}-s2"
            assert g["image_id"][p, w.season, s1] == f"loc{loc.index}-s{w.season}-s1"
            assert g["acquired"][p, w.season, s2] == date_to_days(w.start + dt.timedelta(days=3))
            grid = PatchGrid.for_location(loc, 16, 10.0)
            direct = src.fetch(loc, w, grid, m.modalities.selected())
            np.testing.assert_array_equal(g["s2_l2a"][p, w.season], direct.images["s2_l2a"].data)
            np.testing.assert_array_equal(g["s1_grd"][p, w.season], direct.images["s1_grd"].data)
            np.testing.assert_array_equal(g["dw_label"][p, w.season], direct.label.data)
            with rasterio.open(synthetic_href(tmp_path, loc, w.season, "B02")) as f:  # 10 m: the file's pixels
                np.testing.assert_array_equal(g["s2_l2a"][p, w.season, 1], f.read(1)[12:28, 12:28])
    assert set(g["label_method"][:].ravel().tolist()) == {"landcover:lc"}
    assert g["multi_hot"][:].any()


def synthetic_href(root: Path, loc: Location, season: int, key: str) -> str:
    return str(root / f"loc{loc.index}-s{season}_{key}.tif")


# One io-lulc-annual-v02 code per patch row: rangeland, trees, clouds, no data, water.
IO_ROWS = np.repeat(np.array([11, 2, 10, 0, 1], np.uint8), [4, 4, 2, 2, 4])


def io_lulc_map(root: Path, loc: Location, grid: PatchGrid, geom: dict) -> dict:
    """A Planetary Computer ``io-lulc-annual-v02``-like asset (key ``data``, nodata 0) on the patch's own
    10 m pixels: :data:`IO_ROWS` down the patch, rangeland in the 12 px margin around it.
    """
    rows = np.full(grid.size + 24, 11, np.uint8)
    rows[12:12 + grid.size] = IO_ROWS
    codes = np.repeat(rows[:, None], grid.size + 24, axis=1)
    return {"data": write_cog(root / f"loc{loc.index}_io.tif", codes, grid.crs,
                              from_origin(grid.x0 - 120.0, grid.y0 + 120.0, 10.0, 10.0), nodata=0)}


def test_io_lulc_annual_v02_labels_by_collection(tmp_path):
    """``collections.landcover: io-lulc-annual-v02`` needs no ``landcover_crosswalk``: rangeland becomes
    grass (never shrub_and_scrub), clouds and no data no label, the rest their DW class.
    """
    stac = {"collections": {"s2_l2a": "s2l2a", "s1_grd": "s1rtc", "landcover": "io-lulc-annual-v02"}}
    m = curation_manifest(tmp_path, stac, landcover=("io-lulc-annual-v02", io_lulc_map))
    assert preflight(m) == [] and build_source(m).crosswalk == "io_lulc_annual_v02"
    g = curate_all(m)
    assert g["status"][:].tolist() == [STATUS_DONE, STATUS_DONE]
    assert g.attrs["source"]["landcover_crosswalk"] == "io_lulc_annual_v02"
    assert set(g["label_method"][:].ravel().tolist()) == {"landcover:io-lulc-annual-v02"}
    k = {name: i for i, name in enumerate(g["class"][:].tolist())}
    row_class = np.array([k["grass"]] * 4 + [k["trees"]] * 4 + [LABEL_NODATA] * 4 + [k["water"]] * 4, np.uint8)
    np.testing.assert_array_equal(g["dw_label"][:], np.broadcast_to(row_class[:, None], g["dw_label"].shape))
    fraction = np.zeros(len(k), np.float32)
    fraction[[k["grass"], k["trees"], k["water"]]] = 1 / 3  # 64 px each of the 192 labelled ones
    np.testing.assert_allclose(g["label_fraction"][:], np.broadcast_to(fraction, g["label_fraction"].shape))
    np.testing.assert_array_equal(g["multi_hot"][:], np.broadcast_to(fraction > 0, g["multi_hot"].shape))
    assert not g["label_fraction"][..., k["shrub_and_scrub"]].any()


# --------------------------------------------------------------------------------------- real samples
@pytest.fixture(scope="module")
def real(shared_data, tmp_path_factory):
    """COGs of the real samples and a static catalog over them."""
    need = [shared_data / "bigearthnet_v1", shared_data / "eolearn_testpatch_slovenia", shared_data / "esa_worldcover"]
    if not all(p.is_dir() for p in need):
        pytest.skip(f"real samples missing under {shared_data} (need {[p.name for p in need]})")
    root = tmp_path_factory.mktemp("stac_real")
    items: dict[str, list] = {"ben-s2": [], "ben-s1": [], "eolearn-l1c": [], "eolearn-lulc": [], "esa-worldcover": []}
    # BigEarthNet v1 patch 87_48 (EPSG:32633): 12 L2A band files, S1 in dB written as linear power.
    ben = shared_data / "bigearthnet_v1"
    s2dir = ben / "BigEarthNet-v1.0" / "S2A_MSIL2A_20170613T101031_87_48"
    s1dir = ben / "BigEarthNet-S1-v1.0" / "S1A_IW_GRDH_1SDV_20170613T165043_33UUP_87_48"
    assets = {}
    for f in sorted(s2dir.glob("*_B*.tif")):
        with rasterio.open(f) as src:
            key = f.stem.rsplit("_", 1)[1]
            assets[key] = write_cog(root / f"ben_{key}.tif", src.read(), str(src.crs), src.transform)
            crs, bounds = str(src.crs), src.bounds
    geom = footprint_wgs84(crs, bounds)
    items["ben-s2"].append(make_item("ben-87_48", utc(2017, 6, 13), geom, assets, **{"eo:cloud_cover": 0.0}))
    s1_assets = {}
    for pol in ("VV", "VH"):
        with rasterio.open(s1dir / f"{s1dir.name}_{pol}.tif") as src:
            lin = (10 ** (src.read(1).astype(np.float64) / 10)).astype(np.float32)
            s1_assets[pol.lower()] = write_cog(root / f"ben_{pol}.tif", lin, str(src.crs), src.transform)
    items["ben-s1"].append(make_item("ben-s1-87_48", utc(2017, 6, 13, 16), geom, s1_assets))
    # eo-learn: five dates of 13-band L1C (multi-band COGs, eo:bands names) and the LULC map.
    eo = shared_data / "eolearn_testpatch_slovenia"
    meta = json.loads((eo / "metadata.json").read_text())
    for scene in meta["scenes"]:
        with rasterio.open(eo / scene["file"]) as src:
            cog = write_cog(root / f"eo_{scene['file']}", src.read(), str(src.crs), src.transform)
            eo_geom = footprint_wgs84(str(src.crs), src.bounds)
        when = dt.datetime.fromisoformat(scene["sensing_time"]).replace(tzinfo=dt.timezone.utc)
        items["eolearn-l1c"].append(make_item(scene["file"][:-4], when, eo_geom, {"data": (cog, meta["s2_band_order"])},
                                              **{"eo:cloud_cover": 100.0 * scene["cloud_mask_fraction"]}))
    with rasterio.open(eo / "lulc.tif") as src:
        lulc = write_cog(root / "eo_lulc.tif", src.read(), str(src.crs), src.transform, nodata=src.nodata)
    items["eolearn-lulc"].append(make_item("eolearn-lulc", utc(2015, 1, 1), eo_geom, {"map": lulc}))
    # ESA WorldCover crops over São Tomé (EPSG:4326), 2020 and 2021.
    for year in (2020, 2021):
        f = shared_data / "esa_worldcover" / f"worldcover_{year}_v{'100' if year == 2020 else '200'}_saotome.tif"
        with rasterio.open(f) as src:
            wc = write_cog(root / f.name, src.read(), str(src.crs), src.transform, nodata=src.nodata)
            wc_geom = shapely.geometry.mapping(shapely.box(*src.bounds))
        items["esa-worldcover"].append(make_item(f"wc-{year}", utc(year, 1, 1, 0), wc_geom, {"map": wc},
                                                 start=utc(year, 1, 1, 0), end=utc(year, 12, 31, 23)))
    return {"catalog": write_catalog(root / "catalog", items), "meta": meta, "ben_s2": s2dir, "ben_s1": s1dir}


def test_real_bigearthnet_bands_in_canonical_order(real):
    loc = location_at(405000.0, 5341800.0, 32633)  # centre of patch 87_48 (404400..405600, 5341200..5342400)
    grid = PatchGrid.for_location(loc, 96, 10.0)
    assert (grid.x0, grid.y0) == (404520.0, 5342280.0)
    src = source_for(real["catalog"], collections={"s2_l2a": "ben-s2", "s1_grd": "ben-s1", "landcover": None})
    window = SeasonWindow(season=0, reference=dt.date(2017, 6, 21), start=dt.date(2017, 6, 6), end=dt.date(2017, 7, 6))
    sample = src.fetch(loc, window, grid, {"s2_l2a": L2A, "s1_grd": ("VV", "VH")})
    s2 = sample.images["s2_l2a"]
    assert s2.image_id == "ben-87_48" and s2.bands == L2A
    for k, band in enumerate(L2A):
        key = f"B{int(band[1:]):02d}" if band[1:].isdigit() else band
        path = real["ben_s2"] / f"{real['ben_s2'].name}_{key}.tif"
        if S2_RES[band] == 10:  # on the lattice: exactly the BigEarthNet pixels, offset (12, 12)
            with rasterio.open(path) as f:
                np.testing.assert_array_equal(s2.data[k], f.read(1)[12:108, 12:108], err_msg=band)
        else:
            np.testing.assert_array_equal(s2.data[k], warp_read(path, 1, grid, Resampling.bilinear, 0), err_msg=band)
    for k, pol in enumerate(("VV", "VH")):  # linear COG → dB again: the BigEarthNet dB values
        with rasterio.open(real["ben_s1"] / f"{real['ben_s1'].name}_{pol}.tif") as f:
            np.testing.assert_allclose(sample.images["s1_grd"].data[k], f.read(1)[12:108, 12:108], atol=1e-4)


def test_real_eolearn_cloud_filter_and_lulc_crosswalk(real):
    loc = location_at(465680.0, 5079750.0, 32633)
    grid = PatchGrid.for_location(loc, 64, 10.0)
    src = source_for(real["catalog"], collections={"s2_l1c": "eolearn-l1c", "landcover": "eolearn-lulc"},
                     landcover_crosswalk="eolearn_lulc")
    # 07-31 and 08-20 are fully cloudy (eo:cloud_cover 100): the most recent clear scene before 08-25 is 07-11.
    window = SeasonWindow(season=0, reference=dt.date(2015, 7, 30), start=dt.date(2015, 7, 5), end=dt.date(2015, 8, 25))
    sample = src.fetch(loc, window, grid, {"s2_l1c": MODALITY_BANDS["s2_l1c"]})
    img = sample.images["s2_l1c"]
    assert (img.image_id, img.acquired) == ("s2_l1c_20150711", dt.date(2015, 7, 11))
    later = SeasonWindow(season=0, reference=dt.date(2015, 8, 30), start=dt.date(2015, 8, 15), end=dt.date(2015, 9, 14))
    assert src.fetch(loc, later, grid, {"s2_l1c": ("B2",)}).images["s2_l1c"].image_id == "s2_l1c_20150909"
    cog = pystac.read_file(real["catalog"])
    item = next(i for i in cog.get_items(recursive=True) if i.id == "s2_l1c_20150711")
    for k in range(13):  # multi-band asset: band k of the file is canonical band k (B8A after B8)
        expected = warp_read(item.assets["data"].get_absolute_href(), k + 1, grid, Resampling.bilinear, 0)
        np.testing.assert_array_equal(img.data[k], expected, err_msg=MODALITY_BANDS["s2_l1c"][k])
    lulc = LandCoverLabels(Path(real["catalog"]).parents[1] / "eo_lulc.tif", "eolearn_lulc").label_map(grid)
    np.testing.assert_array_equal(sample.label.data, lulc.data)
    assert set(np.unique(sample.label.data).tolist()) >= {1, 2}  # trees (forest) and grass (grassland)


def test_real_worldcover_year_and_crosswalk(real):
    loc = Location(index=0, lon=6.6, lat=0.25, epsg=utm_epsg(6.6, 0.25), x=0, y=0)
    x, y = warp_transform("EPSG:4326", f"EPSG:{loc.epsg}", [6.6], [0.25])
    loc = location_at(x[0], y[0], loc.epsg)
    grid = PatchGrid.for_location(loc, 64, 10.0)
    src = source_for(real["catalog"], collections={"s2_l2a": None, "s1_grd": None, "landcover": "esa-worldcover"})
    footprint = grid_footprint(grid)
    root = Path(real["catalog"]).parents[1]
    for year in (2020, 2021):
        w = SeasonWindow(season=0, reference=dt.date(year, 6, 21), start=dt.date(year, 6, 6), end=dt.date(year, 7, 6))
        label = src._label(footprint, grid, w, "", {})
        path = root / f"worldcover_{year}_v{'100' if year == 2020 else '200'}_saotome.tif"
        assert label.image_id == f"wc-{year}"
        np.testing.assert_array_equal(label.data, LandCoverLabels(path, "esa_worldcover").label_map(grid).data)
