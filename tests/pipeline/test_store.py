"""Archive layout and round trip: template, shard writes, status last, xarray view, summaries."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import zarr

from pipeline.bands import DW_CLASSES, LABEL_NODATA
from pipeline.labels import label_summary, summary_statistics
from pipeline.locations import Location, utm_epsg
from pipeline.manifest import Manifest
from pipeline.store import (
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_TODO,
    ArchiveError,
    ArchiveLayout,
    PatchResult,
    create_archive,
    date_to_days,
    open_archive,
    open_group,
    summarize,
    write_patches,
)


def small_manifest(path, **over) -> Manifest:
    data = {
        "sampling": {"n_locations": 6},
        "patch": {"size_px": 16},
        "store": {"path": str(path), "patches_per_shard": 4},
        "modalities": {"s2_l2a": {"enabled": False}},
    }
    data.update(over)
    return Manifest.model_validate(data)


def fake_locations(n: int) -> list[Location]:
    out = []
    for i in range(n):
        lon, lat = -70.0 + 10 * i, -30.0 + 12 * i
        out.append(Location(index=i, lon=lon, lat=lat, epsg=utm_epsg(lon, lat), x=500000.0 + i, y=4.0e6 + i,
                            city=f"city{i}"))
    return out


def fake_result(layout: ArchiveLayout, index: int, rng: np.random.Generator) -> PatchResult:
    S, H = layout.n_seasons, layout.size
    images = {}
    for name, bands in layout.modalities.items():
        if name.startswith("s2"):
            images[name] = rng.integers(0, 10000, (S, len(bands), H, H), dtype=np.uint16)
        else:
            images[name] = rng.normal(-12, 3, (S, len(bands), H, H)).astype(np.float32)
    dw = rng.integers(0, 9, (S, H, H), dtype=np.uint8)
    dw[0, :2] = LABEL_NODATA
    frac = rng.random((S, 9)).astype(np.float32)
    return PatchResult(
        index=index, status=STATUS_DONE, images=images, dw_label=dw, label_fraction=frac,
        multi_hot=(frac > 0.5).astype(np.uint8),
        acquired=np.full((S, 3), date_to_days(dt.date(2021, 6, 1)) + index, np.int32),
        image_id=np.array([[f"img{index}_{s}_{m}" for m in range(3)] for s in range(S)], dtype=object),
        cloud_pct=np.full((S, 3), 5.0, np.float32), label_method=np.array(["matched"] * S, dtype=object))


def test_template_layout_and_attrs(tmp_path):
    m = small_manifest(tmp_path / "a.zarr")
    locs = fake_locations(6)
    layout = create_archive(m, locs, {"name": "synthetic", "synthetic": True})
    assert layout.n_shards == 2 and layout.shard_slice(1) == slice(4, 6)
    g = open_group(m.store.path)
    assert g.attrs["synthetic"] is True and g.attrs["manifest_hash"] == m.content_hash()
    assert g.attrs["manifest"]["sampling"]["n_locations"] == 6
    assert "s2_l2a" not in g and g["s2_l1c"].shape == (6, 4, 13, 16, 16)
    assert g["s2_l1c"].chunks == (1, 1, 13, 16, 16) and g["s2_l1c"].shards == (4, 4, 13, 16, 16)
    assert g["s1_grd"].dtype == np.float32 and g["dw_label"].dtype == np.uint8
    assert (g["status"][:] == STATUS_TODO).all()
    ds = open_archive(m.store.path)
    assert list(ds["patch_id"].values) == [f"{i:07d}" for i in range(6)]
    assert list(ds["class"].values) == list(DW_CLASSES)
    assert int(ds["dw_label"].isel(patch=0, season=0, y=0, x=0)) == LABEL_NODATA
    assert np.isnan(float(ds["s1_grd"][0, 0, 0, 0, 0]))


def test_round_trip_and_status(tmp_path):
    m = small_manifest(tmp_path / "b.zarr")
    locs = fake_locations(6)
    layout = create_archive(m, locs, {"name": "synthetic", "synthetic": True})
    rng = np.random.default_rng(0)
    g = open_group(m.store.path, "r+")
    first = [fake_result(layout, i, rng) for i in range(4)]
    write_patches(g, layout, first)
    failed = PatchResult(index=4, status=STATUS_FAILED, reason="NoImageFound: season 2: nothing")
    write_patches(g, layout, [failed, fake_result(layout, 5, rng)])
    ds = open_archive(m.store.path)
    for r in first:
        np.testing.assert_array_equal(ds["s2_l1c"][r.index].values, r.images["s2_l1c"])
        np.testing.assert_array_equal(ds["s1_grd"][r.index].values, r.images["s1_grd"])
        np.testing.assert_array_equal(ds["dw_label"][r.index].values, r.dw_label)
        np.testing.assert_array_equal(ds["multi_hot"][r.index].values, r.multi_hot)
        assert list(ds["image_id"][r.index, :, 0].values) == [f"img{r.index}_{s}_0" for s in range(4)]
    assert ds["acquired"][2, 0, 0].values == np.datetime64("2021-06-03")
    assert list(ds["status"].values) == [1, 1, 1, 1, 2, 1]
    assert ds["status_reason"].values[4].startswith("NoImageFound")
    assert (ds["s2_l1c"][4].values == 0).all()  # failed patches keep fill values
    s = summarize(m.store.path)
    assert s["status"] == {"todo": 0, "done": 5, "failed": 1}
    assert s["failures"] == {"NoImageFound": 1} and s["synthetic"] is True
    assert s["done_patches"] == 5 and s["n_seasons"] == 4
    labelled = ds["multi_hot"].values[ds["status"].values == 1].reshape(-1, 9)
    labelled = labelled[labelled.any(1)]
    headline = label_summary(summary_statistics(m.store.path))
    assert headline["labelled_images"] == len(labelled)
    np.testing.assert_allclose(list(headline["class_frequency"].values()), labelled.mean(0), rtol=1e-6)


def test_writes_must_stay_in_one_shard(tmp_path):
    m = small_manifest(tmp_path / "c.zarr")
    layout = create_archive(m, fake_locations(6), {"name": "synthetic", "synthetic": True})
    g = open_group(m.store.path, "r+")
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="more than one shard"):
        write_patches(g, layout, [fake_result(layout, 3, rng), fake_result(layout, 4, rng)])
    with pytest.raises(ValueError, match="contiguous"):
        write_patches(g, layout, [fake_result(layout, 0, rng), fake_result(layout, 2, rng)])
    assert (g["status"][:] == STATUS_TODO).all()


def test_existing_archive_from_other_manifest_is_refused(tmp_path):
    m = small_manifest(tmp_path / "d.zarr")
    create_archive(m, fake_locations(6), {"name": "synthetic", "synthetic": True})
    create_archive(m, fake_locations(6), {"name": "synthetic", "synthetic": True})  # same manifest: fine
    other = small_manifest(tmp_path / "d.zarr", labels={"presence_threshold": 0.2})
    with pytest.raises(ArchiveError, match="different manifest"):
        create_archive(other, fake_locations(6), {"name": "synthetic", "synthetic": True})


def test_fsspec_url(tmp_path):
    url = f"file://{tmp_path}/e.zarr"
    m = small_manifest(url)
    layout = create_archive(m, fake_locations(6), {"name": "synthetic", "synthetic": True})
    g = open_group(url, "r+")
    write_patches(g, layout, [fake_result(layout, 0, np.random.default_rng(2))])
    assert zarr.open_group(str(tmp_path / "e.zarr"), mode="r")["status"][0] == STATUS_DONE
