"""The STAC source: Sentinel-2, Sentinel-1 and a land-cover label map from any STAC catalog.

Per (location, season window, patch grid), :meth:`StacSource.fetch` first selects one item per
requested modality (:mod:`~pipeline.sources.stac.search`: search or walk, filters, most recent
item), so that a missing modality fails with :class:`~pipeline.sources.base.NoImageFound` before any
pixel is read; then it signs each selected item (the optional ``sign`` hook), reads every requested
band of it on the patch grid (:mod:`~pipeline.sources.stac.reading`, ``read_threads`` assets at
once) and finally the land-cover map of the season, crosswalked to Dynamic World classes (no label
map when the collection has no map covering the patch).

**Requests.** Each search (one page of up to 100 items), catalog walk and asset read is one request:
it takes a token of a ``requests_per_second`` bucket and a ``max_concurrent_requests`` slot
(:class:`~pipeline.sources.requests.TokenBucket` and the retry loop
:func:`~pipeline.sources.requests.call_with_retries`, shared with the Earth Engine
source), and a transient failure (:func:`~pipeline.sources.stac.reading.classify`) is retried
``retries`` times with exponential backoff and jitter before ``TransientSourceError``. The source
says so with ``retries_requests = True``, so curation does not retry it a second time; pystac-client
and GDAL are told not to retry on their own.

**Planetary Computer.** Its assets are in Azure Blob Storage and need a SAS token appended to each
href (planetarycomputer.microsoft.com/docs/concepts/sas/); ``sign: planetary_computer.sign_inplace``
(the ``planetary-computer`` package, to be installed separately) does that per selected item.
"""

from __future__ import annotations

import importlib
import math
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np
import pystac

from pipeline.bands import MODALITY_BANDS, MODALITY_DTYPES
from pipeline.errors import BadInput
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.manifest import StacSourceOptions
from pipeline.seasons import SeasonWindow
from pipeline.sources.base import (
    LabelMap,
    ModalityImage,
    NoImageFound,
    SeasonSample,
    check_modalities,
)
from pipeline.sources.requests import (
    PerProcessState,
    TokenBucket,
    backoff_delay,
    call_with_retries,
    check_grid,
)
from pipeline.sources.stac.reading import classify, read_band, read_land_cover
from pipeline.sources.stac.search import (
    ApiCatalog,
    StaticCatalog,
    band_asset,
    candidates,
    is_static,
    item_time,
    land_cover_item,
    landcover_asset,
    most_recent,
    patch_footprint,
)

#: Land-cover collection id → crosswalk of :mod:`pipeline.crosswalks` used when ``landcover_crosswalk`` is unset.
COLLECTION_CROSSWALKS = {"esa-worldcover": "esa_worldcover", "io-lulc-annual-v02": "io_lulc_annual_v02"}
_RESAMPLING = ("bilinear", "nearest", "cubic")


def landcover_crosswalk(options: StacSourceOptions) -> str | None:
    """The crosswalk for the land-cover codes (None: codes are DW classes); ValueError when unknown.

    ``options.landcover_crosswalk`` when set (``dw`` → None), else by collection
    (:data:`COLLECTION_CROSSWALKS`).
    """
    if options.landcover_crosswalk is not None:
        return None if options.landcover_crosswalk == "dw" else options.landcover_crosswalk
    collection = options.collections.landcover
    if collection is None or collection in COLLECTION_CROSSWALKS:
        return COLLECTION_CROSSWALKS.get(collection or "")
    raise ValueError(f"no crosswalk known for land-cover collection {collection!r}: set "
                     f"source.stac.landcover_crosswalk (known by collection: {sorted(COLLECTION_CROSSWALKS)})")


def load_hook(dotted: str) -> Callable[[Any], Any]:
    """Import ``package.module.function`` (or ``package.module:function``); ImportError naming what failed."""
    module, _, attr = dotted.replace(":", ".").rpartition(".")
    try:
        hook = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ImportError(f"cannot import {dotted} ({type(err).__name__}: {err})") from None
    if not callable(hook):
        raise ImportError(f"{dotted} is not callable")
    return hook


