"""Land-cover maps warped onto patch grids: ESA WorldCover (EPSG:4326) and the eo-learn LULC (UTM 33N)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from rasterio.windows import from_bounds as window_from_bounds

from pipeline.bands import DW_CLASSES, LABEL_NODATA
from pipeline.crosswalks import apply_crosswalk
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.sources.landcover import LandCoverLabels, RasterGrid, detect_crosswalk

DW_VALUES = set(range(len(DW_CLASSES)))


@pytest.fixture(scope="module")
def worldcover(shared_data: Path) -> Path:
    p = shared_data / "esa_worldcover" / "worldcover_2021_v200_saotome.tif"
    if not p.is_file():
        pytest.skip(f"{p} absent")
    return p


@pytest.fixture(scope="module")
def lulc(shared_data: Path) -> Path:
    p = shared_data / "eolearn_testpatch_slovenia" / "lulc.tif"
    if not p.is_file():
        pytest.skip(f"{p} absent")
    return p


def utm_grid(lon: float, lat: float, epsg: int = 32632, size: int = 264, resolution: float = 10.0) -> PatchGrid:
    x, y = pyproj.Transformer.from_crs("EPSG:4326", f"EPSG:{epsg}", always_xy=True).transform(lon, lat)
    return PatchGrid.for_location(Location(index=0, lon=lon, lat=lat, epsg=epsg, x=x, y=y), size, resolution)


def source_fractions(path: Path, grid: PatchGrid) -> np.ndarray:
    """DW class fractions of the source pixels inside the grid's footprint (read independently)."""
    with rasterio.open(path) as ds:
        bounds = transform_bounds(grid.crs, ds.crs, *grid.bounds)
        win = window_from_bounds(*bounds, transform=ds.transform).round_offsets().round_lengths()
        dw = apply_crosswalk(ds.read(1, window=win), "esa_worldcover")
    return np.bincount(dw.ravel(), minlength=256)[: len(DW_CLASSES)] / dw.size


def fractions(label: np.ndarray) -> np.ndarray:
    return np.bincount(label.ravel(), minlength=256)[: len(DW_CLASSES)] / label.size


# --------------------------------------------------------------------------- construction
def test_detect_crosswalk_and_validation(worldcover: Path, lulc: Path):
    assert detect_crosswalk(worldcover) == "esa_worldcover"
    assert detect_crosswalk(lulc) == "eolearn_lulc"
    assert LandCoverLabels(worldcover).crosswalk == "esa_worldcover"
    with pytest.raises(ValueError, match="resampling"):
        LandCoverLabels(worldcover, "esa_worldcover", resampling="bilinear")
    with pytest.raises(ValueError, match="crosswalk"):
        LandCoverLabels(worldcover, "corine")
    with pytest.raises(FileNotFoundError):
        LandCoverLabels(worldcover.with_name("missing.tif"), None)


# --------------------------------------------------------------------------- WorldCover → UTM
@pytest.mark.parametrize("lon,lat", [(6.6, 0.25), (6.73, 0.34)])  # interior forest; São Tomé city + sea
def test_worldcover_on_utm_grid_nearest(worldcover: Path, lon: float, lat: float):
    grid = utm_grid(lon, lat)
    label = LandCoverLabels(worldcover, "esa_worldcover", "nearest").label_map(grid)
    assert label.method == "landcover:worldcover_2021_v200_saotome.tif"
    assert label.data.shape == (264, 264) and label.data.dtype == np.uint8
    values = set(np.unique(label.data).tolist())
    assert values <= DW_VALUES  # inside the crop: every pixel labelled, only DW classes
    np.testing.assert_allclose(fractions(label.data), source_fractions(worldcover, grid), atol=0.01)


def test_worldcover_mode_on_coarser_grid(worldcover: Path):
    grid = utm_grid(6.73, 0.34, size=88, resolution=30.0)
    label = LandCoverLabels(worldcover, "esa_worldcover", "mode").label_map(grid)
    assert label.data.shape == (88, 88)
    assert set(np.unique(label.data).tolist()) <= DW_VALUES
    src = source_fractions(worldcover, grid)
    got = fractions(label.data)
    np.testing.assert_allclose(got, src, atol=0.05)
    assert np.argmax(got) == np.argmax(src)


