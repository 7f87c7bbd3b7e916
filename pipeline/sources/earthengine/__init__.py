"""Google Earth Engine source: SSL4EO-S12 imagery and the matching Dynamic World labels.

The package is split by job:

* :mod:`~pipeline.sources.earthengine.queries`: collection filters (COPERNICUS/S2, COPERNICUS/S2_SR and
  their ``_HARMONIZED`` versions, COPERNICUS/S1_GRD, GOOGLE/DYNAMICWORLD/V1), image selection, pixel and
  label and label-probability images.
* :mod:`~pipeline.sources.earthengine.planning`: ``computePixels`` request sizing, grids and decoding.
* :mod:`~pipeline.sources.earthengine.transport`: the transport, rate limiting, error classification,
  retries with backoff.
* :mod:`~pipeline.sources.earthengine.auth`: credentials (never logged or shown).
* :mod:`~pipeline.sources.earthengine.source`: :class:`EarthEngineSource`.

Every public name of the former single module stays importable from here.
"""

from __future__ import annotations

from pipeline.sources.earthengine.auth import (
    AUTH_HELP,
    KEY_ENV_VAR,
    EarthEngineAuthError,
    check_credentials,
    key_path,
)
from pipeline.sources.earthengine.planning import (
    MAX_REQUEST_BYTES,
    NPY_HEADER_MARGIN,
    RequestPlan,
    grid_dict,
    pixel_request,
    plan_requests,
    request_bytes,
    to_band_array,
)
from pipeline.sources.earthengine.queries import (
    DW_PROBABILITY_BANDS,
    DW_PROBABILITY_NODATA,
    DYNAMIC_WORLD,
    NODATA_VALUE,
    S1_FLOOR_DB,
    S1_GRD,
    S1_NATIVE_RESOLUTION_M,
    S1_NODATA_DB,
    collection_id,
    dw_collection,
    dw_info,
    dw_label_image,
    dw_matched,
    dw_probability_image,
    footprint,
    modality_collection,
    most_recent,
    native_resolution,
    pixel_image,
    s1_collection,
    s1_nodata_to_nan,
    s2_collection,
    s2_collection_id,
    selection_info,
)
from pipeline.sources.earthengine.source import EarthEngineSource
from pipeline.sources.earthengine.transport import EarthEngineTransport, TokenBucket, Transport, classify_error

__all__ = [
    "AUTH_HELP", "DW_PROBABILITY_BANDS", "DW_PROBABILITY_NODATA", "DYNAMIC_WORLD",
    "KEY_ENV_VAR", "MAX_REQUEST_BYTES", "NODATA_VALUE", "NPY_HEADER_MARGIN",
    "S1_FLOOR_DB", "S1_GRD", "S1_NATIVE_RESOLUTION_M", "S1_NODATA_DB",
    "EarthEngineAuthError", "EarthEngineSource", "EarthEngineTransport", "RequestPlan", "TokenBucket", "Transport",
    "check_credentials", "classify_error", "collection_id", "dw_collection", "dw_info", "dw_label_image",
    "dw_matched", "dw_probability_image", "footprint", "grid_dict", "key_path", "modality_collection", "most_recent",
    "native_resolution", "pixel_image", "pixel_request", "plan_requests", "request_bytes", "s1_collection",
    "s1_nodata_to_nan", "s2_collection", "s2_collection_id", "selection_info", "to_band_array",
]
