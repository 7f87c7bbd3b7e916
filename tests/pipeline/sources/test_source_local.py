"""The local SSL4EO-S12 reader on the real sample (shared data §4: location 0000200, two seasons)."""

from __future__ import annotations

import datetime as dt
import itertools
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
from pipeline.sources.ssl4eo_local import (
    SSL4EOLocalSource,
    cyclic_day_distance,
    list_local_locations,
    optimal_assignment,
)

LOC_ID = "0000200"
DIRS = {"s2_l1c": "s2c", "s2_l2a": "s2a", "s1_grd": "s1"}
# Acquisition folders of location 0000200, in time order: PROVENANCE.md §4. With the default reference
# dates (DEFAULT_REFS) the one-to-one assignment of least total distance puts the June scenes in the
# 06-21 season (1) and the August/September scenes in the 09-22 season (2): FOLDERS[name][k] is season
# ON_DISK[k]; seasons 0 and 3 have no acquisition.
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


DEFAULT_REFS = (dt.date(2021, 3, 20), dt.date(2021, 6, 21), dt.date(2021, 9, 22), dt.date(2020, 12, 21))
ON_DISK = (1, 2)


def window(season: int, refs=DEFAULT_REFS) -> SeasonWindow:
    """The window of ``season`` for reference dates ``refs`` (the manifest default unless given)."""
    ref = refs[season]
    return SeasonWindow(season=season, reference=ref, start=ref - dt.timedelta(days=15),
                        end=ref + dt.timedelta(days=15))


@pytest.fixture(scope="module")
def samples(root, location, grid):
    src = SSL4EOLocalSource(root)
    return [src.fetch(location, window(s), grid, dict(MODALITY_BANDS)) for s in ON_DISK]


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
@pytest.mark.parametrize("position", [0, 1])
def test_values_equal_independent_rasterio_reads(root: Path, samples, position: int):
    sample = samples[position]
    assert set(sample.images) == set(MODALITY_BANDS)
    for name, img in sample.images.items():
        folder = root / DIRS[name] / LOC_ID / FOLDERS[name][position]
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
    for position, sample in enumerate(samples):
        for name, img in sample.images.items():
            assert img.image_id == FOLDERS[name][position]
            assert img.acquired == DATES[name][position]
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


def test_season_assignment_uses_dates_not_names(root: Path, location, grid, copy_root: Path):
    # rename the June S1 product so that its name sorts after the September one: the dates decide
    s1 = copy_root / "s1" / LOC_ID
    renamed = "S1B" + FOLDERS["s1_grd"][0][3:]
    (s1 / FOLDERS["s1_grd"][0]).rename(s1 / renamed)
    assert sorted(p.name for p in s1.iterdir())[0] == FOLDERS["s1_grd"][1]
    src = SSL4EOLocalSource(copy_root)
    got = [src.fetch(location, window(s), grid, {"s1_grd": ("VV",)}).images["s1_grd"].image_id for s in ON_DISK]
    assert got == [renamed, FOLDERS["s1_grd"][1]]


def test_band_subset_in_canonical_order(root: Path, samples, location, grid):
    src = SSL4EOLocalSource(root)
    sample = src.fetch(location, window(1), grid, {"s2_l1c": ("B12", "B8A", "B2"), "s1_grd": ("VH",)})
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
    img = src.fetch(location, window(1), grid, {"s2_l2a": ("B1", "B5")}).images["s2_l2a"]
    assert img.data.shape == (2, 132, 132)
    folder = root / "s2a" / LOC_ID / FOLDERS["s2_l2a"][0]
    with rasterio.open(folder / "B1.tif") as ds:
        b1 = ds.read(1)
    with rasterio.open(folder / "B5.tif") as ds:
        b5 = ds.read(1)
    np.testing.assert_array_equal(img.data[0], np.repeat(np.repeat(b1, 3, 0), 3, 1))  # 44 → 132, ×3
    np.testing.assert_array_equal(img.data[1], b5)  # already 132 px


# --------------------------------------------------------------------------- errors
def test_seasons_without_acquisition_missing(root: Path, location, grid):
    src = SSL4EOLocalSource(root)
    with pytest.raises(NoImageFound) as err:
        src.fetch(location, window(0), grid, dict(MODALITY_BANDS))
    assert str(root / "s2c" / LOC_ID) in str(err.value) and "season 0" in str(err.value)
    with pytest.raises(NoImageFound, match="s1"):
        src.fetch(location, window(3), grid, {"s1_grd": ("VV", "VH")})


