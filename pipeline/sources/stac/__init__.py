"""STAC source (``source.kind: stac``): SSL4EO-S12 modalities from a STAC API or a static STAC catalog.

For users without an Earth Engine project: Planetary Computer's STAC API by default (``sentinel-2-l2a``,
``sentinel-1-rtc``, ``esa-worldcover``), or any STAC API or static catalog whose assets are GeoTIFFs
(Cloud-Optimized for remote ones). The package is split by job:

* :mod:`~pipeline.sources.stac.search`: catalog access (pystac-client search, pystac walk), the item
  filters and the selection rule (most recent item covering the patch).
* :mod:`~pipeline.sources.stac.reading`: windowed reads of the patch onto its UTM grid, units
  (S1 linear → dB), land-cover crosswalk, error types.
* :mod:`~pipeline.sources.stac.source`: :class:`StacSource` (request pacing, retries, signing).

STAC specification: github.com/radiantearth/stac-spec (items, ``eo``, ``sar``, ``proj`` extensions) and
github.com/radiantearth/stac-api-spec (Item Search, Query extension); pystac and pystac-client:
pystac.readthedocs.io, pystac-client.readthedocs.io.
"""

from __future__ import annotations

from pipeline.sources.stac.reading import classify, read_band, read_land_cover, s1_to_db, warp_asset
from pipeline.sources.stac.search import (
    ApiCatalog,
    StaticCatalog,
    band_asset,
    candidates,
    is_static,
    land_cover_item,
    most_recent,
    patch_footprint,
    static_root,
)
from pipeline.sources.stac.source import COLLECTION_CROSSWALKS, StacSource, landcover_crosswalk, load_hook

__all__ = [
    "COLLECTION_CROSSWALKS", "ApiCatalog", "StacSource", "StaticCatalog", "band_asset", "candidates", "classify",
    "is_static", "land_cover_item", "landcover_crosswalk", "load_hook", "most_recent", "patch_footprint",
    "read_band", "read_land_cover", "s1_to_db", "static_root", "warp_asset",
]