def test_worldcover_on_aligned_lonlat_grid_is_exact(worldcover: Path):
    # A RasterGrid on the source's own pixel lattice (the EPSG:4326 local case): no resampling at all.
    with rasterio.open(worldcover) as ds:
        win = Window(2000, 1000, 150, 120)
        codes = ds.read(1, window=win)
        t = ds.transform
    origin = (t.c + 2000 * t.a, t.f + 1000 * t.e)
    target = RasterGrid(crs="EPSG:4326", transform=(t.a, 0.0, origin[0], 0.0, t.e, origin[1]), shape=(120, 150))
    for method in ("nearest", "mode"):
        label = LandCoverLabels(worldcover, "esa_worldcover", method).label_map(target)
        np.testing.assert_array_equal(label.data, apply_crosswalk(codes, "esa_worldcover"))


def test_outside_coverage_is_nodata(worldcover: Path):
    lc = LandCoverLabels(worldcover, "esa_worldcover", "nearest")
    far = lc.label_map(utm_grid(9.5, 1.5))  # same UTM zone, off the São Tomé crop
    assert (far.data == LABEL_NODATA).all()
    other_zone = lc.label_map(utm_grid(73.3, 30.46, epsg=32643))  # the SSL4EO sample in Pakistan
    assert (other_zone.data == LABEL_NODATA).all()


def test_partial_coverage(worldcover: Path):
    # Straddling the crop's east edge (6.77 E): the part beyond it is nodata, the rest labelled.
    label = LandCoverLabels(worldcover, "esa_worldcover", "nearest").label_map(utm_grid(6.77, 0.2))
    assert (label.data[:, :120] != LABEL_NODATA).all()
    assert (label.data[:, 145:] == LABEL_NODATA).all()


# --------------------------------------------------------------------------- eo-learn LULC (UTM 33N)
def test_eolearn_lulc_on_own_grid_is_exact(lulc: Path):
    with rasterio.open(lulc) as ds:
        codes = ds.read(1)
        t = ds.transform
        target = RasterGrid(crs=ds.crs.to_string(), transform=(t.a, t.b, t.c, t.d, t.e, t.f), shape=ds.shape)
    expected = apply_crosswalk(codes, "eolearn_lulc")
    for method in ("nearest", "mode"):
        label = LandCoverLabels(lulc, "eolearn_lulc", method).label_map(target)
        np.testing.assert_array_equal(label.data, expected)
    # PROVENANCE §1: 155 no-data pixels, forest 7601 → trees
    assert (expected == LABEL_NODATA).sum() == 155
    assert (expected == DW_CLASSES.index("trees")).sum() == 7601


def test_eolearn_lulc_on_patch_grid(lulc: Path):
    # A 10 m PatchGrid over the same area (EPSG:32633): near-identical class fractions to the source
    # pixels inside its footprint. The grid is snapped to the 60 m lattice, so it may reach a few
    # metres past the ~1 km map: those edge pixels are nodata and left out of the comparison.
    with rasterio.open(lulc) as ds:
        b = ds.bounds
        x, y = (b.left + b.right) / 2, (b.bottom + b.top) / 2
        lon, lat = pyproj.Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(x, y)
        grid = PatchGrid.for_location(Location(0, lon, lat, 32633, x, y), 96, 10.0)
        win = window_from_bounds(*grid.bounds, transform=ds.transform)
        win = win.intersection(Window(0, 0, ds.width, ds.height)).round_offsets().round_lengths()
        codes = ds.read(1, window=win)
    label = LandCoverLabels(lulc, "eolearn_lulc", "nearest").label_map(grid)
    valid = label.data != LABEL_NODATA
    assert valid.mean() > 0.98
    expected = apply_crosswalk(codes, "eolearn_lulc")
    np.testing.assert_allclose(fractions(label.data[valid]), fractions(expected), atol=0.02)
