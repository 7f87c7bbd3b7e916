"""The real sources run through the same curation steps as the synthetic world.

``pipeline.curate.prepare`` + ``process_shard`` with an explicit ``source=``: (a) the local SSL4EO-S12
sample (location 0000200, two seasons on disk), compared with bare rasterio reads; (b) Earth Engine
answered by a fake transport that serves any location of the manifest, compared with what it served,
and a transport that finds no image for one location.
"""

from __future__ import annotations

import datetime as dt
import zlib
from pathlib import Path

# The Earth Engine offline fixture and graph helpers live in the Earth Engine source tests (the one
# place that patches earthengine-api internals); reuse them rather than patching twice.
import ee  # noqa: E402
import numpy as np
import pytest
import rasterio
import zarr
from archive_helpers import curate_all
from ee_fakes import calls, graph  # noqa: E402
from rasterio.enums import Resampling

from pipeline import curate as steps
from pipeline.bands import LABEL_NODATA, MODALITY_BANDS, MODALITY_DTYPES
from pipeline.grid import PatchGrid
from pipeline.manifest import Manifest
from pipeline.sources import build_source
from pipeline.sources.earthengine import EarthEngineSource
from pipeline.sources.ssl4eo_local import SSL4EOLocalSource
from pipeline.store import MODALITY_ORDER, STATUS_DONE, STATUS_FAILED, date_to_days

EEException = ee.ee_exception.EEException

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


def _ms(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, 10, tzinfo=dt.timezone.utc).timestamp() * 1000)


class AnyLocationTransport:
    """Earth Engine answers for every location of a manifest, told apart by the request's footprint.

    Metadata: one image per modality, acquired two days after the window start, with ids derived from
    the location and that date. Pixels: a deterministic pseudo-random array per (tag, image, band),
    recorded in ``served[(tag, image id)][band]``; Dynamic World arrays are keyed by the season's L1C
    id whether they are ``matched`` or the window ``mode``. ``no_image`` location ids raise Earth
    Engine's "not found" error on the L1C selection; ``mode`` location ids have no DW image named
    like their L1C image.
    """

    def __init__(self, no_image: set[str] = frozenset(), mode: set[str] = frozenset()):
        self.no_image, self.mode = set(no_image), set(mode)
        self.by_x0: dict[float, object] = {}
        self.size = 0
        self.l1c_of_window: dict[tuple[str, str], str] = {}
        self.served: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def bind(self, locations, size: int, resolution: float) -> None:
        self.size = size
        self.by_x0 = {PatchGrid.for_location(loc, size, resolution).x0: loc for loc in locations}

    @staticmethod
    def image_ids(loc, start: dt.date) -> dict[str, str]:
        d = (start + dt.timedelta(days=2)).strftime("%Y%m%d")
        return {
            "s2_l1c": f"{d}T10{loc.index:04d}_{d}T100001_T31TCJ",
            "s2_l2a": f"{d}T10{loc.index:04d}_{d}T100002_T31TCJ",
            "s1_grd": f"S1A_IW_GRDH_1SDV_{d}T05{loc.index:04d}_{d}T053415_036000_0439A0_{loc.index:04X}",
        }

    def _where(self, tree) -> tuple[object, str]:
        x0 = calls(tree, "GeometryConstructors.Rectangle")[0]["coordinates"][0]
        return self.by_x0[x0], calls(tree, "DateRange")[0]["start"]

    def get_info(self, computation, tag):
        loc, start = self._where(graph(computation))
        if tag == "s2_l1c" and loc.id in self.no_image:
            raise EEException(f"ImageCollection.load: image asset for location {loc.id} not found.")
        ids = self.image_ids(loc, dt.date.fromisoformat(start))
        if tag == "dw":
            self.l1c_of_window[(loc.id, start)] = ids["s2_l1c"]
            return {"matched": 0 if loc.id in self.mode else 1, "window": 3}
        d = dt.date.fromisoformat(start) + dt.timedelta(days=2)
        extra = ({"orbitProperties_pass": ["ASCENDING"]} if tag == "s1_grd"
                 else {"CLOUDY_PIXEL_PERCENTAGE": [2.5 + loc.index]})
        return {"count": 2, "ids": [ids[tag]], "times": [_ms(d)], **extra}

    def _band(self, tag: str, image: str, band: str) -> np.ndarray:
        arrays = self.served.setdefault((tag, image), {})
        if band not in arrays:
            rng = np.random.default_rng(zlib.crc32(f"{tag}/{image}/{band}".encode()))
            shape = (self.size, self.size)
            if tag == "dw":
                arr = rng.integers(0, 9, shape).astype(np.uint8)
                arr[rng.random(shape) < 0.1] = LABEL_NODATA
            elif tag == "s1_grd":
                arr = rng.normal(-12.0, 4.0, shape).astype(np.float32)
            else:
                arr = rng.integers(1, 10_000, shape).astype(np.uint16)
            arrays[band] = arr
        return arrays[band]

    def compute_pixels(self, request, tag):
        tree = graph(request["expression"])
        g = request["grid"]
        loc = self.by_x0[g["affineTransform"]["translateX"]]
        if tag == "dw":
            eq = calls(tree, "Filter.equals")
            image = eq[0]["rightValue"] if eq else self.l1c_of_window[(loc.id, calls(tree, "DateRange")[0]["start"])]
        else:
            image = calls(tree, "Image.load")[0]["id"].rsplit("/", 1)[1]
        grid = PatchGrid.for_location(loc, self.size, 10.0)
        row0 = round((grid.y0 - g["affineTransform"]["translateY"]) / grid.resolution)
        h, w = g["dimensions"]["height"], g["dimensions"]["width"]
        bands = request["bandIds"]
        blocks = [self._band(tag, image, b)[row0:row0 + h] for b in bands]
        out = np.zeros((h, w), dtype=[(b, blocks[0].dtype) for b in bands])
        for b, block in zip(bands, blocks, strict=True):
            out[b] = block
        return out


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
