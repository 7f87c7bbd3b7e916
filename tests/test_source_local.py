"""The local SSL4EO-S12 reader on the real sample (shared data §4: location 0000200, two seasons)."""

from __future__ import annotations

import datetime as dt
import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.transform import Affine

from pipeline.bands import LABEL_NODATA, MODALITY_BANDS
from pipeline.grid import PatchGrid
from pipeline.seasons import SeasonWindow
from pipeline.sources.base import CorruptData, NoImageFound, Source
from pipeline.sources.ssl4eo_local import SSL4EOLocalSource, list_local_locations

LOC_ID = "0000200"
DIRS = {"s2_l1c": "s2c", "s2_l2a": "s2a", "s1_grd": "s1"}
# Acquisition folders of location 0000200, in time order (season 0, season 1): PROVENANCE.md §4.
FOLDERS = {
    "s2_l1c": ["20200604T054639_20200604T054831_T43RCP", "20200823T054639_20200823T055618_T43RCP"],
    "s2_l2a": ["20200604T054639_20200604T054831_T43RCP", "20200813T054639_20200813T054952_T43RCP"],
    "s1_grd": ["S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457",
               "S1A_IW_GRDH_1SDV_20200903T131212_20200903T131237_034195_03F8F5_AC1C"],
}
DATES = {
    "s2_l1c": [dt.date(2020, 6, 4), dt.date(2020, 8, 23)],
    "s2_l2a": [dt.date(2020, 6, 4), dt.date(2020, 8, 13)],
    "s1_grd": [dt.date(2020, 6, 7), dt.date(2020, 9, 3)],
}


@pytest.fixture(scope="module")
def root(shared_data: Path) -> Path:
    r = shared_data / "ssl4eo_s12"
    if not r.is_dir():
        pytest.skip(f"SSL4EO-S12 sample not found at {r}")
    return r


@pytest.fixture(scope="module")
def location(root: Path):
    return list_local_locations(root)[0]


@pytest.fixture(scope="module")
def grid(location) -> PatchGrid:
    return PatchGrid.for_location(location, 264, 10.0)


def window(season: int) -> SeasonWindow:
    # The local reader pairs by acquisition order; the window dates are deliberately unrelated.
    ref = dt.date(2021, 3, 20) + dt.timedelta(days=90 * season)
    return SeasonWindow(season=season, reference=ref, start=ref - dt.timedelta(days=15),
                        end=ref + dt.timedelta(days=15))


@pytest.fixture(scope="module")
def samples(root, location, grid):
    src = SSL4EOLocalSource(root)
    return [src.fetch(location, window(s), grid, dict(MODALITY_BANDS)) for s in (0, 1)]


@pytest.fixture
def copy_root(root: Path, tmp_path: Path) -> Path:
    """A private copy of the sample (never modify the shared data)."""
    dst = tmp_path / "ssl4eo_s12"
    shutil.copytree(root, dst)
    return dst


