"""Earth Engine test doubles shared by the tests of the Earth Engine source (graphs, faults, Sentinel-1
no-data), its concurrency and the fetch benchmark: graph inspection helpers, one location, grid, window
and band set, and :class:`FakeTransport`, which answers a source's requests without a network.

The ``ee_offline`` fixture (Earth Engine initialised without network) is in ``tests/conftest.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import zlib

import numpy as np
from ee.ee_exception import EEException

from pipeline.bands import LABEL_NODATA, MODALITY_BANDS
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.manifest import EarthEngineSourceOptions
from pipeline.seasons import SeasonWindow
from pipeline.sources.earthengine import EarthEngineSource


def graph(obj) -> object:
    """The serialised computation of ``obj`` as nested dicts ``{"fn": name, arg: value, …}``."""
    data = json.loads(obj.serialize())
    values = data["values"]

    def node(v):
        if "valueReference" in v:
            return node(values[v["valueReference"]])
        if "constantValue" in v:
            return v["constantValue"]
        if "functionInvocationValue" in v:
            f = v["functionInvocationValue"]
            return {"fn": f["functionName"], **{k: node(a) for k, a in f.get("arguments", {}).items()}}
        if "arrayValue" in v:
            return [node(x) for x in v["arrayValue"]["values"]]
        if "dictionaryValue" in v:
            return {k: node(x) for k, x in v["dictionaryValue"]["values"].items()}
        if "functionDefinitionValue" in v:
            return {"fn": "<lambda>", "body": node(values[v["functionDefinitionValue"]["body"]])}
        return v

    return node(values[data["result"]])


def calls(tree, fn: str) -> list[dict]:
    """Every invocation of ``fn`` in a :func:`graph` tree."""
    found = []

    def walk(t):
        if isinstance(t, dict):
            if t.get("fn") == fn:
                found.append(t)
            for v in t.values():
                walk(v)
        elif isinstance(t, list):
            for v in t:
                walk(v)

    walk(tree)
    return found


LOC = Location(index=12, lon=11.58, lat=48.14, epsg=32632, x=691_600.0, y=5_335_300.0)
GRID = PatchGrid.for_location(LOC, size=24, resolution=10.0)
WINDOW = SeasonWindow(season=0, reference=dt.date(2021, 3, 20), start=dt.date(2021, 3, 5), end=dt.date(2021, 4, 4))
ALL = {name: bands for name, bands in MODALITY_BANDS.items()}

# The image ids the fake finds for WINDOW (metadata of default_meta).
L1C_ID = "20210318T101021_20210318T101022_T32UPU"
L2A_ID = "20210401T101021_20210401T101022_T32UPU"
S1_ID = "S1B_IW_GRDH_1SDV_20210329T053350_20210329T053415_026227_0321A8_8D7B"


def _ms(d: dt.date, minute: int = 20) -> int:
    """``system:time_start`` of an acquisition on ``d`` (10:``minute`` UTC), in milliseconds since the epoch."""
    return int(dt.datetime(d.year, d.month, d.day, 10, minute, tzinfo=dt.timezone.utc).timestamp() * 1000)


def default_meta() -> dict:
    """What :class:`FakeTransport` answers to the metadata request of each tag: one image per modality
    (the latest of several candidates) and a matching Dynamic World map.
    """
    return {
        "s2_l1c": {"count": 4, "ids": [L1C_ID], "times": [_ms(dt.date(2021, 3, 18))],
                   "CLOUDY_PIXEL_PERCENTAGE": [4.25]},
        "s2_l2a": {"count": 3, "ids": [L2A_ID], "times": [_ms(dt.date(2021, 4, 1))],
                   "CLOUDY_PIXEL_PERCENTAGE": [11.5]},
        "s1_grd": {"count": 6, "ids": [S1_ID], "times": [_ms(dt.date(2021, 3, 29))],
                   "orbitProperties_pass": ["DESCENDING"]},
        "dw": {"matched": 1, "window": 5},
    }


def expected_pixels(tag: str, bands, rows: slice = slice(None)) -> np.ndarray:
    """What :class:`FakeTransport` serves for ``bands`` of ``tag`` on GRID, as (band, y, x)."""
    r, c = np.mgrid[0:GRID.size, 0:GRID.size]
    if tag == "dw":
        lab = ((r // 5 + c // 7) % 9).astype(np.uint8)
        lab[r == c] = LABEL_NODATA
        return lab[None, rows]
    out = []
    for b in bands:
        k = MODALITY_BANDS[tag].index(b)
        if tag == "s1_grd":
            out.append((-20.0 + 6.0 * k + ((r * 3 + c) % 10) / 10.0).astype(np.float32))
        else:
            out.append((1000 * (k + 1) + (r * GRID.size + c) % 997 + (tag == "s2_l2a") * 7).astype(np.uint16))
    return np.stack(out)[:, rows]


class FakeTransport:
    """Serves metadata and structured pixel arrays; records calls and concurrency; injects faults.

    ``faults[key]`` (key ``"<tag>:info"`` or ``"<tag>:pixels"``) is a list consumed one per call: an
    exception is raised, any other value is returned as the payload; the real answer once it is empty.
    """

    def __init__(self, meta: dict | None = None, faults: dict | None = None, delay_s: float = 0.0):
        self.meta = default_meta() if meta is None else meta
        self.faults = {k: list(v) for k, v in (faults or {}).items()}
        self.delay_s = delay_s
        self.calls: list[tuple[str, str]] = []
        self.requests: list[dict] = []
        self.computations: list = []
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def __getstate__(self):
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _enter(self, key: str):
        with self._lock:
            self.calls.append(tuple(key.split(":")))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            queue = self.faults.get(key)
            fault = queue.pop(0) if queue else None
        if self.delay_s:
            time.sleep(self.delay_s)
        return fault

    def _exit(self):
        with self._lock:
            self.in_flight -= 1

    def get_info(self, computation, tag):
        try:
            fault = self._enter(f"{tag}:info")
            self.computations.append((tag, computation))
            if isinstance(fault, BaseException):
                raise fault
            if fault is not None:
                return fault
            return json.loads(json.dumps(self.meta[tag]))
        finally:
            self._exit()

    def compute_pixels(self, request, tag):
        try:
            fault = self._enter(f"{tag}:pixels")
            with self._lock:
                self.requests.append({"tag": tag, **request})
            if isinstance(fault, BaseException):
                raise fault
            if fault is not None:
                return fault
            assert request["fileFormat"] == "NUMPY_NDARRAY"
            g = request["grid"]
            h, w = g["dimensions"]["height"], g["dimensions"]["width"]
            row0 = int(round((GRID.y0 - g["affineTransform"]["translateY"]) / GRID.resolution))
            bands = request["bandIds"]
            block = expected_pixels(tag, bands, slice(row0, row0 + h))
            out = np.zeros((h, w), dtype=[(b, block.dtype) for b in bands])
            for i, b in enumerate(bands):
                out[b] = block[i]
            return out
        finally:
            self._exit()

    def count(self, tag: str, kind: str) -> int:
        """How many calls of ``kind`` (``"info"`` or ``"pixels"``) were made for ``tag``."""
        return sum(1 for c in self.calls if c == (tag, kind))


class SleepRecorder:
    """A ``sleep`` that records the back-off delays it is asked for instead of waiting."""

    def __init__(self):
        self.delays: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_source(transport=None, sleep=None, **kwargs) -> EarthEngineSource:
    """An Earth Engine source answered by ``transport`` (a new :class:`FakeTransport` by default), with a
    rate limit too high to matter and a recorded ``sleep`` (a new :class:`SleepRecorder` by default).
    ``options`` update the source options, ``max_cloud`` defaults to 20 %, other keywords go to
    :class:`EarthEngineSource`.
    """
    opts = dict(requests_per_second=1e6)
    opts.update(kwargs.pop("options", {}))
    return EarthEngineSource(EarthEngineSourceOptions(**opts), kwargs.pop("max_cloud", 20.0),
                             transport=transport if transport is not None else FakeTransport(),
                             sleep=sleep or SleepRecorder(), **kwargs)


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
        return {"count": 2, "ids": [ids[tag]], "times": [_ms(d, minute=0)], **extra}

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
