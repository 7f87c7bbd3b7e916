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

import numpy as np

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


def _ms(d: dt.date) -> int:
    """``system:time_start`` of an acquisition on ``d`` (10:20 UTC), in milliseconds since the epoch."""
    return int(dt.datetime(d.year, d.month, d.day, 10, 20, tzinfo=dt.timezone.utc).timestamp() * 1000)


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