def test_unknown_location(root: Path, location, grid):
    other = type(location)(index=1234, lon=location.lon, lat=location.lat, epsg=location.epsg,
                           x=location.x, y=location.y)
    with pytest.raises(NoImageFound, match="0001234"):
        SSL4EOLocalSource(root).fetch(other, window(1), grid, {"s2_l1c": ("B2",)})


def test_deleted_band_file(copy_root: Path, location, grid):
    path = copy_root / "s2a" / LOC_ID / FOLDERS["s2_l2a"][1] / "B8A.tif"
    path.unlink()
    src = SSL4EOLocalSource(copy_root)
    src.fetch(location, window(1), grid, dict(MODALITY_BANDS))  # the June season is unaffected
    with pytest.raises(CorruptData) as err:
        src.fetch(location, window(2), grid, dict(MODALITY_BANDS))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupted_band_file(copy_root: Path, location, grid, damage: str):
    path = copy_root / "s1" / LOC_ID / FOLDERS["s1_grd"][0] / "VH.tif"
    blob = path.read_bytes()
    path.write_bytes(b"not a tiff at all" * 50 if damage == "garbage" else blob[: len(blob) // 3])
    with pytest.raises(CorruptData) as err:
        SSL4EOLocalSource(copy_root).fetch(location, window(1), grid, {"s1_grd": ("VV", "VH")})
    assert str(path) in str(err.value)


def test_corrupted_metadata(copy_root: Path, location, grid):
    path = copy_root / "s2c" / LOC_ID / FOLDERS["s2_l1c"][0] / "metadata.json"
    path.write_text("{not json")
    with pytest.raises(CorruptData) as err:
        SSL4EOLocalSource(copy_root).fetch(location, window(1), grid, {"s2_l1c": ("B2",)})
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
    label = src.fetch(location, window(1), grid, {"s2_l1c": ("B2",)}).label
    assert label is not None and label.method == "landcover:dw_map.tif"
    assert label.data.shape == (264, 264) and label.data.dtype == np.uint8
    assert set(np.unique(label.data)) == {1, 4}
    assert (label.data[:, :120] == 1).all() and (label.data[:, 144:] == 4).all()


def test_labels_outside_map_are_nodata(root: Path, shared_data: Path, location, grid):
    wc = shared_data / "esa_worldcover" / "worldcover_2021_v200_saotome.tif"
    if not wc.is_file():
        pytest.skip("WorldCover crop absent")
    label = SSL4EOLocalSource(root, labels=wc).fetch(location, window(2), grid, {"s1_grd": ("VV",)}).label
    assert label is not None and (label.data == LABEL_NODATA).all()


# --------------------------------------------------------------------------- band sizes
def write_band(path: Path, data: np.ndarray, nodata: float | None = None) -> None:
    """Overwrite ``path`` with ``data`` (one band), keeping the original file's CRS and footprint."""
    with rasterio.open(path) as ds:
        crs, (west, south, east, north) = ds.crs, ds.bounds
    h, w = data.shape
    transform = Affine((east - west) / w, 0.0, west, 0.0, -(north - south) / h, north)
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=1, dtype=data.dtype.name,
                       crs=crs, transform=transform, nodata=nodata) as ds:
        ds.write(data, 1)


@pytest.mark.parametrize("name, band, shape, expected", [
    ("s1_grd", "VV", (100, 50), 264),      # 10 m S1 band
    ("s2_l1c", "B4", (132, 132), 264),     # 10 m band written at the 20 m size
    ("s2_l2a", "B5", (264, 264), 132),     # 20 m band written at the 10 m size
    ("s2_l1c", "B10", (45, 44), 44),       # 60 m band one row too many
])
def test_wrong_band_size_is_corrupt(copy_root: Path, location, name: str, band: str, shape: tuple, expected: int):
    dtype = np.float32 if name == "s1_grd" else np.uint16
    paths = [copy_root / DIRS[name] / LOC_ID / folder / f"{band}.tif" for folder in FOLDERS[name]]
    for path in paths:  # both acquisitions, so that whichever the season picks is the damaged one
        write_band(path, np.full(shape, 7, dtype=dtype))
    src = SSL4EOLocalSource(copy_root)
    for grid in (PatchGrid.for_location(location, 264, 10.0), PatchGrid.for_location(location, 132, 20.0)):
        with pytest.raises(CorruptData) as err:
            src.fetch(location, window(1), grid, {name: (band,)})
        msg = str(err.value)
        assert any(str(path) in msg for path in paths), msg
        assert f"expected {expected}x{expected}" in msg and f"found {shape[0]}x{shape[1]}" in msg


def test_real_band_sizes_pass_on_both_grids(root: Path, location):
    """264/132/44 px over 2640 m: the real files fit the 264 px/10 m grid and the 132 px/20 m grid."""
    src = SSL4EOLocalSource(root)
    for size, res in ((264, 10.0), (132, 20.0)):
        sample = src.fetch(location, window(1), PatchGrid.for_location(location, size, res), dict(MODALITY_BANDS))
        assert all(img.data.shape[1:] == (size, size) for img in sample.images.values())
    with pytest.raises(CorruptData, match="expected 256x256"):  # a 2560 m patch does not fit these files
        src.fetch(location, window(1), PatchGrid.for_location(location, 256, 10.0), {"s2_l1c": ("B2",)})


def test_non_integral_expected_size_allows_either_rounding(copy_root: Path, location):
    """2560 m / 60 m = 42.67 px: 42 and 43 are accepted, 41 is not (our rule)."""
    grid = PatchGrid.for_location(location, 256, 10.0)
    paths = [copy_root / "s2c" / LOC_ID / folder / "B1.tif" for folder in FOLDERS["s2_l1c"]]
    src = SSL4EOLocalSource(copy_root)
    for n in (42, 43):
        for path in paths:
            write_band(path, np.full((n, n), 500, np.uint16))
        img = src.fetch(location, window(1), grid, {"s2_l1c": ("B1",)}).images["s2_l1c"]
        assert img.data.shape == (1, 256, 256) and (img.data == 500).all()
    for path in paths:
        write_band(path, np.full((41, 41), 500, np.uint16))
    with pytest.raises(CorruptData, match="expected 42x42 or 43x43"):
        src.fetch(location, window(1), grid, {"s2_l1c": ("B1",)})


# --------------------------------------------------------------------------- locations without data
def test_location_without_acquisitions_is_logged(copy_root: Path, grid, caplog):
    for sub in DIRS.values():  # 0000300: empty modality folders; 0000301: folders without band files
        (copy_root / sub / "0000300").mkdir()
        (copy_root / sub / "0000301" / "20200604T054639_20200604T054831_T43RCP").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="pipeline.sources.ssl4eo_local"):
        locs = list_local_locations(copy_root)
    assert [loc.id for loc in locs] == [LOC_ID]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("0000300" in m and str(copy_root / "s2c" / "0000300") in m for m in warned), warned
    assert any("0000301" in m and str(copy_root / "s1" / "0000301") in m for m in warned), warned
    assert not any(LOC_ID in m for m in warned)
    # The fetch path: an empty location folder is a NoImageFound that names the folder.
    empty = type(locs[0])(index=1, lon=locs[0].lon, lat=locs[0].lat, epsg=locs[0].epsg, x=locs[0].x,
                          y=locs[0].y, source_id="0000300")
    with pytest.raises(NoImageFound) as err:
        SSL4EOLocalSource(copy_root).fetch(empty, window(1), grid, {"s2_l1c": ("B2",)})
    assert str(copy_root / "s2c" / "0000300") in str(err.value) and "no acquisition folder" in str(err.value)


