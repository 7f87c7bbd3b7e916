"""Imagery and label sources behind one interface (see :mod:`pipeline.sources.base`)."""

from __future__ import annotations

from pipeline.manifest import Manifest
from pipeline.sources.base import (
    CorruptData,
    InvalidGeometry,
    LabelMap,
    ModalityImage,
    NoImageFound,
    SeasonSample,
    Source,
    SourceError,
    TransientSourceError,
)

__all__ = [
    "CorruptData", "InvalidGeometry", "LabelMap", "ModalityImage", "NoImageFound", "SeasonSample",
    "Source", "SourceError", "TransientSourceError", "build_source",
]


def build_source(manifest: Manifest) -> Source:
    """The source named by ``manifest.source.kind``, configured from the manifest."""
    kind = manifest.source.kind
    if kind == "synthetic":
        from pipeline.sources.synthetic import SyntheticSource

        return SyntheticSource(
            manifest.source.synthetic,
            max_cloudy_pixel_percentage=manifest.cloud_filter.max_cloudy_pixel_percentage,
            resampling=manifest.patch.resampling,
            dw_probabilities=manifest.labels.dw_probabilities,
        )
    if kind == "local":
        from pipeline.sources.ssl4eo_local import SSL4EOLocalSource

        opts = manifest.source.local
        # The seasons are assigned by the manifest's reference dates (see pipeline.sources.ssl4eo_local).
        return SSL4EOLocalSource(opts.root, opts.labels, resampling=manifest.patch.resampling,
                                 reference_dates=manifest.seasons.reference_dates)
    if kind == "earthengine":
        from pipeline.manifest import EarthEngineSourceOptions
        from pipeline.sources.earthengine import EarthEngineSource

        return EarthEngineSource(
            manifest.source.earthengine or EarthEngineSourceOptions(),
            max_cloudy_pixel_percentage=manifest.cloud_filter.max_cloudy_pixel_percentage,
            resampling=manifest.patch.resampling,
            dw_probabilities=manifest.labels.dw_probabilities,
        )
    if kind == "stac":
        from pipeline.manifest import StacSourceOptions
        from pipeline.sources.stac import StacSource

        return StacSource(manifest.source.stac or StacSourceOptions(),
                          max_cloudy_pixel_percentage=manifest.cloud_filter.max_cloudy_pixel_percentage,
                          resampling=manifest.patch.resampling)
    raise ValueError(f"source.kind: unknown source '{kind}'")
