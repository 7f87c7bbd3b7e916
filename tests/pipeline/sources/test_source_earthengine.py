"""Earth Engine source, fully offline.

Earth Engine graphs are built and serialised with the client library's own offline test mode (the
``ee_offline`` fixture of ``tests/conftest.py``, the one place that patches earthengine-api internals, as
the library's own tests do with ``ee.apitestcase``). Pixels and metadata come from
:class:`ee_fakes.FakeTransport`, which also injects faults.
The ``ee_live`` test talks to Earth Engine and runs only with ``SOFTCON_EE_LIVE=1`` and credentials.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import os
import pickle
import threading
import traceback
from pathlib import Path

import numpy as np
import pytest

ee = pytest.importorskip("ee")

from ee_fakes import (  # noqa: E402
    ALL,
    GRID,
    L1C_ID,
    L2A_ID,
    LOC,
    S1_ID,
    WINDOW,
    FakeTransport,
    SleepRecorder,
    calls,
    default_meta,
    expected_pixels,
    graph,
    make_source,
)

from pipeline.bands import LABEL_NODATA, MODALITY_BANDS, S2_L1C_BANDS  # noqa: E402
from pipeline.grid import PatchGrid  # noqa: E402
from pipeline.locations import Location  # noqa: E402
from pipeline.manifest import EarthEngineSourceOptions  # noqa: E402
from pipeline.seasons import SeasonWindow  # noqa: E402
from pipeline.sources import earthengine as eesrc  # noqa: E402
from pipeline.sources.base import (  # noqa: E402
    CorruptData,
    InvalidGeometry,
    NoImageFound,
    SeasonSample,
    Source,
    SourceError,
    TransientSourceError,
)
from pipeline.sources.earthengine import (  # noqa: E402
    MAX_REQUEST_BYTES,
    EarthEngineAuthError,
    EarthEngineSource,
    TokenBucket,
)

EEException = ee.ee_exception.EEException


# ------------------------------------------------------------------------------------------ request graphs
def _cloud_filters(tree):
    return [f for f in calls(tree, "Filter.lessThan") if f["leftField"] == "CLOUDY_PIXEL_PERCENTAGE"]


def test_s2_selection_graph(ee_offline):
    col = eesrc.modality_collection("s2_l1c", GRID, WINDOW, 15.0)
    tree = graph(eesrc.selection_info(col, ("CLOUDY_PIXEL_PERCENTAGE",)))

    assert {c["id"] for c in calls(tree, "ImageCollection.load")} == {"COPERNICUS/S2"}
    rect = calls(tree, "GeometryConstructors.Rectangle")
    assert rect and all(r["coordinates"] == list(GRID.bounds) for r in rect)
    assert all(r["crs"] == {"fn": "Projection", "crs": "EPSG:32632"} and r["geodesic"] is False for r in rect)
    dates = calls(tree, "DateRange")
    assert dates and all(d["start"] == "2021-03-05" and d["end"] == "2021-04-04" for d in dates)
    clouds = _cloud_filters(tree)
    assert clouds and all(f["rightValue"] == 15.0 for f in clouds)
    limits = calls(tree, "Collection.limit")
    sort = [x for x in limits if x.get("key") == "system:time_start"]
    assert sort and all(x["ascending"] is False for x in sort)
    first = [x for x in limits if x.get("limit") == 1]
    assert first and all(x["collection"]["fn"] == "Collection.limit" and x["collection"]["key"] == "system:time_start"
                         for x in first)
    props = {a["property"] for a in calls(tree, "AggregateFeatureCollection.array")}
    assert props == {"system:index", "system:time_start", "CLOUDY_PIXEL_PERCENTAGE"}
    assert calls(tree, "Collection.size")


@pytest.mark.parametrize("modality,harmonized,expected", [
    ("s2_l1c", False, "COPERNICUS/S2"), ("s2_l1c", True, "COPERNICUS/S2_HARMONIZED"),
    ("s2_l2a", False, "COPERNICUS/S2_SR"), ("s2_l2a", True, "COPERNICUS/S2_SR_HARMONIZED"),
    ("s1_grd", True, "COPERNICUS/S1_GRD"),
])
def test_collection_ids_and_harmonized_option(ee_offline, modality, harmonized, expected):
    tree = graph(eesrc.selection_info(eesrc.modality_collection(modality, GRID, WINDOW, 20.0, harmonized)))
    assert {c["id"] for c in calls(tree, "ImageCollection.load")} == {expected}
    bands = MODALITY_BANDS[modality]
    img = graph(eesrc.pixel_image(modality, "IDX", bands, 10.0, harmonized=harmonized))
    assert {c["id"] for c in calls(img, "Image.load")} == {f"{expected}/IDX"}


def test_source_uses_harmonized_collections(ee_offline):
    fake = FakeTransport()
    make_source(fake, options={"harmonized": True}).fetch(LOC, WINDOW, GRID, ALL)
    loads = {tag: {c["id"] for c in calls(graph(comp), "ImageCollection.load")} for tag, comp in fake.computations}
    assert loads["s2_l1c"] == {"COPERNICUS/S2_HARMONIZED"}
    assert loads["s2_l2a"] == {"COPERNICUS/S2_SR_HARMONIZED"}
    pix = {r["tag"]: calls(graph(r["expression"]), "Image.load")[0]["id"] for r in fake.requests if r["tag"] != "dw"}
    assert pix["s2_l1c"] == f"COPERNICUS/S2_HARMONIZED/{L1C_ID}"
    assert pix["s2_l2a"] == f"COPERNICUS/S2_SR_HARMONIZED/{L2A_ID}"


def test_s1_selection_graph(ee_offline):
    tree = graph(eesrc.selection_info(eesrc.s1_collection(GRID, WINDOW), ("orbitProperties_pass",)))
    assert {c["id"] for c in calls(tree, "ImageCollection.load")} == {"COPERNICUS/S1_GRD"}
    eq = {(f["leftField"], f["rightValue"]) for f in calls(tree, "Filter.equals")}
    assert ("instrumentMode", "IW") in eq
    pol = {(f["leftField"], f["rightValue"]) for f in calls(tree, "Filter.listContains")}
    assert pol == {("transmitterReceiverPolarisation", "VV"), ("transmitterReceiverPolarisation", "VH")}
    assert not _cloud_filters(tree)
    assert calls(tree, "DateRange")[0]["start"] == "2021-03-05"


def test_pixel_image_bands_resampling_and_dtype(ee_offline):
    tree = graph(eesrc.pixel_image("s2_l1c", L1C_ID, S2_L1C_BANDS, 10.0, "bilinear"))
    assert tree["fn"] == "Image.toUint16"
    unmask = calls(tree, "Image.unmask")[0]
    assert unmask["value"]["value"] == 0 and unmask["sameFootprint"] is False
    selects = [s["bandSelectors"] for s in calls(tree, "Image.select")]
    assert list(S2_L1C_BANDS) in selects  # final canonical order
    assert ["B2", "B3", "B4", "B8"] in selects  # 10 m bands read as they are
    (res,) = calls(tree, "Image.resample")
    assert res["mode"] == "bilinear"
    assert res["image"]["bandSelectors"] == ["B1", "B5", "B6", "B7", "B8A", "B9", "B10", "B11", "B12"]

    assert not calls(graph(eesrc.pixel_image("s2_l2a", L2A_ID, ("B2", "B5"), 10.0, "nearest")), "Image.resample")
    assert calls(graph(eesrc.pixel_image("s2_l2a", L2A_ID, ("B5",), 10.0, "cubic")), "Image.resample")[0]["mode"] \
        == "bicubic"
    s1 = graph(eesrc.pixel_image("s1_grd", S1_ID, ("VV", "VH"), 10.0))
    assert s1["fn"] == "Image.toFloat" and not calls(s1, "Image.resample")
    assert calls(s1, "Image.load")[0]["id"] == f"COPERNICUS/S1_GRD/{S1_ID}"


def test_pixel_request_grid_and_format(ee_offline):
    image = eesrc.pixel_image("s2_l1c", L1C_ID, ("B2", "B3"), 10.0)
    plan = eesrc.RequestPlan(("B2", "B3"), 0, GRID.size)
    req = eesrc.pixel_request(image, plan, GRID)
    assert req["fileFormat"] == "NUMPY_NDARRAY"
    assert req["bandIds"] == ["B2", "B3"]
    assert req["grid"] == {
        "crsCode": "EPSG:32632",
        "affineTransform": {"scaleX": 10.0, "shearX": 0.0, "translateX": GRID.x0,
                            "shearY": 0.0, "scaleY": -10.0, "translateY": GRID.y0},
        "dimensions": {"width": 24, "height": 24},
    }
    assert graph(req["expression"])["bandSelectors"] == ["B2", "B3"]
    strip = eesrc.grid_dict(GRID, row0=5, rows=7)
    assert strip["affineTransform"]["translateY"] == GRID.y0 - 50.0
    assert strip["dimensions"] == {"width": 24, "height": 7}


def test_dw_graphs(ee_offline):
    info = graph(eesrc.dw_info(L1C_ID, GRID, WINDOW))
    assert {c["id"] for c in calls(info, "ImageCollection.load")} == {"GOOGLE/DYNAMICWORLD/V1"}
    assert {(f["leftField"], f["rightValue"]) for f in calls(info, "Filter.equals")} == {("system:index", L1C_ID)}
    assert len(calls(info, "Collection.size")) == 2
    assert not calls(graph(eesrc.dw_info(None, GRID, WINDOW)), "Filter.equals")

    matched = graph(eesrc.dw_label_image("matched", L1C_ID, GRID, WINDOW))
    assert matched["fn"] == "Image.toUint8"
    assert calls(matched, "Image.unmask")[0]["value"]["value"] == LABEL_NODATA
    assert calls(matched, "Image.select")[0]["bandSelectors"] == ["label"]
    assert calls(matched, "Filter.equals")[0]["rightValue"] == L1C_ID
    assert not calls(matched, "reduce.mode")

    mode = graph(eesrc.dw_label_image("mode", L1C_ID, GRID, WINDOW))
    assert calls(mode, "reduce.mode") and not calls(mode, "Filter.equals")
    assert calls(mode, "DateRange")[0]["end"] == "2021-04-04"
    assert calls(mode, "Image.rename")[0]["names"] == ["label"]


# ------------------------------------------------------------------------------------------ request sizes
def _check_plans(plans, bands, grid, itemsize, cap):
    covered = {}
    for p in plans:
        assert eesrc.request_bytes(p, grid, itemsize) <= cap - eesrc.NPY_HEADER_MARGIN
        for b in p.bands:
            covered.setdefault(b, []).append((p.row0, p.rows))
    assert list(covered) == list(bands)  # every band, in order
    for spans in covered.values():
        rows = sorted(spans)
        assert rows[0][0] == 0 and sum(n for _, n in rows) == grid.size
        assert all(a + n == b for (a, n), (b, _) in zip(rows, rows[1:]))


def test_plan_requests_splits_under_48mb():
    default = PatchGrid(32632, 0.0, 0.0, 10.0, 264)
    assert eesrc.plan_requests(S2_L1C_BANDS, default, 2) == [eesrc.RequestPlan(S2_L1C_BANDS, 0, 264)]

    mid = PatchGrid(32632, 0.0, 0.0, 10.0, 2048)  # 8 MiB per uint16 band → 5 bands per request
    plans = eesrc.plan_requests(S2_L1C_BANDS, mid, 2)
    assert [len(p.bands) for p in plans] == [5, 5, 3]
    _check_plans(plans, S2_L1C_BANDS, mid, 2, MAX_REQUEST_BYTES)

    big = PatchGrid(32632, 0.0, 0.0, 10.0, 4096)  # 32 MiB per uint16 band, 64 MiB per float32 band
    plans = eesrc.plan_requests(S2_L1C_BANDS, big, 2)
    assert len(plans) == 13 and all(p.rows == 4096 for p in plans)
    _check_plans(plans, S2_L1C_BANDS, big, 2, MAX_REQUEST_BYTES)
    plans = eesrc.plan_requests(("VV", "VH"), big, 4)
    assert len(plans) == 4 and all(len(p.bands) == 1 and p.rows < 4096 for p in plans)
    _check_plans(plans, ("VV", "VH"), big, 4, MAX_REQUEST_BYTES)
    assert 13 * 4096 * 4096 * 2 > MAX_REQUEST_BYTES  # the unsplit request would have been refused


def test_fetch_splits_requests_and_reassembles(ee_offline):
    fake = FakeTransport()
    cap = eesrc.NPY_HEADER_MARGIN + 5 * GRID.size * GRID.size * 2  # 5 uint16 bands or 2.5 float32 bands
    src = make_source(fake, max_request_bytes=cap)
    sample = src.fetch(LOC, WINDOW, GRID, ALL)
    assert fake.count("s2_l1c", "pixels") == 3 and fake.count("s2_l2a", "pixels") == 3
    assert fake.count("s1_grd", "pixels") == 1
    for r in fake.requests:
        g = r["grid"]["dimensions"]
        item = 4 if r["tag"] == "s1_grd" else 1 if r["tag"] == "dw" else 2
        assert len(r["bandIds"]) * g["width"] * g["height"] * item <= cap
    for name, img in sample.images.items():
        np.testing.assert_array_equal(img.data, expected_pixels(name, img.bands))

    cap = eesrc.NPY_HEADER_MARGIN + 10 * GRID.size * 4  # 10 rows of one float32 band
    fake = FakeTransport()
    sample = make_source(fake, max_request_bytes=cap).fetch(LOC, WINDOW, GRID, {"s1_grd": ("VV", "VH")})
    assert fake.count("s1_grd", "pixels") == 6  # 2 bands × 3 strips (10 + 10 + 4 rows)
    np.testing.assert_array_equal(sample.images["s1_grd"].data, expected_pixels("s1_grd", ("VV", "VH")))


# ------------------------------------------------------------------------------------------ fetch
def test_fetch_returns_season_sample(ee_offline):
    fake = FakeTransport()
    src = make_source(fake)
    assert isinstance(src, Source) and src.name == "earthengine" and src.synthetic is False
    wanted = {"s2_l1c": ("B12", "B2", "B8A"), "s2_l2a": MODALITY_BANDS["s2_l2a"], "s1_grd": ("VH", "VV")}
    sample = src.fetch(LOC, WINDOW, GRID, wanted)
    assert isinstance(sample, SeasonSample)

    l1c = sample.images["s2_l1c"]
    assert l1c.bands == ("B2", "B8A", "B12")  # canonical order
    assert l1c.data.dtype == np.uint16 and l1c.data.shape == (3, 24, 24)
    np.testing.assert_array_equal(l1c.data, expected_pixels("s2_l1c", l1c.bands))
    assert (l1c.image_id, l1c.acquired, l1c.cloud_pct) == (L1C_ID, dt.date(2021, 3, 18), 4.25)

    l2a = sample.images["s2_l2a"]
    assert l2a.data.shape == (12, 24, 24) and l2a.image_id == L2A_ID and l2a.cloud_pct == 11.5
    np.testing.assert_array_equal(l2a.data, expected_pixels("s2_l2a", l2a.bands))

    s1 = sample.images["s1_grd"]
    assert s1.bands == ("VV", "VH") and s1.data.dtype == np.float32 and np.isnan(s1.cloud_pct)
    np.testing.assert_array_equal(s1.data, expected_pixels("s1_grd", ("VV", "VH")))
    assert s1.acquired == dt.date(2021, 3, 29) and s1.image_id == S1_ID

    assert sample.label.method == "matched" and sample.label.image_id == L1C_ID
    assert sample.label.data.dtype == np.uint8 and sample.label.data.shape == (24, 24)
    np.testing.assert_array_equal(sample.label.data, expected_pixels("dw", ("label",))[0])
    assert sample.extra["s1_pass"] == "DESCENDING" and sample.extra["dw_method"] == "matched"
    assert sample.extra["s2_l1c_candidates"] == "4"

    # one metadata call per image, one pixel request per modality at this size
    for tag in ("s2_l1c", "s2_l2a", "s1_grd", "dw"):
        assert fake.count(tag, "info") == 1 and fake.count(tag, "pixels") == 1
    dw_req = [r for r in fake.requests if r["tag"] == "dw"][0]
    assert calls(graph(dw_req["expression"]), "Filter.equals")[0]["rightValue"] == L1C_ID


def test_dw_falls_back_to_mode_when_no_matching_image(ee_offline):
    meta = default_meta()
    meta["dw"] = {"matched": 0, "window": 3}
    fake = FakeTransport(meta)
    sample = make_source(fake).fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B4",)})
    assert sample.label.method == "mode"
    assert sample.label.image_id == "mode:GOOGLE/DYNAMICWORLD/V1:2021-03-05/2021-04-04"
    assert sample.extra["dw_method"] == "mode" and sample.extra["dw_window_images"] == "3"
    tree = graph([r for r in fake.requests if r["tag"] == "dw"][0]["expression"])
    assert calls(tree, "reduce.mode") and not calls(tree, "Filter.equals")

    meta["dw"] = {"matched": 0, "window": 0}  # no DW at all: no label map, not an error
    sample = make_source(FakeTransport(meta)).fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B4",)})
    assert sample.label is None and sample.extra["dw_method"] == "none"


def test_labels_follow_l1c_even_when_only_l2a_is_requested(ee_offline):
    fake = FakeTransport()
    sample = make_source(fake).fetch(LOC, WINDOW, GRID, {"s2_l2a": ("B4",)})
    assert set(sample.images) == {"s2_l2a"} and sample.label.image_id == L1C_ID
    assert fake.count("s2_l1c", "info") == 1 and fake.count("s2_l1c", "pixels") == 0
    meta = default_meta()
    meta["s2_l1c"] = {"count": 0, "ids": [], "times": [], "CLOUDY_PIXEL_PERCENTAGE": []}
    fake = FakeTransport(meta)
    sample = make_source(fake).fetch(LOC, WINDOW, GRID, {"s2_l2a": ("B4",)})
    assert sample.label.method == "mode"
    assert "matched" not in fake.computations[-1][1].serialize()
    s1_only = make_source(FakeTransport()).fetch(LOC, WINDOW, GRID, {"s1_grd": ("VV",)})
    assert s1_only.label is None


@pytest.mark.parametrize("tag", ["s2_l1c", "s2_l2a", "s1_grd"])
def test_empty_collection_is_no_image_found(ee_offline, tag):
    meta = default_meta()
    meta[tag] = {"count": 0, "ids": [], "times": [], "CLOUDY_PIXEL_PERCENTAGE": []}
    fake = FakeTransport(meta)
    with pytest.raises(NoImageFound, match="0000012 season 0") as exc:
        make_source(fake).fetch(LOC, WINDOW, GRID, ALL)
    assert not exc.value.retryable
    assert not fake.requests  # fails before any pixel request
    if tag != "s1_grd":
        assert "CLOUDY_PIXEL_PERCENTAGE < 20%" in str(exc.value)


def test_unknown_modality_and_invalid_grid(ee_offline):
    src = make_source()
    with pytest.raises(ValueError, match="unknown modality"):
        src.fetch(LOC, WINDOW, GRID, {"s3": ("B1",)})
    with pytest.raises(ValueError, match="unknown band"):
        src.fetch(LOC, WINDOW, GRID, {"s2_l2a": ("B10",)})
    with pytest.raises(InvalidGeometry):
        src.fetch(LOC, WINDOW, PatchGrid(32632, float("nan"), 0.0, 10.0, 24), ALL)
    with pytest.raises(InvalidGeometry):
        src.fetch(LOC, WINDOW, PatchGrid(0, 0.0, 0.0, 10.0, 24), ALL)


# ------------------------------------------------------------------------------------------ faults
def test_rate_limit_bursts_are_retried_with_backoff(ee_offline):
    burst = [EEException("Too Many Requests: request rate exceeded (429)")] * 3
    fake = FakeTransport(faults={"s2_l1c:pixels": burst})
    sleep = SleepRecorder()
    sample = make_source(fake, sleep).fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B2",)})
    assert sample.images["s2_l1c"].data.shape == (1, 24, 24)
    assert fake.count("s2_l1c", "pixels") == 4
    assert len(sleep.delays) == 3
    for k, d in enumerate(sleep.delays):  # exponential with jitter: [base·2^k / 2, base·2^k]
        assert 0.5 * 2 ** k <= d <= 2 ** k


def test_backoff_is_capped_and_jittered():
    src = EarthEngineSource(EarthEngineSourceOptions(), transport=FakeTransport(), backoff_base_s=2.0,
                            backoff_max_s=10.0)
    delays = [src.backoff_delay(a) for a in range(1, 8) for _ in range(20)]
    assert max(delays) <= 10.0 and min(delays) >= 1.0
    assert len({round(d, 6) for d in delays[-20:]}) > 1  # jitter


@pytest.mark.parametrize("fault", [
    TimeoutError("read timed out"),
    ConnectionResetError("connection reset by peer"),
    EEException("Internal error."),
    EEException("HttpError 503: Service Unavailable"),
    EEException("Deadline exceeded"),
    TransientSourceError("flaky"),
    http.client.IncompleteRead(b"partial"),
])
def test_transient_errors_then_success(ee_offline, fault):
    fake = FakeTransport(faults={"s1_grd:info": [fault, fault]})
    sleep = SleepRecorder()
    sample = make_source(fake, sleep).fetch(LOC, WINDOW, GRID, {"s1_grd": ("VV", "VH")})
    assert "s1_grd" in sample.images and fake.count("s1_grd", "info") == 3 and len(sleep.delays) == 2


def test_persistent_server_errors_raise_transient_source_error(ee_offline):
    fake = FakeTransport(faults={"s2_l1c:pixels": [EEException("500 Internal error")] * 10})
    sleep = SleepRecorder()
    src = make_source(fake, sleep, max_attempts=4)
    with pytest.raises(TransientSourceError, match="after 4 attempts") as exc:
        src.fetch(LOC, WINDOW, GRID, ALL)
    assert exc.value.retryable
    assert fake.count("s2_l1c", "pixels") == 4 and len(sleep.delays) == 3


def _structured(bands, shape, dtype):
    return np.zeros(shape, dtype=[(b, dtype) for b in bands])


@pytest.mark.parametrize("tag,payload", [
    ("s2_l1c", np.zeros((24, 24, 1), np.uint16)),  # plain array, no band fields
    ("s2_l1c", b"\x93NUMPY garbage"),
    ("s2_l1c", _structured(["B2"], (24, 23), np.uint16)),  # wrong shape
    ("s2_l1c", _structured(["B3"], (24, 24), np.uint16)),  # wrong band field
    ("s2_l1c", _structured(["B2"], (24, 24), np.float32)),  # float DN
    ("s2_l1c", np.full((24, 24), -5, dtype=[("B2", np.int32)])),  # does not fit uint16
    ("s1_grd", _structured(["VV"], (24, 24), "U4")),  # text instead of dB
    ("dw", np.full((24, 24), 42, dtype=[("label", np.uint8)])),  # not a DW class
])
def test_malformed_payload_is_corrupt_data(ee_offline, tag, payload):
    bands = {"s2_l1c": ("B2",), "s1_grd": ("VV",), "dw": ("B2",)}[tag]
    modality = "s2_l1c" if tag == "dw" else tag
    fake = FakeTransport(faults={f"{tag}:pixels": [payload]})
    with pytest.raises(CorruptData) as exc:
        make_source(fake).fetch(LOC, WINDOW, GRID, {modality: bands})
    assert not exc.value.retryable and "0000012" in str(exc.value)
    assert fake.count(tag, "pixels") == 1  # never retried


@pytest.mark.parametrize("meta", [
    "fakeValue", {"count": "3", "ids": [L1C_ID], "times": [0]}, {"count": 1, "ids": [], "times": []},
    {"count": 2, "ids": [L1C_ID, L2A_ID], "times": [0, 1]}, {"count": 1, "ids": [L1C_ID], "times": ["soon"]},
])
def test_malformed_metadata_is_corrupt_data(ee_offline, meta):
    fake = FakeTransport(faults={"s2_l1c:info": [meta]})
    with pytest.raises(CorruptData):
        make_source(fake).fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B2",)})


@pytest.mark.parametrize("message,expected", [
    ("Image.load: Image asset 'COPERNICUS/S2/x' not found.", NoImageFound),
    ("Invalid GeoJSON geometry.", InvalidGeometry),
    ("Unknown CRS code: EPSG:99999 (projection)", InvalidGeometry),
    ("Image.select: Pattern 'B10' did not match any bands.", CorruptData),
    ("User memory limit exceeded.", SourceError),
    ("Total request size (60000000 bytes) must be less than or equal to 50331648 bytes.", SourceError),
])
def test_permanent_earth_engine_errors_are_typed_and_not_retried(ee_offline, message, expected):
    fake = FakeTransport(faults={"s2_l1c:pixels": [EEException(message)]})
    sleep = SleepRecorder()
    with pytest.raises(SourceError) as exc:
        make_source(fake, sleep).fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B2",)})
    assert type(exc.value) is expected and not exc.value.retryable
    assert fake.count("s2_l1c", "pixels") == 1 and not sleep.delays


def test_programming_errors_are_not_swallowed(ee_offline):
    fake = FakeTransport(faults={"s2_l1c:info": [KeyError("bug")]})
    with pytest.raises(KeyError):
        make_source(fake).fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B2",)})


# ------------------------------------------------------------------------------------------ rate control
def test_concurrency_bound_is_respected_across_threads(ee_offline):
    fake = FakeTransport(delay_s=0.003)
    src = make_source(fake, options={"max_concurrent_requests": 3})
    errors = []

    def work():
        try:
            src.fetch(LOC, WINDOW, GRID, {"s2_l1c": ("B2",), "s1_grd": ("VV",)})
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(fake.calls) == 12 * 6  # 3 metadata calls (L1C, S1, DW) + 3 pixel requests
    assert 2 <= fake.max_in_flight <= 3


def test_token_bucket_limits_rate():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(rate=4.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):  # the initial burst (one second's worth)
        bucket.acquire()
    assert now[0] == 0.0
    for _ in range(8):
        bucket.acquire()
    assert now[0] == pytest.approx(2.0)  # 8 more at 4/s
    assert all(s == pytest.approx(0.25) for s in slept)


def test_source_applies_requests_per_second(ee_offline, monkeypatch):
    src = make_source(options={"requests_per_second": 2.0})
    rate = src.limiter.rate
    acquired = []
    monkeypatch.setattr(rate, "acquire", lambda: acquired.append(1))
    src.fetch(LOC, WINDOW, GRID, {"s1_grd": ("VV",)})
    assert rate._sem._initial_value == 2 and len(acquired) == 2  # one metadata call, one pixel request
    assert src.limiter.scope == "process"  # not on a Dask worker


def test_pickling_recreates_runtime_state(ee_offline):
    src = make_source(options={"max_concurrent_requests": 7})
    _ = src.limiter
    clone = pickle.loads(pickle.dumps(src))
    assert clone._limiter is None and clone.limiter is not src.limiter
    assert clone.limiter.concurrency._initial_value == 7 and clone._initialized
    sample = clone.fetch(LOC, WINDOW, GRID, {"s1_grd": ("VV",)})
    assert sample.images["s1_grd"].data.shape == (1, 24, 24)
    plain = pickle.loads(pickle.dumps(EarthEngineSource(EarthEngineSourceOptions())))
    assert not plain._initialized and isinstance(plain.transport, eesrc.EarthEngineTransport)


# ------------------------------------------------------------------------------------------ credentials
SECRET_TEXT = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7TOPSECRETKEYMATERIAL"


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "very-private-dir" / "sa-key-0f3c9e.json"
    path.parent.mkdir()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": "softcon-demo", "private_key_id": "a1b2c3d4e5f6a7b8c9d0",
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{SECRET_TEXT}\n-----END PRIVATE KEY-----\n",
        "client_email": "curator-bot@softcon-demo.iam.gserviceaccount.com", "client_id": "109876543210987654321",
        "token_uri": "https://oauth2.googleapis.com/token",
    }))
    return path


def _leaks(text: str, path: Path) -> list[str]:
    probes = [str(path), path.name, "very-private-dir", SECRET_TEXT, "a1b2c3d4e5f6a7b8c9d0", "109876543210987654321",
              "curator-bot@"]
    return [p for p in probes if p in text]


def _everything_about(exc: BaseException) -> str:
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


def test_bad_key_file_never_leaks_path_or_content(key_file, caplog, monkeypatch):
    monkeypatch.delenv(eesrc.KEY_ENV_VAR, raising=False)
    caplog.set_level(logging.DEBUG)
    src = EarthEngineSource(EarthEngineSourceOptions(service_account_key=str(key_file)))
    with pytest.raises(EarthEngineAuthError, match="service_account_key") as exc:
        src.initialize()  # the private key is not a real RSA key: google-auth refuses it
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert _leaks(_everything_about(exc.value), key_file) == []
    assert _leaks(caplog.text, key_file) == []
    assert _leaks(repr(src) + json.dumps(src.describe()), key_file) == []
    assert src.describe()["auth"] == "service_account"


def test_missing_key_from_env_never_leaks_path(tmp_path, monkeypatch):
    missing = tmp_path / "very-private-dir" / "absent-key.json"
    monkeypatch.setenv(eesrc.KEY_ENV_VAR, str(missing))
    src = EarthEngineSource(EarthEngineSourceOptions())
    with pytest.raises(EarthEngineAuthError, match=eesrc.KEY_ENV_VAR) as exc:
        src.initialize()
    assert _leaks(_everything_about(exc.value), missing) == []


def test_initialize_failure_message_is_redacted(key_file, monkeypatch, caplog):
    monkeypatch.delenv(eesrc.KEY_ENV_VAR, raising=False)
    caplog.set_level(logging.DEBUG)
    creds = type("Creds", (), {"project_id": "softcon-demo"})()
    seen = {}
    monkeypatch.setattr(ee, "ServiceAccountCredentials", lambda email, key_file: seen.update(key=key_file) or creds)

    def failing_initialize(credentials, project=None):
        seen.update(credentials=credentials, project=project)
        raise EEException(f"cannot use {key_file}: {key_file.read_text()}")

    monkeypatch.setattr(ee, "Initialize", failing_initialize)
    src = EarthEngineSource(EarthEngineSourceOptions(service_account_key=str(key_file)))
    with pytest.raises(EarthEngineAuthError, match="<redacted>") as exc:
        src.initialize()
    assert seen == {"key": str(key_file), "credentials": creds, "project": "softcon-demo"}
    assert _leaks(_everything_about(exc.value), key_file) == []
    assert _leaks(caplog.text, key_file) == []


def test_initialize_with_user_credentials_and_lazy_init(ee_offline, monkeypatch, caplog):
    monkeypatch.delenv(eesrc.KEY_ENV_VAR, raising=False)
    caplog.set_level(logging.INFO)
    seen = []
    monkeypatch.setattr(ee, "Initialize", lambda credentials, project=None: seen.append((credentials, project)))
    monkeypatch.setattr(ee.data, "setMaxRetries", lambda n: seen.append(("retries", n)))
    monkeypatch.setattr(ee.data, "setDeadline", lambda ms: seen.append(("deadline", ms)))
    fake = FakeTransport()
    src = EarthEngineSource(EarthEngineSourceOptions(project="my-ee-project", requests_per_second=1e6),
                            request_timeout_s=30)
    src._transport = fake  # a real source, with requests answered by the fake
    src.fetch(LOC, WINDOW, GRID, {"s1_grd": ("VV",)})
    src.fetch(LOC, WINDOW, GRID, {"s1_grd": ("VV",)})
    assert seen == [("persistent", "my-ee-project"), ("retries", 0), ("deadline", 30000)]  # once
    assert "initialised" in caplog.text and src.describe()["auth"] == "user"


def test_service_account_key_from_env(key_file, monkeypatch):
    monkeypatch.setenv(eesrc.KEY_ENV_VAR, str(key_file))
    seen = {}
    monkeypatch.setattr(ee, "ServiceAccountCredentials", lambda email, key_file: seen.update(key=key_file) or "C")
    monkeypatch.setattr(ee, "Initialize", lambda credentials, project=None: seen.update(c=credentials, p=project))
    monkeypatch.setattr(ee.data, "setMaxRetries", lambda n: None)
    monkeypatch.setattr(ee.data, "setDeadline", lambda ms: None)
    EarthEngineSource(EarthEngineSourceOptions(project="p1")).initialize()
    assert seen == {"key": str(key_file), "c": "C", "p": "p1"}


# ------------------------------------------------------------------------------------------ live
def _live_credentials() -> bool:
    key = os.environ.get(eesrc.KEY_ENV_VAR)
    if key:
        return Path(key).is_file()
    return (Path.home() / ".config" / "earthengine" / "credentials").is_file()


@pytest.mark.ee_live
@pytest.mark.skipif(os.environ.get("SOFTCON_EE_LIVE") != "1" or not _live_credentials(),
                    reason="set SOFTCON_EE_LIVE=1 with Earth Engine credentials (SOFTCON_EE_KEY or stored user)")
def test_live_fetch_one_season():
    ee.Reset()
    src = EarthEngineSource(EarthEngineSourceOptions(project=os.environ.get("SOFTCON_EE_PROJECT")),
                            backoff_base_s=2.0)
    loc = Location(index=0, lon=11.58, lat=48.14, epsg=32632, x=691_600.0, y=5_335_300.0)
    grid = PatchGrid.for_location(loc, size=64, resolution=10.0)
    window = SeasonWindow(season=1, reference=dt.date(2021, 6, 21), start=dt.date(2021, 6, 6),
                          end=dt.date(2021, 7, 6))
    try:
        sample = src.fetch(loc, window, grid, ALL)
    except NoImageFound:
        pytest.skip("no image passed the filters for the live test window")
    assert sample.images["s2_l1c"].data.shape == (13, 64, 64)
    assert sample.images["s2_l1c"].data.dtype == np.uint16 and sample.images["s2_l1c"].data.max() > 0
    assert sample.images["s1_grd"].data.dtype == np.float32
    assert -40 < float(np.nanmedian(sample.images["s1_grd"].data[0])) < 10
    if sample.label is not None:
        assert sample.label.data.shape == (64, 64)