# --------------------------------------------------------------------------- S1 no-data
@pytest.mark.parametrize("fill, tag", [(-9999.0, -9999.0), (0.0, None), (-np.inf, None), (np.nan, None)])
def test_s1_nodata_is_nan(copy_root: Path, location, grid, fill: float, tag):
    """The nodata tag, exact 0 (GEE's fill), -inf (linear 0 in dB) and NaN all come back as NaN."""
    holes = np.zeros((264, 264), bool)
    holes[:10, :] = True  # a no-data stripe at the top edge (swath border) and a few single pixels
    holes[100, 17] = holes[200, 250] = True
    originals = {}
    for folder in FOLDERS["s1_grd"]:  # both acquisitions, so that whichever the season picks is damaged
        path = copy_root / "s1" / LOC_ID / folder / "VV.tif"
        with rasterio.open(path) as ds:
            originals[folder] = ds.read(1)
        data = originals[folder].copy()
        data[holes] = fill
        write_band(path, data, nodata=tag)
    src = SSL4EOLocalSource(copy_root)
    img = src.fetch(location, window(1), grid, {"s1_grd": ("VV", "VH")}).images["s1_grd"]
    original = originals[img.image_id]
    vv = img.data[0]
    np.testing.assert_array_equal(np.isnan(vv), holes)
    np.testing.assert_array_equal(vv[~holes], original[~holes])
    assert np.isfinite(img.data[1]).all()  # VH untouched
    # Resampled to a coarser grid (132 px at 20 m): no fill value leaks, the stripe stays NaN.
    coarse = src.fetch(location, window(1), PatchGrid.for_location(location, 132, 20.0),
                       {"s1_grd": ("VV",)}).images["s1_grd"].data[0]
    assert np.isnan(coarse[:5]).all() and np.isfinite(coarse[5:]).all()
    assert coarse[5:].min() >= original[~holes].min() - 1e-4 and coarse[5:].max() <= original[~holes].max() + 1e-4