def numpy_bilinear(raw: np.ndarray, n: int) -> np.ndarray:
    """Independent bilinear upsampling: pixel-centre aligned, edges clamped (float64)."""
    def coords(h: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        c = np.clip((np.arange(n) + 0.5) * (h / n) - 0.5, 0, h - 1)
        i0 = np.floor(c).astype(int)
        return i0, np.minimum(i0 + 1, h - 1), c - i0

    r0, r1, tr = coords(raw.shape[0])
    c0, c1, tc = coords(raw.shape[1])
    r = raw.astype(np.float64)
    top = r[r0][:, c0] * (1 - tc) + r[r0][:, c1] * tc
    bottom = r[r1][:, c0] * (1 - tc) + r[r1][:, c1] * tc
    return top * (1 - tr)[:, None] + bottom * tr[:, None]


# --------------------------------------------------------------------------- locations
def test_list_local_locations(root: Path):
    locs = list_local_locations(root)
    assert [loc.id for loc in locs] == [LOC_ID]
    loc = locs[0]
    assert loc.index == 0 and loc.source_id == "0000200" and loc.id == "0000200"
    # PROVENANCE §4: 30.452–30.476 N, 73.292–73.319 E (Punjab) → UTM 43N
    assert 73.292 < loc.lon < 73.319 and 30.452 < loc.lat < 30.476
    assert loc.epsg == 32643
    with rasterio.open(root / "s2c" / LOC_ID / FOLDERS["s2_l1c"][0] / "B1.tif") as ds:
        b = ds.bounds
    assert loc.lon == pytest.approx((b.left + b.right) / 2) and loc.lat == pytest.approx((b.bottom + b.top) / 2)
    x, y = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32643", always_xy=True).transform(loc.lon, loc.lat)
    assert (loc.x, loc.y) == pytest.approx((x, y), abs=1e-6)


def test_protocol_and_describe(root: Path, shared_data: Path):
    src = SSL4EOLocalSource(root)
    assert isinstance(src, Source)
    wc = shared_data / "esa_worldcover" / "worldcover_2021_v200_saotome.tif"
    if wc.is_file():  # picklable with its label source (Dask workers)
        again = pickle.loads(pickle.dumps(SSL4EOLocalSource(root, labels=wc, resampling="cubic")))
        assert again.resampling == "cubic" and again.labels.crosswalk == "esa_worldcover"
    assert src.name == "ssl4eo_local" and src.synthetic is False
    json.dumps(src.describe())
    with pytest.raises(ValueError):
        SSL4EOLocalSource(root, resampling="lanczos")


# --------------------------------------------------------------------------- pixels
@pytest.mark.parametrize("season", [0, 1])
def test_values_equal_independent_rasterio_reads(root: Path, samples, season: int):
    sample = samples[season]
    assert set(sample.images) == set(MODALITY_BANDS)
    for name, img in sample.images.items():
        folder = root / DIRS[name] / LOC_ID / FOLDERS[name][season]
        assert img.bands == MODALITY_BANDS[name]
        assert img.data.shape == (len(img.bands), 264, 264)
        for k, band in enumerate(img.bands):
            with rasterio.open(folder / f"{band}.tif") as ds:
                raw = ds.read(1)
                ref = ds.read(1, out_shape=(264, 264), resampling=Resampling.bilinear)
            np.testing.assert_array_equal(img.data[k], ref, err_msg=f"{name} {band}")
            if raw.shape == (264, 264):  # 10 m bands and S1: native pixels, untouched
                np.testing.assert_array_equal(img.data[k], raw)
            else:  # 20/60 m: bilinear within rounding of an independent numpy bilinear
                diff = np.abs(img.data[k].astype(np.float64) - numpy_bilinear(raw, 264))
                assert diff.max() <= 0.5 + 1e-6, f"{name} {band}: {diff.max()}"


def test_band_order_shapes_dtypes(samples):
    for sample in samples:
        l1c, l2a, s1 = (sample.images[n] for n in ("s2_l1c", "s2_l2a", "s1_grd"))
        assert l1c.bands.index("B8A") == l1c.bands.index("B8") + 1
        assert l2a.bands.index("B8A") == l2a.bands.index("B8") + 1
        assert "B10" in l1c.bands and "B10" not in l2a.bands
        assert len(l1c.bands) == 13 and len(l2a.bands) == 12 and s1.bands == ("VV", "VH")
        assert l1c.data.dtype == np.uint16 and l2a.data.dtype == np.uint16 and s1.data.dtype == np.float32
        # physics sanity (PROVENANCE §4): B10 cirrus small, VV about −10 dB, VH about −17 dB
        assert l1c.data[l1c.bands.index("B10")].mean() < 50
        assert -14 < s1.data[0].mean() < -6 and -21 < s1.data[1].mean() < -13


def test_metadata_dates_ids_cloud(root: Path, samples):
    for season, sample in enumerate(samples):
        for name, img in sample.images.items():
            assert img.image_id == FOLDERS[name][season]
            assert img.acquired == DATES[name][season]
            meta = json.loads((root / DIRS[name] / LOC_ID / img.image_id / "metadata.json").read_text())
            assert meta["system:index"] == img.image_id
            start = dt.datetime.fromtimestamp(meta["system:time_start"] / 1000, tz=dt.timezone.utc).date()
            assert img.acquired == start
            if name == "s1_grd":
                assert math.isnan(img.cloud_pct)
            else:
                assert img.cloud_pct == pytest.approx(meta["CLOUDY_PIXEL_PERCENTAGE"])
    assert samples[0].images["s2_l1c"].cloud_pct == pytest.approx(0.8438)
    assert samples[1].images["s2_l1c"].cloud_pct == pytest.approx(9.9194)
    assert samples[0].images["s2_l2a"].cloud_pct == pytest.approx(4.184628)
    assert samples[1].images["s2_l2a"].cloud_pct == pytest.approx(1.948562)


def test_extra_records_native_footprint(root: Path, samples):
    extra = samples[0].extra
    assert extra["native_crs"] == "EPSG:4326"
    with rasterio.open(root / "s2c" / LOC_ID / FOLDERS["s2_l1c"][0] / "B2.tif") as ds:  # finest band
        assert json.loads(extra["s2_l1c_bounds"]) == pytest.approx(list(ds.bounds))
    assert json.loads(extra["native_bounds"]) == json.loads(extra["s2_l1c_bounds"])
    assert extra["s1_grd_crs"] == "EPSG:4326"
    assert samples[0].label is None


def test_season_pairing_is_time_order(root: Path, location, grid, copy_root: Path):
    for name in MODALITY_BANDS:
        a, b = (SSL4EOLocalSource(root).fetch(location, window(s), grid, {name: MODALITY_BANDS[name][:1]})
                .images[name].acquired for s in (0, 1))
        assert a < b
    # rename the June S1 product so that its name sorts after the September one: time order wins
    s1 = copy_root / "s1" / LOC_ID
    renamed = "S1B" + FOLDERS["s1_grd"][0][3:]
    (s1 / FOLDERS["s1_grd"][0]).rename(s1 / renamed)
    assert sorted(p.name for p in s1.iterdir())[0] == FOLDERS["s1_grd"][1]
    src = SSL4EOLocalSource(copy_root)
    got = [src.fetch(location, window(s), grid, {"s1_grd": ("VV",)}).images["s1_grd"].image_id for s in (0, 1)]
    assert got == [renamed, FOLDERS["s1_grd"][1]]


def test_band_subset_in_canonical_order(root: Path, samples, location, grid):
    src = SSL4EOLocalSource(root)
    sample = src.fetch(location, window(0), grid, {"s2_l1c": ("B12", "B8A", "B2"), "s1_grd": ("VH",)})
    assert set(sample.images) == {"s2_l1c", "s1_grd"}
    img = sample.images["s2_l1c"]
    assert img.bands == ("B2", "B8A", "B12")
    full = samples[0].images["s2_l1c"]
    for k, band in enumerate(img.bands):
        np.testing.assert_array_equal(img.data[k], full.data[full.bands.index(band)])
    np.testing.assert_array_equal(sample.images["s1_grd"].data[0], samples[0].images["s1_grd"].data[1])


def test_other_sizes_and_nearest(root: Path, location):
    src = SSL4EOLocalSource(root, resampling="nearest")
    grid = PatchGrid.for_location(location, 132, 20.0)
    img = src.fetch(location, window(0), grid, {"s2_l2a": ("B1", "B5")}).images["s2_l2a"]
    assert img.data.shape == (2, 132, 132)
    folder = root / "s2a" / LOC_ID / FOLDERS["s2_l2a"][0]
    with rasterio.open(folder / "B1.tif") as ds:
        b1 = ds.read(1)
    with rasterio.open(folder / "B5.tif") as ds:
        b5 = ds.read(1)
    np.testing.assert_array_equal(img.data[0], np.repeat(np.repeat(b1, 3, 0), 3, 1))  # 44 → 132, ×3
    np.testing.assert_array_equal(img.data[1], b5)  # already 132 px


# --------------------------------------------------------------------------- errors
def test_third_season_missing(root: Path, location, grid):
    src = SSL4EOLocalSource(root)
    with pytest.raises(NoImageFound) as err:
        src.fetch(location, window(2), grid, dict(MODALITY_BANDS))
    assert str(root / "s2c" / LOC_ID) in str(err.value) and "season 2" in str(err.value)
    with pytest.raises(NoImageFound, match="s1"):
        src.fetch(location, window(3), grid, {"s1_grd": ("VV", "VH")})


def test_unknown_location(root: Path, location, grid):
    other = type(location)(index=1234, lon=location.lon, lat=location.lat, epsg=location.epsg,
                           x=location.x, y=location.y)
    with pytest.raises(NoImageFound, match="0001234"):
        SSL4EOLocalSource(root).fetch(other, window(0), grid, {"s2_l1c": ("B2",)})


def test_deleted_band_file(copy_root: Path, location, grid):
    path = copy_root / "s2a" / LOC_ID / FOLDERS["s2_l2a"][1] / "B8A.tif"
    path.unlink()
    src = SSL4EOLocalSource(copy_root)
    src.fetch(location, window(0), grid, dict(MODALITY_BANDS))  # season 0 unaffected
    with pytest.raises(CorruptData) as err:
        src.fetch(location, window(1), grid, dict(MODALITY_BANDS))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_band_file(copy_root: Path, location, grid, damage: str):
    path = copy_root / "s1" / LOC_ID / FOLDERS["s1_grd"][0] / "VH.tif"
    blob = path.read_bytes()
    path.write_bytes(b"not a tiff at all" * 50 if damage == "garbage" else blob[: len(blob) // 3])
    with pytest.raises(CorruptData) as err:
        SSL4EOLocalSource(copy_root).fetch(location, window(0), grid, {"s1_grd": ("VV", "VH")})
    assert str(path) in str(err.value)


def test_corrupted_metadata(copy_root: Path, location, grid):
    path = copy_root / "s2c" / LOC_ID / FOLDERS["s2_l1c"][0] / "metadata.json"
    path.write_text("{not json")
    with pytest.raises(CorruptData) as err:
        SSL4EOLocalSource(copy_root).fetch(location, window(0), grid, {"s2_l1c": ("B2",)})
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- labels
def test_labels_warped_onto_native_footprint(root: Path, samples, location, grid, tmp_path: Path):
    # A hand-made DW map (left half trees, right half crops) around the patch, in EPSG:4326.
    west, south, east, north = json.loads(samples[0].extra["native_bounds"])
    mid = (west + east) / 2
    pad = 0.01
    w, h = 400, 400
    transform = Affine((east - west + 2 * pad) / w, 0.0, west - pad, 0.0, -(north - south + 2 * pad) / h, north + pad)
    cols_x = transform.c + transform.a * (np.arange(w) + 0.5)
    data = np.where(cols_x < mid, 1, 4).astype(np.uint8)[None, :].repeat(h, 0)
    path = tmp_path / "dw_map.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype="uint8",
                       crs="EPSG:4326", transform=transform, nodata=255) as ds:
        ds.write(data, 1)
    src = SSL4EOLocalSource(root, labels=str(path))
    assert src.labels is not None and src.labels.crosswalk is None
    label = src.fetch(location, window(0), grid, {"s2_l1c": ("B2",)}).label
    assert label is not None and label.method == "landcover:dw_map.tif"
    assert label.data.shape == (264, 264) and label.data.dtype == np.uint8
    assert set(np.unique(label.data)) == {1, 4}
    assert (label.data[:, :120] == 1).all() and (label.data[:, 144:] == 4).all()


def test_labels_outside_map_are_nodata(root: Path, shared_data: Path, location, grid):
    wc = shared_data / "esa_worldcover" / "worldcover_2021_v200_saotome.tif"
    if not wc.is_file():
        pytest.skip("WorldCover crop absent")
    label = SSL4EOLocalSource(root, labels=wc).fetch(location, window(1), grid, {"s1_grd": ("VV",)}).label
    assert label is not None and (label.data == LABEL_NODATA).all()
