"""The real sources run through the same curation steps as the synthetic world.

``pipeline.curate.prepare`` + ``process_shard`` with an explicit ``source=``: (a) the local SSL4EO-S12
sample (location 0000200, two seasons on disk), compared with bare rasterio reads; (b) Earth Engine
answered by a fake transport that serves any location of the manifest, compared with what it served,
and a transport that finds no image for one location.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from archive_helpers import curate_all
from ee_fakes import AnyLocationTransport
from rasterio.enums import Resampling

from pipeline import curate as steps
from pipeline.bands import LABEL_NODATA, MODALITY_BANDS, MODALITY_DTYPES
from pipeline.manifest import Manifest
from pipeline.sources import build_source
from pipeline.sources.earthengine import EarthEngineSource
from pipeline.sources.ssl4eo_local import SSL4EOLocalSource
from pipeline.store import MODALITY_ORDER, STATUS_DONE, STATUS_FAILED, date_to_days

# --------------------------------------------------------------------------------------- local copy
LOC_ID = "0000200"
SEASON_FOLDERS = {  # acquisition folders of 0000200 for the seasons 06-21 (0) and 09-22 (1), in time order
    "s2_l1c": ("s2c", ["20200604T054639_20200604T054831_T43RCP", "20200823T054639_20200823T055618_T43RCP"]),
    "s2_l2a": ("s2a", ["20200604T054639_20200604T054831_T43RCP", "20200813T054639_20200813T054952_T43RCP"]),
    "s1_grd": ("s1", ["S1A_IW_GRDH_1SDV_20200607T010800_20200607T010825_032904_03CFBA_D457",
                      "S1A_IW_GRDH_1SDV_20200903T131212_20200903T131237_034195_03F8F5_AC1C"]),
}


@pytest.fixture(scope="module")
def local_root(shared_data: Path) -> Path:
    root = shared_data / "ssl4eo_s12"
    if not root.is_dir():
        pytest.skip(f"SSL4EO-S12 sample not found at {root}")
    return root


def local_manifest(root: Path, store: Path, dates: list[str]) -> Manifest:
    return Manifest.model_validate({
        "source": {"kind": "local", "local": {"root": str(root)}},
        "seasons": {"reference_dates": dates},
        "patch": {"size_px": 264},
        "store": {"path": str(store), "patches_per_shard": 4},
    })


def rasterio_band(path: Path, size: int = 264) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1, out_shape=(size, size), resampling=Resampling.bilinear)


def test_local_copy_through_curation_equals_rasterio(local_root, tmp_path):
    m = local_manifest(local_root, tmp_path / "local.zarr", ["2021-06-21", "2021-09-22"])
    source = build_source(m)  # the manifest's reference dates reach the reader
    assert isinstance(source, SSL4EOLocalSource)
    assert source.reference_dates == (dt.date(2021, 6, 21), dt.date(2021, 9, 22))
    g = curate_all(m, source)
    assert [str(p) for p in g["patch_id"][:]] == [LOC_ID]
    assert g["status"][:].tolist() == [STATUS_DONE] and g["status_reason"][0] == ""
    assert g["s2_l1c"].shape == (1, 2, 13, 264, 264) and g.attrs["source"]["name"] == "ssl4eo_local"
    assert g.attrs["synthetic"] is False

    for name, (_, folders) in SEASON_FOLDERS.items():
        m_idx = MODALITY_ORDER.index(name)
        for s, folder in enumerate(folders):
            assert g["image_id"][0, s, m_idx] == folder
            stamp = dt.datetime.strptime(folder.split("_")[0] if name != "s1_grd" else folder.split("_")[4],
                                         "%Y%m%dT%H%M%S").date()
            assert g["acquired"][0, s, m_idx] == date_to_days(stamp)
    # One band per modality (a 20 m S2 band, resampled; S1 VV at native size) against bare rasterio.
    for name, band in (("s2_l1c", "B5"), ("s2_l2a", "B11"), ("s1_grd", "VV")):
        sub, folders = SEASON_FOLDERS[name]
        k = MODALITY_BANDS[name].index(band)
        for s, folder in enumerate(folders):
            expected = rasterio_band(local_root / sub / LOC_ID / folder / f"{band}.tif")
            got = g[name][0, s, k]
            assert got.dtype == np.dtype(MODALITY_DTYPES[name])
            np.testing.assert_array_equal(got, expected.astype(got.dtype), err_msg=f"{name} {band} season {s}")
    # No label source configured: no label maps, all-zero vectors, no label method.
    assert (g["dw_label"][:] == LABEL_NODATA).all() and not g["multi_hot"][:].any()
    assert g["label_method"][:].tolist() == [["", ""]]


def test_local_copy_with_more_seasons_than_on_disk_fails_the_patch(local_root, tmp_path):
    # Two acquisitions per modality, three seasons: the one-to-one assignment of least total distance
    # puts June in 06-21 and August/September in 09-22, so 03-20 (season 0) is left empty; the first
    # modality read (L1C) reports it, naming the season and the location folder.
    m = local_manifest(local_root, tmp_path / "local3.zarr", ["2021-03-20", "2021-06-21", "2021-09-22"])
    g = curate_all(m, build_source(m))
    assert g["status"][:].tolist() == [STATUS_FAILED]
    reason = str(g["status_reason"][0])
    assert reason.startswith("NoImageFound: season 0"), reason
    assert "season 0 (reference 2021-03-20)" in reason and str(local_root / "s2c" / LOC_ID) in reason
    assert "none left for this one" in reason


# --------------------------------------------------------------------------------------- Earth Engine
def ee_manifest(store: Path) -> Manifest:
    return Manifest.model_validate({
        "source": {"kind": "earthengine", "earthengine": {"project": "offline-test"}},
        "sampling": {"n_locations": 2, "top_n_cities": 20, "seed": 7},
        "seasons": {"reference_dates": ["2021-03-20", "2021-06-21"]},
        "patch": {"size_px": 16},
        "store": {"path": str(store), "patches_per_shard": 2},
    })


def ee_source(transport: AnyLocationTransport, manifest: Manifest) -> EarthEngineSource:
    return EarthEngineSource(manifest.source.earthengine.model_copy(update={"requests_per_second": 1e6}),
                             manifest.cloud_filter.max_cloudy_pixel_percentage, transport=transport,
                             resampling=manifest.patch.resampling, sleep=lambda s: None)


def ee_curate(manifest: Manifest, transport: AnyLocationTransport) -> zarr.Group:
    source = ee_source(transport, manifest)
    locations, layout = steps.prepare(manifest, source=source)
    transport.bind(locations, manifest.patch.size_px, manifest.patch.resolution_m)
    for shard in steps.pending_shards(manifest, layout):
        steps.process_shard(manifest, layout, shard, locations[layout.shard_slice(shard)], source=source)
    return zarr.open_group(manifest.store.path, mode="r")


def assert_patch_equals_served(g: zarr.Group, p: int, transport: AnyLocationTransport) -> None:
    for name, bands in MODALITY_BANDS.items():
        m_idx = MODALITY_ORDER.index(name)
        for s in range(g[name].shape[1]):
            image = str(g["image_id"][p, s, m_idx])
            served = transport.served[(name, image)]
            expected = np.stack([served[b] for b in bands])
            np.testing.assert_array_equal(g[name][p, s], expected, err_msg=f"{name} patch {p} season {s}")
    for s in range(g["dw_label"].shape[1]):
        l1c = str(g["image_id"][p, s, 0])
        np.testing.assert_array_equal(g["dw_label"][p, s], transport.served[("dw", l1c)]["label"])


@pytest.mark.usefixtures("ee_offline")
def test_earth_engine_through_curation_equals_served(tmp_path):
    m = ee_manifest(tmp_path / "ee.zarr")
    fake = AnyLocationTransport(mode={"0000001"})
    g = ee_curate(m, fake)
    assert g["status"][:].tolist() == [STATUS_DONE, STATUS_DONE]
    assert g.attrs["source"]["name"] == "earthengine" and g.attrs["synthetic"] is False
    ids = [str(p) for p in g["patch_id"][:]]
    assert ids == ["0000000", "0000001"]
    locations = steps.prepare(m, source=ee_source(fake, m))[0]
    for p, loc in enumerate(locations):
        assert_patch_equals_served(g, p, fake)
        for s in range(2):  # ids and dates as the fake answered for this location's windows
            l1c = str(g["image_id"][p, s, 0])
            assert l1c == AnyLocationTransport.image_ids(loc, dt.datetime.strptime(l1c[:8], "%Y%m%d").date()
                                                         - dt.timedelta(days=2))["s2_l1c"]
            assert g["acquired"][p, s, 0] == date_to_days(dt.datetime.strptime(l1c[:8], "%Y%m%d").date())
            assert g["cloud_pct"][p, s, 0] == pytest.approx(2.5 + loc.index) and np.isnan(g["cloud_pct"][p, s, 2])
    assert g["label_method"][:].tolist() == [["matched", "matched"], ["mode", "mode"]]
    # label vectors derived from the served label maps
    dw = g["dw_label"][:]
    assert g["multi_hot"][:].shape == (2, 2, 9) and g["multi_hot"][:].any()
    assert (g["label_fraction"][:].sum(axis=-1) > 0.99).all() and (dw != LABEL_NODATA).any()
    # every served image ended up in the archive, and nothing else was requested
    assert {img for (tag, img) in fake.served if tag != "dw"} == {str(i) for i in g["image_id"][:].ravel()}


@pytest.mark.usefixtures("ee_offline")
def test_earth_engine_no_image_fails_one_patch_only(tmp_path):
    m = ee_manifest(tmp_path / "ee_fail.zarr")
    fake = AnyLocationTransport(no_image={"0000001"})
    g = ee_curate(m, fake)
    assert g["status"][:].tolist() == [STATUS_DONE, STATUS_FAILED]
    reason = str(g["status_reason"][1])
    assert reason.startswith("NoImageFound: season 0") and "0000001" in reason and "not found" in reason
    assert g["status_reason"][0] == ""
    assert_patch_equals_served(g, 0, fake)
    assert g["label_method"][0].tolist() == ["matched", "matched"]
    # the failed patch keeps the fill values
    assert not g["s2_l1c"][1].any() and (g["dw_label"][1] == LABEL_NODATA).all()
    assert g["image_id"][1].tolist() == [["", "", ""], ["", "", ""]]
    assert steps.pending_shards(m, steps.prepare(m, source=ee_source(fake, m))[1], retry_failed=True) == [0]
