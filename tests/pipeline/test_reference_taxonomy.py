"""The reference land cover of the synthetic world: world variables → classes, and its place in the archive."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pytest
import zarr

from pipeline.errors import BadInput
from pipeline.grid import PatchGrid
from pipeline.locations import Location, utm_epsg
from pipeline.manifest import Manifest, SyntheticSourceOptions
from pipeline.reference import described_products, patch_products, product_classes
from pipeline.seasons import season_windows
from pipeline.sources import signatures as sig
from pipeline.sources.synthetic import SyntheticSource
from pipeline.sources.synthetic.reference import (
    REFERENCE_CLASSES,
    reference_fraction,
    reference_map,
)
from pipeline.sources.synthetic.world import (
    WATER_LAKE,
    WATER_RIVER,
    WATER_SEA,
    build_world,
    season_phase,
    seasonal_cover,
)
from pipeline.store import archive_template
from tests.archive_helpers import synthetic_archive
from train.evaluate.tasks import ArchiveTask

R = {name: i for i, name in enumerate(REFERENCE_CLASSES)}
WINDOWS = season_windows([dt.date(2021, 3, 20), dt.date(2021, 6, 21), dt.date(2021, 9, 22),
                          dt.date(2020, 12, 21)], 30, 0)
#: Which Dynamic World class each reference class refines (static cover; seasonal snow: the season's).
REFINES = {"evergreen forest": sig.TREES, "deciduous forest": sig.TREES, "mixed forest": sig.TREES,
           "summer crops": sig.CROPS, "winter cereals": sig.CROPS, "double cropping": sig.CROPS,
           "pasture": sig.GRASS, "natural grassland": sig.GRASS, "shrubland": sig.SHRUB, "bare rock": sig.BARE,
           "sand and dunes": sig.BARE, "inland wetland": sig.FLOODED, "lakes": sig.WATER, "rivers": sig.WATER,
           "sea": sig.WATER, "dense urban": sig.BUILT, "sparse urban": sig.BUILT,
           "permanent snow and ice": sig.SNOW, "seasonal snow": sig.SNOW}


def loc(i: int, lat: float, lon: float = 10.0) -> Location:
    return Location(index=i, lon=lon, lat=lat, epsg=utm_epsg(lon, lat), x=500000.0 + 1000 * i, y=5000000.0)


def tiny_world(lc: np.ndarray, **arrays):
    """A real world with its arrays replaced: every variable the mapping reads set by the test."""
    sandiness = float(arrays.pop("sandiness", 0.0))
    w = build_world(0, loc(0, 45.0), lc.shape[0], 10.0)
    shape = lc.shape
    defaults = dict(lc=lc.astype(np.uint8), decid=np.full(shape, 0.5, np.float32),
                    water_kind=np.zeros(shape, np.uint8), farmland=np.zeros(shape, bool),
                    parcel=np.zeros(shape, np.int32), parcel_peak=np.array([[200.0, np.nan]], np.float32),
                    parcel_winter=np.array([False]))
    defaults.update(arrays)
    place = dataclasses.replace(w.place, sandiness=sandiness)
    return dataclasses.replace(w, place=place, **defaults)


def test_each_row_of_the_table():
    lc = np.array([[sig.TREES, sig.TREES, sig.TREES, sig.CROPS, sig.CROPS, sig.CROPS],
                   [sig.GRASS, sig.GRASS, sig.SHRUB, sig.BARE, sig.FLOODED, sig.SNOW],
                   [sig.WATER, sig.WATER, sig.WATER, sig.BUILT, sig.GRASS, sig.GRASS]])
    decid = np.zeros(lc.shape, np.float32)
    decid[0, :3] = [0.1, 0.9, 0.5]
    water = np.zeros(lc.shape, np.uint8)
    water[2, :3] = [WATER_LAKE, WATER_RIVER, WATER_SEA]
    farmland = np.zeros(lc.shape, bool)
    farmland[1, 0] = True
    parcel = np.zeros(lc.shape, np.int32)
    parcel[0, 3:6] = [0, 1, 2]
    peak = np.array([[200, np.nan], [150, np.nan], [60, 240]], np.float32)
    w = tiny_world(lc, decid=decid, water_kind=water, farmland=farmland, parcel=parcel, parcel_peak=peak,
                   parcel_winter=np.array([False, True, False]))
    got = [[REFERENCE_CLASSES[c] for c in row] for row in reference_map(w, w.lc, 10.0)]
    assert got[0] == ["evergreen forest", "deciduous forest", "mixed forest", "summer crops", "winter cereals",
                      "double cropping"]
    assert got[1] == ["pasture", "natural grassland", "shrubland", "bare rock", "inland wetland",
                      "permanent snow and ice"]
    assert got[2][:3] == ["lakes", "rivers", "sea"]
    assert got[2][3] == "sparse urban"  # one built pixel in a 250 m square is not dense
    assert got[2][4:] == ["natural grassland", "natural grassland"]


def test_sand_dense_urban_and_seasonal_snow():
    lc = np.full((30, 30), sig.BUILT, np.uint8)
    lc[:, 20:] = sig.BARE
    lc[0, 0] = sig.WATER
    water = np.zeros(lc.shape, np.uint8)
    water[0, 0] = WATER_LAKE
    w = tiny_world(lc, water_kind=water, sandiness=0.8)
    season = lc.copy()
    season[0, 0] = sig.SNOW  # a frozen lake
    m = reference_map(w, season, 10.0)
    assert m[10, 5] == R["dense urban"]  # deep inside the built block
    assert m[10, 25] == R["sand and dunes"]
    assert m[0, 0] == R["seasonal snow"]
    sparse = reference_map(tiny_world(lc, water_kind=water, sandiness=0.2), lc, 10.0)
    assert sparse[10, 25] == R["bare rock"] and sparse[0, 0] == R["lakes"]


@pytest.mark.parametrize("lat", [-35.0, 3.0, 24.0, 47.0, 63.0, 71.0])
def test_reference_refines_dynamic_world(lat):
    """Over real worlds: every pixel has one class, and it refines the Dynamic World class of the season."""
    for i in range(6):
        location = loc(10 * i + int(lat) % 7, lat + 0.3 * i, lon=-60.0 + 31 * i)
        w = build_world(2, location, 48, 10.0)
        assert set(np.unique(w.water_kind[w.lc == sig.WATER])) <= {WATER_LAKE, WATER_RIVER, WATER_SEA}
        assert not w.water_kind[w.lc != sig.WATER].any()
        assert np.isin(w.lc[w.farmland], [sig.CROPS, sig.GRASS]).all()
        for window in WINDOWS:
            season = seasonal_cover(w, season_phase(w.place, window.centre)[1])
            m = reference_map(w, season, 10.0)
            for name, dw in REFINES.items():
                sel = m == R[name]
                assert (season[sel] == dw).all(), name
            frac = reference_fraction(m)
            assert frac.shape == (19,) and frac.sum() == pytest.approx(1.0)


def test_source_products_and_declaration():
    src = SyntheticSource(SyntheticSourceOptions(seed=1))
    assert described_products(src.describe())["reference"]["classes"] == list(REFERENCE_CLASSES)
    manifest = Manifest.model_validate({"patch": {"size_px": 32}})
    location = loc(3, 50.0)
    out = patch_products(src, manifest, location, WINDOWS, presence_threshold=0.05)
    frac, multi = out["reference_fraction"], out["reference_multi_hot"]
    assert frac.shape == (4, 19) and frac.dtype == np.float32 and multi.dtype == np.uint8
    np.testing.assert_array_equal(multi, (frac.astype(np.float64) > 0.05).astype(np.uint8))
    assert patch_products(object(), manifest, location, WINDOWS, 0.01) == {}  # a source without products


def test_other_sources_get_no_reference_variables():
    manifest = Manifest.model_validate({"patch": {"size_px": 32}, "sampling": {"n_locations": 4}})
    locations = [loc(i, 40.0 + i) for i in range(4)]
    ds, _ = archive_template(manifest, locations, {"name": "local", "synthetic": False})
    assert not {"reference_fraction", "reference_multi_hot", "reference_class"} & set(ds.variables)
    ds, _ = archive_template(manifest, locations, SyntheticSource(SyntheticSourceOptions()).describe())
    assert ds["reference_fraction"].dims == ("patch", "season", "reference_class")
    assert list(ds["reference_class"].values) == list(REFERENCE_CLASSES)


def test_curated_archive_and_reference_task(tmp_path):
    store = synthetic_archive(tmp_path / "a.zarr", n_locations=12, size_px=32, patches_per_shard=4,
                              cloud_probability=0.2)
    group = zarr.open_group(store, mode="r")
    status = group["status"][:]
    frac, multi = group["reference_fraction"][:], group["reference_multi_hot"][:]
    assert frac.shape == (12, 4, 19)
    np.testing.assert_allclose(frac[status == 1].sum(-1), 1.0, atol=1e-5)
    assert not frac[status != 1].any()
    threshold = group["reference_multi_hot"].attrs["presence_threshold"]
    np.testing.assert_array_equal(multi, frac > threshold)  # float32 rounding never crosses 0.01 here
    assert product_classes(group) == REFERENCE_CLASSES
    task = ArchiveTask(store, split="train", target="reference")
    dw = ArchiveTask(store, split="train", target="multi_hot")
    assert task.classes == REFERENCE_CLASSES and task.num_classes == 19 and task.multilabel
    assert task.ids == dw.ids  # the same images as the in-domain task
    p, s = task._items[0]
    np.testing.assert_array_equal(task.label(0).numpy(), multi[p, s])


def test_archive_without_reference_is_refused(tmp_path):
    store = synthetic_archive(tmp_path / "a.zarr", n_locations=4, size_px=16, patches_per_shard=4)
    group = zarr.open_group(store, mode="r+")
    del group["reference_fraction"], group["reference_multi_hot"]  # as an archive curated before the product
    assert product_classes(zarr.open_group(store, mode="r")) is None
    assert len(ArchiveTask(store, split="train", target="multi_hot")) > 0  # still readable
    with pytest.raises(BadInput, match="no reference land-cover product"):
        ArchiveTask(store, split="train", target="reference")


def test_source_outputs_unchanged_by_the_reference():
    """The reference reads the world; fetching with or without computing it gives the same arrays."""
    location = loc(5, 46.0)
    grid = PatchGrid.for_location(location, 32, 10.0)
    bands = {"s2_l1c": ("B2", "B4", "B8")}
    a = SyntheticSource(SyntheticSourceOptions(seed=4)).fetch(location, WINDOWS[1], grid, bands)
    src = SyntheticSource(SyntheticSourceOptions(seed=4))
    src.patch_products(location, WINDOWS, grid)
    b = src.fetch(location, WINDOWS[1], grid, bands)
    np.testing.assert_array_equal(a.images["s2_l1c"].data, b.images["s2_l1c"].data)
    np.testing.assert_array_equal(a.label.data, b.label.data)
