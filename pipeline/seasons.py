"""Seasonal acquisition windows, SSL4EO-S12 style.

Four reference dates (equinoxes and solstices). For each location one random shift δ (days) is
subtracted from all four dates; each window is ``window_days`` long, centred on the shifted date.
The shift is drawn from a generator seeded with (manifest seed, location index), so it is stable
when a run is resumed or sharded across machines.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SeasonWindow:
    season: int  # index into the manifest's reference dates
    reference: dt.date
    start: dt.date  # inclusive
    end: dt.date  # exclusive

    @property
    def centre(self) -> dt.date:
        return self.start + (self.end - self.start) / 2


def location_shift_days(seed: int, location_index: int, max_shift_days: int) -> int:
    """Deterministic per-location shift in ``[0, max_shift_days)``; 0 when shifting is off."""
    if max_shift_days <= 0:
        return 0
    rng = np.random.default_rng([int(seed), int(location_index), 0x5EA5])
    return int(rng.integers(0, max_shift_days))


def season_windows(
    reference_dates: list[dt.date] | tuple[dt.date, ...],
    window_days: int,
    shift_days: int,
) -> list[SeasonWindow]:
    """The windows of one location, in reference-date order."""
    half = dt.timedelta(days=window_days // 2)
    out = []
    for i, ref in enumerate(reference_dates):
        centre = ref - dt.timedelta(days=shift_days)
        start = centre - half
        out.append(SeasonWindow(season=i, reference=ref, start=start, end=start + dt.timedelta(days=window_days)))
    return out