# --------------------------------------------------------------------------- season assignment
def test_real_sample_season_assignment(root: Path, location, grid):
    """June scenes → the 06-21 season (1), August/September scenes → the 09-22 season (2); 0 and 3 absent."""
    src = SSL4EOLocalSource(root)
    for position, season in enumerate((1, 2)):
        sample = src.fetch(location, window(season), grid, {n: MODALITY_BANDS[n][:1] for n in MODALITY_BANDS})
        for name, img in sample.images.items():
            assert img.image_id == FOLDERS[name][position] and img.acquired == DATES[name][position]
    for season in (0, 3):
        with pytest.raises(NoImageFound, match=f"season {season}"):
            src.fetch(location, window(season), grid, {"s2_l1c": ("B2",)})


def acquisitions_named(root: Path, dst: Path, stamps: list[str]) -> Path:
    """An L1C-only root whose location 0000200 holds copies of one real folder, renamed to ``stamps``."""
    real = root / "s2c" / LOC_ID / FOLDERS["s2_l1c"][0]
    for stamp in stamps:
        shutil.copytree(real, dst / "s2c" / LOC_ID / f"{stamp}_{stamp}_T43RCP")
    return dst


def test_december_scene_goes_to_the_december_season(root: Path, tmp_path: Path, location, grid):
    # Time order would make the December 2020 scene season 0 (the 2021-03-20 reference).
    stamps = ["20201215T054639", "20210311T054639", "20210618T054639", "20210929T054639"]
    syn = acquisitions_named(root, tmp_path / "syn", stamps)
    src = SSL4EOLocalSource(syn)
    got = [src.fetch(location, window(s), grid, {"s2_l1c": ("B2",)}).images["s2_l1c"].acquired
           for s in range(4)]
    assert got == [dt.date(2021, 3, 11), dt.date(2021, 6, 18), dt.date(2021, 9, 29), dt.date(2020, 12, 15)]


def test_surplus_acquisitions_are_unused_the_nearer_kept(root: Path, tmp_path: Path, location, grid):
    """Four acquisitions, two seasons (06-21, 12-21): each season gets one, the other two are unused."""
    # 2019-06-10 is 11 days from 06-21 (another year: day-of-year distance), 2021-06-25 is 4 days away;
    # 2020-01-05 is 15 days from 12-21 (across the new year), 2019-12-01 is 20 days from it.
    stamps = ["20190610T054639", "20210625T054639", "20200105T054639", "20191201T054639"]
    syn = acquisitions_named(root, tmp_path / "syn", stamps)
    refs = (dt.date(2021, 6, 21), dt.date(2020, 12, 21))
    src = SSL4EOLocalSource(syn, reference_dates=refs)
    fetch = lambda s: src.fetch(location, window(s, refs), grid, {"s2_l1c": ("B2",)}).images["s2_l1c"]  # noqa: E731
    assert fetch(0).image_id == "20210625T054639_20210625T054639_T43RCP"
    assert fetch(1).image_id == "20200105T054639_20200105T054639_T43RCP"


def total_distance(dates: list[dt.date], season_of_date: list[int]) -> int:
    return sum(cyclic_day_distance(d, DEFAULT_REFS[s]) for d, s in zip(dates, season_of_date, strict=True))


