"""Location sampling, SSL4EO-S12 style: cities, Gaussian offsets and a minimum distance.

* :mod:`.sampler` — :func:`sample_locations` / :func:`sample_centres`: the algorithm, its source
  (Wang et al., "SSL4EO-S12", arXiv:2211.07044) and our documented differences from it.
* :mod:`.cities` — :func:`load_cities`: the city table (GeoNames offline or a CSV).
* :mod:`.geometry` — sphere and UTM helpers (chords, great-circle distances, offsets, projections).
* :mod:`.files` — :func:`locations_to_geodataframe` and the GeoParquet locations file.

:func:`plot_locations` lives in :mod:`pipeline.figures.locations`; it is importable from here too,
loaded on first use so that importing this package does not import matplotlib.
"""

from __future__ import annotations

from typing import Any

from pipeline.sampling.cities import GEONAMES, CityTableError, load_cities
from pipeline.sampling.files import (
    LOCATION_COLUMNS,
    locations_to_geodataframe,
    read_locations,
    write_locations,
)
from pipeline.sampling.geometry import (
    EARTH_RADIUS_KM,
    KM_PER_DEGREE,
    chord_for_distance,
    great_circle_km,
    lonlat_to_unit,
    offset_lonlat,
    project_to_utm,
    utm_epsg_array,
)
from pipeline.sampling.sampler import (
    Centres,
    SamplingError,
    sample_centres,
    sample_locations,
)

__all__ = [
    "EARTH_RADIUS_KM", "GEONAMES", "KM_PER_DEGREE", "LOCATION_COLUMNS", "Centres", "CityTableError", "SamplingError",
    "chord_for_distance", "great_circle_km", "load_cities", "locations_to_geodataframe", "lonlat_to_unit",
    "offset_lonlat", "plot_locations", "project_to_utm", "read_locations", "sample_centres", "sample_locations",
    "utm_epsg_array", "write_locations",
]


def __getattr__(name: str) -> Any:
    """:func:`pipeline.figures.locations.plot_locations`, imported on first access."""
    if name == "plot_locations":
        from pipeline.figures.locations import plot_locations

        return plot_locations
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
