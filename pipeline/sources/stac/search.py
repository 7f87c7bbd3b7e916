"""Finding the STAC items of one patch and season: catalog access, filters and the selection rule.

**Catalogs.** A STAC API (``catalog`` is an ``http(s)`` URL not ending in ``.json``) is searched with
pystac-client's ``ItemSearch`` (STAC API - Item Search: ``collections``, ``bbox`` in WGS84 longitude /
latitude, an RFC 3339 ``datetime`` interval; github.com/radiantearth/stac-api-spec). When the API
conforms to the Query extension (Planetary Computer does), ``query={"eo:cloud_cover": {"lt": max}}``
is sent as well. A static catalog (a local ``catalog.json``/``collection.json`` or its folder, or a
URL ending in ``.json``) cannot be searched (pystac-client's ``ItemSearch`` needs an API), so it is
walked once per process with pystac (``Catalog.get_items(recursive=True)``) and its items are kept in
memory. Either way the item list then goes through the **same** filters below (:func:`candidates`),
so an API's own filtering only narrows what is downloaded.

**Filters** (:func:`candidates`): the item belongs to the collection (``item.collection_id``, else
the id of its parent catalog); its time (``datetime``, else ``start_datetime``) lies in the season
window, start inclusive, end exclusive (the windows of :mod:`pipeline.seasons`, at 00:00 UTC); for
Sentinel-2, ``eo:cloud_cover`` (STAC ``eo`` extension: cloud cover in %) is present and below the
manifest's ``cloud_filter.max_cloudy_pixel_percentage`` (strictly, like the Earth Engine source's
``CLOUDY_PIXEL_PERCENTAGE < max``); for Sentinel-1, ``sar:instrument_mode`` is ``IW`` and
``sar:polarizations`` hold the requested polarisations, where the item states them (STAC ``sar``
extension); the item has an asset for every requested band; and its ``geometry`` (the footprint
of its valid data, WGS84) **covers the whole patch** (:func:`patch_footprint`), so that a scene
that only clips the patch is skipped rather than read with a no-data edge.

**Selection** (:func:`most_recent`): of the remaining items, the most recent one, as this project's
Earth Engine source picks (collection sorted by ``system:time_start`` descending, first) after the
SSL4EO-S12 download scripts (Wang et al., arXiv:2211.07044; github.com/zhu-xlab/SSL4EO-S12). Our
tie-break for items of the same instant (a patch in the overlap of two tiles of one pass): the item in
the patch's own UTM zone (``proj:epsg``/``proj:code``, no reprojection), then the smaller id.

**Land cover** (:func:`land_cover_item`): annual maps are searched without a time filter; of the
items covering the patch, the one whose ``start_datetime``..``end_datetime`` holds the window's
centre, else the one nearest in time to it, ties to the most recent (our rule: labels describe the
season's year when the product has that year).
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pystac
import shapely
from rasterio.warp import transform as warp_transform

from pipeline.grid import PatchGrid
from pipeline.seasons import SeasonWindow

#: Assets looked up for the land-cover map when ``asset_keys`` names none (ESA WorldCover ``map``,
#: Impact Observatory ``data``, on Planetary Computer).
LANDCOVER_ASSET_KEYS = ("map", "data")
#: Points per patch edge of the WGS84 footprint (UTM edges are not straight in longitude/latitude).
_EDGE_POINTS = 8

Call = Callable[[Callable[[], Any], str], Any]


# ----------------------------------------------------------------------------------------------- geometry
def patch_footprint(grid: PatchGrid) -> shapely.Polygon:
    """The patch as a WGS84 (lon, lat) polygon, each UTM edge densified to :data:`_EDGE_POINTS` points."""
    west, south, east, north = grid.bounds
    t = np.linspace(0.0, 1.0, _EDGE_POINTS, endpoint=False)
    dx, dy = east - west, north - south
    xs = np.concatenate([west + dx * t, np.full_like(t, east), east - dx * t, np.full_like(t, west)])
    ys = np.concatenate([np.full_like(t, north), north - dy * t, np.full_like(t, south), south + dy * t])
    lon, lat = warp_transform(grid.crs, "EPSG:4326", xs.tolist(), ys.tolist())
    return shapely.Polygon(np.column_stack([lon, lat]))


def search_bbox(footprint: shapely.Polygon) -> tuple[float, float, float, float]:
    """``bbox`` of a search: the footprint's (west, south, east, north) in degrees."""
    return tuple(float(v) for v in footprint.bounds)