class StacSource(PerProcessState):
    """Imagery and land-cover labels from a STAC API or static catalog (see the module docstring)."""

    name = "stac"
    synthetic = False
    retries_requests = True  # every request goes through call_with_retries: curation does not retry again

    def __init__(self, options: StacSourceOptions, max_cloudy_pixel_percentage: float = 20.0, *,
                 resampling: str = "bilinear", with_labels: bool = True, backoff_max_s: float = 32.0,
                 sleep: Callable[[float], None] = time.sleep):
        if resampling not in _RESAMPLING:
            raise ValueError(f"resampling must be one of {list(_RESAMPLING)}, got {resampling!r}")
        self.options = options
        self.max_cloudy_pixel_percentage = float(max_cloudy_pixel_percentage)
        self.resampling = resampling
        self.with_labels = with_labels and options.collections.landcover is not None
        self.crosswalk = landcover_crosswalk(options) if self.with_labels else None
        self.backoff_max_s = float(backoff_max_s)
        self._sleep = sleep
        self.catalog = (StaticCatalog(options.catalog) if is_static(options.catalog)
                        else ApiCatalog(options.catalog, options.request_timeout_s))
        self._setup_runtime()

    def _setup_runtime(self) -> None:
        self._slots = threading.BoundedSemaphore(self.options.max_concurrent_requests)
        self._bucket = TokenBucket(self.options.requests_per_second)
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._hook: Callable[[Any], Any] | None = None

    # pickling (Dask workers, PerProcessState): locks, bucket, pool and the imported hook are per process
    PER_PROCESS = ("_slots", "_bucket", "_rng", "_lock", "_pool", "_hook")

    def __repr__(self) -> str:
        return (f"StacSource(catalog={self.options.catalog!r}, collections="
                f"{self.options.collections.model_dump()}, max_cloudy_pixel_percentage="
                f"{self.max_cloudy_pixel_percentage:g})")

    # ------------------------------------------------------------------ requests
    def _call(self, fn: Callable[[], Any], context: str) -> Any:
        """``fn`` under the rate limit and the concurrency cap, typed errors, transient ones retried."""
        def attempt() -> Any:
            try:
                return fn()
            except Exception as err:  # noqa: BLE001 - typed below; programming errors pass unchanged
                typed = classify(err, context)
                if typed is None:
                    raise
                if typed.retryable:  # call_with_retries names the context once, in its final message
                    typed = classify(err, "request")
                raise typed from None

        delay = lambda n: backoff_delay(n, self.options.retry_delay_s, self.backoff_max_s, self._rng)  # noqa: E731
        return call_with_retries(attempt, context, bucket=self._bucket, slots=self._slots,
                                 max_attempts=self.options.retries + 1, delay=delay, sleep=self._sleep)

    def _signed(self, item: pystac.Item) -> pystac.Item:
        """A signed copy of ``item`` (the ``sign`` hook, in place on the copy or returning a new item)."""
        if self.options.sign is None:
            return item
        with self._lock:
            if self._hook is None:
                try:
                    self._hook = load_hook(self.options.sign)
                except ImportError as err:
                    raise BadInput(f"source.stac.sign: {err}") from None
        copy = item.clone()
        signed = self._hook(copy)
        return signed if isinstance(signed, pystac.Item) else copy

    def _map(self, fn: Callable[[int], None], n: int) -> None:
        threads = min(self.options.read_threads, n)
        if threads <= 1:
            for i in range(n):
                fn(i)
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.options.read_threads, thread_name_prefix="stac-read")
        for _ in self._pool.map(fn, range(n)):
            pass

    # ------------------------------------------------------------------ Source API
    def describe(self) -> dict[str, object]:
        o = self.options
        return {
            "name": self.name,
            "synthetic": False,
            "catalog": o.catalog,
            "catalog_type": "static" if is_static(o.catalog) else "api",
            "collections": o.collections.model_dump(),
            "options": o.model_dump(mode="json"),
            "max_cloudy_pixel_percentage": self.max_cloudy_pixel_percentage,
            "selection": ("most recent item in the window with eo:cloud_cover < max (S2), IW with the "
                          "polarisations (S1), every band's asset, geometry covering the patch; ties: the "
                          "patch's UTM zone, then the smaller id"),
            "resampling": self.resampling,
            "s1_units": f"{o.s1_units} in the catalog, dB in the archive",
            "s2_dn_offset": "as served: +1000 for processing baseline ≥ 04.00 (from 2022-01-25)",
            "label_method": f"landcover:{o.collections.landcover}" if self.with_labels else None,
            "landcover_crosswalk": self.crosswalk if self.with_labels else None,
            "retry": {"retries": o.retries, "retry_delay_s": o.retry_delay_s, "backoff_max_s": self.backoff_max_s},
        }

    def fetch(self, location: Location, window: SeasonWindow, grid: PatchGrid,
              modalities: dict[str, tuple[str, ...]]) -> SeasonSample:
        check_modalities(modalities)
        check_grid(grid, location)
        footprint = patch_footprint(grid)
        where = f"location {location.id} season {window.season} ({window.start}..{window.end})"
        order = [m for m in MODALITY_BANDS if m in modalities]
        selected: dict[str, tuple[pystac.Item, tuple[str, ...], int]] = {}
        for name in order:  # every selection first: a missing modality fails before any read
            collection = getattr(self.options.collections, name)
            if collection is None:
                raise BadInput(f"source.stac.collections.{name}: the catalog has no collection for {name}; "
                               f"name one or disable the modality (modalities.{name}.enabled: false)")
            bands = tuple(b for b in MODALITY_BANDS[name] if b in set(modalities[name]))
            max_cloud = self.max_cloudy_pixel_percentage if name.startswith("s2_") else None
            found = self.catalog.items(self._call, collection, footprint, window, max_cloud)
            passing = candidates(found, collection, name, bands, window, footprint,
                                 self.max_cloudy_pixel_percentage, self.options.asset_keys)
            item = most_recent(passing, grid.epsg)
            if item is None:
                cloud = f", eo:cloud_cover < {self.max_cloudy_pixel_percentage:g}" if max_cloud is not None else ""
                raise NoImageFound(f"stac {collection}: no item in the window{cloud} with the bands "
                                   f"{list(bands)} covering the patch, {where}")
            selected[name] = (item, bands, len(passing))

        images: dict[str, ModalityImage] = {}
        extra: dict[str, str] = {}
        for name, (item, bands, count) in selected.items():
            images[name] = self._read_image(name, self._signed(item), bands, grid, where)
            extra[f"{name}_candidates"] = str(count)
        label = self._label(footprint, grid, window, where, extra) if self.with_labels else None
        return SeasonSample(images=images, label=label, extra=extra)

    def _read_image(self, name: str, item: pystac.Item, bands: tuple[str, ...], grid: PatchGrid,
                    where: str) -> ModalityImage:
        data = np.empty((len(bands), grid.size, grid.size), dtype=MODALITY_DTYPES[name])
        linear = self.options.s1_units == "linear"

        def read(i: int) -> None:
            key, index = band_asset(item, bands[i], self.options.asset_keys)
            href = item.assets[key].href
            context = f"stac {name} {bands[i]} of {item.id} ({href}), {where}"
            data[i] = self._call(lambda: read_band(name, href, index, grid, self.resampling, linear,
                                                   self.options.request_timeout_s), context)

        self._map(read, len(bands))
        cloud = item.properties.get("eo:cloud_cover") if name.startswith("s2_") else None
        return ModalityImage(data=data, bands=bands, acquired=item_time(item).date(), image_id=item.id,
                             cloud_pct=float(cloud) if cloud is not None else math.nan)

    def _label(self, footprint: Any, grid: PatchGrid, window: SeasonWindow, where: str,
               extra: dict[str, str]) -> LabelMap | None:
        collection = self.options.collections.landcover
        found = self.catalog.items(self._call, collection, footprint, None, None)
        item = land_cover_item(found, collection, window, footprint, self.options.asset_keys)
        if item is None:
            extra["label_method"] = "none"
            return None
        item = self._signed(item)
        href = item.assets[landcover_asset(item, self.options.asset_keys)].href
        context = f"stac land cover {item.id} ({href}), {where}"
        data = self._call(lambda: read_land_cover(href, grid, self.crosswalk, self.options.landcover_resampling,
                                                  self.options.request_timeout_s), context)
        return LabelMap(data=data, image_id=item.id, method=f"landcover:{collection}")

