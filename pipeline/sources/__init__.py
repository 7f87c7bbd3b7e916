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
        )
    raise NotImplementedError(
        f"source.kind: '{kind}' is not available in this version yet; use 'synthetic' "
        "(the local SSL4EO-S12 and Earth Engine readers are tracked in the real-sources issue)"
    )
