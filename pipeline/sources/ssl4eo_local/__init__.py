"""A local copy of SSL4EO-S12 in its distributed layout, read with rasterio (no network).

The package is split by job:

* :mod:`~pipeline.sources.ssl4eo_local.layout`: the folder layout, acquisition times and metadata, and
  the locations found on disk (:func:`list_local_locations`).
* :mod:`~pipeline.sources.ssl4eo_local.seasons`: which acquisition belongs to which season (a one-to-one
  assignment of least total day-of-year distance to the reference dates).
* :mod:`~pipeline.sources.ssl4eo_local.reader`: one band file into the patch array (sizes, resampling,
  Sentinel-1 no-data).
* :mod:`~pipeline.sources.ssl4eo_local.source`: :class:`SSL4EOLocalSource`, the
  :class:`~pipeline.sources.base.Source`.

Every public name of the former single module stays importable from here.
"""

from __future__ import annotations

from pipeline.sources.ssl4eo_local.layout import (
    MODALITY_DIRS,
    acquisition_time,
    band_path,
    list_acquisitions,
    list_local_locations,
    read_metadata,
)
from pipeline.sources.ssl4eo_local.reader import (
    RESAMPLING,
    S1_NATIVE_RESOLUTION_M,
    expected_band_sizes,
    native_resolution_m,
    read_band,
    s1_nodata_mask,
)
from pipeline.sources.ssl4eo_local.seasons import (
    SSL4EO_REFERENCE_DATES,
    assign_seasons,
    cyclic_day_distance,
    optimal_assignment,
    season_distances,
)
from pipeline.sources.ssl4eo_local.source import SSL4EOLocalSource

__all__ = [
    "MODALITY_DIRS", "RESAMPLING", "S1_NATIVE_RESOLUTION_M", "SSL4EO_REFERENCE_DATES", "SSL4EOLocalSource",
    "acquisition_time", "assign_seasons", "band_path", "cyclic_day_distance", "expected_band_sizes",
    "list_acquisitions", "list_local_locations", "native_resolution_m", "optimal_assignment", "read_band",
    "read_metadata", "s1_nodata_mask", "season_distances",
]