@pytest.mark.parametrize("stamps, expected", [
    # The brief's example, half-way between the reference dates: Feb 3 is 44 days from 12-21 and 45 from
    # 03-20; the rotation Feb→12-21, May→03-20, Aug→06-21, Nov→09-22 totals 181 days, the calendar one 184.
    (["20210203T054639", "20210505T054639", "20210806T054639", "20211106T054639"], [3, 0, 1, 2]),
    # Feb 5 and May 4 are both nearest to 03-20 (43 and 45 days): nearest-date-per-image would put both
    # there and leave 06-21 empty; the one-to-one optimum (180 days) keeps all four.
    (["20210205T054639", "20210504T054639", "20210807T054639", "20211108T054639"], [0, 1, 2, 3]),
])
def test_shifted_location_fills_all_four_seasons(root: Path, tmp_path: Path, location, grid,
                                                 stamps: list[str], expected: list[int]):
    """SSL4EO-S12 shifts a location's four dates together: its four images, ~3 months apart, fill the
    four seasons one each, in time order rotated onto the seasons of least total distance.
    """
    syn = acquisitions_named(root, tmp_path / "syn", stamps)
    src = SSL4EOLocalSource(syn)
    dates = [dt.datetime.strptime(stamp[:8], "%Y%m%d").date() for stamp in stamps]
    got = {s: src.fetch(location, window(s), grid, {"s2_l1c": ("B2",)}).images["s2_l1c"].acquired for s in range(4)}
    assert sorted(got.values()) == dates  # one image per season, all four used
    season_of_date = [next(s for s, d in got.items() if d == day) for day in dates]
    assert season_of_date == expected
    # the total is the smallest over all one-to-one assignments (brute force over the 24 permutations)
    assert total_distance(dates, season_of_date) == min(
        total_distance(dates, list(perm)) for perm in itertools.permutations(range(4)))
    if expected == [0, 1, 2, 3]:  # the second case: nearest-date-per-image would collide
        nearest = [min(range(4), key=lambda s: cyclic_day_distance(d, DEFAULT_REFS[s])) for d in dates]
        assert nearest[0] == nearest[1] == 0


def test_assignment_ties_are_deterministic(root: Path, tmp_path: Path, location, grid):
    """Ties (our rule): the earliest acquisition takes the first-listed season an optimal assignment allows."""
    # all equal: acquisition k → season k; a surplus acquisition that ties is the later one, left unused
    assert optimal_assignment(np.array([[5, 5], [5, 5]])) == {0: 0, 1: 1}
    assert optimal_assignment(np.array([[3], [3]])) == {0: 0}
    assert optimal_assignment(np.array([[3, 9], [3, 9], [1, 9]])) == {0: 2, 1: 0}
    # Feb 5 → 03-20 (43) + May 4 → 06-21 (48) = 91 = Feb 5 → 12-21 (46) + May 4 → 03-20 (45): the earlier
    # acquisition gets the first-listed season, 03-20; 09-22 and 12-21 are left empty.
    syn = acquisitions_named(root, tmp_path / "syn", ["20210504T054639", "20210205T054639"])
    src = SSL4EOLocalSource(syn)
    fetch = lambda s: src.fetch(location, window(s), grid, {"s2_l1c": ("B2",)}).images["s2_l1c"]  # noqa: E731
    assert fetch(0).acquired == dt.date(2021, 2, 5) and fetch(1).acquired == dt.date(2021, 5, 4)
    for season in (2, 3):
        with pytest.raises(NoImageFound) as err:
            fetch(season)
        assert f"season {season}" in str(err.value) and str(syn / "s2c" / LOC_ID) in str(err.value)


def test_custom_reference_dates(root: Path, location, grid):
    """With two seasons (06-21, 09-22) the June and August scenes fill them; windows are matched by date."""
    refs = (dt.date(2020, 6, 21), dt.date(2020, 9, 22))
    src = SSL4EOLocalSource(root, reference_dates=refs)
    for season in (0, 1):
        sample = src.fetch(location, window(season, refs), grid, {n: MODALITY_BANDS[n][:1] for n in MODALITY_BANDS})
        for name, img in sample.images.items():
            assert img.image_id == FOLDERS[name][season]
    with pytest.raises(ValueError, match="reference"):  # a window that is not one of the source's seasons
        src.fetch(location, window(0), grid, {"s2_l1c": ("B2",)})
