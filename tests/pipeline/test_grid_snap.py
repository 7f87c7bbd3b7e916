"""Patch grids are snapped to the UTM pixel lattice shared by Sentinel-2's 10, 20 and 60 m products."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
from archive_helpers import curate_all

from pipeline import sampling as S
from pipeline.grid import S2_LATTICE_M, PatchGrid, lattice_step, snap_corner
from pipeline.locations import Location, utm_epsg
from pipeline.manifest import Manifest, PatchConfig
from pipeline.sources import build_source


def random_locations(n: int, seed: int) -> list[Location]:
    """Random lon/lat over the inhabited latitudes, projected into their UTM zones."""
    rng = np.random.default_rng(seed)
    lon = rng.uniform(-180.0, 180.0, n)
    lat = rng.uniform(-60.0, 75.0, n)
    out = []
    for i, (a, b) in enumerate(zip(lon.tolist(), lat.tolist())):
        epsg = utm_epsg(a, b)
        x, y = pyproj.Transformer.from_crs(4326, epsg, always_xy=True).transform(a, b)
        out.append(Location(index=i, lon=a, lat=b, epsg=epsg, x=x, y=y))
    return out


def on_lattice(value: float, step: float) -> bool:
    return math.fmod(value, step) == 0.0


# --------------------------------------------------------------------------- the rule
@pytest.mark.parametrize("size,resolution", [(264, 10.0), (24, 10.0), (16, 10.0), (132, 20.0), (44, 60.0)])
def test_origin_is_a_multiple_of_60m_for_random_locations(size, resolution):
    for loc in random_locations(300, seed=size):
        grid = PatchGrid.for_location(loc, size, resolution)
        a, b, c, d, e, f = grid.transform
        assert on_lattice(c, 60.0) and on_lattice(f, 60.0), (loc, grid)
        assert (a, b, d, e) == (resolution, 0.0, 0.0, -resolution)
        # the centre moves by at most half a lattice step; the patch still holds the location
        half = size * resolution / 2.0
        assert abs(c + half - loc.x) <= 30.0 and abs(f - half - loc.y) <= 30.0
        west, south, east, north = grid.bounds
        assert west <= loc.x <= east and south <= loc.y <= north


def test_lattice_step_is_the_lcm_with_60m():
    assert [lattice_step(r) for r in (10.0, 20.0, 60.0, 30.0, 25.0, 2.5)] == [60.0, 60.0, 60.0, 60.0, 300.0, 60.0]
    assert lattice_step(10.0, lattice_m=10.0) == 10.0 and lattice_step(0.1, lattice_m=0.3) == pytest.approx(0.3)
    assert S2_LATTICE_M == 60.0
    loc = Location(0, 0.0, 0.0, 32631, 500_017.0, 5_000_044.0)
    assert PatchGrid.for_location(loc, 24, 25.0).x0 % 300.0 == 0.0  # 25 m pixels: corner on a 300 m lattice
    coarse = PatchGrid.for_location(loc, 24, 10.0, lattice_m=10.0)  # configurable: a plain 10 m lattice
    assert (coarse.x0, coarse.y0) == (499_900.0, 5_000_160.0)
    with pytest.raises(ValueError, match="resolution"):
        lattice_step(0.0)


def test_snap_corner_vectorised_equals_scalar_and_ties_go_up():
    locs = random_locations(200, seed=3)
    x = np.array([loc.x for loc in locs])
    y = np.array([loc.y for loc in locs])
    xs, ys = snap_corner(x, y, 264, 10.0)
    for loc, a, b in zip(locs, xs.tolist(), ys.tolist()):
        assert (a, b) == snap_corner(loc.x, loc.y, 264, 10.0)
    # exactly half-way between two lattice points: east / north
    assert snap_corner(1350.0 + 30.0, 0.0 - 1350.0 + 30.0, 270, 10.0) == (60.0, 60.0)


# --------------------------------------------------------------------------- 10 / 20 / 60 m grids of one patch
def test_10_20_60m_grids_of_a_patch_share_the_corner():
    for loc in random_locations(100, seed=7):
        g10 = PatchGrid.for_location(loc, 264, 10.0)
        for res, size in ((20.0, 132), (60.0, 44)):
            sub = g10.at_resolution(res)
            assert (sub.epsg, sub.x0, sub.y0, sub.size, sub.resolution) == (g10.epsg, g10.x0, g10.y0, size, res)
            assert sub.bounds == g10.bounds
            assert sub.transform[2] == g10.transform[2] and sub.transform[5] == g10.transform[5]
            # the same patch asked for directly at that resolution is the same grid
            assert PatchGrid.for_location(loc, size, res) == sub
        # a patch whose extent is not a whole number of 60 m pixels: the 60 m grid covers it from the same corner
        small = PatchGrid.for_location(loc, 16, 10.0).at_resolution(60.0)
        assert small.size == 3 and (small.x0, small.y0) == PatchGrid.for_location(loc, 16, 10.0).bounds[::3]


def test_real_sentinel2_patches_are_on_the_lattice(shared_data: Path):
    """BigEarthNet v1.0 patches are cut from Sentinel-2 L2A tiles: for any location within 30 m of a
    patch's centre, the 10 m patch grid, its 20 m and 60 m grids are exactly the files' grids.
    """
    folders = sorted((shared_data / "bigearthnet_v1" / "BigEarthNet-v1.0").glob("S2*"))
    if not folders:
        pytest.skip("BigEarthNet v1.0 sample absent")
    rng = np.random.default_rng(5)
    for folder in folders:
        grids = {}
        for band, res in (("B02", 10.0), ("B05", 20.0), ("B01", 60.0)):
            with rasterio.open(folder / f"{folder.name}_{band}.tif") as ds:
                t = ds.transform
                grids[res] = (ds.crs.to_epsg(), t.c, t.f, t.a, -t.e, ds.width)
        epsg, c, f, _, _, width = grids[10.0]
        dx, dy = rng.uniform(-29.0, 29.0, 2)
        loc = Location(0, 0.0, 0.0, epsg, c + 600.0 + dx, f - 600.0 + dy)
        g10 = PatchGrid.for_location(loc, width, 10.0)
        for res, grid in ((10.0, g10), (20.0, g10.at_resolution(20.0)), (60.0, g10.at_resolution(60.0))):
            assert (grid.epsg, grid.x0, grid.y0, grid.resolution, grid.resolution, grid.size) == grids[res], folder.name


def test_sampling_footprints_follow_the_grid():
    locs = random_locations(200, seed=11)
    patch = PatchConfig(size_px=24)
    gdf = S.locations_to_geodataframe(locs, patch)
    for loc, wkt in zip(locs, gdf["footprint_wkt_utm"]):
        assert shapely.from_wkt(wkt).bounds == PatchGrid.for_location(loc, 24, 10.0).bounds


# --------------------------------------------------------------------------- a curated patch
class RecordingSource:
    """A source that records the grid of every fetch and passes it on to the synthetic source."""

    def __init__(self, inner):
        self.inner = inner
        self.name = inner.name
        self.synthetic = inner.synthetic
        self.fetched: list[tuple[int, int, PatchGrid, set[str], bool]] = []

    def describe(self):
        return self.inner.describe()

    def fetch(self, location, window, grid, modalities):
        sample = self.inner.fetch(location, window, grid, modalities)
        shapes = {arr.data.shape[-2:] for arr in sample.images.values()}
        if sample.label is not None:
            shapes.add(sample.label.data.shape)
        assert shapes == {(grid.size, grid.size)}
        self.fetched.append((location.index, window.season, grid, set(sample.images), sample.label is not None))
        return sample


def test_all_products_of_a_curated_synthetic_patch_share_one_transform(tmp_path):
    manifest = Manifest.model_validate({
        "source": {"kind": "synthetic", "synthetic": {"seed": 3, "cloud_probability": 0.0}},
        "sampling": {"n_locations": 4, "top_n_cities": 30, "seed": 9},
        "patch": {"size_px": 24, "resampling": "nearest"},
        "store": {"path": str(tmp_path / "a.zarr"), "patches_per_shard": 2},
    })
    source = RecordingSource(build_source(manifest))
    group = curate_all(manifest, source=source)
    assert (group["status"][:] == 1).all()

    rule = group.attrs["patch_grid"]
    assert (rule["size_px"], rule["resolution_m"], rule["lattice_m"], rule["step_m"]) == (24, 10.0, 60.0, 60.0)
    epsg, ux, uy = group["epsg"][:], group["utm_x"][:], group["utm_y"][:]
    n_seasons = group["s2_l1c"].shape[1]
    for p in range(len(epsg)):
        # the archive's coordinates and grid rule rebuild the one grid every product of the patch was made on
        loc = Location(p, 0.0, 0.0, int(epsg[p]), float(ux[p]), float(uy[p]))
        grid = PatchGrid.for_location(loc, rule["size_px"], rule["resolution_m"], rule["lattice_m"])
        assert on_lattice(grid.x0, 60.0) and on_lattice(grid.y0, 60.0)
        fetched = [f for f in source.fetched if f[0] == p]
        assert sorted(f[1] for f in fetched) == list(range(n_seasons))
        for _, _, used, modalities, labelled in fetched:
            assert used.transform == grid.transform and used.crs == grid.crs
            assert modalities == {"s2_l1c", "s2_l2a", "s1_grd"} and labelled
        # 60 m bands (nearest resampling) are constant over 6 × 6 px blocks from the corner: their pixels
        # lie on the UTM 60 m lattice, as the label map's and the 10 m bands' pixels lie on the 10 m one
        b1 = group["s2_l1c"][p, :, 0]  # B1, (season, y, x)
        blocks = b1.reshape(n_seasons, 4, 6, 4, 6)
        assert (blocks == blocks[:, :, :1, :, :1]).all()
        b5 = group["s2_l1c"][p, :, 4].reshape(n_seasons, 12, 2, 12, 2)  # B5, 20 m
        assert (b5 == b5[:, :, :1, :, :1]).all()
