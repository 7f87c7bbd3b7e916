"""Google Earth Engine source: SSL4EO-S12 imagery and the matching Dynamic World labels.

What it asks Earth Engine, per (location, seasonal window, patch grid) (shared specs, softcon.md §1.3–1.4,
§2.2–2.3):

* **Selection** (one ``computeValue`` per modality, the "image metadata" call). Sentinel-2 L1C
  ``COPERNICUS/S2`` and L2A ``COPERNICUS/S2_SR`` (``*_HARMONIZED`` when ``options.harmonized``), each
  ``filterBounds(footprint)`` · ``filterDate(window.start, window.end)`` ·
  ``CLOUDY_PIXEL_PERCENTAGE < max``; Sentinel-1 ``COPERNICUS/S1_GRD`` with ``instrumentMode == "IW"`` and
  ``transmitterReceiverPolarisation`` containing both VV and VH (no orbit filter, as the original). The
  three modalities are searched independently. In each, the collection is sorted by
  ``system:time_start`` descending and the first (most recent) image is kept (``limit(1)``, see
  :func:`most_recent`); the call returns the collection size and that image's ``system:index``,
  ``system:time_start`` and cloud % (S2) or orbit pass (S1).
* **Pixels** (``ee.data.computePixels``, ``fileFormat="NUMPY_NDARRAY"``) of the selected *asset*
  (``<collection>/<system:index>``), so that the pixels are those of the image whose id was recorded, even
  if new scenes are ingested between the two calls. The request carries an explicit grid, the patch grid:
  ``{"crsCode": "EPSG:326xx", "affineTransform": {scaleX, shearX, translateX, shearY, scaleY, translateY},
  "dimensions": {width, height}}``. Bands whose native resolution differs from the grid's (S2 20 m and
  60 m bands at a 10 m grid) are ``.resample("bilinear")`` (or ``"bicubic"``; none for ``"nearest"``);
  bands at the grid resolution keep Earth Engine's default nearest-neighbour lookup, so their DN are
  unchanged when the grid is aligned with the tile. Our choice: SSL4EO-S12 resized at load time with
  OpenCV bilinear (§1.4); resampling on the server gives the same kind of interpolation, in the UTM grid.
  Masked pixels (outside the scene, S1 border noise, …) are unmasked to a no-data value and bands cast
  to the archive dtypes (S2 ``uint16`` DN, S1 ``float32`` dB, as served by ``COPERNICUS/S1_GRD``). S2
  no-data is 0 (SSL4EO-S12 nodata; real DN are ≥ 1). S1 no-data must be NaN in the archive, but the
  request cannot carry NaN and 0 dB is a real backscatter value, so S1 is unmasked to the sentinel
  :data:`S1_NODATA_DB` (−9999 dB) and :func:`s1_nodata_to_nan` turns every value below
  :data:`S1_FLOOR_DB` (−500 dB), the sentinel included, and every non-finite value into NaN. No
  backscatter can be there: ``10·log10`` of the smallest positive float32 is about −458 dB. The unmask
  is the last operation before the cast, after any resampling, so the sentinel is never interpolated.
* **Request size**: Earth Engine refuses a ``computePixels`` answer above 48 MiB (50,331,648 bytes).
  :func:`plan_requests` sizes every request as bands × height × width × dtype size (plus a margin for the
  NPY header) and splits the bands into groups, and a band too large on its own into row strips.
* **Labels**: ``GOOGLE/DYNAMICWORLD/V1`` filtered by ``system:index`` equal to the selected L1C image's
  index (DW images are named after their L1C source), ``select("label")``. A count call checks whether it
  exists; when it does not (or no L1C image passed the filter), the per-pixel mode of ``label`` over the
  DW images of the window is used instead and the label is recorded with ``method="mode"``. Unlabelled
  pixels are ``LABEL_NODATA``. No DW image at all in the window → no label map for that season.

Rate control and retries: every call goes through a token bucket (``requests_per_second``) and a
``threading.BoundedSemaphore(max_concurrent_requests)`` shared by all threads using the source instance
(per process: a pickled copy gets its own). Rate limits (429, "Too Many Requests", quota), server errors
(5xx, "Internal error", "Service unavailable"), deadlines and network timeouts are retried with
exponential backoff and jitter (delay in ``[d/2, d]``, ``d = min(backoff_max_s, backoff_base_s·2^k)``) up
to ``max_attempts`` attempts, then :class:`TransientSourceError`. Permanent problems raise
:class:`NoImageFound`, :class:`InvalidGeometry`, :class:`CorruptData` or (anything else Earth Engine
refuses) :class:`SourceError`, which the flow records as a failed patch. The Earth Engine client's own
HTTP retries are turned off by :meth:`EarthEngineSource.initialize`, so this policy is the only one.

Credentials: :meth:`EarthEngineSource.initialize` uses a service-account JSON key named by
``options.service_account_key`` or the ``SOFTCON_EE_KEY`` environment variable, otherwise the user
credentials stored by ``earthengine authenticate``. Neither the key's path nor its content is ever put
in a log line, an exception message, :meth:`describe` or ``repr``.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import logging
import math
import os
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import ee
import google.auth
import google.auth.exceptions
import numpy as np

from pipeline.bands import LABEL_NODATA, MODALITY_BANDS, MODALITY_DTYPES, S2_NATIVE_RESOLUTION_M
from pipeline.errors import BadInput
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.manifest import EarthEngineSourceOptions
from pipeline.seasons import SeasonWindow
from pipeline.sources.base import (
    CorruptData,
    InvalidGeometry,
    LabelMap,
    ModalityImage,
    NoImageFound,
    SeasonSample,
    SourceError,
    TransientSourceError,
    check_modalities,
)

log = logging.getLogger(__name__)

#: Environment variable naming a service-account JSON key file (used when the manifest names none).
KEY_ENV_VAR = "SOFTCON_EE_KEY"
#: Earth Engine's documented limit on the size of one ``computePixels`` answer (48 MiB).
MAX_REQUEST_BYTES = 48 * 1024 * 1024
#: Room left for the NPY header and structured-array description in each answer.
NPY_HEADER_MARGIN = 64 * 1024

DYNAMIC_WORLD = "GOOGLE/DYNAMICWORLD/V1"
S1_GRD = "COPERNICUS/S1_GRD"
S1_NATIVE_RESOLUTION_M = 10
#: Value S1 masked pixels are unmasked to on the server (our choice; turned into NaN on decoding).
S1_NODATA_DB = -9999.0
#: S1 values below this (dB) are no-data: no float32 linear backscatter is below ≈ −458 dB.
S1_FLOOR_DB = -500.0
#: Value masked pixels are unmasked to, per modality (S2: SSL4EO-S12's 0 DN).
NODATA_VALUE = {"s2_l1c": 0, "s2_l2a": 0, "s1_grd": S1_NODATA_DB}

_EE_RESAMPLING = {"nearest": None, "bilinear": "bilinear", "cubic": "bicubic"}
_S2_MODALITIES = ("s2_l1c", "s2_l2a")


#: What to do when Earth Engine cannot authenticate (ends every :class:`EarthEngineAuthError` message).
AUTH_HELP = (f"run `earthengine authenticate`, or set {KEY_ENV_VAR} (or source.earthengine.service_account_key) "
             "to a service-account JSON key file")


class EarthEngineAuthError(BadInput):
    """Earth Engine could not be initialised: a configuration problem (the CLI exits with code 2).

    The message says what to do and never holds the key's path or content.
    """


def key_path(options: EarthEngineSourceOptions) -> tuple[str | None, str]:
    """The service-account key file to use (None: the stored user credentials) and where it was named."""
    if options.service_account_key:
        return options.service_account_key, "source.earthengine.service_account_key"
    env = os.environ.get(KEY_ENV_VAR)
    if env:
        return env, f"the {KEY_ENV_VAR} environment variable"
    return None, "the stored user credentials"


def _service_account_credentials(path: str, where: str) -> Any:
    try:
        return ee.ServiceAccountCredentials(None, key_file=path)
    except Exception as err:  # noqa: BLE001 - the original message may quote the key or its path
        raise EarthEngineAuthError(
            f"could not load the Earth Engine service-account key named by {where} ({type(err).__name__}); "
            f"check that it is a readable JSON key file, or {AUTH_HELP}") from None


def check_credentials(options: EarthEngineSourceOptions) -> None:
    """Raise :class:`EarthEngineAuthError` when no credentials can be found. Offline: a service-account key
    is loaded, stored user credentials are only looked up (Earth Engine checks them when the run starts)."""
    path, where = key_path(options)
    if path:
        _service_account_credentials(path, where)
        return
    try:
        if ee.oauth.get_credentials_arguments().get("refresh_token"):
            return  # what `earthengine authenticate` stores
    except (OSError, ValueError):
        pass  # no (readable) stored credentials: Earth Engine falls back to Google's default credentials
    try:
        google.auth.default()
    except google.auth.exceptions.DefaultCredentialsError:
        raise EarthEngineAuthError(f"no Earth Engine credentials found: {AUTH_HELP}") from None


# ----------------------------------------------------------------------------------------------- requests
def s2_collection_id(level: str, harmonized: bool = False) -> str:
    """Collection of Sentinel-2 ``level`` ("l1c" or "l2a"); the non-harmonised ones match SSL4EO-S12."""
    base = {"l1c": "COPERNICUS/S2", "l2a": "COPERNICUS/S2_SR"}[level]
    return base + "_HARMONIZED" if harmonized else base


def collection_id(modality: str, harmonized: bool = False) -> str:
    """Earth Engine collection serving ``modality`` ("s2_l1c", "s2_l2a", "s1_grd")."""
    if modality == "s1_grd":
        return S1_GRD
    return s2_collection_id(modality[3:], harmonized)


def footprint(grid: PatchGrid) -> ee.Geometry:
    """The patch as a planar rectangle in its UTM CRS."""
    west, south, east, north = grid.bounds
    return ee.Geometry.Rectangle([west, south, east, north], grid.crs, False)


def s2_collection(level: str, grid: PatchGrid, window: SeasonWindow, max_cloudy_pixel_percentage: float,
                  harmonized: bool = False) -> ee.ImageCollection:
    """Sentinel-2 images over the patch in the window with ``CLOUDY_PIXEL_PERCENTAGE < max``."""
    return (ee.ImageCollection(s2_collection_id(level, harmonized))
            .filterBounds(footprint(grid))
            .filterDate(window.start.isoformat(), window.end.isoformat())
            .filter(ee.Filter.lt("CLOUDY_PIXEL_PERCENTAGE", float(max_cloudy_pixel_percentage))))


def s1_collection(grid: PatchGrid, window: SeasonWindow) -> ee.ImageCollection:
    """Sentinel-1 GRD IW images with both VV and VH over the patch in the window."""
    return (ee.ImageCollection(S1_GRD)
            .filterBounds(footprint(grid))
            .filterDate(window.start.isoformat(), window.end.isoformat())
            .filter(ee.Filter.eq("instrumentMode", "IW"))
            .filter(ee.Filter.listContains("transmitterReceiverPolarisation", "VV"))
            .filter(ee.Filter.listContains("transmitterReceiverPolarisation", "VH")))


def modality_collection(modality: str, grid: PatchGrid, window: SeasonWindow,
                        max_cloudy_pixel_percentage: float, harmonized: bool = False) -> ee.ImageCollection:
    if modality == "s1_grd":
        return s1_collection(grid, window)
    return s2_collection(modality[3:], grid, window, max_cloudy_pixel_percentage, harmonized)


def most_recent(collection: ee.ImageCollection) -> ee.ImageCollection:
    """The most recent image as a 0- or 1-image collection: sort by ``system:time_start`` descending, first.

    ``limit(1)`` after the sort is ``first()`` that stays well defined on an empty window (an empty
    collection instead of a null image, on which any property lookup fails).
    """
    return collection.sort("system:time_start", False).limit(1)


def selection_info(collection: ee.ImageCollection, properties: tuple[str, ...] = ()) -> ee.Dictionary:
    """One value describing the selection: collection size and the most recent image's properties.

    Every entry but ``count`` is a list holding the value for the most recent image (empty when the
    collection is empty, so that the call never fails on an empty window). ``properties`` adds lists
    for extra properties (an image lacking the property gives an empty list).
    """
    latest = most_recent(collection)
    info = {
        "count": collection.size(),
        "ids": latest.aggregate_array("system:index"),
        "times": latest.aggregate_array("system:time_start"),
    }
    for prop in properties:
        info[prop] = latest.aggregate_array(prop)
    return ee.Dictionary(info)


def native_resolution(modality: str, band: str) -> float:
    if modality == "s1_grd":
        return S1_NATIVE_RESOLUTION_M
    return S2_NATIVE_RESOLUTION_M[band]


def pixel_image(modality: str, image_index: str, bands: tuple[str, ...], grid_resolution: float,
                resampling: str = "bilinear", harmonized: bool = False, nodata: float | None = None) -> ee.Image:
    """The selected asset's ``bands`` (canonical order), resampled, unmasked to ``nodata`` (default the
    modality's :data:`NODATA_VALUE`: 0 for S2, the :data:`S1_NODATA_DB` sentinel for S1), cast to the
    archive dtype."""
    if resampling not in _EE_RESAMPLING:
        raise ValueError(f"resampling must be one of {sorted(_EE_RESAMPLING)}, got {resampling!r}")
    image = ee.Image(f"{collection_id(modality, harmonized)}/{image_index}")
    method = _EE_RESAMPLING[resampling]
    same = [b for b in bands if native_resolution(modality, b) == grid_resolution]
    other = [b for b in bands if native_resolution(modality, b) != grid_resolution]
    if method is None or not other:
        out = image.select(list(bands))
    elif not same:
        out = image.select(list(bands)).resample(method)
    else:
        out = image.select(same).addBands(image.select(other).resample(method)).select(list(bands))
    out = out.unmask(NODATA_VALUE[modality] if nodata is None else nodata, False)
    return out.toUint16() if MODALITY_DTYPES[modality] == "uint16" else out.toFloat()


def s1_nodata_to_nan(data: np.ndarray, floor_db: float = S1_FLOOR_DB) -> np.ndarray:
    """S1 dB pixels as served for :func:`pixel_image` → the archive's convention, in place: NaN for every
    no-data pixel (the :data:`S1_NODATA_DB` sentinel, anything below ``floor_db``, non-finite values);
    valid values unchanged. Returns ``data``."""
    with np.errstate(invalid="ignore"):
        data[~np.isfinite(data) | (data < floor_db)] = np.nan
    return data


def dw_collection(grid: PatchGrid, window: SeasonWindow) -> ee.ImageCollection:
    """Dynamic World images over the patch in the window."""
    return (ee.ImageCollection(DYNAMIC_WORLD)
            .filterBounds(footprint(grid))
            .filterDate(window.start.isoformat(), window.end.isoformat()))


def dw_matched(l1c_index: str) -> ee.ImageCollection:
    """The Dynamic World image named like the L1C image (zero or one image)."""
    return ee.ImageCollection(DYNAMIC_WORLD).filter(ee.Filter.eq("system:index", l1c_index))


def dw_info(l1c_index: str | None, grid: PatchGrid, window: SeasonWindow) -> ee.Dictionary:
    """Counts deciding the label method: ``matched`` (DW images named like the L1C one) and ``window``."""
    info: dict[str, Any] = {"window": dw_collection(grid, window).size()}
    if l1c_index is not None:
        info["matched"] = dw_matched(l1c_index).size()
    return ee.Dictionary(info)


def dw_label_image(method: str, l1c_index: str | None, grid: PatchGrid, window: SeasonWindow) -> ee.Image:
    """``label`` of the matched DW image, or its per-pixel mode over the window; nodata → LABEL_NODATA."""
    if method == "matched":
        if l1c_index is None:
            raise ValueError("the matched label needs the L1C system:index")
        label = ee.Image(dw_matched(l1c_index).first()).select("label")
    elif method == "mode":
        label = dw_collection(grid, window).select("label").mode().rename(["label"])
    else:
        raise ValueError(f"unknown label method {method!r}")
    return label.unmask(LABEL_NODATA, False).toUint8()


@dataclass(frozen=True)
class RequestPlan:
    """One ``computePixels`` request: a band group over rows ``[row0, row0 + rows)`` of the grid."""

    bands: tuple[str, ...]
    row0: int
    rows: int


def plan_requests(bands: tuple[str, ...], grid: PatchGrid, itemsize: int,
                  max_bytes: int = MAX_REQUEST_BYTES) -> list[RequestPlan]:
    """Split ``bands`` over the grid into requests of at most ``max_bytes`` (minus the header margin).

    Bands are grouped (in order) as many per request as fit; a single band larger than the budget is
    split into row strips.
    """
    budget = max_bytes - NPY_HEADER_MARGIN
    width = height = grid.size
    row_bytes = width * itemsize
    if budget < row_bytes:
        raise ValueError(f"max_bytes={max_bytes} cannot hold one row of {width} px × {itemsize} B")
    band_bytes = height * row_bytes
    if band_bytes <= budget:
        per = max(1, budget // band_bytes)
        return [RequestPlan(tuple(bands[i:i + per]), 0, height) for i in range(0, len(bands), per)]
    rows = budget // row_bytes
    return [RequestPlan((b,), r, min(rows, height - r)) for b in bands for r in range(0, height, rows)]


def request_bytes(plan: RequestPlan, grid: PatchGrid, itemsize: int) -> int:
    return len(plan.bands) * plan.rows * grid.size * itemsize


def grid_dict(grid: PatchGrid, row0: int = 0, rows: int | None = None) -> dict[str, Any]:
    """Earth Engine ``PixelGrid`` of the patch grid (or of its rows ``[row0, row0 + rows)``)."""
    a, b, c, d, e, f = grid.transform
    return {
        "crsCode": grid.crs,
        "affineTransform": {
            "scaleX": a, "shearX": b, "translateX": c,
            "shearY": d, "scaleY": e, "translateY": f + row0 * e,
        },
        "dimensions": {"width": grid.size, "height": grid.size if rows is None else rows},
    }


def pixel_request(image: ee.Image, plan: RequestPlan, grid: PatchGrid) -> dict[str, Any]:
    """The ``ee.data.computePixels`` parameters of one planned request."""
    return {
        "expression": image.select(list(plan.bands)),
        "fileFormat": "NUMPY_NDARRAY",
        "bandIds": list(plan.bands),
        "grid": grid_dict(grid, plan.row0, plan.rows),
    }


# ----------------------------------------------------------------------------------------------- payloads
def to_band_array(payload: Any, bands: tuple[str, ...], shape: tuple[int, int], dtype: str) -> np.ndarray:
    """Structured ``(y, x)`` array with one field per band → ``(band, y, x)`` in ``dtype``; else CorruptData."""
    if not isinstance(payload, np.ndarray) or payload.dtype.names is None:
        raise CorruptData(f"expected a structured numpy array with fields {list(bands)}, "
                          f"got {type(payload).__name__}{_shape_of(payload)}")
    if payload.shape != tuple(shape):
        raise CorruptData(f"pixel array has shape {payload.shape}, expected {tuple(shape)}")
    missing = [b for b in bands if b not in payload.dtype.names]
    if missing:
        raise CorruptData(f"pixel array lacks band field(s) {missing}; fields: {list(payload.dtype.names)}")
    target = np.dtype(dtype)
    out = np.empty((len(bands),) + tuple(shape), dtype=target)
    for i, band in enumerate(bands):
        field = payload[band]
        kind = field.dtype.kind
        if target.kind in "ui":
            if kind not in "ui":
                raise CorruptData(f"band {band}: expected integer pixels for {target}, got {field.dtype}")
            info = np.iinfo(target)
            if field.size and (field.min() < info.min or field.max() > info.max):
                raise CorruptData(f"band {band}: values [{field.min()}, {field.max()}] do not fit {target}")
        elif kind not in "uif":
            raise CorruptData(f"band {band}: expected numeric pixels, got {field.dtype}")
        out[i] = field
    return out


def _shape_of(obj: Any) -> str:
    shape = getattr(obj, "shape", None)
    return f" of shape {tuple(shape)}" if shape is not None else ""


# ----------------------------------------------------------------------------------------------- transport
@runtime_checkable
class Transport(Protocol):
    """How requests reach Earth Engine. ``tag`` names the request ("s2_l1c", "dw", …) for logs and fakes."""

    def get_info(self, computation: ee.ComputedObject, tag: str) -> Any:
        """Evaluate ``computation`` (like ``getInfo()``) and return its JSON value."""
        ...

    def compute_pixels(self, request: dict[str, Any], tag: str) -> Any:
        """Run ``ee.data.computePixels(request)``; a structured numpy array for ``NUMPY_NDARRAY``."""
        ...


class EarthEngineTransport:
    """The real transport: the Earth Engine REST API through ``earthengine-api``."""

    def get_info(self, computation: ee.ComputedObject, tag: str) -> Any:
        return ee.data.computeValue(computation)

    def compute_pixels(self, request: dict[str, Any], tag: str) -> Any:
        try:
            return ee.data.computePixels(request)
        except (ValueError, EOFError) as err:  # the NPY payload could not be decoded
            raise CorruptData(f"undecodable computePixels payload: {type(err).__name__}: {err}") from None


# ----------------------------------------------------------------------------------------------- rate control
class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts up to ``capacity`` (≥ 1)."""

    def __init__(self, rate: float, capacity: float | None = None,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = float(rate)
        self.capacity = max(1.0, float(capacity if capacity is not None else rate))
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = self.capacity
        self._last = clock()

    def acquire(self) -> float:
        """Take one token, sleeping while none is available; returns the time waited (s)."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return waited
                wait = (1.0 - self._tokens) / self.rate
            self._sleep(wait)
            waited += wait


_TRANSIENT_CODES = re.compile(r"(?<!\d)(?<!\d\.)(?:429|500|502|503|504)(?!\d)(?!\.\d)")
_TRANSIENT_MARKERS = (
    "too many requests", "quota exceeded", "rate limit", "too many concurrent",
    "internal error", "service unavailable", "bad gateway",
    "backend error", "deadline", "timed out", "timeout", "try again", "unavailable",
    "connection reset", "connection aborted",
)
_NETWORK_MODULES = frozenset({"httplib2", "urllib3", "requests"})
_NOT_FOUND_MARKERS = ("not found", "does not exist", "no such asset")
_GEOMETRY_MARKERS = ("geometry", "projection", "crs", "coordinate", "affine", "pixel grid")
_BAND_MARKERS = ("did not match any bands", "no band named", "band not found")


def classify_error(err: BaseException, context: str) -> SourceError | None:
    """None when ``err`` is worth retrying; otherwise the typed error to raise.

    Exceptions that are neither Earth Engine, network nor source errors (programming errors, revoked
    credentials) are re-raised unchanged: they must stop the run rather than fail patches one by one.
    """
    if isinstance(err, SourceError):
        return None if err.retryable else err
    if isinstance(err, (TimeoutError, ConnectionError)) or "timeout" in type(err).__name__.lower():
        return None
    if isinstance(err, ee.ee_exception.EEException):
        msg = str(err)
        low = msg.lower()
        if any(m in low for m in _BAND_MARKERS):
            return CorruptData(f"{context}: {_clip(msg)}")
        if any(m in low for m in _TRANSIENT_MARKERS) or _TRANSIENT_CODES.search(low):
            return None
        if any(m in low for m in _NOT_FOUND_MARKERS):
            return NoImageFound(f"{context}: {_clip(msg)}")
        if any(m in low for m in _GEOMETRY_MARKERS):
            return InvalidGeometry(f"{context}: {_clip(msg)}")
        return SourceError(f"{context}: Earth Engine refused the request: {_clip(msg)}")
    if isinstance(err, (OSError, http.client.HTTPException)):  # DNS, TLS, truncated answers
        return None
    if type(err).__module__.split(".")[0] in _NETWORK_MODULES:  # e.g. httplib2.ServerNotFoundError
        return None
    raise err


def _clip(text: str, n: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


@dataclass(frozen=True)
class _Selected:
    image_index: str | None  # None when the collection is empty
    count: int
    acquired: dt.date | None
    cloud_pct: float
    orbit_pass: str | None


# ----------------------------------------------------------------------------------------------- source
class EarthEngineSource:
    """SSL4EO-S12 imagery and Dynamic World labels from Earth Engine (see the module docstring)."""

    name = "earthengine"
    synthetic = False

    def __init__(
        self,
        options: EarthEngineSourceOptions,
        max_cloudy_pixel_percentage: float = 20.0,
        transport: Transport | None = None,
        *,
        resampling: str = "bilinear",
        with_labels: bool = True,
        max_attempts: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 32.0,
        request_timeout_s: float | None = 180.0,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if resampling not in _EE_RESAMPLING:
            raise ValueError(f"resampling must be one of {sorted(_EE_RESAMPLING)}, got {resampling!r}")
        if max_attempts < 1:
            raise ValueError("max_attempts must be ≥ 1")
        self.options = options
        self.max_cloudy_pixel_percentage = float(max_cloudy_pixel_percentage)
        self.resampling = resampling
        self.with_labels = with_labels
        self.max_attempts = int(max_attempts)
        self.backoff_base_s = float(backoff_base_s)
        self.backoff_max_s = float(backoff_max_s)
        self.request_timeout_s = request_timeout_s
        self.max_request_bytes = int(max_request_bytes)
        self._sleep = sleep
        self._transport = transport
        self._setup_runtime()

    def _setup_runtime(self) -> None:
        self._slots = threading.BoundedSemaphore(self.options.max_concurrent_requests)
        self._bucket = TokenBucket(self.options.requests_per_second, sleep=self._sleep_real)
        self._init_lock = threading.Lock()
        self._initialized = self._transport is not None  # a custom transport manages its own session
        self._rng = random.Random()

    @staticmethod
    def _sleep_real(seconds: float) -> None:
        time.sleep(seconds)

    # pickling (Dask workers): locks, semaphore and bucket are per process; Earth Engine is re-initialised
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_slots", "_bucket", "_init_lock", "_initialized", "_rng"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._setup_runtime()

    def __repr__(self) -> str:
        return (f"EarthEngineSource(project={self.options.project!r}, auth={self._auth_kind()!r}, "
                f"harmonized={self.options.harmonized}, max_cloudy_pixel_percentage="
                f"{self.max_cloudy_pixel_percentage:g})")

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = EarthEngineTransport()
        return self._transport

    # ------------------------------------------------------------------ authentication
    def _key_path(self) -> tuple[str | None, str]:
        return key_path(self.options)

    def _auth_kind(self) -> str:
        return "service_account" if self._key_path()[0] else "user"

    def initialize(self) -> None:
        """Initialise Earth Engine once per process (service-account key or stored user credentials).

        Raises :class:`EarthEngineAuthError` with a message free of the key's path and content.
        """
        with self._init_lock:
            if self._initialized:
                return
            path, where = self._key_path()
            project = self.options.project
            secrets: list[str] = []
            credentials: Any = "persistent"
            if path:
                secrets = _secret_strings(path)
                credentials = _service_account_credentials(path, where)
                project = project or getattr(credentials, "project_id", None)
            try:
                ee.Initialize(credentials, project=project)
            except Exception as err:  # noqa: BLE001
                raise EarthEngineAuthError(
                    f"Earth Engine initialisation failed ({self._auth_kind()} credentials from {where}, "
                    f"project={project!r}): {type(err).__name__}: {_redact(str(err), secrets)}; "
                    f"{AUTH_HELP}") from None
            ee.data.setMaxRetries(0)  # retries are ours (see the module docstring)
            if self.request_timeout_s:
                ee.data.setDeadline(int(self.request_timeout_s * 1000))
            self._initialized = True
            log.info("Earth Engine initialised (project=%s, auth=%s)", project, self._auth_kind())

    # ------------------------------------------------------------------ calls
    def backoff_delay(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (1-based): uniform in [d/2, d], d = min(max, base·2^(attempt-1))."""
        d = min(self.backoff_max_s, self.backoff_base_s * (2.0 ** (attempt - 1)))
        return d / 2.0 + self._rng.random() * d / 2.0

    def _call(self, fn: Callable[[], Any], context: str) -> Any:
        last: BaseException | None = None
        for attempt in range(1, self.max_attempts + 1):
            self._bucket.acquire()
            with self._slots:
                try:
                    return fn()
                except Exception as err:  # noqa: BLE001 - classified below
                    typed = classify_error(err, context)
                    if typed is not None:
                        raise typed from None
                    last = err
            if attempt < self.max_attempts:
                delay = self.backoff_delay(attempt)
                log.info("%s: transient error (%s), retry %d/%d in %.1f s", context, _clip(str(last), 160),
                         attempt, self.max_attempts - 1, delay)
                self._sleep(delay)
        raise TransientSourceError(
            f"{context}: still failing after {self.max_attempts} attempts: "
            f"{type(last).__name__}: {_clip(str(last))}")

    def _get_info(self, computation: ee.ComputedObject, tag: str, context: str) -> Any:
        return self._call(lambda: self.transport.get_info(computation, tag), context)

    def _pixels(self, tag: str, image: ee.Image, bands: tuple[str, ...], grid: PatchGrid, dtype: str,
                context: str) -> np.ndarray:
        itemsize = np.dtype(dtype).itemsize
        out = np.empty((len(bands), grid.size, grid.size), dtype=dtype)
        index = {b: i for i, b in enumerate(bands)}
        for plan in plan_requests(bands, grid, itemsize, self.max_request_bytes):
            request = pixel_request(image, plan, grid)
            payload = self._call(lambda r=request: self.transport.compute_pixels(r, tag), context)
            try:
                block = to_band_array(payload, plan.bands, (plan.rows, grid.size), dtype)
            except CorruptData as err:
                raise CorruptData(f"{context}: {err}") from None
            out[[index[b] for b in plan.bands], plan.row0:plan.row0 + plan.rows] = block
        return out

    # ------------------------------------------------------------------ selection
    def _select(self, modality: str, grid: PatchGrid, window: SeasonWindow, context: str) -> _Selected:
        props = ("CLOUDY_PIXEL_PERCENTAGE",) if modality in _S2_MODALITIES else ("orbitProperties_pass",)
        col = modality_collection(modality, grid, window, self.max_cloudy_pixel_percentage, self.options.harmonized)
        info = self._get_info(selection_info(col, props), modality, context)
        return _parse_selection(info, props[0], context)

    # ------------------------------------------------------------------ Source API
    def describe(self) -> dict[str, object]:
        h = self.options.harmonized
        return {
            "name": self.name,
            "synthetic": False,
            "options": self.options.model_dump(mode="json", exclude={"service_account_key"}),
            "auth": self._auth_kind(),
            "collections": {
                "s2_l1c": s2_collection_id("l1c", h), "s2_l2a": s2_collection_id("l2a", h),
                "s1_grd": S1_GRD, "labels": DYNAMIC_WORLD,
            },
            "max_cloudy_pixel_percentage": self.max_cloudy_pixel_percentage,
            "selection": "most recent image in the window (system:time_start descending, first())",
            "resampling": self.resampling,
            "s2_dn_offset": 0 if h else "+1000 for processing baseline ≥ 04.00 (from 2022-01-25)",
            "label_method": "DW image with the L1C system:index, else per-pixel mode of label over the window",
            "max_request_bytes": self.max_request_bytes,
            "retry": {"max_attempts": self.max_attempts, "backoff_base_s": self.backoff_base_s,
                      "backoff_max_s": self.backoff_max_s},
        }

    def fetch(self, location: Location, window: SeasonWindow, grid: PatchGrid,
              modalities: dict[str, tuple[str, ...]]) -> SeasonSample:
        check_modalities(modalities)
        _check_grid(grid, location)
        if not self._initialized:
            self.initialize()

        where = f"location {location.id} season {window.season} ({window.start}..{window.end})"
        want_labels = self.with_labels and any(m in modalities for m in _S2_MODALITIES)
        order = [m for m in MODALITY_BANDS if m in modalities or (m == "s2_l1c" and want_labels)]
        selected: dict[str, _Selected] = {}
        for name in order:  # every selection first: a missing modality fails before any pixel request
            sel = self._select(name, grid, window, f"earthengine {name} selection, {where}")
            if sel.image_index is None and name in modalities:
                raise NoImageFound(_no_image_message(name, self.options.harmonized,
                                                     self.max_cloudy_pixel_percentage, where))
            selected[name] = sel

        images: dict[str, ModalityImage] = {}
        extra: dict[str, str] = {}
        for name in MODALITY_BANDS:
            if name not in modalities:
                continue
            sel = selected[name]
            bands = tuple(b for b in MODALITY_BANDS[name] if b in set(modalities[name]))
            dtype = MODALITY_DTYPES[name]
            image = pixel_image(name, sel.image_index, bands, grid.resolution, self.resampling,
                                self.options.harmonized)
            data = self._pixels(name, image, bands, grid, dtype, f"earthengine {name} pixels, {where}")
            if name == "s1_grd":
                s1_nodata_to_nan(data)
            images[name] = ModalityImage(data=data, bands=bands, acquired=sel.acquired, image_id=sel.image_index,
                                         cloud_pct=sel.cloud_pct)
            extra[f"{name}_candidates"] = str(sel.count)
            if sel.orbit_pass:
                extra["s1_pass"] = sel.orbit_pass

        label = None
        if want_labels:
            l1c_index = selected["s2_l1c"].image_index
            label = self._label(l1c_index, grid, window, where, extra)
        return SeasonSample(images=images, label=label, extra=extra)

    def _label(self, l1c_index: str | None, grid: PatchGrid, window: SeasonWindow, where: str,
               extra: dict[str, str]) -> LabelMap | None:
        context = f"earthengine dw selection, {where}"
        info = self._get_info(dw_info(l1c_index, grid, window), "dw", context)
        if not isinstance(info, dict):
            raise CorruptData(f"{context}: expected a dictionary, got {type(info).__name__}")
        matched = _as_count(info.get("matched", 0), context)
        in_window = _as_count(info.get("window"), context)
        extra["dw_window_images"] = str(in_window)
        if l1c_index is not None and matched > 0:
            method, image_id = "matched", l1c_index
        elif in_window > 0:
            method, image_id = "mode", f"mode:{DYNAMIC_WORLD}:{window.start.isoformat()}/{window.end.isoformat()}"
        else:
            extra["dw_method"] = "none"
            return None
        extra["dw_method"] = method
        image = dw_label_image(method, l1c_index, grid, window)
        data = self._pixels("dw", image, ("label",), grid, "uint8", f"earthengine dw pixels, {where}")[0]
        valid = (data < 9) | (data == LABEL_NODATA)
        if not valid.all():
            raise CorruptData(f"earthengine dw pixels, {where}: label values outside 0..8 and {LABEL_NODATA}")
        return LabelMap(data=data, image_id=image_id, method=method)


# ----------------------------------------------------------------------------------------------- helpers
def _check_grid(grid: PatchGrid, location: Location) -> None:
    values = (grid.x0, grid.y0, grid.resolution)
    if not all(math.isfinite(v) for v in values) or grid.resolution <= 0 or grid.size <= 0:
        raise InvalidGeometry(f"location {location.id}: invalid patch grid {grid}")
    if not (1024 <= grid.epsg <= 32767):
        raise InvalidGeometry(f"location {location.id}: invalid EPSG code {grid.epsg}")


def _no_image_message(name: str, harmonized: bool, max_cloud: float, where: str) -> str:
    col = collection_id(name, harmonized)
    if name == "s1_grd":
        return f"earthengine: no {col} IW image with VV+VH intersecting {where}"
    return f"earthengine: no {col} image with CLOUDY_PIXEL_PERCENTAGE < {max_cloud:g}% intersecting {where}"


def _as_count(value: Any, context: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != int(value):
        raise CorruptData(f"{context}: expected an image count, got {value!r}")
    return int(value)


def _parse_selection(info: Any, extra_prop: str, context: str) -> _Selected:
    if not isinstance(info, dict):
        raise CorruptData(f"{context}: expected a dictionary, got {type(info).__name__}")
    count = _as_count(info.get("count"), context)
    ids, times, extras = info.get("ids"), info.get("times"), info.get(extra_prop, [])
    if not isinstance(ids, list) or not isinstance(times, list) or not isinstance(extras, list):
        raise CorruptData(f"{context}: malformed image metadata {_clip(repr(info), 200)}")
    if count == 0 or not ids:
        if count != 0 or ids:
            raise CorruptData(f"{context}: inconsistent image metadata {_clip(repr(info), 200)}")
        return _Selected(None, 0, None, float("nan"), None)
    if len(ids) != 1 or len(times) != 1 or not isinstance(ids[0], str) or not ids[0]:
        raise CorruptData(f"{context}: malformed image metadata {_clip(repr(info), 200)}")
    try:
        acquired = dt.datetime.fromtimestamp(float(times[0]) / 1000.0, tz=dt.timezone.utc).date()
    except (TypeError, ValueError, OverflowError, OSError):
        raise CorruptData(f"{context}: bad system:time_start {times[0]!r}") from None
    cloud, orbit = float("nan"), None
    if extra_prop == "CLOUDY_PIXEL_PERCENTAGE" and extras:
        if not isinstance(extras[0], (int, float)) or isinstance(extras[0], bool):
            raise CorruptData(f"{context}: bad CLOUDY_PIXEL_PERCENTAGE {extras[0]!r}")
        cloud = float(extras[0])
    elif extras and isinstance(extras[0], str):
        orbit = extras[0]
    return _Selected(ids[0], count, acquired, cloud, orbit)


def _secret_strings(key_path: str) -> list[str]:
    """Strings that must never be shown: the path, the key file's text and its longer values."""
    secrets = [key_path, os.path.basename(key_path)]
    try:
        with open(key_path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError):
        return secrets
    secrets.append(text)
    try:
        content = json.loads(text)
    except ValueError:
        content = None
    if isinstance(content, dict):
        for value in content.values():
            if isinstance(value, str) and len(value) >= 8:
                secrets.append(value)
                secrets.extend(line for line in value.splitlines() if len(line) >= 8)
    secrets.extend(line.strip() for line in text.splitlines() if len(line.strip()) >= 8)
    return secrets


def _redact(message: str, secrets: list[str]) -> str:
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        message = message.replace(secret, "<redacted>")
        escaped = json.dumps(secret)[1:-1]  # the same text as it appears inside JSON/repr output
        if escaped != secret:
            message = message.replace(escaped, "<redacted>")
    return _clip(message)