def covers(item: pystac.Item, footprint: shapely.Polygon) -> bool:
    """True when the item's geometry covers the whole patch footprint (False without a geometry)."""
    if not item.geometry:
        return False
    try:
        return bool(shapely.geometry.shape(item.geometry).covers(footprint))
    except (ValueError, TypeError, shapely.errors.GEOSException):
        return False


# ----------------------------------------------------------------------------------------------- items
def item_time(item: pystac.Item) -> dt.datetime | None:
    """The item's instant (``datetime``, else ``start_datetime``) in UTC, or None."""
    t = item.datetime or item.common_metadata.start_datetime
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


def _utc(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


def in_window(item: pystac.Item, window: SeasonWindow) -> bool:
    t = item_time(item)
    return t is not None and _utc(window.start) <= t < _utc(window.end)


def item_epsg(item: pystac.Item) -> int | None:
    """The item's EPSG code from the projection extension (``proj:epsg``, or ``proj:code`` "EPSG:n")."""
    props = item.properties
    if isinstance(props.get("proj:epsg"), int):
        return props["proj:epsg"]
    code = props.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:") and code[5:].isdigit():
        return int(code[5:])
    return None


def collection_of(item: pystac.Item) -> str | None:
    """The item's collection id, else the id of the catalog it hangs under (a static catalog's folders)."""
    if item.collection_id:
        return item.collection_id
    parent = item.get_parent()
    return parent.id if parent is not None else None


def band_asset(item: pystac.Item, band: str, overrides: dict[str, str]) -> tuple[str, int] | None:
    """(asset key, 1-based band index in its file) holding ``band``, or None.

    Looked up in order: ``overrides[band]``; the key itself, its zero-padded (``B1`` → ``B01``) and
    lower-case (``VV`` → ``vv``) forms, as band index 1; an asset whose ``eo:bands`` names the band
    (``name`` or ``common_name``, in any of those forms), at that position.
    """
    assets = item.assets
    if band in overrides:
        return (overrides[band], 1) if overrides[band] in assets else None
    names = [band, band.lower()]
    if band[0] == "B" and band[1:].isdigit():
        names.insert(1, f"B{int(band[1:]):02d}")
    for key in names:
        if key in assets:
            return key, 1
    for key, asset in assets.items():
        bands = asset.extra_fields.get("eo:bands") or []
        for i, b in enumerate(bands):
            if isinstance(b, dict) and {b.get("name"), b.get("common_name")} & set(names):
                return key, i + 1
    return None


def landcover_asset(item: pystac.Item, overrides: dict[str, str]) -> str | None:
    """The land-cover map's asset key: ``overrides["landcover"]`` or one of :data:`LANDCOVER_ASSET_KEYS`."""
    keys = (overrides["landcover"],) if "landcover" in overrides else LANDCOVER_ASSET_KEYS
    return next((k for k in keys if k in item.assets), None)


def _sar_ok(item: pystac.Item, bands: tuple[str, ...]) -> bool:
    mode = item.properties.get("sar:instrument_mode")
    pols = item.properties.get("sar:polarizations")
    if mode is not None and str(mode).upper() != "IW":
        return False
    return pols is None or all(b.upper() in {str(p).upper() for p in pols} for b in bands)


def candidates(items: Iterable[pystac.Item], collection: str, modality: str, bands: tuple[str, ...],
               window: SeasonWindow, footprint: shapely.Polygon, max_cloud: float,
               asset_keys: dict[str, str]) -> list[pystac.Item]:
    """The items passing every filter of the module docstring, in the order given."""
    out = []
    for item in items:
        if collection_of(item) != collection or not in_window(item, window):
            continue
        if modality.startswith("s2_"):
            cloud = item.properties.get("eo:cloud_cover")
            if not isinstance(cloud, (int, float)) or not cloud < max_cloud:
                continue
        elif not _sar_ok(item, bands):
            continue
        if any(band_asset(item, b, asset_keys) is None for b in bands) or not covers(item, footprint):
            continue
        out.append(item)
    return out


def most_recent(items: list[pystac.Item], epsg: int) -> pystac.Item | None:
    """The latest item; same instant: the patch's UTM zone first, then the smaller id (module docstring)."""
    if not items:
        return None
    return min(items, key=lambda it: (-item_time(it).timestamp(), item_epsg(it) != epsg, it.id))


def land_cover_item(items: Iterable[pystac.Item], collection: str, window: SeasonWindow,
                    footprint: shapely.Polygon, asset_keys: dict[str, str]) -> pystac.Item | None:
    """The land-cover map for the season: covering the patch, holding (else nearest to) the window centre."""
    centre = _utc(window.centre)
    best, best_key = None, None
    for item in items:
        if collection_of(item) != collection or landcover_asset(item, asset_keys) is None:
            continue
        t = item_time(item)
        if t is None or not covers(item, footprint):
            continue
        end = item.common_metadata.end_datetime or t
        end = end.replace(tzinfo=dt.timezone.utc) if end.tzinfo is None else end
        gap = 0.0 if t <= centre <= end else min(abs((centre - t).total_seconds()), abs((centre - end).total_seconds()))
        key = (gap, -t.timestamp(), item.id)
        if best_key is None or key < best_key:
            best, best_key = item, key
    return best


# ----------------------------------------------------------------------------------------------- catalogs
def is_static(catalog: str) -> bool:
    """A static catalog (walked) rather than a STAC API (searched): local, or a URL ending in ``.json``."""
    return not catalog.startswith(("http://", "https://")) or catalog.split("?")[0].endswith(".json")


def static_root(catalog: str) -> str:
    """The root JSON of a static catalog: the path itself, or ``catalog.json``/``collection.json`` in a folder."""
    if catalog.startswith(("http://", "https://")):
        return catalog
    path = Path(catalog.removeprefix("file://"))
    if path.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (path / name).is_file():
                return str(path / name)
        return str(path / "catalog.json")
    return str(path)


class StaticCatalog:
    """A static catalog walked once (per process, on first use) and kept as an item list."""

    def __init__(self, catalog: str):
        self.root = static_root(catalog)
        self._items: list[pystac.Item] | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"root": self.root}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["root"])

    def _load(self) -> list[pystac.Item]:
        root = pystac.read_file(self.root)
        if isinstance(root, pystac.Item):
            return [root]
        if not isinstance(root, pystac.Catalog):
            raise pystac.STACTypeError(f"{self.root} is neither a catalog, a collection nor an item")
        items = list(root.get_items(recursive=True))
        for item in items:  # resolve every asset href now: items are shared between threads afterwards
            for asset in item.assets.values():
                asset.href = asset.get_absolute_href() or asset.href
        return items

    def items(self, call: Call, collection: str, footprint: shapely.Polygon, window: SeasonWindow | None,
              max_cloud: float | None) -> list[pystac.Item]:
        """Every item of the catalog (filtering is :func:`candidates`' job)."""
        with self._lock:
            if self._items is None:
                self._items = call(self._load, f"stac catalog {self.root}")
            return self._items


