"""The Earth Engine source: SSL4EO-S12 imagery and the matching Dynamic World labels.

Per (location, seasonal window, patch grid), :meth:`EarthEngineSource.fetch` first selects the most
recent image of every requested modality (and of S2 L1C when labels are wanted), so that a missing
modality fails before any pixel request, then downloads the pixels of each selected asset on the
patch grid and the Dynamic World label map (matched by L1C ``system:index``, else the per-pixel mode of
the window; no label map when the window has no Dynamic World image).
With ``dw_probabilities`` (the manifest's ``labels.dw_probabilities``) the 9 class-probability bands
of the same label image follow on the same grid, and their mean over the valid label pixels comes back
with the season (``SeasonSample.dw_probability``, the ``dw_probability`` product of :mod:`pipeline.reference`).

Requests that depend on each other stay in order (selection → pixels; L1C selection → Dynamic World
match → label pixels); independent ones overlap: the selections of one season run at once, then the
pixel requests of every modality beside the label chain. The outcome does not depend on the order in
which answers arrive: results are assembled in modality order and, when several requests fail, the
error raised is the one the sequential order meets first. With ``concurrent_fetches: 1`` every request
of a season runs one after another (the former behaviour). The queries are built by
:mod:`~pipeline.sources.earthengine.queries`, requests sized by
:mod:`~pipeline.sources.earthengine.planning`, sent and retried by
:mod:`~pipeline.sources.earthengine.transport`; credentials are handled by
:mod:`~pipeline.sources.earthengine.auth`.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import ee
import numpy as np

from pipeline.bands import DW_CLASSES, LABEL_NODATA, MODALITY_BANDS, MODALITY_DTYPES
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.manifest import EarthEngineSourceOptions
from pipeline.reference import DW_PROBABILITY, dw_probability_product, mean_class_probability
from pipeline.seasons import SeasonWindow
from pipeline.sources.base import (
    CorruptData,
    LabelMap,
    ModalityImage,
    NoImageFound,
    SeasonSample,
    check_modalities,
)
from pipeline.sources.earthengine.auth import auth_kind, initialize_earth_engine
from pipeline.sources.earthengine.planning import (
    MAX_REQUEST_BYTES,
    pixel_request,
    plan_requests,
    to_band_array,
)
from pipeline.sources.earthengine.queries import (
    DW_PROBABILITY_BANDS,
    DYNAMIC_WORLD,
    EE_RESAMPLING,
    S1_GRD,
    Selected,
    as_count,
    dw_info,
    dw_label_image,
    dw_probability_image,
    modality_collection,
    no_image_message,
    parse_selection,
    pixel_image,
    s1_nodata_to_nan,
    s2_collection_id,
    selection_info,
)
from pipeline.sources.earthengine.transport import (
    EarthEngineTransport,
    Transport,
    backoff_delay,
    call_with_retries,
)
from pipeline.sources.ratelimit import RequestLimiter, request_limiter
from pipeline.sources.requests import PerProcessState, check_grid

_S2_MODALITIES = ("s2_l1c", "s2_l2a")


# ----------------------------------------------------------------------------------------------- source
class EarthEngineSource(PerProcessState):
    """SSL4EO-S12 imagery and Dynamic World labels from Earth Engine (see the module docstring)."""

    name = "earthengine"
    synthetic = False
    retries_requests = True  # every request goes through call_with_retries: curation does not retry again

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
        dw_probabilities: bool = False,
    ):
        if resampling not in EE_RESAMPLING:
            raise ValueError(f"resampling must be one of {sorted(EE_RESAMPLING)}, got {resampling!r}")
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
        self.dw_probabilities = bool(dw_probabilities)
        self._setup_runtime()

    def _setup_runtime(self) -> None:
        self._limiter: RequestLimiter | None = None
        self._limiter_lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._initialized = self._transport is not None  # a custom transport manages its own session
        self._rng = random.Random()

    # pickling (Dask workers, PerProcessState): locks and limiter are per process; Earth Engine is re-initialised
    PER_PROCESS = ("_limiter", "_limiter_lock", "_init_lock", "_initialized", "_rng")

    def __repr__(self) -> str:
        return (f"EarthEngineSource(project={self.options.project!r}, auth={self._auth_kind()!r}, "
                f"harmonized={self.options.harmonized}, max_cloudy_pixel_percentage="
                f"{self.max_cloudy_pixel_percentage:g})")

    # ------------------------------------------------------------------ request limits
    @property
    def limit_name(self) -> str:
        """Names the project's quota: the cluster-wide semaphores are ``<limit_name>-inflight-…``/``-rate-…``."""
        return f"softcon-{self.name}-{self.options.project or 'default-project'}"

    @property
    def fetch_concurrency(self) -> int:
        """How many (location, season) fetches a shard may run at once: ``options.concurrent_fetches``,
        by default ``max_concurrent_requests`` (a fetch has up to four requests in flight, so that many
        keep the quota busy while some wait on their answers).
        """
        return self.options.concurrent_fetches or self.options.max_concurrent_requests

    @property
    def limiter(self) -> RequestLimiter:
        """Every request's limits (see :mod:`pipeline.sources.ratelimit`), made on first use.

        Made in a Dask task's thread it is the cluster-wide one; call :meth:`prepare_concurrent_fetch`
        there before fetching from threads of one's own.
        """
        with self._limiter_lock:
            if self._limiter is None:
                o = self.options
                self._limiter = request_limiter(self.limit_name, o.max_concurrent_requests, o.requests_per_second,
                                                o.rate_window_s)
            return self._limiter

    def prepare_concurrent_fetch(self) -> int:
        """Bind the request limits in the calling thread (a shard task's) and say how many fetches may run
        at once (:attr:`fetch_concurrency`); :func:`pipeline.curate.process_shard` calls it.
        """
        _ = self.limiter
        return self.fetch_concurrency

    @property
    def transport(self) -> Transport:
        if self._transport is None:
            self._transport = EarthEngineTransport()
        return self._transport

    # ------------------------------------------------------------------ authentication
    def _auth_kind(self) -> str:
        return auth_kind(self.options)

    def initialize(self) -> None:
        """Initialise Earth Engine once per process (service-account key or stored user credentials).

        Raises :class:`EarthEngineAuthError` with a message free of the key's path and content.
        """
        with self._init_lock:
            if self._initialized:
                return
            initialize_earth_engine(self.options, self.request_timeout_s)
            self._initialized = True

    # ------------------------------------------------------------------ calls
    def backoff_delay(self, attempt: int) -> float:
        """Delay before retry ``attempt`` (1-based): uniform in [d/2, d], d = min(max, base·2^(attempt-1))."""
        return backoff_delay(attempt, self.backoff_base_s, self.backoff_max_s, self._rng)

    def _call(self, fn: Callable[[], Any], context: str) -> Any:
        return call_with_retries(fn, context, limiter=self.limiter, max_attempts=self.max_attempts,
                                 delay=self.backoff_delay, sleep=self._sleep)

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
    def _select(self, modality: str, grid: PatchGrid, window: SeasonWindow, context: str) -> Selected:
        props = ("CLOUDY_PIXEL_PERCENTAGE",) if modality in _S2_MODALITIES else ("orbitProperties_pass",)
        col = modality_collection(modality, grid, window, self.max_cloudy_pixel_percentage, self.options.harmonized)
        info = self._get_info(selection_info(col, props), modality, context)
        return parse_selection(info, props[0], context)

    # ------------------------------------------------------------------ Source API
    def describe(self) -> dict[str, object]:
        h = self.options.harmonized
        out: dict[str, object] = {
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
        if self.dw_probabilities:
            out["label_products"] = {DW_PROBABILITY: {**dw_probability_product(), "collection": DYNAMIC_WORLD,
                                                      "bands": list(DW_PROBABILITY_BANDS)}}
        return out

    def fetch(self, location: Location, window: SeasonWindow, grid: PatchGrid,
              modalities: dict[str, tuple[str, ...]]) -> SeasonSample:
        check_modalities(modalities)
        check_grid(grid, location)
        if not self._initialized:
            self.initialize()

        where = f"location {location.id} season {window.season} ({window.start}..{window.end})"
        want_labels = self.with_labels and any(m in modalities for m in _S2_MODALITIES)
        order = [m for m in MODALITY_BANDS if m in modalities or (m == "s2_l1c" and want_labels)]
        selected: dict[str, Selected] = {}

        def select(name: str) -> Callable[[], None]:
            def job() -> None:
                sel = self._select(name, grid, window, f"earthengine {name} selection, {where}")
                if sel.image_index is None and name in modalities:
                    raise NoImageFound(no_image_message(name, self.options.harmonized,
                                                         self.max_cloudy_pixel_percentage, where))
                selected[name] = sel
            return job

        self._run_in_order([select(name) for name in order])  # a missing modality fails before any pixel request

        wanted = [name for name in MODALITY_BANDS if name in modalities]
        jobs: list[Callable[[], Any]] = [
            lambda name=name: self._modality(name, selected[name], modalities[name], grid, where) for name in wanted]
        if want_labels:
            jobs.append(lambda: self._label(selected["s2_l1c"].image_index, grid, window, where))
        results = self._run_in_order(jobs)

        images: dict[str, ModalityImage] = {}
        extra: dict[str, str] = {}
        for name, image in zip(wanted, results):
            sel = selected[name]
            images[name] = image
            extra[f"{name}_candidates"] = str(sel.count)
            if sel.orbit_pass:
                extra["s1_pass"] = sel.orbit_pass
        label = row = None
        if want_labels:
            label, label_extra, row = results[-1]
            extra.update(label_extra)
        if self.dw_probabilities and row is None:  # no label map this season: zeros, as for no valid pixel
            row = np.zeros(len(DW_CLASSES))
        return SeasonSample(images=images, label=label, extra=extra, dw_probability=row)

    def _run_in_order(self, jobs: list[Callable[[], Any]]) -> list[Any]:
        """Results of ``jobs`` in order; with concurrency they overlap and, once all have ended, the first
        error in list order is raised (the one running them in order would have met first).
        """
        if self.fetch_concurrency <= 1 or len(jobs) <= 1:
            return [job() for job in jobs]
        with ThreadPoolExecutor(len(jobs), thread_name_prefix="ee-request") as pool:
            futures = [pool.submit(job) for job in jobs]
        return [f.result() for f in futures]

    def _modality(self, name: str, sel: Selected, wanted_bands: tuple[str, ...], grid: PatchGrid,
                  where: str) -> ModalityImage:
        bands = tuple(b for b in MODALITY_BANDS[name] if b in set(wanted_bands))
        image = pixel_image(name, sel.image_index, bands, grid.resolution, self.resampling, self.options.harmonized)
        data = self._pixels(name, image, bands, grid, MODALITY_DTYPES[name], f"earthengine {name} pixels, {where}")
        if name == "s1_grd":
            s1_nodata_to_nan(data)
        return ModalityImage(data=data, bands=bands, acquired=sel.acquired, image_id=sel.image_index,
                             cloud_pct=sel.cloud_pct)

    def _label(self, l1c_index: str | None, grid: PatchGrid, window: SeasonWindow,
               where: str) -> tuple[LabelMap | None, dict[str, str], np.ndarray | None]:
        """The Dynamic World label map, the ``extra`` entries describing how it was found, and (with
        ``dw_probabilities``) the mean class probability over its valid pixels (else None).
        """
        context = f"earthengine dw selection, {where}"
        info = self._get_info(dw_info(l1c_index, grid, window), "dw", context)
        if not isinstance(info, dict):
            raise CorruptData(f"{context}: expected a dictionary, got {type(info).__name__}")
        matched = as_count(info.get("matched", 0), context)
        in_window = as_count(info.get("window"), context)
        extra = {"dw_window_images": str(in_window)}
        if l1c_index is not None and matched > 0:
            method, image_id = "matched", l1c_index
        elif in_window > 0:
            method, image_id = "mode", f"mode:{DYNAMIC_WORLD}:{window.start.isoformat()}/{window.end.isoformat()}"
        else:
            extra["dw_method"] = "none"
            return None, extra, None
        extra["dw_method"] = method
        image = dw_label_image(method, l1c_index, grid, window)
        data = self._pixels("dw", image, ("label",), grid, "uint8", f"earthengine dw pixels, {where}")[0]
        valid = (data < 9) | (data == LABEL_NODATA)
        if not valid.all():
            raise CorruptData(f"earthengine dw pixels, {where}: label values outside 0..8 and {LABEL_NODATA}")
        row = self._probability(method, l1c_index, grid, window, data, where) if self.dw_probabilities else None
        return LabelMap(data=data, image_id=image_id, method=method), extra, row

    def _probability(self, method: str, l1c_index: str | None, grid: PatchGrid, window: SeasonWindow,
                     label: np.ndarray, where: str) -> np.ndarray:
        """The mean of the label image's 9 probability bands over its valid label pixels (zeros when none)."""
        context = f"earthengine dw probability pixels, {where}"
        image = dw_probability_image(method, l1c_index, grid, window)
        probability = self._pixels("dw_probability", image, DW_PROBABILITY_BANDS, grid, "float32", context)
        with np.errstate(invalid="ignore"):
            if (probability > 1.0 + 1e-3).any():
                raise CorruptData(f"{context}: probabilities above 1 (max {np.nanmax(probability):g})")
        return mean_class_probability(probability, label)
