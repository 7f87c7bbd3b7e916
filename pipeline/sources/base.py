"""The interface every imagery/label source implements (synthetic world, local SSL4EO-S12 copy, Earth Engine).

A source answers one question: for a :class:`~pipeline.locations.Location` and a
:class:`~pipeline.seasons.SeasonWindow`, give each requested modality as a georeferenced array
``(band, y, x)`` on the patch grid, plus the Dynamic World label map ``(y, x)`` of the same grid.
Problems are reported with the typed errors below: a :class:`TransientSourceError` is retried and
every other :class:`SourceError` is recorded as a failed patch with its reason.

Retries, one layer per concern (the whole picture is in ``docs/architecture.md``): a source that
talks to a service retries its own requests and says so with ``retries_requests = True`` (Earth
Engine, STAC: :func:`pipeline.sources.requests.call_with_retries`); for every other source
:func:`pipeline.curate.fetch_with_retries` is that request layer. Either way a transient error is
retried once per request, never by two layers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from pipeline.bands import MODALITY_BANDS
from pipeline.grid import PatchGrid
from pipeline.locations import Location
from pipeline.seasons import SeasonWindow


class SourceError(Exception):
    """Base class of every error a source may raise for one (location, season)."""

    retryable: bool = False


class NoImageFound(SourceError):
    """No acquisition passes the filters (window, cloud cover, coverage) for this location and season."""


class InvalidGeometry(SourceError):
    """The patch footprint cannot be served by the source (outside coverage, invalid CRS, …)."""


class CorruptData(SourceError):
    """The source returned data that cannot be decoded or has the wrong shape/bands."""


class TransientSourceError(SourceError):
    """A temporary failure (rate limit, timeout, 5xx): retrying later may succeed."""

    retryable = True


def check_modalities(modalities: dict[str, tuple[str, ...]]) -> None:
    """Raise ValueError for a modality or band name a source cannot know (a caller's bug, not a data problem)."""
    for name, bands in modalities.items():
        if name not in MODALITY_BANDS:
            raise ValueError(f"unknown modality {name!r}; valid: {list(MODALITY_BANDS)}")
        bad = [b for b in bands if b not in MODALITY_BANDS[name]]
        if bad:
            raise ValueError(f"{name}: unknown band(s) {bad}")


@dataclass(frozen=True)
class ModalityImage:
    """One modality of one season on the patch grid."""

    data: np.ndarray  # (band, y, x), archive dtype (uint16 DN for S2, float32 dB for S1)
    bands: tuple[str, ...]
    acquired: dt.date
    image_id: str
    cloud_pct: float  # scene cloudy-pixel percentage as reported by the source (NaN for S1)


@dataclass(frozen=True)
class LabelMap:
    """Dynamic World ``label`` map (y, x) on the patch grid; ``LABEL_NODATA`` where unlabelled."""

    data: np.ndarray  # (y, x) uint8
    image_id: str  # the DW image id (equal to the matched S2 L1C image id when matched)
    method: str  # "matched" (same system:index as the L1C image) or "mode" (per-pixel mode over the window)


@dataclass(frozen=True)
class SeasonSample:
    """Everything a source returns for one (location, season)."""

    images: dict[str, ModalityImage]  # modality name ("s2_l1c", "s2_l2a", "s1_grd") → image
    label: LabelMap | None
    extra: dict[str, str] = field(default_factory=dict)
    #: (9,) mean Dynamic World class probability over the season's valid label pixels (zeros when none),
    #: from a source that computes it (``labels.dw_probabilities``, :mod:`pipeline.reference`); else None.
    dw_probability: np.ndarray | None = None


@runtime_checkable
class Source(Protocol):
    """What the curation flow needs from a source.

    ``name`` is written to the archive attributes; ``synthetic`` must be True for generated data.
    ``fetch`` must be safe to call from several threads/processes at once and, for the same inputs,
    return the same arrays (so that a resumed run reproduces an uninterrupted one).
    """

    name: str
    synthetic: bool

    def fetch(
        self,
        location: Location,
        window: SeasonWindow,
        grid: PatchGrid,
        modalities: dict[str, tuple[str, ...]],
    ) -> SeasonSample:
        """Return the requested modalities (name → band names) and the label map for one season."""
        ...

    def describe(self) -> dict[str, object]:
        """JSON-serialisable description of the source, stored in the archive attributes."""
        ...