class ApiCatalog:
    """A STAC API searched with pystac-client; one ``Client`` per thread, opened on first use."""

    def __init__(self, url: str, timeout_s: float, headers: dict[str, str] | None = None):
        self.url = url
        self.timeout_s = timeout_s
        self.headers = headers
        self._local = threading.local()

    def __getstate__(self) -> dict:
        return {"url": self.url, "timeout_s": self.timeout_s, "headers": self.headers}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            from pystac_client import Client
            from pystac_client.stac_api_io import StacApiIO

            # No HTTP retries inside pystac-client: the source's own retry layer is the only one.
            io = StacApiIO(headers=self.headers, timeout=self.timeout_s, max_retries=None)
            client = Client.open(self.url, stac_io=io)
            self._local.client = client
        return client

    def items(self, call: Call, collection: str, footprint: shapely.Polygon, window: SeasonWindow | None,
              max_cloud: float | None) -> list[pystac.Item]:
        """Items of ``collection`` over the patch's bbox (in the window; below ``max_cloud`` when given)."""
        def search() -> list[pystac.Item]:
            from pystac_client import ConformanceClasses

            client = self.client()
            kwargs: dict[str, Any] = {"collections": [collection], "bbox": search_bbox(footprint), "limit": 100}
            if window is not None:
                kwargs["datetime"] = (_utc(window.start), _utc(window.end))
            if max_cloud is not None and client.conforms_to(ConformanceClasses.QUERY):
                kwargs["query"] = {"eo:cloud_cover": {"lt": float(max_cloud)}}
            return list(client.search(**kwargs).items())

        where = f"{window.start}..{window.end}" if window is not None else "any time"
        return call(search, f"stac search {collection} ({where}) at {self.url}")
